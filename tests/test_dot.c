/* test_dot.c: weft dot draws every model under a real layout, and Graphviz's
 * own `dot` reads the result without a warning. */
#include "testing.h"

static struct run *R;

static const struct {
    const char *name;
    const char *args[16];
} cases[] = {
    {"gpt2 tp2 pp2", {"models/gpt2.xml", "--world-size", "8", "--tp", "2", "--pp", "2"}},
    {"gpt2 sequence parallel, op detail", {"models/gpt2.xml", "--variant", "tiny", "--tp", "2", "--pp", "2",
                                           "--sequence-parallel", "--detail", "op"}},
    {"gpt3-sized 96 layers", {"models/gpt2.xml", "--num-layers", "96", "--hidden-size", "12288", "--num-attention-heads",
                              "96", "--tp", "8", "--pp", "16"}},
    {"llama2 tp4 pp2 interleaved", {"models/llama2.xml", "--tp", "4", "--pp", "2", "--num-layers-per-virtual-pipeline-stage",
                                    "4", "--global-batch-size", "8"}},
    {"mixtral tp2 ep2 pp2", {"models/mixtral.xml", "--world-size", "16", "--tp", "2", "--ep", "2", "--pp", "2"}},
    {"t5 etp1 epp1, op detail", {"models/t5.xml", "--variant", "tiny", "--world-size", "10", "--tp", "2", "--pp", "2",
                                 "--etp", "1", "--epp", "1", "--detail", "op"}},
    {"llava etp2 epp2", {"models/llava.xml", "--world-size", "24", "--tp", "4", "--pp", "2", "--etp", "2", "--epp", "2"}},
};

static void test_case(void **state)
{
    const char *const *args = *state;
    char out[64];
    snprintf(out, sizeof out, "/tmp/weft-dot-%d.dot", (int)getpid());
    run_weft_out(R, "dot", args, out);
    if (R->status != 0)
        fail_msg("weft dot failed (%d): %s", R->status, R->err);
    assert_string_equal(R->err, "");
    run_prog(R, "dot", "-Tsvg", out, "-o", "/dev/null", NULL);
    unlink(out);
    if (R->status != 0 || R->err[0])
        fail_msg("Graphviz's dot says (exit %d): %s", R->status, R->err);
}

/* The renderers: SVG through gvc, and a clear error for an unknown format. */
static void test_formats(void **state)
{
    (void)state;
    char svg[64];
    snprintf(svg, sizeof svg, "/tmp/weft-dot-%d.svg", (int)getpid());
    run_weft(R, "dot", "models/t5.xml", "--variant", "tiny", "--tp", "2", "-o", svg, NULL);
    assert_int_equal(R->status, 0);
    size_t len;
    char *text = wf_read_file(svg, 1 << 24, &len);
    unlink(svg);
    assert_non_null(text);
    assert_non_null(strstr(text, "<svg"));
    assert_non_null(strstr(text, "encoder stage 0"));
    assert_non_null(strstr(text, "all&#45;reduce tp"));
    free(text);
    run_weft(R, "dot", "models/gpt2.xml", "-o", "/tmp/x.gif", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "-o /tmp/x.gif: the output's extension says its format: .dot, .svg or .png"));
    run_weft(R, "dot", "models/gpt2.xml", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "-o FILE is needed"));
    run_weft(R, "dot", "models/gpt2.xml", "--detail", "everything", "-o", "/tmp/x.dot", NULL);
    assert_int_equal(R->status, 2);
}

static int line_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The lines of a text, sorted (cgraph orders clusters by internal ids that
 * follow the heap, so equal graphs may list them in another order). */
static char **sorted_lines(char *text, int *n)
{
    char **v = NULL;
    *n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        v = realloc(v, (size_t)(*n + 1) * sizeof *v);
        v[(*n)++] = line;
    }
    qsort(v, (size_t)*n, sizeof *v, line_cmp);
    return v;
}

/* A compiled plan draws the same graph as the model and layout it came from,
 * and simulates the same step. */
static void test_from_plan(void **state)
{
    (void)state;
    char plan[64], a[64], b[64];
    int pid = (int)getpid();
    snprintf(plan, sizeof plan, "/tmp/weft-dot-%d.plan", pid);
    snprintf(a, sizeof a, "/tmp/weft-dot-%d-a.dot", pid);
    snprintf(b, sizeof b, "/tmp/weft-dot-%d-b.dot", pid);
    run_weft(R, "compile", "models/t5.xml", "--variant", "tiny", "--world-size", "10", "--tp", "2", "--pp", "2", "--etp",
             "1", "--epp", "1", "--global-batch-size", "8", "-o", plan, NULL);
    assert_int_equal(R->status, 0);
    run_weft(R, "dot", plan, "--detail", "op", "-o", a, NULL);
    if (R->status)
        fail_msg("weft dot PLAN: %s", R->err);
    run_weft(R, "dot", "models/t5.xml", "--variant", "tiny", "--world-size", "10", "--tp", "2", "--pp", "2", "--etp", "1",
             "--epp", "1", "--global-batch-size", "8", "--detail", "op", "-o", b, NULL);
    assert_int_equal(R->status, 0);
    size_t na, nb;
    char *ta = wf_read_file(a, 1 << 24, &na), *tb = wf_read_file(b, 1 << 24, &nb);
    assert_non_null(ta);
    assert_non_null(tb);
    /* the fused kernels box their ops, named by the kernel */
    assert_non_null(strstr(ta, "subgraph cluster_launch_0"));
    assert_non_null(strstr(ta, "_dropout_add_rmsnorm"));
    assert_non_null(strstr(ta, "_attention"));
    int la, lb;
    char **va = sorted_lines(ta, &la), **vb = sorted_lines(tb, &lb);
    assert_int_equal(la, lb);
    for (int i = 0; i < la; i++)
        if (strcmp(va[i], vb[i]))
            fail_msg("the plan's graph differs from the model's:\n  %s\n  %s", va[i], vb[i]);
    free(va);
    free(vb);
    free(ta);
    free(tb);
    run_weft(R, "simulate", plan, "--json", NULL);
    assert_int_equal(R->status, 0);
    char from_plan[4096]; /* the prediction and the device table it used */
    snprintf(from_plan, sizeof from_plan, "%s", strstr(R->out, "\"step_time\""));
    run_weft(R, "simulate", "models/t5.xml", "--variant", "tiny", "--world-size", "10", "--tp", "2", "--pp", "2", "--etp",
             "1", "--epp", "1", "--global-batch-size", "8", "--json", NULL);
    assert_string_equal(strstr(R->out, "\"step_time\""), from_plan);
    run_weft(R, "dot", plan, "--tp", "4", "-o", a, NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "is a compiled plan: its layout and sizes are fixed"));
    unlink(plan);
    unlink(a);
    unlink(b);
}

int main(void)
{
    R = malloc(sizeof *R);
    enum { N = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N + 2];
    for (size_t i = 0; i < N; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, test_case, NULL, NULL, (void *)cases[i].args};
    tests[N] = (struct CMUnitTest)cmocka_unit_test(test_formats);
    tests[N + 1] = (struct CMUnitTest)cmocka_unit_test(test_from_plan);
    int rc = _cmocka_run_group_tests("dot", tests, N + 2, NULL, NULL);
    free(R);
    return rc;
}
