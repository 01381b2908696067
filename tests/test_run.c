/* test_run.c: weft run's executor against the reference: a plan compiled
 * for one rank, run from the plan file, computes the loss runtime/ref.c
 * computes from the same parameters and tokens; and training lowers it. */
#include "testing.h"
#include "emit_plan.h"
#include "exec.h"
#include "ref.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>

enum { SEED = 1234 };

/* Compile a model for one rank with one micro-batch, write its plan (with
 * the flags ov, n_ov). */
static void compile_ov(const char *model, const struct fe_override *ov, int n_ov, const char *plan, double lr, struct compiled *C)
{
    struct par_config pc = par_config_default();
    struct optim_config opt = optim_config_default();
    opt.lr = lr, opt.decay_style = OPTIM_DECAY_CONSTANT;
    compile_or_fail(C, model, "tiny", pc, ov, n_ov, &opt, NULL, 0);
    struct diag d;
    diag_init(&d);
    if (emit_plan(C, plan, &d))
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
}

static void compile_to(const char *model, const char *plan, double lr, struct compiled *C)
{
    compile_ov(model, NULL, 0, plan, lr, C);
}

static struct exec *run_plan(const char *plan, struct rank_plan *R)
{
    struct diag d;
    diag_init(&d);
    struct exec *x = NULL;
    if (rank_plan_load(plan, 0, 1, R, &d) || !(x = exec_new(R, NULL, SEED, BACKEND_CPU, &d)))
        fail_msg("%s: %s", plan, diag_first_error(&d));
    diag_free(&d);
    return x;
}

/* One step of a model's plan for one rank, beside the reference's forward
 * over the same parameters (the seed) and inputs (the synthetic tokens, the
 * labels a token on; float inputs from the seed). */
struct one_step {
    char plan[32];
    struct compiled C;
    struct rank_plan R;
    struct exec *x;
    struct exec_stats st;
    struct ref *r;
};

static void one_step_ov(const char *model, const struct fe_override *ov, int n_ov, struct one_step *s)
{
    snprintf(s->plan, sizeof s->plan, "/tmp/weft-test-run-XXXXXX");
    close(mkstemp(s->plan));
    compile_ov(model, ov, n_ov, s->plan, 1e-4, &s->C);
    s->x = run_plan(s->plan, &s->R);
    struct diag d;
    diag_init(&d);
    if (exec_step(s->x, 0, &s->st, &d))
        fail_msg("%s", diag_first_error(&d));
    const struct ir_graph *g = s->C.P->g;
    s->r = ref_new(g, SEED);
    for (int t = 0; t < g->n_tensors; t++) {
        const struct ir_tensor *T = &g->tensors[t];
        if (T->kind != IR_TENSOR_INPUT)
            continue;
        int64_t B = T->shape.ax[0].size, per = ir_shape_numel(&T->shape) / B, S = T->shape.rank > 1 ? T->shape.ax[1].size : 1;
        int64_t shift = t == s->R.labels;
        for (int64_t b = 0; b < B; b++)
            for (int64_t e = 0; e < per; e++) {
                if (T->dtype == IR_DTYPE_I32)
                    ref_ints(s->r, t)[b * per + e] = exec_token(SEED, b, e % S + shift, s->R.vocab);
                else
                    ref_data(s->r, t)[b * per + e] = (float)ref_normal(SEED, kn_stream(T->name), (uint64_t)(b * per + e));
            }
    }
    if (ref_forward(s->r, &d))
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
}

static void one_step(const char *model, struct one_step *s)
{
    one_step_ov(model, NULL, 0, s);
}

static void one_step_free(struct one_step *s)
{
    ref_free(s->r);
    exec_free(s->x);
    rank_plan_free(&s->R);
    compiled_free(&s->C);
    unlink(s->plan);
}

/* The first step's loss: the executor's (kernels, GEMMs, the memory plan's
 * addresses) against the reference's plain loops on whole tensors, from
 * the same seed and the same synthetic tokens. */
static void test_loss_matches_reference(void **state)
{
    (void)state;
    static const char *const models[] = {"models/gpt2.xml", "models/llama2.xml"};
    for (size_t m = 0; m < WF_COUNT(models); m++) {
        struct one_step s;
        one_step(models[m], &s);
        double want = ref_data(s.r, s.C.P->g->outputs[0])[0], rel = fabs(s.st.loss - want) / fabs(want);
        printf("    %-18s loss %.7f, reference %.7f: relative difference %.1e\n", models[m], s.st.loss, want, rel);
        assert_true(rel < 1e-5);
        one_step_free(&s);
    }
}

/* --hidden-dropout reaches the kernels: GPT-2 compiled with 0 computes the
 * first step's loss of the reference without dropout (the model file with
 * every dropout written as a scale by 1, which the flag does not touch; the
 * parameters are drawn by name, so they are the same), and with 0.3 a
 * loss apart from it that its own reference (p 0.3) computes.  The plan
 * records what it used: 5 dropouts (the embedding's, and 2 in each of 2
 * layers) at the flag's p. */
static void test_dropout_flag(void **state)
{
    (void)state;
    size_t len;
    char *text = wf_read_file("models/gpt2.xml", 1 << 20, &len), *nodrop = calloc(2 * len + 1, 1), *o = nodrop;
    for (const char *p = text; *p;) { /* kind="dropout" -> kind="scale", p="0.1" flag="hidden-dropout" -> by="1" */
        static const char *const from[] = {"kind=\"dropout\"", "p=\"0.1\" flag=\"hidden-dropout\""}, *const to[] = {"kind=\"scale\"", "by=\"1\""};
        int k = !strncmp(p, from[0], strlen(from[0])) ? 0 : !strncmp(p, from[1], strlen(from[1])) ? 1 : -1;
        if (k < 0)
            *o++ = *p++;
        else
            o = stpcpy(o, to[k]), p += strlen(from[k]);
    }
    char model[] = "/tmp/weft-test-nodrop-XXXXXX";
    int fd = mkstemp(model);
    assert_true(fd >= 0 && write(fd, nodrop, strlen(nodrop)) == (ssize_t)strlen(nodrop));
    close(fd);
    struct one_step none, zero, more;
    one_step(model, &none);
    double want = ref_data(none.r, none.C.P->g->outputs[0])[0];
    struct fe_override p0 = {FE_FLAG, "hidden-dropout", "0"}, p3 = {FE_FLAG, "hidden-dropout", "0.3"};
    one_step_ov("models/gpt2.xml", &p0, 1, &zero);
    one_step_ov("models/gpt2.xml", &p3, 1, &more);
    double own = ref_data(more.r, more.C.P->g->outputs[0])[0];
    printf("    --hidden-dropout 0: loss %.7f, the reference without dropout %.7f; 0.3: %.7f (its reference %.7f)\n", zero.st.loss, want,
           more.st.loss, own);
    assert_true(fabs(zero.st.loss - want) / want < 1e-5);
    assert_true(fabs(more.st.loss - want) / want > 1e-3);
    assert_true(fabs(more.st.loss - own) / own < 1e-5);
    assert_int_equal(zero.R.meta.n_dropout, 1);
    assert_string_equal(zero.R.meta.dropout[0].flag, "hidden-dropout");
    assert_true(zero.R.meta.dropout[0].p == 0 && zero.R.meta.dropout[0].ops == 5);
    assert_true(more.R.meta.dropout[0].p == 0.3 && more.R.meta.dropout[0].ops == 5);
    assert_int_equal(none.R.meta.n_dropout, 0);
    one_step_free(&none);
    one_step_free(&zero);
    one_step_free(&more);
    unlink(model);
    free(text);
    free(nodrop);
}

/* The reference's gradient of the loss with respect to every tensor, by
 * ref_op_backward over the ops in reverse (each adds into its inputs'). */
static float **reference_gradients(struct ref *r, const struct ir_graph *g, struct diag *d)
{
    float **grad = calloc((size_t)g->n_tensors, sizeof *grad);
    int loss = ir_graph_loss(g);
    grad[loss] = calloc(1, sizeof(float));
    grad[loss][0] = 1;
    for (int i = g->n_ops - 1; i >= 0; i--) {
        const struct ir_op *o = &g->ops[i];
        float *gout[IR_MAX_OUT] = {0}, *gin[IR_MAX_IN] = {0};
        bool any = false;
        for (int k = 0; k < o->n_out; k++)
            any |= (gout[k] = o->out[k] >= 0 ? grad[o->out[k]] : NULL) != NULL;
        if (!any)
            continue;
        for (int k = 0; k < o->n_in; k++) {
            int t = o->in[k];
            if (t < 0 || !ir_dtype_is_float(g->tensors[t].dtype))
                continue;
            if (!grad[t])
                grad[t] = calloc((size_t)ir_shape_numel(&g->tensors[t].shape), sizeof(float));
            gin[k] = grad[t];
        }
        if (ref_op_backward(r, i, gout, gin, d))
            fail_msg("%s", diag_first_error(d));
    }
    return grad;
}

/* Every parameter's gradient after the first step equals the reference's
 * (one rank, one micro-batch, dropout on where the model has it): the whole
 * backward (GEMMs, every kernel's backward, the memory plan's gradient
 * buffers, their zeroing) for every model. */
static void test_gradients_match_reference(void **state)
{
    (void)state;
    static const char *const models[] = {"models/gpt2.xml", "models/llama2.xml", "models/mixtral.xml", "models/t5.xml",
                                         "models/llava.xml"};
    for (size_t m = 0; m < WF_COUNT(models); m++) {
        struct one_step s;
        one_step(models[m], &s);
        const struct ir_graph *g = s.C.P->g;
        struct diag d;
        diag_init(&d);
        float **want = reference_gradients(s.r, g, &d);
        const struct ir_role_memory *mem = &s.R.memory.roles[0];
        double worst = 0;
        const char *worst_at = "";
        int checked = 0;
        for (int t = 0; t < g->n_tensors; t++) {
            if (g->tensors[t].kind != IR_TENSOR_PARAM || !want[t])
                continue;
            int64_t bytes, at = ir_memory_find(mem, IR_BUF_GRAD, t, -1, -1, &bytes), n = ir_shape_numel(&g->tensors[t].shape);
            assert_true(at >= 0 && bytes == n * 4);
            const float *got = (const float *)((const char *)exec_arena(s.x) + at);
            double scale = 0, diff = 0;
            int64_t where = 0;
            for (int64_t e = 0; e < n; e++) {
                scale = fmax(scale, fabs(want[t][e]));
                if (!(fabs(got[e] - want[t][e]) <= diff))
                    diff = fabs(got[e] - want[t][e]), where = e;
            }
            double rel = diff / (scale + 1e-12);
            if (!(rel < 1e-4))
                fail_msg("%s: the gradient of %s differs from the reference: element %lld is %.8g, the reference's %.8g "
                         "(largest element %.3g)", models[m], g->tensors[t].name, (long long)where, got[where], want[t][where], scale);
            if (rel > worst)
                worst = rel, worst_at = g->tensors[t].name;
            checked++;
        }
        printf("    %-18s %3d parameters' gradients, worst %.1e of the tensor's largest (%s)\n", models[m], checked, worst, worst_at);
        for (int t = 0; t < g->n_tensors; t++)
            free(want[t]);
        free(want);
        diag_free(&d);
        one_step_free(&s);
    }
}

/* The loss falls: the synthetic tokens are each a function of the one
 * before, which the model learns; 40 steps at lr 3e-3 take it well below
 * its start (ln of the vocabulary, near 6.2 for tiny GPT-2).  Each step
 * reads new samples (the ones after those consumed), so this is learning
 * the walk, not memorising one batch: 0.4 below the start, where one batch
 * seen 40 times fell by more than 1. */
static void test_training_lowers_the_loss(void **state)
{
    (void)state;
    char plan[] = "/tmp/weft-test-run-XXXXXX";
    int fd = mkstemp(plan);
    close(fd);
    struct compiled C;
    compile_to("models/gpt2.xml", plan, 3e-3, &C);
    struct rank_plan R;
    struct exec *x = run_plan(plan, &R);
    struct diag d;
    diag_init(&d);
    double first = 0, last = 0;
    for (long it = 0; it < 40; it++) {
        struct exec_stats st;
        if (exec_step(x, it, &st, &d))
            fail_msg("%s", diag_first_error(&d));
        assert_true(isfinite(st.loss) && isfinite(st.grad_norm));
        first = it ? first : st.loss;
        last = st.loss;
    }
    printf("    tiny GPT-2, 40 steps at lr 3e-3: loss %.3f -> %.3f\n", first, last);
    assert_true(last < first - 0.4);
    exec_free(x);
    rank_plan_free(&R);
    compiled_free(&C);
    diag_free(&d);
    unlink(plan);
}

/* Compile model for `ranks` ranks (global batch 8), laid out by the layout
 * flags in `layout` (space-separated; "" for data parallel only), to plan. */
static void compile_layout(const char *model, int ranks, const char *layout, const char *plan)
{
    char world[16], flags[256];
    snprintf(world, sizeof world, "%d", ranks);
    snprintf(flags, sizeof flags, "%s", layout);
    /* AdamW's eps 1e-4, not 1e-8: a gradient zero in exact arithmetic (a key's bias: softmax ignores what is added to
     * every score) is rounding noise, which eps 1e-8 would turn into steps of lr's size that differ between layouts */
    const char *args[32] = {"compile", model, "--variant", "tiny", "--world-size", world, "--global-batch-size", "8", "--lr", "1e-3",
                            "--adam-eps", "1e-4", "--arch", "cpu", "-o", plan}; /* CPU ranks: no GPU binaries */
    int n = 16;
    for (char *f = strtok(flags, " "); f && n < 31; f = strtok(NULL, " "))
        args[n++] = f;
    args[n] = NULL;
    struct run r;
    run_weftv(&r, args);
    if (r.status)
        fail_msg("weft compile %s for %d ranks %s: %s", model, ranks, layout, r.err);
}

static void compile_dp(const char *model, int ranks, const char *plan) { compile_layout(model, ranks, "", plan); }

/* The equivalence matrix: each layout against one rank (test_layouts_match_one_rank),
 * and its actions read back from the plan as built (test_plan_holds_the_actions). */
static const struct layout_case {
    const char *model;
    int ranks;
    const char *layout;
    const char *sizes; /* model flags, for the one rank too */
} matrix[] = {
        {"models/gpt2.xml", 2, "", ""},
        {"models/gpt2.xml", 4, "", ""},
        {"models/llama2.xml", 2, "", ""},
        {"models/gpt2.xml", 2, "--tp 2", ""},
        {"models/gpt2.xml", 4, "--tp 4", ""},
        {"models/gpt2.xml", 4, "--tp 2", ""},
        {"models/llama2.xml", 2, "--tp 2", ""},
        {"models/mixtral.xml", 2, "--tp 2", ""},
        {"models/llava.xml", 2, "--tp 2", ""},
        {"models/gpt2.xml", 2, "--pp 2", ""},                      /* 1F1B; the tied embedding on both stages */
        {"models/gpt2.xml", 2, "--pp 2 --pipeline-schedule gpipe", ""},
        {"models/gpt2.xml", 8, "--tp 2 --pp 2", ""},              /* and dp 2 */
        {"models/gpt2.xml", 4, "--pp 4", "--num-layers 4"},
        {"models/gpt2.xml", 4, "--tp 2 --pp 2 --num-layers-per-virtual-pipeline-stage 1", "--num-layers 4"}, /* interleaved */
        {"models/gpt2.xml", 2, "--pp 2 --decoder-first-pipeline-num-layers 1", "--num-layers 4"},        /* uneven stages */
        {"models/llama2.xml", 2, "--pp 2", ""},
        {"models/mixtral.xml", 2, "--pp 2", ""},
        {"models/t5.xml", 3, "--pp 2 --epp 1", ""},               /* the encoder's own stage; its output relayed */
        {"models/llava.xml", 3, "--pp 2 --epp 1", ""},
        {"models/t5.xml", 2, "--tp 2", ""},                       /* the relative position bias sliced by heads */
        /* sequence parallel: gathers and reduce-scatters along the sequence, packed where micro-batches > 1 */
        {"models/gpt2.xml", 2, "--tp 2 --sequence-parallel", "--micro-batch-size 2"},
        {"models/gpt2.xml", 4, "--tp 4 --sequence-parallel", ""},
        {"models/gpt2.xml", 8, "--tp 2 --pp 2 --sequence-parallel", "--micro-batch-size 2"},
        {"models/llama2.xml", 4, "--tp 2 --sequence-parallel", "--micro-batch-size 2"},
        {"models/mixtral.xml", 2, "--tp 2 --sequence-parallel", "--micro-batch-size 2"},
        {"models/llava.xml", 2, "--tp 2 --sequence-parallel", "--micro-batch-size 2"},
        {"models/t5.xml", 6, "--tp 2 --pp 2 --epp 1 --sequence-parallel", "--micro-batch-size 2"},
        /* expert parallel: tokens to their experts' ranks and back, all-to-all (and the adjoints) */
        {"models/mixtral.xml", 2, "--ep 2", ""},
        {"models/mixtral.xml", 4, "--ep 4", ""},
        {"models/mixtral.xml", 4, "--ep 2 --pp 2", "--micro-batch-size 2"},
        {"models/mixtral.xml", 4, "--ep 2 --tp 2 --sequence-parallel", "--micro-batch-size 2"},
        /* context parallel: keys and values gathered over cp (their fused QKV's sequence), queries at their offset */
        {"models/gpt2.xml", 2, "--cp 2", ""},
        {"models/llama2.xml", 2, "--cp 2", "--micro-batch-size 2"},
        {"models/gpt2.xml", 8, "--cp 2 --tp 2 --sequence-parallel", "--micro-batch-size 2"},
        {"models/gpt2.xml", 4, "--cp 2 --pp 2", ""},
        {"models/llava.xml", 2, "--cp 2", ""},                    /* replicated over cp after its concat */
        {"models/mixtral.xml", 4, "--cp 2 --ep 2", ""},
        {"models/t5.xml", 2, "--cp 2", ""},
        /* an encoder narrower than the decoder: its rank feeds, and hears from, each decoder tp rank above it */
        {"models/t5.xml", 5, "--tp 2 --pp 2 --epp 1 --etp 1", ""},
        {"models/t5.xml", 5, "--tp 2 --pp 2 --epp 1 --etp 1 --sequence-parallel", "--micro-batch-size 2"},
    };

/* A case's flags as a layout, a schedule (-1: the default) and model
 * overrides: --name value (a bool layout flag takes none). */
static int case_config(const struct layout_case *k, struct par_config *pc, int *sched, struct fe_override *ov, char *words)
{
    *pc = par_config_default();
    pc->world_size = k->ranks, pc->global_batch = 8;
    *sched = -1;
    snprintf(words, 256, "%s %s", k->layout, k->sizes);
    int n = 0;
    for (char *f = strtok(words, " "); f; f = strtok(NULL, " ")) {
        const struct par_flag *pf = par_flag_find(f + 2);
        if (!strcmp(f, "--pipeline-schedule"))
            *sched = ir_sched_parse(strtok(NULL, " "));
        else if (pf && pf->is_bool)
            *(bool *)((char *)pc + pf->offset) = true;
        else if (pf)
            *(int *)((char *)pc + pf->offset) = atoi(strtok(NULL, " "));
        else
            ov[n++] = (struct fe_override){.kind = FE_FLAG, .key = f + 2, .value = strtok(NULL, " ")};
    }
    return n;
}

/* mpirun -np ranks weft run plan --steps steps --log log: the losses and
 * norms it logged; with params, the parameters after the steps there
 * (--dump-params). */
static int mpi_run_params(const char *plan, int ranks, int steps, double *loss, double *norm, const char *params, struct run *r)
{
    char np[16], n[16], log[64];
    snprintf(np, sizeof np, "%d", ranks);
    snprintf(n, sizeof n, "%d", steps);
    snprintf(log, sizeof log, "%s.jsonl", plan);
    const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np, weft_bin(), "run", plan, "--steps", n,
                          "--log", log, params ? "--dump-params" : NULL, params, NULL};
    run_mpi(r, argv);
    if (r->status)
        return -1;
    FILE *f = fopen(log, "r");
    int got = 0;
    char line[512];
    while (f && got < steps && fgets(line, sizeof line, f)) {
        const char *l = strstr(line, "\"loss\": "), *g = strstr(line, "\"grad_norm\": ");
        if (!l || !g)
            break;
        loss[got] = strncmp(l + 8, "null", 4) ? strtod(l + 8, NULL) : NAN; /* null: not finite (a skipped update) */
        norm[got] = strncmp(g + 13, "null", 4) ? strtod(g + 13, NULL) : NAN;
        got++;
    }
    if (f)
        fclose(f);
    unlink(log);
    return got == steps ? 0 : -1;
}

static int mpi_run(const char *plan, int ranks, int steps, double *loss, double *norm, struct run *r)
{
    return mpi_run_params(plan, ranks, steps, loss, norm, NULL, r);
}

/* A --dump-params file (exec.h): n tensors' names, counts and elements. */
struct params {
    int n;
    char names[256][128];
    int64_t count[256];
    float *v[256];
};

static void params_read(const char *path, struct params *p)
{
    memset(p, 0, sizeof *p);
    FILE *f = fopen(path, "rb");
    char head[16] = "";
    if (!f || !fgets(head, sizeof head, f) || strcmp(head, "weft-params 1\n"))
        fail_msg("%s: not a --dump-params file", path);
    uint32_t len;
    while (p->n < 256 && fread(&len, 4, 1, f) == 1) {
        if (len >= sizeof p->names[0] || fread(p->names[p->n], 1, len, f) != len || fread(&p->count[p->n], 8, 1, f) != 1)
            fail_msg("%s: truncated", path);
        p->v[p->n] = malloc((size_t)p->count[p->n] * 4 + 4);
        if (fread(p->v[p->n], 4, (size_t)p->count[p->n], f) != (size_t)p->count[p->n])
            fail_msg("%s: truncated", path);
        p->n++;
    }
    fclose(f);
}

static void params_free(struct params *p)
{
    for (int i = 0; i < p->n; i++)
        free(p->v[i]);
}

/* Every parameter of `got` against `want`, tensor by tensor: each element
 * within tol of the tensor's largest magnitude; the worst relative
 * difference, or a failure naming the tensor and its worst element. */
static double params_compare(const struct params *got, const struct params *want, double tol, const char *what)
{
    if (got->n != want->n)
        fail_msg("%s: %d parameters, one rank %d", what, got->n, want->n);
    double worst = 0;
    for (int t = 0; t < want->n; t++) {
        if (strcmp(got->names[t], want->names[t]) || got->count[t] != want->count[t])
            fail_msg("%s: parameter %d is %s (%lld), one rank's %s (%lld)", what, t, got->names[t], (long long)got->count[t],
                     want->names[t], (long long)want->count[t]);
        double scale = 0, err = 0;
        int64_t at = 0;
        for (int64_t i = 0; i < want->count[t]; i++)
            scale = fmax(scale, fabs(want->v[t][i]));
        for (int64_t i = 0; i < want->count[t]; i++) {
            double e = fabs((double)got->v[t][i] - want->v[t][i]);
            if (!(e <= err)) /* NaN: an element no rank holds */
                err = isnan(e) ? INFINITY : e, at = i;
        }
        double rel = scale > 0 ? err / scale : err;
        if (!(rel <= tol))
            fail_msg("%s: %s element %lld is %.9g, one rank's %.9g (%.1e of the tensor's largest, %.9g)", what, want->names[t],
                     (long long)at, got->v[t][at], want->v[t][at], rel, scale);
        worst = fmax(worst, rel);
    }
    return worst;
}

/* Every layout computes what one rank computes: the same samples (dealt
 * as Megatron deals a global batch), the same dropout masks (keyed by the
 * samples and each element's index in the whole tensor), gradients summed
 * over the replicas and partial sums over the tensor-parallel ranks; 3
 * steps, each step's loss and gradient norm within 1e-5 relative, and
 * every parameter after them within 1e-4 of its tensor's largest element.
 * The parameters' bound is looser because AdamW divides each gradient by
 * its own magnitude: a bias's gradient summed from terms that nearly
 * cancel keeps ~1e-4 of relative rounding, and its steps carry it; a wrong
 * transfer moves parameters by lr's size, 1e-2 of them and more. */
static void test_layouts_match_one_rank(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");

    enum { STEPS = 3 };
    for (size_t c = 0; c < WF_COUNT(matrix); c++) {
        char one[] = "/tmp/weft-test-dp1-XXXXXX", many[] = "/tmp/weft-test-dpn-XXXXXX";
        close(mkstemp(one));
        close(mkstemp(many));
        char layout[256];
        snprintf(layout, sizeof layout, "%s %s", matrix[c].layout, matrix[c].sizes);
        compile_layout(matrix[c].model, 1, matrix[c].sizes, one);
        compile_layout(matrix[c].model, matrix[c].ranks, layout, many);
        double l1[STEPS], n1[STEPS], ln[STEPS], nn[STEPS];
        char p1[64], pn[64];
        snprintf(p1, sizeof p1, "%s.params", one);
        snprintf(pn, sizeof pn, "%s.params", many);
        struct run r;
        if (mpi_run_params(one, 1, STEPS, l1, n1, p1, &r) || mpi_run_params(many, matrix[c].ranks, STEPS, ln, nn, pn, &r))
            fail_msg("%s: weft run exited %d: %s%s", matrix[c].model, r.status, r.out, r.err);
        char what[256];
        snprintf(what, sizeof what, "%s on %d ranks %s, after %d steps", matrix[c].model, matrix[c].ranks, matrix[c].layout, STEPS);
        struct params want, got;
        params_read(p1, &want);
        params_read(pn, &got);
        double pworst = params_compare(&got, &want, 1e-4, what);
        params_free(&want);
        params_free(&got);
        unlink(p1);
        unlink(pn);
        double worst = 0;
        for (int i = 0; i < STEPS; i++) {
            double dl = fabs(ln[i] - l1[i]) / fabs(l1[i]), dn = fabs(nn[i] - n1[i]) / fabs(n1[i]);
            if (!(dl < 1e-5 && dn < 1e-5))
                fail_msg("%s on %d ranks %s, step %d: loss %.9g (one rank %.9g), grad norm %.9g (one rank %.9g)", matrix[c].model,
                         matrix[c].ranks, matrix[c].layout, i + 1, ln[i], l1[i], nn[i], n1[i]);
            worst = fmax(worst, fmax(dl, dn));
        }
        printf("    %-18s %d ranks %-58s from one rank: losses, norms %.1e, parameters %.1e (losses %.4f .. %.4f)\n",
               matrix[c].model, matrix[c].ranks, layout[1] ? layout : "(data parallel)", worst, pworst, ln[0], ln[STEPS - 1]);
        unlink(one);
        unlink(many);
    }
}

/* A bf16 plan (bf16 weights and activations, fp32 master weights, sums
 * and moments) stays within bf16's reach of the fp32 run: 3 steps' losses
 * within 1e-3 and gradient norms within 1e-2, relative (bf16 keeps 8
 * bits of mantissa: one rounding is 4e-3 of a value; a loss averages many). */
static void test_bf16_near_fp32(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    enum { STEPS = 3 };
    char fp32[] = "/tmp/weft-test-f32-XXXXXX", bf16[] = "/tmp/weft-test-b16-XXXXXX";
    close(mkstemp(fp32));
    close(mkstemp(bf16));
    compile_layout("models/gpt2.xml", 1, "", fp32);
    double l1[STEPS], n1[STEPS], lb[STEPS], nb[STEPS];
    struct run r;
    if (mpi_run(fp32, 1, STEPS, l1, n1, &r))
        fail_msg("weft run: %s%s", r.out, r.err);
    static const struct {
        int ranks;
        const char *layout;
    } cases[] = {{1, "--bf16"}, {8, "--bf16 --tp 2 --pp 2"}};
    for (size_t c = 0; c < WF_COUNT(cases); c++) {
        compile_layout("models/gpt2.xml", cases[c].ranks, cases[c].layout, bf16);
        if (mpi_run(bf16, cases[c].ranks, STEPS, lb, nb, &r))
            fail_msg("weft run %s: %s%s", cases[c].layout, r.out, r.err);
        double worst_l = 0, worst_n = 0;
        for (int i = 0; i < STEPS; i++) {
            worst_l = fmax(worst_l, fabs(lb[i] - l1[i]) / fabs(l1[i]));
            worst_n = fmax(worst_n, fabs(nb[i] - n1[i]) / fabs(n1[i]));
        }
        printf("    gpt2 %d ranks %-22s losses within %.1e of fp32's, gradient norms within %.1e\n", cases[c].ranks, cases[c].layout,
               worst_l, worst_n);
        assert_true(worst_l < 1e-3);
        assert_true(worst_n < 1e-2);
    }
    unlink(fp32);
    unlink(bf16);
}

/* --grad-reduce-in-bf16 (Megatron-Core's grad_reduce_in_fp32=False): the
 * main gradients accumulate over micro-batches, and sum over the
 * data-parallel ranks, in bf16.  Tiny GPT-2 at dp 2, 4 micro-batches a
 * rank, tracks the plan reduced in fp32 for 50 steps: every loss within
 * 4e-3 relative.  The two differ only in where a gradient is rounded to
 * bf16 (a micro-batch's sum added in, then the replicas' sum: 2^-9 of an
 * element each); AdamW divides each gradient by its own magnitude, so a
 * rounding moves a parameter by that share of lr's step and the loss
 * follows it at that scale, bf16's one rounding of 2^-8 = 3.9e-3.  The
 * gradient norms, sums of squares of the differently rounded gradients,
 * are held to 2e-2. */
static void test_grad_reduce_in_bf16_tracks_fp32_reduction(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    enum { STEPS = 50 };
    char f32[] = "/tmp/weft-test-grf-XXXXXX", b16[] = "/tmp/weft-test-grb-XXXXXX";
    close(mkstemp(f32));
    close(mkstemp(b16));
    compile_layout("models/gpt2.xml", 2, "--bf16", f32);
    compile_layout("models/gpt2.xml", 2, "--bf16 --grad-reduce-in-bf16", b16);
    double lf[STEPS], nf[STEPS], lb[STEPS], nb[STEPS];
    struct run r;
    if (mpi_run(f32, 2, STEPS, lf, nf, &r) || mpi_run(b16, 2, STEPS, lb, nb, &r))
        fail_msg("weft run: %s%s", r.out, r.err);
    double worst_l = 0, worst_n = 0;
    for (int i = 0; i < STEPS; i++) {
        worst_l = fmax(worst_l, fabs(lb[i] - lf[i]) / fabs(lf[i]));
        worst_n = fmax(worst_n, fabs(nb[i] - nf[i]) / fabs(nf[i]));
    }
    printf("    gpt2 dp 2, %d steps: losses within %.1e of the fp32-reduced plan's (%.4f .. %.4f), gradient norms within %.1e\n",
           STEPS, worst_l, lb[0], lb[STEPS - 1], worst_n);
    assert_true(worst_l < 4e-3);
    assert_true(worst_n < 2e-2);
    assert_true(lb[STEPS - 1] < lb[0] - 1); /* and it trains */
    unlink(f32);
    unlink(b16);
}

/* With --grad-reduce-in-bf16 every layout still computes what one rank
 * does, as the bf16 plans reduced in fp32 do: data, tensor and pipeline
 * parallel with the tied embedding summed over its stages, expert and
 * context parallel, an encoder's own stage (T5's shared table over three
 * stages), sequence parallel (the norms' gradients all-reduced over tp).
 * Each against one rank with the same flags, 3 steps: losses within 2e-4
 * and gradient norms within 4e-3, relative.  Both plans are bf16 and sum
 * in different orders over different splits (bf16 GEMMs of other shapes,
 * partial sums rounded to bf16 before the reduction): the norm, a sum of
 * squares of bf16 gradients, is held to bf16's one rounding (2^-8), the
 * losses, averages over every token, to a twentieth of it. */
static void test_grad_reduce_in_bf16_layouts_match_one_rank(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    enum { STEPS = 3 };
    static const struct layout_case cases[] = {
        {"models/gpt2.xml", 2, "", ""},
        {"models/gpt2.xml", 8, "--tp 2 --pp 2", ""},
        {"models/mixtral.xml", 2, "--ep 2", ""},
        {"models/gpt2.xml", 2, "--cp 2", ""},
        {"models/t5.xml", 3, "--pp 2 --epp 1", ""},
        {"models/llama2.xml", 4, "--tp 2 --sequence-parallel", "--micro-batch-size 2"},
    };
    for (size_t c = 0; c < WF_COUNT(cases); c++) { /* (reduced in fp32, layouts are test_layouts_match_one_rank's) */
        double worst[2] = {0};
        char one[] = "/tmp/weft-test-gr1-XXXXXX", many[] = "/tmp/weft-test-grn-XXXXXX";
        close(mkstemp(one));
        close(mkstemp(many));
        char flags1[256], flagsn[256];
        snprintf(flags1, sizeof flags1, "--bf16 --grad-reduce-in-bf16 %s", cases[c].sizes);
        snprintf(flagsn, sizeof flagsn, "--bf16 --grad-reduce-in-bf16 %s %s", cases[c].layout, cases[c].sizes);
        compile_layout(cases[c].model, 1, flags1, one);
        compile_layout(cases[c].model, cases[c].ranks, flagsn, many);
        double l1[STEPS], n1[STEPS], ln[STEPS], nn[STEPS];
        struct run r;
        if (mpi_run(one, 1, STEPS, l1, n1, &r) || mpi_run(many, cases[c].ranks, STEPS, ln, nn, &r))
            fail_msg("%s %s: weft run exited %d: %s%s", cases[c].model, flagsn, r.status, r.out, r.err);
        for (int i = 0; i < STEPS; i++) {
            worst[0] = fmax(worst[0], fabs(ln[i] - l1[i]) / fabs(l1[i]));
            worst[1] = fmax(worst[1], fabs(nn[i] - n1[i]) / fabs(n1[i]));
        }
        unlink(one);
        unlink(many);
        printf("    %-18s %d ranks %-40s from one rank: losses %.1e, norms %.1e\n", cases[c].model, cases[c].ranks,
               cases[c].layout[0] ? cases[c].layout : "(data parallel)", worst[0], worst[1]);
        assert_true(worst[0] < 2e-4);
        assert_true(worst[1] < 4e-3);
    }
}

/* The JSON lines of a --log file: each line's value of key (NAN for null). */
/* Collectives left in flight beside the actions that do not touch their
 * bytes (--overlap on, the default).  With interleaved stages and two
 * data-parallel replicas, a chunk's gradient buckets reduce while the
 * other chunk's backward runs; with two replicas and small buckets
 * (--ddp-bucket-size), the buckets start within the last backward, each
 * after the last action that writes into it, as Megatron's
 * --overlap-grad-reduce does.  Either way the parameters after three steps
 * are the bytes of a run whose every collective ran to its end where the
 * schedule put it (--overlap off). */
static void test_overlap_changes_nothing(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    static const struct {
        int ranks;
        const char *layout, *what;
        int early; /* the least collectives a step starts within a backward */
    } cases[] = {
        {4, "--pp 2 --num-layers-per-virtual-pipeline-stage 1 --num-layers 4", "interleaved, dp 2", 0},
        {2, "--ddp-bucket-size 20000", "dp 2, buckets of 20000 elements", 4},
        {8, "--tp 2 --pp 2", "tp 2, pp 2, dp 2 (the backward's own all-reduces between it and its bucket)", 1},
    };
    for (size_t c = 0; c < WF_COUNT(cases); c++) {
        char plan[] = "/tmp/weft-test-overlap-XXXXXX", on[64], off[64], np[8];
        close(mkstemp(plan));
        snprintf(on, sizeof on, "%s.on", plan), snprintf(off, sizeof off, "%s.off", plan);
        snprintf(np, sizeof np, "%d", cases[c].ranks);
        compile_layout("models/gpt2.xml", cases[c].ranks, cases[c].layout, plan);
        struct run r[2];
        long started[2] = {0}, overlapped[2] = {-1, -1};
        int early[2] = {-1, -1};
        for (int k = 0; k < 2; k++) {
            const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np, weft_bin(), "run", plan, "--steps", "3",
                                  "--overlap", k ? "off" : "on", "--dump-params", k ? off : on, NULL};
            run_mpi(&r[k], argv);
            if (r[k].status)
                fail_msg("%s, --overlap %s: %s", cases[c].what, k ? "off" : "on", r[k].err);
            const char *line = strstr(r[k].out, "rank 0's collectives: ");
            assert_true(line && sscanf(line, "rank 0's collectives: %ld started, %ld of them in flight while other actions ran, %d a step",
                                       &started[k], &overlapped[k], &early[k]) == 3);
        }
        size_t na, nb;
        char *a = wf_read_file(on, 1 << 24, &na), *b = wf_read_file(off, 1 << 24, &nb);
        assert_true(a && b && na == nb && !memcmp(a, b, na));
        printf("    %s: %ld of rank 0's %ld collectives in flight beside other actions, %d a step started within the backward; the "
               "parameters the same bytes as with --overlap off\n", cases[c].what, overlapped[0], started[0], early[0]);
        assert_true(overlapped[0] > 0 && overlapped[0] <= started[0] && early[0] >= cases[c].early);
        assert_true(started[1] == started[0] && overlapped[1] == 0 && early[1] == 0);
        free(a), free(b);
        unlink(plan), unlink(on), unlink(off);
    }
}

/* GEMM epilogues change no number on the CPU: its backend runs the GEMM,
 * then the epilogue's kernel on the product where the GEMM wrote it, the
 * arithmetic of a plan compiled --gemm-epilogues off (a GEMM, a launch).
 * The parameters after three steps are the same bytes, fp32 and bf16, on
 * one rank and split over tp (the sequence too) and pp; the plan has the
 * epilogues, and less working memory. */
static void test_gemm_epilogues_change_nothing(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    static const struct {
        const char *model;
        int ranks;
        const char *layout;
    } cases[] = {
        {"models/gpt2.xml", 1, ""},
        {"models/gpt2.xml", 1, "--bf16"},
        {"models/gpt2.xml", 4, "--tp 2 --sequence-parallel --pp 2"},
        {"models/llava.xml", 1, ""},
    };
    for (size_t c = 0; c < WF_COUNT(cases); c++) {
        char plan[2][64], dump[2][64], np[8], layout[256];
        snprintf(np, sizeof np, "%d", cases[c].ranks);
        for (int k = 0; k < 2; k++) { /* k 0: epilogues on (the default), 1: off */
            snprintf(plan[k], sizeof plan[k], "/tmp/weft-test-epi-%d-%d.plan", (int)getpid(), k);
            snprintf(dump[k], sizeof dump[k], "/tmp/weft-test-epi-%d-%d.params", (int)getpid(), k);
            snprintf(layout, sizeof layout, "%s%s", cases[c].layout, k ? " --gemm-epilogues off" : "");
            compile_layout(cases[c].model, cases[c].ranks, layout, plan[k]);
            const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np, weft_bin(), "run", plan[k],
                                  "--steps", "3", "--dump-params", dump[k], NULL};
            struct run r;
            run_mpi(&r, argv);
            if (r.status)
                fail_msg("%s %s: %s", cases[c].model, layout, r.err);
        }
        struct diag d;
        diag_init(&d);
        struct plan *p[2] = {plan_open(plan[0], &d), plan_open(plan[1], &d)};
        assert_true(p[0] && p[1]);
        struct kn_set K[2];
        struct ir_memory M[2];
        int epilogues[2] = {0, 0};
        for (int k = 0; k < 2; k++) {
            assert_int_equal(kn_set_read(p[k], &K[k], &d), 0);
            assert_int_equal(ir_memory_read(p[k], 1, 0, &M[k], &d), 0);
            for (int l = 0; l < K[k].n_launches; l++)
                epilogues[k] += K[k].launches[l].epilogue;
        }
        size_t na, nb;
        char *a = wf_read_file(dump[0], 1 << 24, &na), *b = wf_read_file(dump[1], 1 << 24, &nb);
        assert_true(a && b && na == nb && !memcmp(a, b, na));
        int64_t work[2] = {M[0].roles[0].size[IR_REGION_WORKING], M[1].roles[0].size[IR_REGION_WORKING]};
        printf("    %s %s, %d rank%s: %d GEMM epilogues; the parameters after 3 steps the same bytes as --gemm-epilogues off; "
               "stage 0's working set %lld bytes (off: %lld)\n", cases[c].model, cases[c].layout, cases[c].ranks,
               cases[c].ranks == 1 ? "" : "s", epilogues[0], (long long)work[0], (long long)work[1]);
        assert_true(epilogues[0] > 0 && epilogues[1] == 0);
        assert_true(work[0] <= work[1]);
        for (int k = 0; k < 2; k++) {
            kn_set_free(&K[k]);
            ir_memory_free(&M[k]);
            plan_close(p[k]);
            unlink(plan[k]), unlink(dump[k]);
        }
        diag_free(&d);
        free(a), free(b);
    }
}

static int log_values(const char *path, const char *key, double *v, int max)
{
    FILE *f = fopen(path, "r");
    char line[1024], k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    int n = 0;
    while (f && n < max && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, k);
        if (!at)
            fail_msg("%s: no %s in %s", path, key, line);
        at += strlen(k);
        v[n++] = !strncmp(at, "null", 4) ? NAN : strtod(at, NULL);
    }
    if (f)
        fclose(f);
    return n;
}

/* Megatron's log line (megatron/training/training.py, training_log), rank
 * 0's, every --log-interval iterations and after the first: at interval 2
 * over 4 iterations, lines for 1, 2 and 4.  The first line starts no new
 * interval, so the second averages iterations 1 and 2 and the third 3 and 4
 * (Megatron's lm loss: the mean over the interval's updates).  Consumed
 * samples: a global batch (8) an iteration.  The widths are Megatron's
 * format strings ({:8d}, {:12d}, {:5d}, {:.6E}, {:.3f}, {:3d}).  Piped, no
 * progress bar (no carriage return, no erase). */
static void test_log_line(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char plan[] = "/tmp/weft-test-log-XXXXXX", log[64];
    close(mkstemp(plan));
    snprintf(log, sizeof log, "%s.jsonl", plan);
    compile_dp("models/gpt2.xml", 1, plan);
    struct run r;
    run_mpi(&r, (const char *const[]){weft_bin(), "run", plan, "--steps", "4", "--log-interval", "2", "--log", log, NULL});
    if (r.status)
        fail_msg("weft run: %s%s", r.out, r.err);
    double loss[4], lr[4], norm[4], consumed[4];
    assert_int_equal(log_values(log, "loss", loss, 4), 4);
    assert_int_equal(log_values(log, "lr", lr, 4), 4);
    assert_int_equal(log_values(log, "grad_norm", norm, 4), 4);
    assert_int_equal(log_values(log, "consumed_samples", consumed, 4), 4);
    /* The predicted step beside the measured one: the mean of iterations 2
     * to 4 (the first a warm-up), as the log has them, printed to 0.1 ms. */
    double step[4], predicted, measured, ratio;
    assert_int_equal(log_values(log, "step_time", step, 4), 4);
    const char *pred = strstr(r.out, "step time: predicted ");
    assert_non_null(pred);
    assert_int_equal(sscanf(pred, "step time: predicted %lf ms, measured %lf ms (ratio %lf)", &predicted, &measured, &ratio), 3);
    assert_true(fabs(measured - 1e3 * (step[1] + step[2] + step[3]) / 3) < 0.051 + 1e-3 * measured);
    assert_true(predicted > 0 && fabs(ratio - predicted / measured) < 0.01 + 0.06 / measured);
    const char *line[3];
    int n = 0;
    for (const char *p = strstr(r.out, "] iteration "); p; p = strstr(p + 1, "] iteration "))
        line[n < 3 ? n : 2] = p, n++;
    assert_int_equal(n, 3);
    static const int at[] = {1, 2, 4};
    for (int i = 0; i < 3; i++) {
        int it = at[i], first = i == 2 ? 2 : 0; /* the iterations the line averages: first .. it-1 (0-based) */
        assert_true(consumed[it - 1] == 8.0 * it);
        char want[512];
        snprintf(want, sizeof want, "] iteration %8d/%8d | consumed samples: %12d | elapsed time per iteration (ms): ", it, 4, 8 * it);
        assert_int_equal(strncmp(line[i], want, strlen(want)), 0);
        const char *end = strchr(line[i], '\n');
        char text[1024];
        snprintf(text, sizeof text, "%.*s", (int)(end - line[i]), line[i]);
        snprintf(want, sizeof want, " | learning rate: %.6E | global batch size:     8 | lm loss: %.6E | loss scale: 1.0 | grad norm: %.3f | "
                 "number of skipped iterations:   0 | number of nan iterations:   0 | tokens/s: ", lr[it - 1],
                 i == 0 ? loss[0] : (loss[first] + loss[it - 1]) / 2, norm[it - 1]);
        if (!strstr(text, want))
            fail_msg("line %d: %s\nwants: %s", i, text, want);
        assert_non_null(strstr(text, " | throughput per GPU (TFLOP/s/GPU): "));
        const char *start = line[i];
        while (start > r.out && start[-1] != '\n')
            start--;
        assert_true(start[0] == ' ' && start[1] == '[' && line[i] - start == 28); /* " [2026-12-07 03:05:17.305076" */
    }
    assert_null(strchr(r.out, '\r'));
    assert_null(strchr(r.err, '\r'));
    assert_null(strstr(r.err, "\033[K"));
    printf("    %.*s", (int)(strchr(line[2], '\n') - line[2] + 1 + 28), line[2] - 28);
    /* On a terminal (script gives the run a pseudo-terminal), the bar */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s run %s --steps 2", weft_bin(), plan);
    if (run_mpi(&r, (const char *const[]){"script", "-qec", cmd, "/dev/null", NULL}) == 0 && r.status != 127) { /* MPI inside */
        assert_int_equal(r.status, 0);
        assert_non_null(strstr(r.out, "\r\033[K["));
        assert_non_null(strstr(r.out, "] 2/2 iterations"));
    }
    unlink(plan);
    unlink(log);
}

/* A loss or gradient norm that is not finite skips the update on every
 * rank and is counted; --skip-limit in a row stop the run (exit 1, naming
 * the iterations).  The non-finite values are real: at lr 1e30 the first
 * update moves each weight by about 1e30 (Adam's first step is lr times
 * the gradient's sign), so the next forward's products (1e30 x 1e30 >
 * FLT_MAX) overflow and every later iteration's loss and norm are NaN.
 * Iterations 2 and 3 skipped: the parameters after 3 are those after 1,
 * byte for byte (at tp 2, the ranks agreeing). */
static void test_nonfinite_skips_the_update(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char plan[] = "/tmp/weft-test-nan-XXXXXX", p1[64], p3[64];
    close(mkstemp(plan));
    snprintf(p1, sizeof p1, "%s.1", plan);
    snprintf(p3, sizeof p3, "%s.3", plan);
    compile_layout("models/gpt2.xml", 2, "--tp 2 --lr 1e30", plan);
    double loss[3], norm[3];
    struct run r;
    if (mpi_run_params(plan, 2, 1, loss, norm, p1, &r) || !isfinite(loss[0]) || !isfinite(norm[0]))
        fail_msg("weft run: %s%s", r.out, r.err);
    if (mpi_run_params(plan, 2, 3, loss, norm, p3, &r))
        fail_msg("weft run: %s%s", r.out, r.err);
    assert_true(isnan(loss[1]) && isnan(norm[1]) && isnan(loss[2]) && isnan(norm[2]));
    assert_non_null(strstr(r.out, " iteration        2/       3 |"));
    assert_non_null(strstr(r.out, "| grad norm: nan | number of skipped iterations:   1 | number of nan iterations:   1 |"));
    struct params a, b;
    params_read(p1, &a);
    params_read(p3, &b);
    assert_int_equal(a.n, b.n);
    for (int t = 0; t < a.n; t++) {
        assert_int_equal(a.count[t], b.count[t]);
        if (memcmp(a.v[t], b.v[t], (size_t)a.count[t] * 4))
            fail_msg("%s changed in a skipped iteration", a.names[t]);
    }
    params_free(&a);
    params_free(&b);
    run_mpi(&r, (const char *const[]){"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", weft_bin(), "run", plan, "--steps",
                                      "10", "--skip-limit", "3", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "weft run: iterations 2 to 4 skipped, 3 in a row (--skip-limit 3)"));
    assert_non_null(strstr(r.err, "stopping at iteration 4"));
    assert_null(strstr(r.out, " iteration        5/"));
    const char *said = strstr(r.err, "weft run: iterations");
    printf("    %.*s\n", (int)strcspn(said, "\n"), said);
    unlink(plan);
    unlink(p1);
    unlink(p3);
}

/* A plan run on the wrong number of ranks: every rank exits 2, rank 0 says
 * what it expected and got, and nothing hangs. */
static void test_wrong_world_size(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char plan[] = "/tmp/weft-test-world-XXXXXX";
    close(mkstemp(plan));
    compile_dp("models/gpt2.xml", 2, plan);
    double l[1], n[1];
    struct run r;
    assert_int_not_equal(mpi_run(plan, 3, 1, l, n, &r), 0);
    assert_false(r.timed_out);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "was compiled for 2 ranks; this run has 3"));
    unlink(plan);
}

/* --comm: a word it knows, and nccl only where the run is on GPUs.  On the
 * CPU every rank refuses it alike (exit 1, naming why); --comm mpi and auto
 * run. */
static void test_comm_flag(void **state)
{
    (void)state;
    char plan[] = "/tmp/weft-test-comm-XXXXXX";
    close(mkstemp(plan));
    compile_dp("models/gpt2.xml", 1, plan);
    struct run r;
    const char *bogus[] = {weft_bin(), "run", plan, "--steps", "1", "--comm", "gloo", NULL};
    run_mpi(&r, bogus);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--comm gloo: expected auto, mpi or nccl"));
    const char *nccl[] = {weft_bin(), "run", plan, "--steps", "1", "--comm", "nccl", NULL};
    run_mpi(&r, nccl);
    printf("    %s", r.err);
    assert_false(r.timed_out);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "--comm nccl: NCCL carries GPU memory, and this run's buffers are on the CPU"));
    const char *mpi[] = {weft_bin(), "run", plan, "--steps", "1", "--comm", "mpi", NULL};
    run_mpi(&r, mpi);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "1 iterations in"));
    unlink(plan);
}

/* The working buffer (virtual stage 0) a ref names, or -1. */
static int working_index(const struct ir_role_memory *m, const struct ir_ref *r)
{
    for (int b = 0; b < m->n_bufs; b++)
        if (m->bufs[b].region == IR_REGION_WORKING && m->bufs[b].what == r->what && m->bufs[b].id == r->id && m->bufs[b].vstage == 0)
            return b;
    return -1;
}

/* weft verify checks every action; a GEMM past its buffer, a launch's slot
 * past its buffer and a bucket past GRADS are each caught, naming the
 * action, and so is an action moved past the start of a buffer that shares
 * its operand's bytes. */
static void test_actions_checked(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 2;
    struct optim_config opt = optim_config_default();
    struct compiled C;
    compile_or_fail(&C, "models/gpt2.xml", "tiny", pc, NULL, 0, &opt, NULL, 0);
    struct diag d;
    diag_init(&d);
    assert_int_equal(ir_actions_check(&C.A, &C.M, &C.K, &C.S, &d), 0);
    struct ir_stage_actions *st = &C.A.stages[0];
    struct ir_action *gemm = NULL, *launch = NULL, *coll = NULL;
    for (int i = 0; i < st->forward[0].n; i++) {
        struct ir_action *a = &st->forward[0].v[i];
        if (a->kind == IR_ACT_GEMM && !gemm)
            gemm = a;
        if (a->kind == IR_ACT_LAUNCH && C.K.kernels[C.K.launches[a->launch.launch].kernel].kind == KN_KIND_FUSED && !launch)
            launch = a;
    }
    for (int i = 0; i < st->n_ins; i++)
        if (st->ins[i].n && st->ins[i].v[0].kind == IR_ACT_COLL)
            coll = &st->ins[i].v[0];
    assert_non_null(gemm);
    assert_non_null(launch);
    assert_non_null(coll);
    struct {
        int64_t *field, by;
        const char *what;
    } faults[] = {{&gemm->gemm.m, 1, "gemm"}, {&launch->launch.args.rows, 1, "launch"}, {&coll->coll.bytes, (int64_t)1 << 30, "all-reduce"}};
    for (size_t f = 0; f < WF_COUNT(faults); f++) {
        *faults[f].field += faults[f].by; /* one row or element too far */
        diag_free(&d);
        diag_init(&d);
        assert_int_equal(ir_actions_check(&C.A, &C.M, &C.K, &C.S, &d), -1);
        assert_non_null(strstr(diag_first_error(&d), faults[f].what));
        *faults[f].field -= faults[f].by;
    }
    /* an action run after a buffer that shares its operand's bytes began: a GEMM or launch of the backward
     * moved past the zeroing of a working gradient whose bytes were its operand's */
    struct ir_action_list *bw = &st->backward[0];
    const struct ir_role_memory *m = &C.M.roles[0];
    bool moved = false;
    for (int z = 0; z < bw->n && !moved; z++) {
        int x = bw->v[z].kind == IR_ACT_ZERO ? working_index(m, &bw->v[z].zero) : -1;
        for (int i = z - 1; i >= 0 && x >= 0 && !moved; i--) {
            const struct ir_action *a = &bw->v[i];
            const struct ir_ref *ops[] = {&a->gemm.a, &a->gemm.b, &a->gemm.c, &a->launch.in[0], &a->launch.out[0]};
            for (int k = a->kind == IR_ACT_GEMM ? 0 : 3; k < (a->kind == IR_ACT_GEMM ? 3 : a->kind == IR_ACT_LAUNCH ? 5 : 0) && !moved; k++) {
                int y = working_index(m, ops[k]);
                if (y < 0 || y == x || m->bufs[y].offset >= m->bufs[x].offset + m->bufs[x].bytes ||
                    m->bufs[x].offset >= m->bufs[y].offset + m->bufs[y].bytes)
                    continue;
                struct ir_action late = *a; /* i to just after z */
                memmove(&bw->v[i], &bw->v[i + 1], (size_t)(z - i) * sizeof *bw->v);
                bw->v[z] = late;
                diag_free(&d);
                diag_init(&d);
                assert_int_equal(ir_actions_check(&C.A, &C.M, &C.K, &C.S, &d), -1);
                assert_non_null(strstr(diag_first_error(&d), "share bytes of the working set, yet their actions interleave"));
                printf("    backward action %d moved after action %d: %s\n", i, z, diag_first_error(&d));
                moved = true;
            }
        }
    }
    assert_true(moved);
    diag_free(&d);
    compiled_free(&C);
    /* from the plan file: verify reads the actions back, inspect shows them */
    char plan[] = "/tmp/weft-test-actions-XXXXXX";
    close(mkstemp(plan));
    compile_dp("models/gpt2.xml", 2, plan);
    struct run r;
    run_weft(&r, "verify", plan, NULL);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "every action's GEMM, kernel"));
    run_weft(&r, "inspect", plan, "--rank", "1", "--actions", NULL);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "forward step, virtual stage 0"));
    assert_non_null(strstr(r.out, "all-reduce over dp_cp: [gradient"));
    run_weft(&r, "inspect", plan, "--actions", NULL);
    assert_int_equal(r.status, 2);
    unlink(plan);
}

static bool same_list(const struct ir_action_list *a, const struct ir_action_list *b, char *why, size_t n, const char *which)
{
    if (a->n != b->n) {
        snprintf(why, n, "%s: %d actions built, %d read", which, a->n, b->n);
        return false;
    }
    for (int i = 0; i < a->n; i++) {
        char x[512], y[512];
        ir_action_str(&a->v[i], x, sizeof x), ir_action_str(&b->v[i], y, sizeof y);
        struct kn_args ka, kb;
        bool args = true;
        if (a->v[i].kind == IR_ACT_LAUNCH) { /* the arguments every rank derives: compare the stored templates whole */
            ka = a->v[i].launch.args, kb = b->v[i].launch.args;
            args = !memcmp(&ka, &kb, sizeof ka) && !memcmp(a->v[i].launch.off_pdim, b->v[i].launch.off_pdim, sizeof a->v[i].launch.off_pdim) &&
                   !memcmp(a->v[i].launch.gather_pdim, b->v[i].launch.gather_pdim, sizeof a->v[i].launch.gather_pdim);
        }
        if (strcmp(x, y) || !args || a->v[i].awaits != b->v[i].awaits) {
            snprintf(why, n, "%s, action %d: built %s, read %s%s", which, i, x, y, args ? "" : " (launch arguments differ)");
            return false;
        }
    }
    return true;
}

/* The plan is the executor's whole contract: every rank's actions read back
 * from the plan file are the ones the compiler built, for layouts of every
 * kind (as the compiler's structs, launch arguments included). */
static void test_plan_holds_the_actions(void **state)
{
    (void)state;
    long total = 0;
    for (size_t c = 0; c < WF_COUNT(matrix); c++) {
        struct fe_override ov[8];
        char words[256];
        struct compile_request q = compile_request_default();
        q.model = matrix[c].model;
        int n_ov = case_config(&matrix[c], &q.pc, &q.schedule, ov, words);
        q.fe = (struct fe_options){.variant = "tiny", .overrides = ov, .n_overrides = n_ov};
        q.archs = NULL, q.n_archs = 0, q.opt.lr = 1e-3, q.opt.eps = 1e-4; /* as compile_layout compiles it: its CPU object
                                                                          * comes from the cache */
        struct compiled C;
        struct diag d;
        diag_init(&d);
        if (compile_plan(&q, &C, &d))
            fail_msg("%s %s: %s", matrix[c].model, matrix[c].layout, diag_first_error(&d));
        char plan[] = "/tmp/weft-test-holds-XXXXXX";
        close(mkstemp(plan));
        if (emit_plan(&C, plan, &d))
            fail_msg("%s", diag_first_error(&d));
        struct plan *p = plan_open(plan, &d);
        struct ir_actions A;
        if (!p || ir_actions_read(p, C.S.n_stages, -1, &A, &d))
            fail_msg("%s", diag_first_error(&d));
        int n = 0;
        char why[1200];
        for (int s = 0; s < C.A.n_stages; s++) {
            const struct ir_stage_actions *x = &C.A.stages[s], *y = &A.stages[s];
            assert_int_equal(x->n_vstages, y->n_vstages);
            assert_int_equal(x->n_ins, y->n_ins);
            for (int v = 0; v < x->n_vstages; v++) {
                if (!same_list(&x->forward[v], &y->forward[v], why, sizeof why, "forward") ||
                    !same_list(&x->backward[v], &y->backward[v], why, sizeof why, "backward"))
                    fail_msg("%s %s stage %d: %s", matrix[c].model, matrix[c].layout, s, why);
                n += x->forward[v].n + x->backward[v].n;
            }
            for (int i = 0; i < x->n_ins; i++) {
                if (!same_list(&x->ins[i], &y->ins[i], why, sizeof why, "program"))
                    fail_msg("%s %s stage %d instruction %d: %s", matrix[c].model, matrix[c].layout, s, i, why);
                n += x->ins[i].n;
            }
        }
        /* and byte for byte: what was read, written again, is the section the compiler wrote (every field) */
        char again[] = "/tmp/weft-test-again-XXXXXX";
        close(mkstemp(again));
        struct plan_writer *w = plan_writer_new("test");
        ir_actions_write(w, &A);
        struct plan *p2 = NULL;
        if (plan_writer_finish(w, again, &d) || !(p2 = plan_open(again, &d)))
            fail_msg("%s", diag_first_error(&d));
        for (int s = 0; s < C.A.n_stages; s++) {
            char name[PLAN_NAME_MAX];
            snprintf(name, sizeof name, "actions.%d", s);
            struct plan_reader r1, r2;
            if (plan_read(p, name, &r1, &d) || plan_read(p2, name, &r2, &d))
                fail_msg("%s", diag_first_error(&d));
            if (r1.end - r1.at != r2.end - r2.at || memcmp(r1.at, r2.at, (size_t)(r1.end - r1.at)))
                fail_msg("%s %s: section %s read and written again differs from the compiler's", matrix[c].model, matrix[c].layout, name);
        }
        plan_close(p2);
        unlink(again);
        total += n;
        ir_actions_free(&A);
        plan_close(p);
        diag_free(&d);
        compiled_free(&C);
        unlink(plan);
    }
    printf("    %zu layouts of the matrix: %ld actions read back as built\n", WF_COUNT(matrix), total);
}

/* A plan that is not whole: weft run refuses it, naming the section, before any step. */
static void test_run_refuses_a_broken_plan(void **state)
{
    (void)state;
    char plan[] = "/tmp/weft-test-broken-XXXXXX";
    close(mkstemp(plan));
    compile_dp("models/gpt2.xml", 1, plan);
    struct stat sb;
    assert_int_equal(stat(plan, &sb), 0);
    struct run r;
    assert_int_equal(truncate(plan, sb.st_size / 2), 0); /* truncated */
    run_mpi(&r, (const char *const[]){weft_bin(), "run", plan, "--steps", "1", NULL});
    assert_int_equal(r.status, 2);
    assert_null(strstr(r.out, "iteration"));
    printf("    truncated: %s", r.err);
    FILE *f = fopen(plan, "w"); /* foreign */
    fputs("<model name=\"not a plan\"/>\n", f);
    fclose(f);
    run_mpi(&r, (const char *const[]){weft_bin(), "run", plan, "--steps", "1", NULL});
    assert_int_equal(r.status, 2);
    printf("    foreign: %s", r.err);
    compile_dp("models/gpt2.xml", 1, plan); /* a flipped byte inside the actions section */
    struct plan *p = plan_open(plan, NULL);
    int64_t off = -1;
    for (int i = 0; p && i < plan_n_sections(p); i++)
        if (!strcmp(plan_section_name(p, i), "actions.0"))
            off = (int64_t)plan_section_offset(p, i) + 40;
    plan_close(p);
    assert_true(off > 0);
    int fd = open(plan, O_RDWR);
    unsigned char byte;
    assert_int_equal(pread(fd, &byte, 1, off), 1);
    byte ^= 0x5a;
    assert_int_equal(pwrite(fd, &byte, 1, off), 1);
    close(fd);
    run_mpi(&r, (const char *const[]){weft_bin(), "run", plan, "--steps", "1", NULL});
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "actions.0"));
    printf("    a flipped byte: %s", r.err);
    unlink(plan);
}

/* --device cuda where there is no CUDA driver: every rank stops before its
 * first step, status 1 (a failure while running, not bad input), with one
 * line that says so; --device with anything else is a usage error. */
static void test_device_cuda_without_driver(void **state)
{
    (void)state;
    void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (driver) {
        dlclose(driver);
        SKIP_BECAUSE("a CUDA driver is installed here: the run without one is checked where there is none");
    }
    char plan[] = "/tmp/weft-test-device-XXXXXX";
    close(mkstemp(plan));
    compile_dp("models/gpt2.xml", 1, plan);
    struct run r;
    run_mpi(&r, (const char *const[]){weft_bin(), "run", plan, "--steps", "1", "--device", "cuda", NULL});
    assert_int_equal(r.status, 1);
    assert_null(strstr(r.out, "iteration"));
    assert_non_null(strstr(r.err, "no CUDA driver: libcuda.so.1 not found"));
    const char *nl = strchr(r.err, '\n');
    assert_true(nl && nl[1] == 0); /* one line */
    printf("    %s", r.err);
    run_mpi(&r, (const char *const[]){weft_bin(), "run", plan, "--steps", "1", "--device", "gpu", NULL});
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--device gpu: expected cpu or cuda"));
    unlink(plan);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_matches_reference),
        cmocka_unit_test(test_dropout_flag),
        cmocka_unit_test(test_gradients_match_reference),
        cmocka_unit_test(test_training_lowers_the_loss),
        cmocka_unit_test(test_layouts_match_one_rank),
        cmocka_unit_test(test_bf16_near_fp32),
        cmocka_unit_test(test_grad_reduce_in_bf16_tracks_fp32_reduction),
        cmocka_unit_test(test_grad_reduce_in_bf16_layouts_match_one_rank),
        cmocka_unit_test(test_overlap_changes_nothing),
        cmocka_unit_test(test_gemm_epilogues_change_nothing),
        cmocka_unit_test(test_log_line),
        cmocka_unit_test(test_nonfinite_skips_the_update),
        cmocka_unit_test(test_wrong_world_size),
        cmocka_unit_test(test_comm_flag),
        cmocka_unit_test(test_actions_checked),
        cmocka_unit_test(test_plan_holds_the_actions),
        cmocka_unit_test(test_run_refuses_a_broken_plan),
        cmocka_unit_test(test_device_cuda_without_driver),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
