/* test_ref.c: the reference ops: values worked by hand, and ops that have
 * two paths (fused and composed) agreeing with each other. */
#include "testing.h"

#include "kernel.h"

#include "ref.h"

#include <math.h>

#define HEAD "<model name=\"t\" xmlns=\"urn:weft:model:1\"><dim name=\"B\" value=\"2\"/><dim name=\"S\" value=\"5\"/>" \
             "<dim name=\"H\" value=\"4\"/><dim name=\"N\" value=\"2\"/><dim name=\"D\" value=\"4\"/><decoder>"
#define TAIL "</decoder></model>"

static struct ir_graph *graph(const char *body)
{
    char xml[8192];
    snprintf(xml, sizeof xml, HEAD "%s" TAIL, body);
    struct diag d;
    diag_init(&d);
    struct ir_graph *g = fe_load_memory("t.xml", xml, strlen(xml), NULL, &d);
    if (!g || ir_infer_shapes(g, &d))
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
    return g;
}

static int find(const struct ir_graph *g, const char *local)
{
    for (int i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].local_name, local))
            return i;
    fail_msg("no tensor %s", local);
    return -1;
}

static void run(struct ref *r)
{
    struct diag d;
    diag_init(&d);
    if (ref_forward(r, &d))
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
}

/* Largest absolute difference between two tensors of the same size. */
static double maxdiff(struct ref *r, const struct ir_graph *g, const char *a, const char *b)
{
    int x = find(g, a), y = find(g, b);
    int64_t n = ir_shape_numel(&g->tensors[x].shape);
    assert_int_equal(n, ir_shape_numel(&g->tensors[y].shape));
    double m = 0;
    for (int64_t k = 0; k < n; k++)
        m = fmax(m, fabs(ref_data(r, x)[k] - ref_data(r, y)[k]));
    return m;
}

static void expect_close(struct ref *r, const struct ir_graph *g, const char *a, const char *b, double tol)
{
    double m = maxdiff(r, g, a, b);
    if (!(m <= tol))
        fail_msg("%s and %s differ by %g (tolerance %g)", a, b, m, tol);
}

/* Fused attention equals softmax(q k^T * scale + causal mask) v, built from
 * matmul and softmax, for grouped-query heads too. */
static void test_attention_two_paths(void **state)
{
    (void)state;
    struct ir_graph *g = graph("<input name=\"q\" shape=\"B N S D\"/><input name=\"k\" shape=\"B N S D\"/>"
                               "<input name=\"v\" shape=\"B N S D\"/>"
                               "<op kind=\"attention\" in=\"q k v\" causal=\"true\" out=\"fused\"/>"
                               "<op kind=\"matmul\" in=\"q k\" transpose_b=\"true\" out=\"s0\"/>"
                               "<op kind=\"scale\" in=\"s0\" by=\"rsqrt(D)\" out=\"s\"/>"
                               "<op kind=\"softmax\" in=\"s\" causal=\"true\" out=\"p\"/>"
                               "<op kind=\"matmul\" in=\"p v\" out=\"composed\"/>"
                               "<output name=\"fused\"/><output name=\"composed\"/>");
    struct ref *r = ref_new(g, 7);
    ref_fill_inputs(r, 7, 1);
    run(r);
    expect_close(r, g, "fused", "composed", 1e-5);
    ref_free(r);
    ir_graph_free(g);
}

static void test_swiglu_and_bias(void **state)
{
    (void)state;
    struct ir_graph *g = graph("<input name=\"a\" shape=\"B S H\"/><input name=\"u\" shape=\"B S H\"/><input name=\"b\" shape=\"H\"/>"
                               "<op kind=\"swiglu\" in=\"a u\" out=\"fused\"/>"
                               "<op kind=\"silu\" in=\"a\" out=\"sa\"/><op kind=\"mul\" in=\"sa u\" out=\"composed\"/>"
                               "<op kind=\"bias_add\" in=\"a b\" out=\"biased\"/><op kind=\"add\" in=\"a b\" out=\"added\"/>"
                               "<output name=\"fused\"/><output name=\"composed\"/><output name=\"biased\"/><output name=\"added\"/>");
    struct ref *r = ref_new(g, 3);
    ref_fill_inputs(r, 3, 1);
    run(r);
    expect_close(r, g, "fused", "composed", 1e-6);
    expect_close(r, g, "biased", "added", 0);
    ref_free(r);
    ir_graph_free(g);
}

/* Values worked by hand. */
static void test_by_hand(void **state)
{
    (void)state;
    struct ir_graph *g = graph("<input name=\"x\" shape=\"2 3\"/><input name=\"w\" shape=\"3 2\"/><param name=\"g\" shape=\"3\" init=\"ones\"/>"
                               "<input name=\"l\" shape=\"1 3\"/><input name=\"t\" shape=\"1\" dtype=\"i32\"/>"
                               "<op kind=\"matmul\" in=\"x w\" out=\"mm\"/>"
                               "<op kind=\"layernorm\" in=\"x g\" eps=\"1e-12\" out=\"ln\"/>"
                               "<op kind=\"softmax\" in=\"x\" out=\"sm\"/>"
                               "<op kind=\"cross_entropy\" in=\"l t\" out=\"ce\"/>"
                               "<output name=\"mm\"/><output name=\"ln\"/><output name=\"sm\"/><output name=\"ce\"/>");
    struct ref *r = ref_new(g, 1);
    float *x = ref_data(r, find(g, "x")), *w = ref_data(r, find(g, "w")), *l = ref_data(r, find(g, "l"));
    const float xv[] = {1, 2, 3, 4, 5, 6}, wv[] = {1, 0, 0, 1, 1, 1};
    memcpy(x, xv, sizeof xv);
    memcpy(w, wv, sizeof wv);
    l[0] = 0, l[1] = 0, l[2] = (float)log(2.0); /* softmax: 1/4, 1/4, 1/2 */
    ref_ints(r, find(g, "t"))[0] = 2;
    run(r);
    const float *mm = ref_data(r, find(g, "mm")), *ln = ref_data(r, find(g, "ln")), *sm = ref_data(r, find(g, "sm"));
    const float want_mm[] = {4, 5, 10, 11}; /* [1 2 3]·[[1 0][0 1][1 1]] = [4 5]; [4 5 6]: [10 11] */
    for (int i = 0; i < 4; i++)
        assert_float_equal(mm[i], want_mm[i], 1e-6);
    /* (1,2,3): mean 2, variance 2/3: (-1, 0, 1) * sqrt(3/2) */
    assert_float_equal(ln[0], -sqrt(1.5), 1e-5);
    assert_float_equal(ln[1], 0, 1e-6);
    assert_float_equal(ln[2], sqrt(1.5), 1e-5);
    double z = exp(1) + exp(2) + exp(3);
    assert_float_equal(sm[2], exp(3) / z, 1e-6);
    assert_float_equal(ref_data(r, find(g, "ce"))[0], log(2.0), 1e-6); /* -log(1/2) */
    ref_free(r);
    ir_graph_free(g);
}

/* split_heads reads Megatron's grouped layout; merge_heads undoes a plain split. */
static void test_heads_layout(void **state)
{
    (void)state;
    struct ir_graph *g = graph("<input name=\"x\" shape=\"1 1 16\"/>"
                               "<op kind=\"split_heads\" in=\"x\" heads=\"2\" groups=\"1\" out=\"q k v\"/>"
                               "<input name=\"y\" shape=\"B S H\"/><op kind=\"split_heads\" in=\"y\" heads=\"N\" out=\"h\"/>"
                               "<op kind=\"merge_heads\" in=\"h\" out=\"back\"/>"
                               "<output name=\"q\"/><output name=\"k\"/><output name=\"v\"/><output name=\"back\"/>");
    struct ref *r = ref_new(g, 1);
    ref_fill_inputs(r, 1, 1);
    float *x = ref_data(r, find(g, "x"));
    for (int i = 0; i < 16; i++)
        x[i] = (float)i; /* one group of 2 query heads of 4, then k, then v */
    run(r);
    const float *q = ref_data(r, find(g, "q")), *k = ref_data(r, find(g, "k")), *v = ref_data(r, find(g, "v"));
    for (int i = 0; i < 8; i++)
        assert_float_equal(q[i], i, 0);
    for (int i = 0; i < 4; i++) {
        assert_float_equal(k[i], 8 + i, 0);
        assert_float_equal(v[i], 12 + i, 0);
    }
    expect_close(r, g, "y", "back", 0);
    ref_free(r);
    ir_graph_free(g);
}

/* Every model runs forward at its tiny size; with small initial weights its
 * loss starts near log(vocab), as a model that knows nothing should. */
static void test_models_forward(void **state)
{
    (void)state;
    static const char *files[] = {"models/gpt2.xml", "models/llama2.xml", "models/mixtral.xml", "models/t5.xml",
                                  "models/llava.xml"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        struct ir_graph *g = load_model(files[i], "tiny", NULL, 0);
        assert_non_null(g);
        struct ref *r = ref_new(g, 42);
        ref_fill_inputs(r, 42, 512); /* the tiny vocabularies are 512 */
        for (int t = 0; t < g->n_tensors; t++) /* LLaVA labels image positions with the ignore label */
            if (!strcmp(g->tensors[t].local_name, "labels") && !strcmp(files[i], "models/llava.xml"))
                for (int k = 0; k < 2 * 16; k++)
                    ref_ints(r, t)[(k / 16) * 48 + k % 16] = -100;
        run(r);
        float loss = ref_data(r, g->outputs[0])[0];
        printf("    %s tiny: loss %.4f at initialisation (log 512 = %.4f)\n", files[i], loss, log(512.0));
        assert_true(isfinite(loss) && loss > 0);
        /* T5 draws its shared embedding with std 1 (as T5 does), so its logits
         * are not small and its loss starts above log(vocab). */
        if (strcmp(files[i], "models/t5.xml"))
            assert_true(fabs(loss - log(512.0)) < 0.5);
        ref_free(r);
        ir_graph_free(g);
    }
}

static void test_random(void **state)
{
    (void)state;
    /* The same element of the same tensor draws the same number, whoever asks. */
    uint64_t s = kn_stream("decoder.layer.3.qkv.w");
    assert_true(ref_normal(1, s, 12345) == ref_normal(1, s, 12345));
    assert_true(ref_normal(1, s, 12345) != ref_normal(1, s, 12346));
    assert_true(ref_normal(1, s, 12345) != ref_normal(2, s, 12345));
    double sum = 0, sq = 0;
    for (int i = 0; i < 100000; i++) {
        double z = ref_normal(9, s, (uint64_t)i);
        sum += z;
        sq += z * z;
    }
    assert_true(fabs(sum / 100000) < 0.02);
    assert_true(fabs(sq / 100000 - 1) < 0.02);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_two_paths), cmocka_unit_test(test_swiglu_and_bias),
        cmocka_unit_test(test_by_hand),             cmocka_unit_test(test_heads_layout),
        cmocka_unit_test(test_models_forward),      cmocka_unit_test(test_random),
    };
    int rc = cmocka_run_group_tests_name("ref", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
