/* test_fuse.c: the fusion pass and its kernels.  Every distinct kernel of
 * every model is emitted as C, compiled by the system C compiler and run
 * against the unfused reference ops (runtime/ref.c) on the same inputs;
 * every kernel is emitted as CUDA C and compiled by NVRTC for sm_80 and
 * sm_90 (no GPU needed). */
#include "testing.h"

#include "autodiff.h"
#include "backend.h"
#include "cc.h"
#include "emit_kernel.h"
#include "fuse.h"
#include "optim.h"
#include "kernels.h"
#include "memplan.h"
#include "nvrtc.h"
#include "ref.h"

#include <dlfcn.h>
#include <math.h>

static const struct optim_config train = {.lr = 1e-4, .min_lr = 0, .decay_style = OPTIM_DECAY_CONSTANT, .weight_decay = 0.1,
                                          .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .clip_grad = 1.0};

static const struct {
    const char *file, *variant;
} models[] = {
    {"models/gpt2.xml", "tiny"}, {"models/llama2.xml", "tiny"}, {"models/mixtral.xml", "tiny"},
    {"models/t5.xml", "tiny"},   {"models/llava.xml", "tiny"},
};

/* GPT-2's layer fuses as Megatron's hand-written kernels do: bias + dropout
 * + residual add + layernorm after each projection, bias + GELU after the
 * first MLP matmul; the embedding sum with its dropout and the first norm;
 * attention is one kernel of its own. */
static void test_gpt2_groups(void **state)
{
    (void)state;
    struct partition *P = place_model("models/gpt2.xml", NULL, par_config_default(), NULL, 0);
    struct kn_set F;
    fuse(P, &train, &F);
    const char *want[] = {"k0_embedding", "k1_add_dropout_layernorm", "k2_bias_add", "k3_attention",
                          "k4_bias_add_dropout_add_layernorm", "k5_bias_add_gelu", "k6_cross_entropy",
                          /* the backward of each group, the last first: the final norm's reads no
                           * gradient of the residual sum (nothing after reads the sum) */
                          "k7_cross_entropy_backward", "k8_bias_add_dropout_add_layernorm_backward", "k9_bias_add_gelu_backward",
                          "k10_bias_add_dropout_add_layernorm_backward", "k11_bias_add_backward",
                          "k12_add_dropout_layernorm_backward", "k13_embedding_backward",
                          /* the step: the gradient norm's sums, AdamW (none of its weight decay on
                           * the 1-D parameters: biases and norms, as Megatron) */
                          "k14_sum_of_squares", "k15_adamw", "k16_adamw_no_decay"};
    assert_int_equal(F.n_kernels, 17);
    for (int k = 0; k < 17; k++)
        assert_string_equal(F.kernels[k].name, want[k]);
    assert_int_equal(F.kernels[14].uses, 148); /* a launch per parameter: 12 per layer, 4 more */
    assert_int_equal(F.kernels[15].uses, 4 * 12 + 2); /* the matrices, the token and position tables */
    assert_int_equal(F.kernels[16].uses, 8 * 12 + 2);
    assert_int_equal(F.kernels[8].uses, 1);
    assert_int_equal(F.kernels[10].uses, 23);
    assert_int_equal(F.kernels[4].uses, 24); /* two per layer: attention's and the MLP's (the last norm is the final one) */
    assert_int_equal(F.kernels[3].uses, 12);
    assert_true(F.kernels[3].attn.causal && F.kernels[3].attn.backward && F.kernels[3].attn.D == 64);
    /* the token table's gather into one kernel, its scatter-add into another; the position table is read
     * as a view, its first rows; forward, backward (attention's is its own), the loss's two, the step */
    assert_int_equal(F.n_launches, 2 * (2 + 12 * 4) + 12 + 2 + 2 * 148);
    /* the residual sum leaves the kernel (the next residual add reads it), its mask and the norm's row stats too */
    const struct kn_launch *G = &F.launches[0];
    while (G->kernel != 4)
        G++;
    int values = 0, masks = 0, stats = 0;
    for (int i = 0; i < G->n_out; i++) {
        values += G->out[i].what == IR_BUF_VALUE;
        masks += G->out[i].what == IR_BUF_MASK;
        stats += G->out[i].what == IR_BUF_ROWSTATS;
    }
    assert_int_equal(values, 2);
    assert_int_equal(masks, 1);
    assert_int_equal(stats, 1);
    kn_set_free(&F);
    /* forward only: dropout is the identity, nothing is kept for a backward;
     * the final norm's group stores only the norm (no later residual add reads
     * the sum), so it is a kernel of its own */
    fuse(P, NULL, &F);
    assert_int_equal(F.n_kernels, 8);
    assert_int_equal(F.kernels[6].uses, 1);
    assert_int_equal(F.kernels[6].k.n_out, 1);
    assert_false(F.kernels[3].attn.backward);
    assert_string_equal(F.kernels[7].name, "k7_cross_entropy"); /* the loss still needs its row losses */
    for (int g = 0; g < F.n_launches; g++)
        for (int i = 0; g != F.op_launch[P->g->n_ops - 1] && i < F.launches[g].n_out; i++)
            assert_int_equal(F.launches[g].out[i].what, IR_BUF_VALUE);
    kn_set_free(&F);
    partition_free(P);
}

/* Sizes are arguments: 96 layers need no more kernels than 2. */
static void test_kernels_do_not_grow_with_depth(void **state)
{
    (void)state;
    for (size_t m = 0; m < WF_COUNT(models); m++) {
        int n[2];
        for (int deep = 0; deep < 2; deep++) {
            struct fe_override ov[] = {{FE_FLAG, "num-layers", deep ? "96" : "2"}};
            bool t5 = strstr(models[m].file, "t5") != NULL;
            struct fe_override ov5[] = {{FE_FLAG, "encoder-num-layers", deep ? "96" : "2"},
                                        {FE_FLAG, "decoder-num-layers", deep ? "96" : "2"}};
            struct partition *P = place_model(models[m].file, models[m].variant, par_config_default(), t5 ? ov5 : ov, t5 ? 2 : 1);
            struct kn_set F;
            fuse(P, &train, &F);
            n[deep] = F.n_kernels;
            kn_set_free(&F);
            partition_free(P);
        }
        if (n[1] > n[0])
            fail_msg("%s: %d kernels at 96 layers, %d at 2", models[m].file, n[1], n[0]);
    }
}

/* One kernel's first launch on CPU against the reference.  Returns the
 * worst relative error over its value outputs. */
/* Tensor t of the reference as a kernel reads it: its floats, or a bf16 copy (owned, to free). */
static const void *as_read(struct ref *r, const struct ir_graph *g, int t, bool bf16, void **owned)
{
    if (g->tensors[t].dtype == IR_DTYPE_I32)
        return ref_ints(r, t);
    if (!bf16)
        return ref_data(r, t);
    int64_t n = ir_shape_numel(&g->tensors[t].shape);
    uint16_t *h = calloc((size_t)n, 2);
    for (int64_t e = 0; e < n; e++) {
        float f = ref_data(r, t)[e];
        uint32_t u;
        memcpy(&u, &f, 4);
        h[e] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    }
    return *owned = h;
}

/* An attention launch on CPU against the reference's attention op: its
 * q, k, v read through the launch's strides (views of the fused QKV the
 * reference computed), its out compared head by head. */
static double check_attention(const struct partition *P, const struct kn_set *F, int l, void *lib, struct ref *r, bool bf16)
{
    const struct kn_launch *L = &F->launches[l];
    const struct kn_entry *K = &F->kernels[L->kernel];
    const struct ir_graph *g = P->g;
    const struct ir_op *o = &g->ops[F->ops[L->first_op]];
    struct kn_attn_args a;
    kn_launch_attn_args(L, &a);
    double scale = ir_op_float(o, IR_ATTR_SCALE);
    a.scale = (float)(isnan(scale) ? 1 / sqrt((double)K->attn.D) : scale);
    void *owned[5] = {0};
    a.q = as_read(r, g, L->in[0].id, bf16, &owned[0]);
    a.k = as_read(r, g, L->in[1].id, bf16, &owned[1]);
    a.v = as_read(r, g, L->in[2].id, bf16, &owned[2]);
    if (K->attn.bias)
        a.bias = as_read(r, g, L->in[3].id, bf16, &owned[3]);
    int64_t B = a.B, H = a.Hq, S = a.Sq, Dv = K->attn.Dv;
    a.out = owned[4] = calloc((size_t)(B * H * S * Dv), bf16 ? 2 : 4);
    a.stats = calloc((size_t)(B * H * S * 2), 4);
    void (*fwd)(const struct kn_attn_args *);
    char sym[128];
    snprintf(sym, sizeof sym, "%s_fwd", K->name);
    *(void **)&fwd = dlsym(lib, sym);
    assert_non_null(fwd);
    fwd(&a);
    const float *want = ref_data(r, o->out[0]); /* the reference's (B, H, S, Dv) */
    double worst = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t s = 0; s < S; s++)
                for (int64_t d = 0; d < Dv; d++) {
                    int64_t at = a.o_off + b * a.o_sb + h * a.o_sh + s * a.o_ss + d;
                    float got = 0;
                    if (!bf16)
                        got = ((float *)a.out)[at];
                    else {
                        uint32_t u = (uint32_t)((uint16_t *)a.out)[at] << 16;
                        memcpy(&got, &u, 4);
                    }
                    double w = want[((b * H + h) * S + s) * Dv + d], err = fabs(got - w) / (fabs(w) + (bf16 ? 1 : 1e-3));
                    worst = fmax(worst, err);
                    if (!(err <= (bf16 ? 0.02 : 1e-4)))
                        fail_msg("%s (%s): out[%lld, %lld, %lld, %lld] = %g, the reference %g", K->name, g->tensors[o->out[0]].name,
                                 (long long)b, (long long)h, (long long)s, (long long)d, (double)got, w);
                }
    for (int i = 0; i < 5; i++)
        free(owned[i]);
    free(a.stats);
    return worst;
}

/* Copies as_read made for extra launches, freed at the end of a check. */
static void *more_owned[64];
static int n_more_owned;
static void owned_more(void **p)
{
    if (*p && n_more_owned < (int)WF_COUNT(more_owned))
        more_owned[n_more_owned++] = *p;
    else
        free(*p);
    *p = NULL;
}

static double check_kernel(const struct partition *P, const struct kn_set *F, int kernel, struct ref *r, bool bf16)
{
    int g = 0;
    while (F->launches[g].kernel != kernel)
        g++;
    const struct kn_launch *G = &F->launches[g];
    const struct kn_entry *K = &F->kernels[kernel];
    char *src = kernels_source(K, KN_LANG_C);
    char so[256], log[8192];
    snprintf(so, sizeof so, "/tmp/weft-test-fuse-%d-%s.so", (int)getpid(), K->name);
    if (cc_cached(src, so, log, sizeof log))
        fail_msg("%s does not compile:\n%s\n%s", K->name, log, src);
    free(src);
    void *lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(lib);
    if (K->kind == KN_KIND_ATTENTION) {
        double worst = 0;
        for (int l = 0; l < F->n_launches; l++) /* every launch: each has its own views */
            if (F->launches[l].kernel == kernel)
                worst = fmax(worst, check_attention(P, F, l, lib, r, bf16));
        dlclose(lib);
        unlink(so);
        return worst;
    }
    void (*fn)(const struct kn_args *);
    *(void **)&fn = dlsym(lib, K->name);
    assert_non_null(fn);
    struct kn_args a;
    fuse_launch_args(P, F, g, 0, &a);
    a.seed = 5;
    const struct ir_graph *graph = P->g;
    void *owned[2 * KN_MAX_SLOTS] = {0};
    for (int i = 0; i < G->n_in; i++) {
        int t = G->in[i].id;
        int64_t n = ir_shape_numel(&graph->tensors[t].shape);
        if (K->k.in[i].dtype == IR_DTYPE_BF16) { /* the reference's values, as bf16 */
            uint16_t *h = calloc((size_t)n, 2);
            for (int64_t e = 0; e < n; e++) {
                float f = ref_data(r, t)[e];
                uint32_t u;
                memcpy(&u, &f, 4);
                u += 0x7fff + ((u >> 16) & 1);
                h[e] = (uint16_t)(u >> 16);
            }
            a.in[i] = owned[i] = h;
        } else
            a.in[i] = graph->tensors[t].dtype == IR_DTYPE_I32 ? (const void *)ref_ints(r, t) : (const void *)ref_data(r, t);
    }
    int64_t elems[KN_MAX_SLOTS]; /* each output's, on this rank */
    for (int i = 0; i < G->n_out; i++) {
        enum kn_access access = (enum kn_access)K->k.out[i].access;
        elems[i] = access == KN_ROWSTATS ? a.rows * 2 : access == KN_ROWVEC ? a.rows * a.vout[i][0] : a.rows * a.cols;
        if (access == KN_ROWMAP) /* a part of a larger tensor: all of it, the rest left NaN */
            elems[i] = ir_shape_numel(&graph->tensors[G->out[i].id].shape);
        a.out[i] = owned[KN_MAX_SLOTS + i] = calloc((size_t)elems[i], 4);
        for (int64_t e = 0; access == KN_ROWMAP && e < elems[i]; e++)
            if (K->k.out[i].dtype == IR_DTYPE_BF16)
                ((uint16_t *)a.out[i])[e] = 0x7fc0;
            else
                ((float *)a.out[i])[e] = NAN;
    }
    fn(&a);
    int64_t moved = a.rows * a.cols; /* the parts a ROWMAP output receives: every launch of this kernel for its op */
    for (int l2 = g + 1; l2 < F->n_launches; l2++) {
        const struct kn_launch *G2 = &F->launches[l2];
        if (G2->kernel != kernel || F->ops[G2->first_op] != F->ops[G->first_op] || K->k.n_out != 1 ||
            K->k.out[0].access != KN_ROWMAP)
            continue;
        struct kn_args a2;
        fuse_launch_args(P, F, l2, 0, &a2);
        void *unused = NULL;
        for (int i = 0; i < G2->n_in; i++)
            a2.in[i] = as_read(r, graph, G2->in[i].id, bf16, &unused), owned_more(&unused);
        a2.out[0] = a.out[0];
        fn(&a2);
        moved += a2.rows * a2.cols;
    }
    double worst = 0;
    for (int i = 0; i < G->n_out; i++) {
        const struct kn_bind *b = &G->out[i];
        if (b->what == IR_BUF_MASK) { /* the reference's draws, by whole-tensor index */
            const struct ir_op *o = &graph->ops[b->id];
            double p = ir_op_float(o, IR_ATTR_P);
            uint64_t stream = kn_stream(graph->tensors[o->out[0]].name);
            for (int64_t e = 0; e < a.rows * a.cols; e++)
                if (((uint8_t *)a.out[i])[e] != (kn_uniform(5, stream, (uint64_t)e) >= p))
                    fail_msg("%s: mask element %lld differs from the reference's draw", K->name, (long long)e);
            continue;
        }
        if (b->what == IR_BUF_ROWSTATS) { /* mean and 1/deviation of the norm's input */
            const struct ir_op *o = &graph->ops[b->id];
            const float *x = ref_data(r, o->in[0]);
            double eps = ir_op_float(o, IR_ATTR_EPS);
            for (int64_t row = 0; row < a.rows; row++) {
                double mean = 0, var = 0;
                for (int64_t c = 0; c < a.cols; c++)
                    mean += x[row * a.cols + c];
                mean = o->kind == IR_OP_LAYERNORM ? mean / (double)a.cols : 0;
                for (int64_t c = 0; c < a.cols; c++)
                    var += (x[row * a.cols + c] - mean) * (x[row * a.cols + c] - mean);
                double inv = 1 / sqrt(var / (double)a.cols + eps);
                const float *s = a.out[i];
                double e0 = fabs(s[2 * row] - mean) / (fabs(mean) + 1), e1 = fabs(s[2 * row + 1] - inv) / (fabs(inv) + 1e-6);
                worst = fmax(worst, fmax(e0, e1));
            }
            continue;
        }
        if (K->k.out[i].dtype == IR_DTYPE_I32) { /* integers (a router's choices): exactly the reference's */
            for (int64_t e = 0; e < elems[i]; e++)
                if (((int32_t *)a.out[i])[e] != ref_ints(r, b->id)[e])
                    fail_msg("%s output %d (%s) element %lld: %d, the reference %d", K->name, i, graph->tensors[b->id].name,
                             (long long)e, ((int32_t *)a.out[i])[e], ref_ints(r, b->id)[e]);
            continue;
        }
        const float *want = ref_data(r, b->id);
        int64_t written = 0;
        for (int64_t e = 0; e < elems[i]; e++) {
            float got = 0;
            if (K->k.out[i].dtype != IR_DTYPE_BF16)
                got = ((float *)a.out[i])[e];
            else {
                uint32_t u = (uint32_t)((uint16_t *)a.out[i])[e] << 16;
                memcpy(&got, &u, 4);
            }
            bool part = K->k.out[i].access == KN_ROWMAP;
            if (part && ((K->k.out[i].dtype == IR_DTYPE_BF16 && ((uint16_t *)a.out[i])[e] == 0x7fc0) ||
                         (K->k.out[i].dtype != IR_DTYPE_BF16 && isnan(got))))
                continue; /* another input's place */
            written++;
            /* relative, with a floor; bf16 (8 bits of mantissa, inputs and outputs rounded):
             * within 2% of |want| + 1 */
            double w = want[e], floor = bf16 ? 1 : 1e-3, err = fabs(got - w) / (fabs(w) + floor);
            if (!(err <= worst))
                worst = err;
            if (!isfinite(got) || err > (bf16 ? 0.02 : 1e-4))
                fail_msg("%s output %d (%s) element %lld: %g, the reference %g", K->name, i, graph->tensors[b->id].name,
                         (long long)e, (double)got, w);
        }
        if (K->k.out[i].access == KN_ROWMAP && written != moved)
            fail_msg("%s wrote %lld elements of %s, its inputs have %lld", K->name, (long long)written, graph->tensors[b->id].name,
                     (long long)moved);
    }
    for (size_t i = 0; i < WF_COUNT(owned); i++)
        free(owned[i]);
    while (n_more_owned)
        free(more_owned[--n_more_owned]);
    dlclose(lib);
    unlink(so);
    return worst;
}

/* A model placed by pc and its reference forward, run on random inputs
 * (seed 5; dropout draws with it too). */
static struct partition *reference_run(const char *file, const char *variant, struct par_config pc, struct ref **r)
{
    struct partition *P = place_model(file, variant, pc, NULL, 0);
    *r = ref_new(P->g, 5);
    ref_fill_inputs(*r, 5, 512);
    struct diag d;
    diag_init(&d);
    if (ref_forward(*r, &d))
        fail_msg("%s: %s", file, diag_first_error(&d));
    diag_free(&d);
    return P;
}

static double check_backward(const struct partition *P, const struct kn_set *F, int bl, struct ref *r);

/* Every distinct kernel whose first launch runs in the forward (forward
 * true) or the backward (backward true), each against the reference; the
 * loss's, the step's and the MoE routing's are test_cross_entropy's,
 * test_optimizer's and test_moe's.
 * Returns the worst relative error; *n counts the kernels checked. */
static double check_kernels(const struct partition *P, const struct kn_set *F, struct ref *r, bool bf16, bool forward,
                            bool backward, int *n)
{
    double worst = 0;
    *n = 0;
    for (int k = 0; k < F->n_kernels; k++) {
        int l = 0;
        while (F->launches[l].kernel != k)
            l++;
        enum kn_when when = (enum kn_when)F->launches[l].when;
        enum ir_op_kind kind = P->g->ops[F->ops[F->launches[l].first_op]].kind;
        if (kind == IR_OP_CROSS_ENTROPY || kind == IR_OP_DISPATCH || kind == IR_OP_COMBINE || when > KN_WHEN_BACKWARD ||
            (when == KN_WHEN_FORWARD ? !forward : !backward))
            continue;
        worst = fmax(worst, when == KN_WHEN_FORWARD ? check_kernel(P, F, k, r, bf16) : check_backward(P, F, l, r));
        ++*n;
    }
    return worst;
}

/* Every distinct kernel of every model, on CPU, against the unfused ops. */
static void test_cpu_kernels_match_reference(void **state)
{
    (void)state;
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (size_t m = 0; m < WF_COUNT(models); m++) {
            struct par_config pc = par_config_default();
            pc.bf16 = bf16;
            struct ref *r;
            struct partition *P = reference_run(models[m].file, models[m].variant, pc, &r);
            struct kn_set F;
            fuse(P, &train, &F);
            int forward;
            double worst = check_kernels(P, &F, r, bf16, true, false, &forward);
            printf("    %-18s %s %d forward kernels, worst relative error %.2e\n", models[m].file, bf16 ? "bf16" : "fp32",
                   forward, worst);
            kn_set_free(&F);
            ref_free(r);
            partition_free(P);
        }
}

/* A gradient-sized buffer of random values (an upstream gradient, or what a
 * buffer held before a kernel adds into it). */
static float *noise(int64_t n, uint64_t *seed)
{
    float *v = calloc((size_t)n + 1, sizeof *v);
    for (int64_t i = 0; i < n; i++) {
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = (float)((double)(*seed >> 11) / 9007199254740992.0 * 2 - 1);
    }
    return v;
}

static void *load_kernel(const struct kn_entry *K, void **lib, char *so, size_t n)
{
    char *src = kernels_source(K, KN_LANG_C), log[8192];
    snprintf(so, n, "/tmp/weft-test-fuse-%d-%s.so", (int)getpid(), K->name);
    if (cc_cached(src, so, log, sizeof log))
        fail_msg("%s does not compile:\n%s\n%s", K->name, log, src);
    free(src);
    *lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(*lib);
    void *fn = dlsym(*lib, K->name);
    assert_non_null(fn);
    return fn;
}

/* One backward launch on CPU against the reference's backward of its ops
 * (ref_op_backward in reverse): its forward launch runs first and leaves
 * what the backward reads (masks, row statistics, stored values); the
 * gradients it reads and adds into start as noise. */
static double check_backward(const struct partition *P, const struct kn_set *F, int bl, struct ref *r)
{
    const struct ir_graph *g = P->g;
    const struct kn_launch *B = &F->launches[bl];
    int fl = 0;
    while (F->launches[fl].when != KN_WHEN_FORWARD || F->launches[fl].first_op != B->first_op)
        fl++;
    const struct kn_launch *L = &F->launches[fl];
    void *flib, *blib;
    char fso[256], bso[256];
    void (*fwd)(const struct kn_args *) = NULL, (*bwd)(const struct kn_args *) = NULL;
    *(void **)&fwd = load_kernel(&F->kernels[L->kernel], &flib, fso, sizeof fso);
    *(void **)&bwd = load_kernel(&F->kernels[B->kernel], &blib, bso, sizeof bso);
    struct kn_args a;
    fuse_launch_args(P, F, fl, 0, &a);
    a.seed = 5;
    void *fout[KN_MAX_SLOTS] = {0};
    void *unused = NULL;
    for (int i = 0; i < L->n_in; i++)
        a.in[i] = as_read(r, g, L->in[i].id, false, &unused);
    for (int i = 0; i < L->n_out; i++) /* a part of a larger tensor (concat): room for all of it */
        a.out[i] = fout[i] = calloc((size_t)(L->out[i].what == IR_BUF_ROWSTATS ? a.rows * 2
                                              : F->kernels[L->kernel].k.out[i].access == KN_ROWMAP
                                                  ? ir_shape_numel(&g->tensors[L->out[i].id].shape)
                                                  : a.rows * a.cols) + 1, 4);
    fwd(&a);
    /* the expected gradients, per tensor the group touches */
    float **want = calloc((size_t)g->n_tensors, sizeof *want);
    float *owned[2 * KN_MAX_SLOTS] = {0};
    uint64_t seed = 99;
    struct kn_args ba;
    fuse_launch_args(P, F, bl, 0, &ba);
    for (int i = 0; i < B->n_in; i++) {
        const struct kn_bind *b = &B->in[i];
        if (b->what == IR_BUF_GRAD) { /* what later backwards left in its buffer */
            int64_t n = ir_shape_numel(&g->tensors[b->id].shape);
            ba.in[i] = owned[i] = noise(n, &seed);
            want[b->id] = calloc((size_t)n + 1, 4);
            memcpy(want[b->id], owned[i], (size_t)n * 4);
            continue;
        }
        const void *p = NULL; /* a value, mask or statistics the forward kernel left, else the reference's */
        for (int k = 0; k < L->n_out && !p; k++)
            if (L->out[k].what == b->what && L->out[k].id == b->id)
                p = fout[k];
        ba.in[i] = p ? p : as_read(r, g, b->id, false, &unused);
    }
    for (int i = 0; i < B->n_out; i++) { /* gradients it adds into: noise before */
        int64_t n = ir_shape_numel(&g->tensors[B->out[i].id].shape);
        ba.out[i] = owned[KN_MAX_SLOTS + i] = noise(n, &seed);
        want[B->out[i].id] = calloc((size_t)n + 1, 4);
        memcpy(want[B->out[i].id], owned[KN_MAX_SLOTS + i], (size_t)n * 4);
    }
    bwd(&ba);
    /* an op's other backward launches into the same gradients (a concat of a tensor with itself) */
    for (int l2 = 0; l2 < F->n_launches; l2++) {
        const struct kn_launch *B2 = &F->launches[l2];
        if (l2 == bl || B2->when != KN_WHEN_BACKWARD || F->ops[B2->first_op] != F->ops[B->first_op] || B2->kernel != B->kernel ||
            B2->n_out != B->n_out || B2->n_in != B->n_in)
            continue;
        bool same = true;
        for (int i = 0; i < B->n_out; i++)
            same &= B2->out[i].id == B->out[i].id && B2->out[i].what == B->out[i].what;
        for (int i = 0; i < B->n_in; i++)
            same &= B2->in[i].id == B->in[i].id && B2->in[i].what == B->in[i].what;
        if (!same)
            continue;
        struct kn_args b2;
        fuse_launch_args(P, F, l2, 0, &b2);
        memcpy(b2.in, ba.in, sizeof b2.in);
        memcpy(b2.out, ba.out, sizeof b2.out);
        bwd(&b2);
    }
    struct diag d;
    diag_init(&d);
    for (int i = L->n_ops - 1; i >= 0; i--) {
        const struct ir_op *o = &g->ops[F->ops[L->first_op + i]];
        float *gout[IR_MAX_OUT] = {0}, *gin[IR_MAX_IN] = {0};
        for (int k = 0; k < o->n_out; k++)
            gout[k] = want[o->out[k]];
        for (int k = 0; k < o->n_in; k++) {
            int t = o->in[k];
            if (t < 0 || !ir_dtype_is_float(g->tensors[t].dtype))
                continue;
            if (!want[t]) /* inside the group: starts at zero */
                want[t] = calloc((size_t)ir_shape_numel(&g->tensors[t].shape) + 1, 4);
            gin[k] = want[t];
        }
        if (ref_op_backward(r, F->ops[L->first_op + i], gout, gin, &d))
            fail_msg("%s", diag_first_error(&d));
    }
    diag_free(&d);
    double worst = 0;
    for (int i = 0; i < B->n_out; i++) {
        int t = B->out[i].id;
        int64_t n = ir_shape_numel(&g->tensors[t].shape);
        bool view = F->kernels[B->kernel].k.out[i].access == KN_HEADS;
        if (view) /* into a fused QKV's gradient through a view: the view's elements, where they lie */
            n = ba.rows * ba.cols;
        for (int64_t e = 0; e < n; e++) {
            int64_t at = e;
            double w;
            if (view) {
                const int64_t *v = ba.vout[i], row = e / ba.cols, c = e % ba.cols;
                int64_t s = row % ba.dim[2], h = row / ba.dim[2] % ba.dim[1], bb = row / (ba.dim[2] * ba.dim[1]);
                at = v[0] + bb * v[1] + (h / v[4]) * v[5] + (h % v[4]) * v[2] + s * v[3] + c;
                w = want[t][at] + want[B->out[i].view][e]; /* the noise it held, and the view's gradient */
            } else
                w = want[t][e];
            double got = ((float *)ba.out[i])[at], err = fabs(got - w) / (fabs(w) + 1e-2);
            worst = fmax(worst, err);
            if (!(err <= 1e-3))
                fail_msg("%s: the gradient of %s, element %lld: %g, the reference %g", F->kernels[B->kernel].name,
                         g->tensors[t].name, (long long)e, got, w);
        }
    }
    for (int t = 0; t < g->n_tensors; t++)
        free(want[t]);
    free(want);
    for (size_t i = 0; i < WF_COUNT(owned); i++)
        free(owned[i]);
    for (int i = 0; i < KN_MAX_SLOTS; i++)
        free(fout[i]);
    dlclose(flib);
    dlclose(blib);
    unlink(fso);
    unlink(bso);
    return worst;
}

/* Every distinct backward kernel of every model, on CPU, against the
 * reference's backward of the same ops (fp32).  Two samples a micro-batch,
 * so a table broadcast over the batch (GPT-2's positions) sums its
 * gradient over the rows that share an element. */
static void test_cpu_backward_matches_reference(void **state)
{
    (void)state;
    for (size_t m = 0; m < WF_COUNT(models); m++) {
        struct par_config pc = par_config_default();
        pc.micro_batch = 2, pc.global_batch = 2;
        struct ref *r;
        struct partition *P = reference_run(models[m].file, models[m].variant, pc, &r);
        struct kn_set F;
        fuse(P, &train, &F);
        int n;
        double worst = check_kernels(P, &F, r, false, false, true, &n);
        printf("    %-18s %d backward kernels, worst relative error %.2e\n", models[m].file, n, worst);
        assert_true(n > 0);
        /* every fused forward group has a backward (the loss's, split or not, and a concat's, a launch an input) */
        bool *has_backward = calloc((size_t)P->g->n_ops, sizeof *has_backward);
        for (int l = 0; l < F.n_launches; l++)
            if (F.launches[l].when == KN_WHEN_BACKWARD)
                has_backward[F.ops[F.launches[l].first_op]] = true;
        bool *needs = calloc((size_t)P->g->n_tensors, sizeof *needs); /* a group whose values get no gradient (an image's patches) needs none */
        autodiff_needs_grad(P->g, P->g->outputs[0], needs);
        for (int l = 0; l < F.n_launches; l++)
            if (F.launches[l].when == KN_WHEN_FORWARD && F.kernels[F.launches[l].kernel].kind == KN_KIND_FUSED &&
                needs[P->g->ops[F.ops[F.launches[l].first_op]].out[0]] && !has_backward[F.ops[F.launches[l].first_op]])
                fail_msg("%s: launch %d (%s) has no backward", models[m].file, l, F.kernels[F.launches[l].kernel].name);
        free(has_backward);
        free(needs);
        kn_set_free(&F);
        ref_free(r);
        partition_free(P);
    }
}

/* The loss's launches, run on CPU as a layout's ranks would and checked
 * against the reference cross-entropy and its backward.  tp ranks share
 * the vocabulary; between launches the test does what the plan's
 * collectives do (the elementwise max, then the sum, over the ranks).  The
 * loss is the row losses added and divided by the labels not ignored, as
 * the runtime does; about a tenth of the labels are ignore_index. */
static double check_cross_entropy(const char *file, int tp, bool bf16)
{
    struct par_config pc = par_config_default();
    pc.tp = tp, pc.world_size = tp, pc.bf16 = bf16;
    struct ref *r;
    struct partition *P = reference_run(file, "tiny", pc, &r);
    const struct ir_graph *g = P->g;
    int op = g->n_ops - 1;
    while (g->ops[op].kind != IR_OP_CROSS_ENTROPY)
        op--;
    const struct ir_op *o = &g->ops[op];
    int32_t *labels = ref_ints(r, o->in[1]), ignore = (int32_t)ir_op_int(o, IR_ATTR_IGNORE_INDEX);
    int64_t rows = ir_shape_numel(&g->tensors[o->in[1]].shape), V = ir_shape_numel(&g->tensors[o->in[0]].shape) / rows, count = 0;
    for (int64_t t = 0; t < rows; t++) {
        if (t % 10 == 3)
            labels[t] = ignore;
        count += labels[t] != ignore;
    }
    struct diag d;
    diag_init(&d);
    if (ref_op(r, op, &d))
        fail_msg("%s", diag_first_error(&d));
    struct kn_set F;
    fuse(P, &train, &F);
    int first = F.op_launch[op], n = 0, back = -1;
    while (first + n < F.n_launches && F.launches[first + n].when == KN_WHEN_FORWARD && F.ops[F.launches[first + n].first_op] == op)
        n++;
    for (int l = 0; l < F.n_launches; l++)
        if (F.launches[l].when == KN_WHEN_BACKWARD && F.ops[F.launches[l].first_op] == op)
            back = l;
    assert_int_equal(n, tp > 1 ? 3 : 1); /* split around the two collectives only when the vocabulary is */
    assert_true(back >= 0);
    int64_t Vl = V / tp;
    /* each rank's shard of the logits, in the slot's type */
    void **shard = calloc((size_t)tp, sizeof *shard);
    for (int k = 0; k < tp; k++) {
        shard[k] = calloc((size_t)(rows * Vl), bf16 ? 2 : 4);
        for (int64_t t = 0; t < rows; t++)
            for (int64_t c = 0; c < Vl; c++) {
                float f = ref_data(r, o->in[0])[t * V + k * Vl + c];
                if (!bf16) {
                    ((float *)shard[k])[t * Vl + c] = f;
                    continue;
                }
                uint32_t u;
                memcpy(&u, &f, 4);
                ((uint16_t *)shard[k])[t * Vl + c] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
            }
    }
    float *maxima = calloc((size_t)(tp * rows), 4), *sums = calloc((size_t)(tp * rows * 2), 4), *stats = calloc((size_t)(rows * 2), 4);
    for (int step = 0; step < n; step++) { /* each launch on every rank, then the collective after it */
        const struct kn_launch *L = &F.launches[first + step];
        void *lib;
        char so[256];
        void (*fn)(const struct kn_args *);
        *(void **)&fn = load_kernel(&F.kernels[L->kernel], &lib, so, sizeof so);
        for (int k = 0; k < tp; k++) {
            struct kn_args a;
            fuse_launch_args(P, &F, first + step, k, &a);
            assert_int_equal(a.rows, rows);
            assert_int_equal(a.cols, Vl);
            for (int i = 0; i < L->n_in; i++) {
                const struct kn_bind *b = &L->in[i];
                bool max = b->xfer >= 0 && P->xfers[b->xfer].kind == PART_XFER_ALL_REDUCE_MAX;
                a.in[i] = b->id == o->in[1] ? (const void *)labels : b->xfer < 0 ? shard[k] : max ? (void *)maxima : (void *)sums;
            }
            for (int i = 0; i < L->n_out; i++) {
                const struct kn_bind *b = &L->out[i];
                bool max = b->xfer >= 0 && P->xfers[b->xfer].kind == PART_XFER_ALL_REDUCE_MAX;
                a.out[i] = b->what == IR_BUF_ROWSTATS ? stats : max ? maxima + k * rows : sums + k * rows * 2;
            }
            fn(&a);
        }
        for (int k = 1; k < tp && step == 0; k++) /* all-reduce-max */
            for (int64_t t = 0; t < rows; t++)
                maxima[t] = fmaxf(maxima[t], maxima[k * rows + t]);
        for (int k = 1; k < tp && step == 1; k++) /* all-reduce */
            for (int64_t e = 0; e < rows * 2; e++)
                sums[e] += sums[k * rows * 2 + e];
        dlclose(lib);
        unlink(so);
    }
    double loss = 0;
    for (int64_t t = 0; t < rows; t++)
        loss += stats[2 * t + 1];
    loss /= (double)count;
    double want = ref_data(r, o->out[0])[0], worst = fabs(loss - want) / fabs(want);
    if (!(worst <= (bf16 ? 1e-2 : 1e-5)))
        fail_msg("%s at tp %d: the loss %.9g, the reference %.9g", file, tp, loss, want);
    /* the backward on every rank, against the reference's gradient of the logits (d loss = 1) */
    float one = 1, *gout[IR_MAX_OUT] = {&one}, *gin[IR_MAX_IN] = {0};
    gin[0] = calloc((size_t)(rows * V), 4);
    if (ref_op_backward(r, op, gout, gin, &d))
        fail_msg("%s", diag_first_error(&d));
    const struct kn_launch *B = &F.launches[back];
    void *lib;
    char so[256];
    void (*fn)(const struct kn_args *);
    *(void **)&fn = load_kernel(&F.kernels[B->kernel], &lib, so, sizeof so);
    for (int k = 0; k < tp; k++) {
        struct kn_args a;
        fuse_launch_args(P, &F, back, k, &a);
        a.arg[0] = (float)(1.0 / (double)count);
        for (int i = 0; i < B->n_in; i++)
            a.in[i] = B->in[i].what == IR_BUF_ROWSTATS ? (const void *)stats : B->in[i].id == o->in[1] ? (const void *)labels : shard[k];
        void *grad = calloc((size_t)(rows * Vl), bf16 ? 2 : 4);
        a.out[0] = grad;
        fn(&a);
        for (int64_t t = 0; t < rows; t++)
            for (int64_t c = 0; c < Vl; c++) {
                float got;
                if (bf16) {
                    uint32_t u = (uint32_t)((uint16_t *)grad)[t * Vl + c] << 16;
                    memcpy(&got, &u, 4);
                } else
                    got = ((float *)grad)[t * Vl + c];
                double w = gin[0][t * V + k * Vl + c], err = fabs(got - w) * (double)count; /* relative to the 1/count scale */
                worst = fmax(worst, err);
                if (!(err <= (bf16 ? 2e-2 : 1e-5)))
                    fail_msg("%s at tp %d: d logits[%lld, %lld] = %g, the reference %g", file, tp, (long long)t,
                             (long long)(k * Vl + c), (double)got, w);
            }
        free(grad);
    }
    dlclose(lib);
    unlink(so);
    diag_free(&d);
    for (int k = 0; k < tp; k++)
        free(shard[k]);
    free(shard), free(maxima), free(sums), free(stats), free(gin[0]);
    kn_set_free(&F);
    ref_free(r);
    partition_free(P);
    return worst;
}

/* Every model's loss in one kernel; GPT-2's (the vocabulary split over tp
 * ranks) in three around the collectives; fp32 and bf16 logits. */
static void test_cross_entropy(void **state)
{
    (void)state;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        for (size_t m = 0; m < WF_COUNT(models); m++)
            printf("    %-18s %s tp 1: worst relative error %.2e\n", models[m].file, bf16 ? "bf16" : "fp32",
                   check_cross_entropy(models[m].file, 1, bf16));
        for (int tp = 2; tp <= 4; tp *= 2)
            printf("    %-18s %s tp %d: worst relative error %.2e\n", "models/gpt2.xml", bf16 ? "bf16" : "fp32", tp,
                   check_cross_entropy("models/gpt2.xml", tp, bf16));
    }
}

/* The vocab-parallel embedding on CPU as tp ranks run it: each rank
 * gathers the rows of its shard of the table (0 elsewhere) and the sum over
 * ranks (the all-reduce after it) is the reference's lookup; each rank's
 * backward adds into its shard's rows of the table's gradient, which
 * together are the reference's scatter-add.  Ids repeat (a small
 * vocabulary), so rows add up. */
static void test_embedding_vocab_parallel(void **state)
{
    (void)state;
    for (int tp = 2; tp <= 4; tp *= 2) {
        struct par_config pc = par_config_default();
        pc.tp = tp, pc.world_size = tp, pc.micro_batch = 2, pc.global_batch = 2;
        struct ref *r;
        struct partition *P = reference_run("models/gpt2.xml", "tiny", pc, &r);
        const struct ir_graph *g = P->g;
        int op = 0;
        while (g->ops[op].kind != IR_OP_EMBEDDING)
            op++;
        const struct ir_op *o = &g->ops[op];
        struct kn_set F;
        fuse(P, &train, &F);
        int fl = F.op_launch[op], bl = 0;
        while (F.launches[bl].when != KN_WHEN_BACKWARD || F.ops[F.launches[bl].first_op] != op)
            bl++;
        int64_t V = g->tensors[o->in[0]].shape.ax[0].size, H = g->tensors[o->in[0]].shape.ax[1].size, Vl = V / tp;
        int64_t rows = ir_shape_numel(&g->tensors[o->in[1]].shape);
        float *sum = calloc((size_t)(rows * H), 4), *grad = calloc((size_t)(V * H), 4), *out = calloc((size_t)(rows * H), 4);
        uint64_t seed = 7;
        float *gy = noise(rows * H, &seed);
        void *flib, *blib;
        char fso[256], bso[256];
        void (*fwd)(const struct kn_args *), (*bwd)(const struct kn_args *);
        *(void **)&fwd = load_kernel(&F.kernels[F.launches[fl].kernel], &flib, fso, sizeof fso);
        *(void **)&bwd = load_kernel(&F.kernels[F.launches[bl].kernel], &blib, bso, sizeof bso);
        for (int k = 0; k < tp; k++) {
            struct kn_args a;
            fuse_launch_args(P, &F, fl, k, &a);
            assert_int_equal(a.vin[1][0], k * Vl); /* the rows rank k holds */
            assert_int_equal(a.vin[1][1], Vl);
            a.in[0] = ref_ints(r, o->in[1]);
            a.in[1] = ref_data(r, o->in[0]) + k * Vl * H;
            a.out[0] = out;
            fwd(&a);
            for (int64_t e = 0; e < rows * H; e++)
                sum[e] += out[e];
            fuse_launch_args(P, &F, bl, k, &a);
            a.in[0] = gy;
            a.in[1] = ref_ints(r, o->in[1]);
            a.out[0] = grad + k * Vl * H;
            bwd(&a);
        }
        for (int64_t e = 0; e < rows * H; e++)
            if (sum[e] != ref_data(r, o->out[0])[e])
                fail_msg("tp %d: the lookup's element %lld is %g summed over the ranks, the reference %g", tp, (long long)e,
                         (double)sum[e], (double)ref_data(r, o->out[0])[e]);
        float *want = calloc((size_t)(V * H), 4), *gout[IR_MAX_OUT] = {gy}, *gin[IR_MAX_IN] = {want};
        struct diag d;
        diag_init(&d);
        if (ref_op_backward(r, op, gout, gin, &d))
            fail_msg("%s", diag_first_error(&d));
        diag_free(&d);
        for (int64_t e = 0; e < V * H; e++)
            if (fabs(grad[e] - want[e]) > 1e-6 * (1 + fabs(want[e])))
                fail_msg("tp %d: the table's gradient, element %lld: %g, the reference %g", tp, (long long)e, (double)grad[e],
                         (double)want[e]);
        printf("    tp %d: lookups and the table's gradient match the reference\n", tp);
        dlclose(flib), dlclose(blib);
        unlink(fso), unlink(bso);
        free(sum), free(grad), free(out), free(gy), free(want);
        kn_set_free(&F);
        ref_free(r);
        partition_free(P);
    }
}

/* Small models around one op, its result the logits of a loss: every
 * fused kernel of each, forward and backward, on the CPU against the
 * reference, as for the models in models/. */
static const struct {
    const char *name, *body;
    int seq; /* S, if not 6 */
} small[] = {
    {"concat along the last axis",
     "<param name=\"a\" shape=\"B S 5\"/><param name=\"b\" shape=\"B S 3\"/>"
     "<op kind=\"concat\" in=\"a b\" axis=\"-1\" out=\"y\"/>", 0},
    {"concat along the sequence, three parts",
     "<param name=\"a\" shape=\"B 2 8\"/><param name=\"b\" shape=\"B 3 8\"/><param name=\"c\" shape=\"B 1 8\"/>"
     "<op kind=\"concat\" in=\"a b c\" axis=\"1\" out=\"y\"/>", 0},
    {"concat of a tensor with itself", "<param name=\"a\" shape=\"B S 4\"/><op kind=\"concat\" in=\"a a\" axis=\"2\" out=\"y\"/>", 0},
    {"embedding, then a norm",
     "<param name=\"w\" shape=\"8 8\"/><param name=\"g\" shape=\"8\" init=\"ones\"/><input name=\"ids\" shape=\"B S\" dtype=\"i32\"/>"
     "<op kind=\"embedding\" in=\"w ids\" out=\"e\"/><op kind=\"rmsnorm\" in=\"e g\" out=\"y\"/>", 0},
    /* T5's buckets at T5's sizes: every distance up to 300, past max_distance, in both directions */
    {"relative position bias, both ways",
     "<param name=\"tab\" shape=\"32 B\"/><op kind=\"relpos_bias\" in=\"tab\" q_len=\"S\" k_len=\"S\" bidirectional=\"true\" "
     "max_distance=\"128\" out=\"y\"/>", 300},
    {"relative position bias, causal",
     "<param name=\"tab\" shape=\"32 B\"/><op kind=\"relpos_bias\" in=\"tab\" q_len=\"S\" k_len=\"S\" bidirectional=\"false\" "
     "max_distance=\"128\" out=\"y\"/>", 300},
};

static void test_small_models(void **state)
{
    (void)state;
    for (size_t c = 0; c < WF_COUNT(small); c++) {
        char path[128], xml[4096];
        snprintf(path, sizeof path, "/tmp/weft-test-fuse-%d.xml", (int)getpid());
        snprintf(xml, sizeof xml,
                 "<model xmlns=\"urn:weft:model:1\" name=\"small\"><dim name=\"B\" value=\"2\"/><dim name=\"S\" value=\"%d\"/><decoder>%s"
                 "<input name=\"t\" shape=\"B S\" dtype=\"i32\"/>"
                 "<op kind=\"cross_entropy\" in=\"y t\" out=\"loss\"/><output name=\"loss\"/></decoder></model>",
                 small[c].seq ? small[c].seq : 6, small[c].body);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(xml, f);
        fclose(f);
        struct partition *P = place_model(path, NULL, par_config_default(), NULL, 0);
        struct ref *r = ref_new(P->g, 5);
        ref_fill_inputs(r, 5, 3); /* ids and labels below every vocabulary here */
        struct diag d;
        diag_init(&d);
        if (ref_forward(r, &d))
            fail_msg("%s: %s", small[c].name, diag_first_error(&d));
        diag_free(&d);
        struct kn_set F;
        fuse(P, &train, &F);
        int n;
        double worst = check_kernels(P, &F, r, false, true, true, &n);
        printf("    %-40s %d kernels, worst relative error %.2e\n", small[c].name, n, worst);
        assert_true(n >= 2);
        kn_set_free(&F);
        ref_free(r);
        partition_free(P);
        unlink(path);
    }
}

/* Which matmul's GEMM runs which group as its epilogue (matmul's output name: kind). */
static int epilogues_of(const struct partition *P, const struct kn_set *F, char names[][32], int *kinds, int max)
{
    int n = 0;
    for (int l = 0; l < F->n_launches && n < max; l++) {
        struct fuse_epilogue ep;
        if (!F->launches[l].epilogue)
            continue;
        kinds[n] = fuse_gemm_epilogue(P, F, l, &ep);
        snprintf(names[n++], 32, "%s", P->g->tensors[P->g->ops[ep.matmul].out[0]].name);
    }
    return n;
}

/* GEMM epilogues: GPT-2's QKV bias (BIAS) and its MLP's bias + GELU
 * (GELU_AUX_BIAS: x + bias kept for GELU's backward; forward only, GELU_BIAS),
 * each layer, tp 1 or 2 with the sequence split: column-parallel, their
 * outputs are the rank's own.  Never the projections' (their biases join
 * dropout, the residual and the next norm; under tp their products are
 * partial sums, reduced before the bias), LLaVA's erf GELU (cuBLASLt's is
 * tanh's), nor a product something else reads too.  Models without biases
 * have none. */
static void test_gemm_epilogues(void **state)
{
    (void)state;
    char names[64][32];
    int kinds[64];
    for (int tp = 1; tp <= 2; tp++)
        for (int infer = 0; infer < 2; infer++) {
            struct par_config pc = par_config_default();
            pc.tp = tp, pc.world_size = tp, pc.sequence_parallel = tp > 1;
            struct partition *P = place_model("models/gpt2.xml", "tiny", pc, NULL, 0);
            struct kn_set F;
            fuse(P, infer ? NULL : &train, &F);
            assert_int_equal(fuse_gemm_epilogues(P, &F), 4);
            int n = epilogues_of(P, &F, names, kinds, 64);
            assert_int_equal(n, 4);
            for (int i = 0; i < n; i++) {
                bool qkv = !strncmp(names[i], "decoder.layer.", 14) && strstr(names[i], ".qkv0");
                bool fc = !strncmp(names[i], "decoder.layer.", 14) && strstr(names[i], ".fc0");
                if (!qkv && !fc)
                    fail_msg("tp %d: %s's GEMM runs an epilogue", tp, names[i]);
                assert_int_equal(kinds[i], qkv ? IR_EPI_BIAS : infer ? IR_EPI_GELU_BIAS : IR_EPI_GELU_AUX_BIAS);
            }
            kn_set_free(&F);
            partition_free(P);
        }
    for (size_t m = 1; m < WF_COUNT(models); m++) { /* no biases; LLaVA's projector GELU is erf's */
        struct partition *P = place_model(models[m].file, models[m].variant, par_config_default(), NULL, 0);
        struct kn_set F;
        fuse(P, &train, &F);
        bool llava = strstr(models[m].file, "llava");
        int n = fuse_gemm_epilogues(P, &F);
        epilogues_of(P, &F, names, kinds, 64);
        printf("    %-20s %d GEMM epilogues", models[m].file, n);
        for (int i = 0; i < n; i++)
            printf("%s%s (%s)", i ? ", " : ": ", names[i], ir_epilogue_name((enum ir_epilogue)kinds[i]));
        printf("\n");
        /* LLaVA's vision layers are GPT-2's (tanh GELU), the projector's second bias is alone */
        assert_int_equal(n, llava ? 2 * 2 + 1 : 0);
        for (int i = 0; i < n; i++)
            assert_true(strstr(names[i], "qkv0") || strstr(names[i], "f0") || !strcmp(names[i], "encoder.p4"));
        kn_set_free(&F);
        partition_free(P);
    }
    /* a product read twice (p: no epilogue), and a bias then a GELU whose
     * input another op reads too (v: kept, forward only as well) */
    char path[128];
    snprintf(path, sizeof path, "/tmp/weft-test-epilogue-%d.xml", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("<model xmlns=\"urn:weft:model:1\" name=\"small\"><dim name=\"B\" value=\"2\"/><dim name=\"S\" value=\"4\"/><decoder>"
          "<param name=\"w1\" shape=\"8 8\"/><param name=\"b1\" shape=\"8\"/><param name=\"w2\" shape=\"8 8\"/>"
          "<param name=\"b2\" shape=\"8\"/><param name=\"w3\" shape=\"8 8\"/>"
          "<input name=\"x\" shape=\"B S 8\"/><input name=\"t\" shape=\"B S\" dtype=\"i32\"/>"
          "<op kind=\"matmul\" in=\"x w1\" out=\"p\"/><op kind=\"bias_add\" in=\"p b1\" out=\"q\"/>"
          "<op kind=\"matmul\" in=\"q w2\" out=\"u\"/><op kind=\"bias_add\" in=\"u b2\" out=\"v\"/>"
          "<op kind=\"gelu\" in=\"v\" out=\"g\"/><op kind=\"matmul\" in=\"g w3\" out=\"h\"/>"
          "<op kind=\"add\" in=\"h v\" out=\"r\"/><op kind=\"add\" in=\"r p\" out=\"y\"/>"
          "<op kind=\"cross_entropy\" in=\"y t\" out=\"loss\"/><output name=\"loss\"/></decoder></model>", f);
    fclose(f);
    struct partition *P = place_model(path, NULL, par_config_default(), NULL, 0);
    struct kn_set F;
    fuse(P, NULL, &F);
    int n = fuse_gemm_epilogues(P, &F);
    epilogues_of(P, &F, names, kinds, 64);
    printf("    a product read twice and a kept x + bias: %d GEMM epilogue%s: %s (%s)\n", n, n == 1 ? "" : "s", n ? names[0] : "-",
           n ? ir_epilogue_name((enum ir_epilogue)kinds[0]) : "-");
    kn_set_free(&F);
    partition_free(P);
    unlink(path);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "decoder.u");
    assert_int_equal(kinds[0], IR_EPI_GELU_AUX_BIAS);
}

/* The optimizer's launches: a gradient-norm and an AdamW launch per
 * parameter of each stage; AdamW's kernel against optim_adamw (the
 * reference step, in double) at step 3 with a clipping coefficient, fp32
 * and --bf16 (master weights, a rounded copy); the sums of squares against
 * a sum in double. */
static void test_optimizer(void **state)
{
    (void)state;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        struct par_config pc = par_config_default();
        pc.bf16 = bf16;
        pc.pp = 2, pc.global_batch = 2;
        struct partition *P = place_model("models/gpt2.xml", "tiny", pc, NULL, 0);
        struct kn_set F;
        fuse(P, &train, &F);
        int norm = 0, step = 0, expect = 0, k_norm = -1, l_step = -1;
        for (int l = 0; l < F.n_launches; l++) {
            norm += F.launches[l].when == KN_WHEN_NORM;
            if (F.launches[l].when == KN_WHEN_OPTIMIZER) {
                step++;
                l_step = l;
            }
            if (F.launches[l].when == KN_WHEN_NORM)
                k_norm = F.launches[l].kernel;
        }
        int *params = calloc((size_t)P->g->n_tensors, sizeof *params), *owner = calloc((size_t)P->g->n_tensors, sizeof *owner);
        for (int st = 0; st < 2; st++)
            expect += partition_stage_params(P, st, params, owner);
        free(params);
        free(owner);
        assert_int_equal(step, expect); /* the tied embedding steps on both stages that hold it */
        assert_int_equal(norm, expect);
        assert_int_equal(F.launches[l_step].n_out, bf16 ? 4 : 3);
        void *lib;
        char so[256];
        void (*fn)(const struct kn_args *);
        double worst = 0;
        const int64_t rows = 3, cols = 50, n = rows * cols;
        uint64_t seed = 7;
        float *g = noise(n, &seed);
        for (int decays = 0; decays < 2; decays++) { /* the kernel for 1-D parameters, then for the others */
            int k = 0;
            while (k < F.n_kernels && !(strstr(F.kernels[k].name, "_adamw") &&
                                        (strstr(F.kernels[k].name, "_no_decay") != NULL) == !decays))
                k++;
            assert_true(k < F.n_kernels);
            struct optim_config cfg = train;
            cfg.weight_decay = decays ? train.weight_decay : 0;
            *(void **)&fn = load_kernel(&F.kernels[k], &lib, so, sizeof so);
            float *m = noise(n, &seed), *v = noise(n, &seed), *w = noise(n, &seed);
            for (int64_t e = 0; e < n; e++)
                v[e] = fabsf(v[e]); /* a second moment */
            float *m2 = calloc((size_t)n, 4), *v2 = calloc((size_t)n, 4), *w2 = calloc((size_t)n, 4), *g2 = calloc((size_t)n, 4);
            uint16_t *copy = calloc((size_t)n, 2);
            memcpy(m2, m, (size_t)n * 4), memcpy(v2, v, (size_t)n * 4), memcpy(w2, w, (size_t)n * 4);
            const long t = 3;
            const double lr = 3e-3, clip = 0.5;
            struct kn_args a = {.rows = rows, .cols = cols, .rank = 2, .dim = {rows, cols}, .stride = {cols, 1}};
            a.arg[0] = (float)lr, a.arg[1] = (float)clip;
            a.arg[2] = (float)(1 / (1 - pow(cfg.beta1, (double)t))), a.arg[3] = (float)(1 / (1 - pow(cfg.beta2, (double)t)));
            a.in[0] = g, a.in[1] = m, a.in[2] = v, a.in[3] = w, a.out[0] = m, a.out[1] = v, a.out[2] = w, a.out[3] = copy;
            fn(&a);
            for (int64_t e = 0; e < n; e++)
                g2[e] = (float)(g[e] * clip); /* the reference clips first */
            optim_adamw(&cfg, t, lr, (size_t)n, w2, g2, m2, v2);
            for (int64_t e = 0; e < n; e++) {
                worst = fmax(worst, fabs(m[e] - m2[e]) / (fabs(m2[e]) + 1e-6));
                worst = fmax(worst, fabs(v[e] - v2[e]) / (fabs(v2[e]) + 1e-6));
                worst = fmax(worst, fabs(w[e] - w2[e]) / (fabs(w2[e]) + 1e-6));
                if (bf16) {
                    uint32_t u;
                    memcpy(&u, &w[e], 4);
                    assert_int_equal(copy[e], (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16));
                }
            }
            /* lr * weight decay is 3e-4 of a weight: a kernel with the other decay would miss by that */
            if (!(worst < 1e-5))
                fail_msg("AdamW%s%s: worst relative error %g against optim_adamw", decays ? "" : " (no decay)",
                         bf16 ? " (bf16)" : "", worst);
            free(m), free(v), free(w), free(m2), free(v2), free(w2), free(g2), free(copy);
            dlclose(lib);
            unlink(so);
        }
        /* the norm's sums of squares, row by row */
        *(void **)&fn = load_kernel(&F.kernels[k_norm], &lib, so, sizeof so);
        float *sums = calloc((size_t)rows, 4);
        struct kn_args b = {.rows = rows, .cols = cols, .rank = 2, .dim = {rows, cols}, .stride = {cols, 1}};
        b.in[0] = g, b.out[0] = sums;
        fn(&b);
        for (int64_t r = 0; r < rows; r++) {
            double want = 0;
            for (int64_t c = 0; c < cols; c++)
                want += (double)g[r * cols + c] * g[r * cols + c];
            assert_true(fabs(sums[r] - want) <= 1e-5 * want);
        }
        printf("    %s: %d AdamW and %d norm launches; AdamW's worst relative error %.1e\n", bf16 ? "bf16" : "fp32", step,
               norm, worst);
        dlclose(lib);
        unlink(so);
        free(g), free(sums);
        kn_set_free(&F);
        partition_free(P);
    }
}

/* Every kernel of every model, trained and forward only, through NVRTC for
 * sm_80 and sm_90. */
static void test_nvrtc_compiles_every_kernel(void **state)
{
    (void)state;
    skip_without_nvrtc();
    int compiled = 0, n_done = 0;
    uint64_t done[256];
    double seconds = 0;
    for (size_t m = 0; m < WF_COUNT(models); m++)
        for (int infer = 0; infer < 2; infer++) {
            struct par_config pc = par_config_default();
            pc.bf16 = !infer;
            struct partition *P = place_model(models[m].file, models[m].variant, pc, NULL, 0);
            struct kn_set F;
            fuse(P, infer ? NULL : &train, &F);
            for (int k = 0; k < F.n_kernels; k++) {
                char *src = kernels_source(&F.kernels[k], KN_LANG_CUDA);
                uint64_t h = wf_hash(src, strlen(src), 0);
                bool seen = false; /* models share kernels: each source once */
                for (int i = 0; i < n_done; i++)
                    seen |= done[i] == h;
                if (seen) {
                    free(src);
                    continue;
                }
                done[n_done++] = h;
                int archs[] = {80, 90};
                for (int a = 0; a < 2; a++) {
                    struct nvrtc_out o;
                    if (nvrtc_compile(src, F.kernels[k].name, archs[a], false, &o))
                        fail_msg("%s: NVRTC rejects %s for sm_%d:\n%s\n%s", models[m].file, F.kernels[k].name, archs[a],
                                 o.log, src);
                    assert_true(o.size > 0);
                    seconds += o.seconds;
                    compiled++;
                    nvrtc_out_free(&o);
                }
                free(src);
            }
            kn_set_free(&F);
            partition_free(P);
        }
    printf("    NVRTC %s: %d cubins in %.2f s\n", nvrtc_version(), compiled, seconds);
}

/* A kernel NVRTC rejects is weft's bug: the diagnosis names the kernel,
 * gives NVRTC's log and where the source was saved, and the build fails.
 * (An attention with a head dimension of 0 declares zero-length arrays.) */
static void test_nvrtc_rejection_is_reported(void **state)
{
    (void)state;
    skip_without_nvrtc();
    char cache[128];
    snprintf(cache, sizeof cache, "/tmp/weft-test-reject-%d", (int)getpid());
    setenv("XDG_CACHE_HOME", cache, 1);
    struct kn_set F = {0};
    F.kernels = calloc(1, sizeof *F.kernels);
    F.n_kernels = 1;
    F.kernels[0].kind = KN_KIND_ATTENTION;
    F.kernels[0].attn = (struct kn_attn){.dtype = IR_DTYPE_F32, .D = 0, .Dv = 0};
    snprintf(F.kernels[0].name, sizeof F.kernels[0].name, "k0_broken_attention");
    int archs[] = {90};
    struct kernel_stats st;
    struct diag d;
    diag_init(&d);
    assert_int_equal(kernels_build(&F, archs, 1, &st, &d), -1);
    const char *msg = diag_first_error(&d);
    assert_non_null(strstr(msg, "kernel k0_broken_attention: NVRTC rejects it for sm_90: a bug in weft"));
    assert_non_null(strstr(msg, "the source is saved as "));
    assert_non_null(strstr(msg, "NVRTC says:"));
    char saved[256];
    snprintf(saved, sizeof saved, "%s/weft/k0_broken_attention.cu", cache);
    assert_int_equal(access(saved, R_OK), 0);
    diag_free(&d);
    kn_set_free(&F);
    unsetenv("XDG_CACHE_HOME");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", cache);
    assert_int_equal(system(cmd), 0);
}

/* The promise: everything between two GEMMs is a generated
 * kernel.  Every op of every model, trained and forward only, is a GEMM, a
 * view (its buffer is its input's), or in a launch; trained, every op whose
 * inputs need a gradient is in a backward launch too. */
static void test_every_op_is_a_kernel(void **state)
{
    (void)state;
    for (size_t m = 0; m < WF_COUNT(models); m++)
        for (int trained = 0; trained < 2; trained++) {
            struct partition *P = place_model(models[m].file, models[m].variant, par_config_default(), NULL, 0);
            const struct ir_graph *g = P->g;
            struct kn_set F;
            fuse(P, trained ? &train : NULL, &F);
            bool *needs = calloc((size_t)g->n_tensors + 1, 1), *back = calloc((size_t)g->n_ops + 1, 1);
            if (trained)
                autodiff_needs_grad(g, g->outputs[0], needs);
            for (int l = 0; l < F.n_launches; l++) { /* attention's launch has its backward's functions */
                const struct kn_entry *K = &F.kernels[F.launches[l].kernel];
                bool backward = F.launches[l].when == KN_WHEN_BACKWARD || (K->kind == KN_KIND_ATTENTION && K->attn.backward);
                for (int i = 0; backward && i < F.launches[l].n_ops; i++)
                    back[F.ops[F.launches[l].first_op + i]] = true;
            }
            int ops = 0;
            for (int op = 0; op < g->n_ops; op++) {
                const struct ir_op *o = &g->ops[op];
                if (o->kind == IR_OP_MATMUL || o->kind == IR_OP_SPLIT_HEADS || o->kind == IR_OP_MERGE_HEADS ||
                    o->kind == IR_OP_RESHAPE || o->kind == IR_OP_POSITION_EMBEDDING)
                    continue;
                ops++;
                if (F.op_launch[op] < 0)
                    fail_msg("%s: op %d (%s, %s) has no kernel", models[m].file, op, ir_op_info(o->kind)->name,
                             g->tensors[o->out[0]].name);
                bool wants = false;
                for (int i = 0; i < o->n_in; i++)
                    wants |= o->in[i] >= 0 && needs[o->in[i]];
                if (wants && !back[op])
                    fail_msg("%s: op %d (%s, %s) has no backward kernel", models[m].file, op, ir_op_info(o->kind)->name,
                             g->tensors[o->out[0]].name);
            }
            if (trained)
                printf("    %-18s %3d ops between the GEMMs, each in a kernel, forward and backward\n", models[m].file, ops);
            free(needs), free(back);
            kn_set_free(&F);
            partition_free(P);
        }
}

/* A float buffer of n elements as a slot of dtype reads it (a bf16 copy, owned, to free). */
static void *as_slot(const float *v, int64_t n, int dtype, void **owned)
{
    if (dtype != IR_DTYPE_BF16)
        return (void *)v;
    uint16_t *h = calloc((size_t)n + 1, 2);
    for (int64_t e = 0; e < n; e++) {
        uint32_t u;
        memcpy(&u, &v[e], 4);
        h[e] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    }
    return *owned = h;
}

static float slot_float(const void *p, int dtype, int64_t e)
{
    if (dtype != IR_DTYPE_BF16)
        return ((const float *)p)[e];
    uint32_t u = (uint32_t)((const uint16_t *)p)[e] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Which of op's inputs a bind is the gradient of, or -1. */
static int grad_of_input(const struct ir_op *o, const struct kn_bind *b)
{
    for (int k = 0; k < o->n_in; k++)
        if (b->what == IR_BUF_GRAD && o->in[k] == b->id)
            return k;
    return -1;
}

/* MoE dispatch and combine on the CPU backend against the reference: each
 * op's routing launch, then its gathers, forward and backward (with noise
 * for the output's gradient and for what the input gradients held
 * before), at ep 1 and 2: under expert parallelism the kernels write and
 * read the experts' buffer whole, as the all-to-all takes and brings it. */
static void test_moe(void **state)
{
    (void)state;
    for (int cfg = 0; cfg < 4; cfg++) {
        bool bf16 = cfg & 1;
        struct par_config pc = par_config_default();
        pc.ep = pc.world_size = cfg & 2 ? 2 : 1;
        pc.bf16 = bf16;
        struct ref *r;
        struct partition *P = reference_run("models/mixtral.xml", "tiny", pc, &r);
        const struct ir_graph *g = P->g;
        struct kn_set F;
        fuse(P, &train, &F);
        struct diag d;
        diag_init(&d);
        struct kernel_stats st;
        if (kernels_build(&F, NULL, 0, &st, &d))
            fail_msg("%s", diag_first_error(&d));
        struct backend *be = backend_open(BACKEND_CPU, &F, &d);
        assert_non_null(be);
        double worst = 0;
        int checked = 0, dropped = 0;
        uint64_t seed = 17;
        for (int op = 0; op < g->n_ops; op++) {
            const struct ir_op *o = &g->ops[op];
            if (o->kind != IR_OP_DISPATCH && o->kind != IR_OP_COMBINE)
                continue;
            assert_true(F.op_launch[op] >= 0);
            /* the output's gradient, and per float input what its gradient held before and should hold after */
            int64_t nout = ir_shape_numel(&g->tensors[o->out[0]].shape);
            float *gout = noise(nout, &seed), *before[3] = {0}, *after[3] = {0};
            for (int i = 0; i < o->n_in; i++) {
                if (!ir_dtype_is_float(g->tensors[o->in[i]].dtype))
                    continue;
                int64_t n = ir_shape_numel(&g->tensors[o->in[i]].shape);
                before[i] = noise(n, &seed);
                after[i] = calloc((size_t)n + 1, 4);
                memcpy(after[i], before[i], (size_t)n * 4);
            }
            float *const gouts[1] = {gout};
            if (ref_op_backward(r, op, gouts, after, &d))
                fail_msg("%s", diag_first_error(&d));
            int32_t *routes = NULL, *fills = NULL;
            for (int l = 0; l < F.n_launches; l++) {
                const struct kn_launch *L = &F.launches[l];
                if (F.ops[L->first_op] != op)
                    continue;
                const struct kn_entry *K = &F.kernels[L->kernel];
                if (K->kind == KN_KIND_ROUTE) { /* the routing, forward or again in the backward */
                    struct kn_route_args ra;
                    kn_launch_route_args(L, &ra);
                    free(routes), free(fills);
                    routes = calloc((size_t)kn_route_extent(&ra, KN_ROUTE_BUF_ROUTES), 4);
                    fills = calloc((size_t)kn_route_extent(&ra, KN_ROUTE_BUF_FILLS), 4);
                    ra.idx = ref_ints(r, L->in[0].id), ra.routes = routes, ra.fills = fills;
                    if (backend_route(be, L->kernel, &ra, &d))
                        fail_msg("%s", diag_first_error(&d));
                    dropped = 0;
                    for (int64_t e = 0; e < ra.entries; e++)
                        dropped += routes[e] < 0;
                    continue;
                }
                struct kn_args a;
                fuse_launch_args(P, &F, l, 0, &a);
                void *owned[2 * KN_MAX_SLOTS] = {0};
                for (int i = 0; i < L->n_in; i++) {
                    const struct kn_bind *b = &L->in[i];
                    int dtype = K->k.in[i].dtype;
                    if (b->what == IR_BUF_ROUTES || b->what == IR_BUF_FILLS)
                        a.in[i] = b->what == IR_BUF_ROUTES ? routes : fills;
                    else if (b->what == IR_BUF_GRAD)
                        a.in[i] = as_slot(gout, nout, dtype, &owned[i]);
                    else
                        a.in[i] = as_read(r, g, b->id, dtype == IR_DTYPE_BF16, &owned[i]);
                }
                for (int i = 0; i < L->n_out; i++) { /* a value whole, a gradient as it was before */
                    const struct kn_bind *b = &L->out[i];
                    int64_t n = kn_slot_extent(&K->k, &a, true, i);
                    int which = grad_of_input(o, b);
                    assert_true(b->what == IR_BUF_VALUE || which >= 0);
                    assert_int_equal(n, ir_shape_numel(&g->tensors[b->id].shape));
                    float *init = which >= 0 ? before[which] : calloc((size_t)n + 1, 4);
                    a.out[i] = owned[KN_MAX_SLOTS + i] = calloc((size_t)n + 1, 4);
                    void *tmp = NULL;
                    memcpy(a.out[i], as_slot(init, n, K->k.out[i].dtype, &tmp), (size_t)n * ir_dtype_bytes((enum ir_dtype)K->k.out[i].dtype));
                    free(tmp);
                    if (which < 0)
                        free(init);
                }
                if (backend_fused(be, L->kernel, &a, &d))
                    fail_msg("%s", diag_first_error(&d));
                for (int i = 0; i < L->n_out; i++) {
                    const struct kn_bind *b = &L->out[i];
                    int which = grad_of_input(o, b);
                    const float *want = which >= 0 ? after[which] : ref_data(r, b->id);
                    for (int64_t e = 0; e < ir_shape_numel(&g->tensors[b->id].shape); e++) {
                        double got = slot_float(a.out[i], K->k.out[i].dtype, e), w = want[e];
                        double err = fabs(got - w) / (fabs(w) + (bf16 ? 1 : 1e-3));
                        worst = fmax(worst, err);
                        if (!(err <= (bf16 ? 0.02 : 1e-4)))
                            fail_msg("%s (%s) output %d element %lld: %g, the reference %g", K->name, g->tensors[b->id].name, i,
                                     (long long)e, got, w);
                    }
                }
                checked++;
                for (size_t i = 0; i < WF_COUNT(owned); i++)
                    free(owned[i]);
            }
            free(routes), free(fills), free(gout);
            for (int i = 0; i < 3; i++)
                free(before[i]), free(after[i]);
        }
        printf("    ep %d %s: %d dispatch and combine launches against the reference (last routing dropped %d entries), "
               "worst relative error %.1e\n", pc.ep, bf16 ? "bf16" : "fp32", checked, dropped, worst);
        assert_true(checked >= 8); /* two layers: each op's forward and backward */
        backend_close(be);
        diag_free(&d);
        kn_set_free(&F);
        ref_free(r);
        partition_free(P);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_groups),
        cmocka_unit_test(test_every_op_is_a_kernel),
        cmocka_unit_test(test_kernels_do_not_grow_with_depth),
        cmocka_unit_test(test_cpu_kernels_match_reference),
        cmocka_unit_test(test_cpu_backward_matches_reference),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_embedding_vocab_parallel),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_small_models),
        cmocka_unit_test(test_optimizer),
        cmocka_unit_test(test_gemm_epilogues),
        cmocka_unit_test(test_nvrtc_compiles_every_kernel),
        cmocka_unit_test(test_nvrtc_rejection_is_reported),
    };
    int rc = cmocka_run_group_tests_name("fuse", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
