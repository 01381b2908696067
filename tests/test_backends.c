/* test_backends.c: the plan's kernels on the backends that run them
 * (runtime/backend.h), as the runtime will launch them: from the plan's
 * CPU object and cubins, with the grids and buffer extents of
 * ir/launch.h.  On the CPU every launch of every model keeps to its
 * extents, leaves its inputs alone and writes every element it stores; on
 * a GPU (skipped, saying why, where there is none) every launch gives what
 * the CPU gives, within a stated tolerance; and on the emulated GPU
 * (tests/emulated.h: the same CUDA source run on the CPU, thread by
 * thread) so do the launches of the layouts that hold every kind of kernel. */
#include "testing.h"

#include <ctype.h>
#include <math.h>

#include "backend.h"
#include "emulated.h"
#include "cuda_abi.h"
#include "kernels.h"
#include "launches.h"
#include "optim.h"

static const struct optim_config train = {.lr = 1e-4, .min_lr = 0, .decay_style = OPTIM_DECAY_CONSTANT, .weight_decay = 0.1,
                                          .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .clip_grad = 1.0};

/* Models and layouts: each tiny model alone (fp32), and split over ranks
 * (bf16): tensor parallel with sequence parallelism (vocab-parallel loss,
 * sharded tables), experts over ranks.  The GPU's kernels take eight
 * columns a thread where rows allow it: GPT-2 at hidden 60 (rows of 60 and
 * 180, heads of 15) runs them one at a time.  Llama-2 at hidden 256 (heads
 * of 64, bf16, grouped, causal, 32 rows: half a block's) takes attention's
 * tensor-core forward (kn_attn_mma). */
static const struct {
    const char *file;
    int tp, ep;
    bool bf16, sp;
    const char *hidden; /* --hidden-size, or NULL for the tiny variant's */
    bool grads_bf16;    /* --grad-reduce-in-bf16: the backward adds into bf16 parameter gradients */
} configs[] = {
    {"models/gpt2.xml", 1, 1, true, false, "60", false},
    {"models/gpt2.xml", 1, 1, false, false, NULL, false},   {"models/gpt2.xml", 2, 1, true, true, NULL, false},
    {"models/llama2.xml", 1, 1, false, false, NULL, false}, {"models/llama2.xml", 2, 1, true, false, NULL, false},
    {"models/llama2.xml", 1, 1, true, false, "256", false},
    {"models/mixtral.xml", 1, 1, true, false, NULL, false}, {"models/mixtral.xml", 1, 2, false, false, NULL, false},
    {"models/t5.xml", 1, 1, false, false, NULL, false},     {"models/t5.xml", 2, 1, true, false, NULL, false},
    {"models/llava.xml", 1, 1, true, false, NULL, false},
    {"models/gpt2.xml", 2, 1, true, true, NULL, true},
};

/* The config's model compiled for training (GPU binaries only when gpu). */
static void build(int c, bool gpu, struct compiled *C)
{
    struct par_config pc = par_config_default();
    pc.tp = configs[c].tp, pc.ep = configs[c].ep, pc.bf16 = configs[c].bf16, pc.sequence_parallel = configs[c].sp;
    pc.grad_reduce_in_bf16 = configs[c].grads_bf16;
    pc.world_size = pc.tp * pc.ep;
    struct fe_override hidden[] = {{FE_FLAG, "hidden-size", configs[c].hidden}};
    int archs[8], n = 0;
    struct diag d;
    diag_init(&d);
    if (gpu && (n = kernels_parse_archs(KERNELS_DEFAULT_ARCHS, archs, 8, &d)) < 0)
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
    compile_or_fail(C, configs[c].file, "tiny", pc, hidden, configs[c].hidden ? 1 : 0, &train, archs, n);
}

static const char *config_name(int c, char *buf, size_t n)
{
    snprintf(buf, n, "%s tp%d ep%d %s%s%s%s%s", strrchr(configs[c].file, '/') + 1, configs[c].tp, configs[c].ep,
             configs[c].bf16 ? "bf16" : "fp32", configs[c].sp ? " sp" : "", configs[c].hidden ? " hidden " : "",
             configs[c].hidden ? configs[c].hidden : "", configs[c].grads_bf16 ? " grads bf16" : "");
    return buf;
}

/* Every launch of every config on the CPU backend: within its extents
 * (guard bytes intact; under ASan, no read past them either), inputs
 * untouched, whole stores whole.  The last rank's arguments, so shards
 * start past 0. */
static void test_cpu_launches_keep_their_extents(void **state)
{
    (void)state;
    for (size_t c = 0; c < WF_COUNT(configs); c++) {
        struct compiled C;
        build((int)c, false, &C);
        const struct partition *P = C.P;
        const struct kn_set *K = &C.K;
        struct diag d;
        diag_init(&d);
        struct backend *cpu = backend_open(BACKEND_CPU, K, &d);
        if (!cpu)
            fail_msg("%s", diag_first_error(&d));
        int64_t bytes = 0;
        for (int l = 0; l < K->n_launches; l++) {
            struct lrun x;
            lrun_prepare(P, K, l, P->L->n_ranks - 1, (uint64_t)l + 1, &x);
            if (lrun_run(&x, cpu, BACKEND_CPU, &d))
                fail_msg("launch %d (%s): %s", l, K->kernels[K->launches[l].kernel].name, diag_first_error(&d));
            char why[256];
            if (lrun_check(&x, BACKEND_CPU, why, sizeof why))
                fail_msg("launch %d (%s): %s", l, K->kernels[K->launches[l].kernel].name, why);
            for (int i = 0; i < x.n_bufs; i++)
                bytes += (int64_t)lbuf_bytes(&x.bufs[i]);
            lrun_free(&x);
        }
        char name[96], b[32];
        printf("    %-34s %3d launches of %2d kernels, %s of buffers, every one within its extents\n", config_name((int)c, name, sizeof name),
               K->n_launches, K->n_kernels, wf_bytes((double)bytes, b));
        backend_close(cpu);
        diag_free(&d);
        compiled_free(&C);
    }
}

/* Whether there is a GPU to run on; else why not. */
static bool have_gpu(char *why, size_t n)
{
    struct kn_set none;
    memset(&none, 0, sizeof none);
    struct diag d;
    diag_init(&d);
    struct backend *be = backend_open(BACKEND_CUDA, &none, &d);
    snprintf(why, n, "%s", be ? backend_describe(be) : diag_first_error(&d));
    backend_close(be);
    diag_free(&d);
    return be != NULL;
}

/* Tolerances, CUDA against the CPU on the same bytes.  fp32: the GPU sums
 * in another order and its expf differs by an ulp or two; attention's
 * gradients subtract nearly equal sums (dp - delta), so an element may
 * move by 1e-4 of itself (seen on an H200: 1.4e-4 in T5's dq) while the
 * whole buffer moves by 1e-6 (seen: 6e-7).  bf16: an output may round the
 * other way, one unit of its 8-bit mantissa (seen: 7e-3, normwise 2e-4).
 * Elementwise errors are relative with a floor of a hundredth of the
 * buffer's rms; integers and masks must be equal. */
#define FP32_ELEMENT 1e-3
#define FP32_NORM 1e-5
#define BF16_ELEMENT 2e-2
#define BF16_NORM 1e-3
/* Attention on the tensor cores (kn_attn_mma) multiplies by P and dS rounded
 * to bf16, as FlashAttention-2 does.  Forward: each p moves by at most 2^-9
 * of itself, all p are positive, so out moves by at most 2^-9 (2e-3) of
 * sum(p |v|) / l, and its own rounding to bf16 may then go the other way
 * (2^-8, 4e-3, on the elements near a tie): normwise 4e-3.  Backward: dV the
 * same way; dK and dQ sum dS's terms each moved by 2^-9 of itself, with
 * signs that vary, so normwise about 2^-9 again (test_attention's emulation
 * of the same source: 2.7e-3 against a double-precision reference, the
 * CPU's kernels 2.3e-3). */
#define BF16_MMA_NORM 4e-3
/* And where the terms cancel, an element is far smaller than the error its
 * rounded terms carry (at most 2^-9 of the sum of their sizes: about
 * 2^-9 sqrt(n) of the buffer's rms for n terms of random sign): there an
 * element's error is relative to the larger of itself and the buffer's rms,
 * within 5e-2 (the emulated GPU against the CPU, Llama-2 at hidden 256, 64
 * query rows a key: 1.8e-2). */
#define BF16_MMA_FLOOR 1.0
#define BF16_MMA_ELEMENT 5e-2

/* Every launch of config c on gpu (the CUDA backend, or the emulated one)
 * against the CPU backend, within the tolerances above; each failure
 * reported, their count returned. */
static int gpu_matches_cpu(int c, bool emulated)
{
    struct compiled C;
    build(c, !emulated, &C);
    const struct partition *P = C.P;
    const struct kn_set *K = &C.K;
    struct diag d;
    diag_init(&d);
    struct backend *cpu = backend_open(BACKEND_CPU, K, &d), *gpu = emulated ? emulated_backend_open(K) : backend_open(BACKEND_CUDA, K, &d);
    if (!cpu || !gpu)
        fail_msg("%s", diag_first_error(&d));
    double worst = 0, norm = 0;
    char where[256] = "";
    int ran = 0, failures = 0;
    for (int l = 0; l < K->n_launches; l++) { /* every launch, the failures each reported: a GPU's time is scarce */
        struct lrun x;
        lrun_prepare(P, K, l, P->L->n_ranks - 1, (uint64_t)l + 1, &x);
        const char *kname = K->kernels[K->launches[l].kernel].name;
        char why[256];
        struct lrun_diff r;
        bool bf16 = configs[c].bf16;
        const struct kn_entry *e = &K->kernels[K->launches[l].kernel];
        bool mma = e->kind == KN_KIND_ATTENTION && kn_attn_mma(&e->attn);
        if (lrun_run(&x, cpu, BACKEND_CPU, &d) || lrun_run(&x, gpu, BACKEND_CUDA, &d)) {
            printf("    FAIL launch %d (%s): %s\n", l, kname, diag_first_error(&d));
            failures++;
        } else if (lrun_check(&x, BACKEND_CUDA, why, sizeof why)) {
            printf("    FAIL launch %d (%s) on the GPU: %s\n", l, kname, why);
            failures++;
        } else if (lrun_compare_floor(&x, mma ? BF16_MMA_FLOOR : 0.01, &r), r.mismatch || !(r.worst <= (mma ? BF16_MMA_ELEMENT : bf16 ? BF16_ELEMENT : FP32_ELEMENT)) ||
                                             !(r.norm <= (mma ? BF16_MMA_NORM : bf16 ? BF16_NORM : FP32_NORM))) {
            printf("    FAIL launch %d (%s): %lld mismatches, worst relative error %.3g at %s, normwise %.3g\n", l, kname,
                   (long long)r.mismatch, r.worst, r.where, r.norm);
            failures++;
        } else {
            if (r.worst > worst) {
                worst = r.worst;
                snprintf(where, sizeof where, "%s %s", kname, r.where);
            }
            norm = fmax(norm, r.norm);
            ran++;
        }
        lrun_free(&x);
        if (d.n_errors) { /* a failed launch may have left the GPU unusable: report and stop */
            if (backend_sync(gpu, &d))
                fail_msg("the GPU after launch %d: %s", l, diag_first_error(&d));
            diag_free(&d);
            diag_init(&d);
        }
    }
    char name[96];
    printf("    %-34s %3d launches agree: worst %.2e (%s), normwise %.2e\n", config_name(c, name, sizeof name), ran, worst, where, norm);
    backend_close(cpu);
    backend_close(gpu);
    diag_free(&d);
    compiled_free(&C);
    return failures;
}

static void test_cuda_matches_cpu(void **state)
{
    (void)state;
    skip_without_nvrtc();
    char gpu_name[512];
    if (!have_gpu(gpu_name, sizeof gpu_name))
        SKIP_BECAUSE("needs a GPU: %s", gpu_name);
    printf("    on %s\n", gpu_name);
    int failures = 0;
    for (size_t c = 0; c < WF_COUNT(configs); c++)
        failures += gpu_matches_cpu((int)c, false);
    if (failures)
        fail_msg("%d launches differ between the GPU and the CPU", failures);
}

/* The same on the emulated GPU (tests/emulated.h): the plan's CUDA source
 * run on the CPU, launched as the CUDA backend launches it, where there is
 * no GPU.  The layouts that between them hold every kind of kernel: the
 * scalar and the vector loops (hidden 60, and tp 2 with sequence
 * parallelism and the vocabulary-parallel loss), experts over ranks
 * (routing, dispatch, combine), T5's bias, Llama-2 at hidden 256
 * (attention on the tensor cores), bf16 parameter gradients (column sums
 * the GPU adds from its blocks' fp32 sums, the CPU from its own). */
static void test_emulated_gpu_matches_cpu(void **state)
{
    (void)state;
    static const int chosen[] = {0, 2, 5, 7, 9, 11};
    int failures = 0;
    for (size_t i = 0; i < WF_COUNT(chosen); i++)
        failures += gpu_matches_cpu(chosen[i], true);
    if (failures)
        fail_msg("%d launches differ between the emulated GPU and the CPU", failures);
}

/* The MoE routing kernel (no plan places it yet), built on its own: on
 * the CPU against a count written here, on the emulated GPU and a GPU against the CPU, with
 * experts that overflow their capacity and choices that name no expert. */
static void test_route(void **state)
{
    (void)state;
    struct kn_set F;
    memset(&F, 0, sizeof F);
    F.n_kernels = 1;
    F.kernels = calloc(1, sizeof *F.kernels);
    F.kernels[0].kind = KN_KIND_ROUTE;
    snprintf(F.kernels[0].name, sizeof F.kernels[0].name, "k0_route");
    struct diag d;
    diag_init(&d);
    char why[1024];
    bool gpu = nvrtc_available(why, sizeof why);
    int archs[8], n = gpu ? kernels_parse_archs(KERNELS_DEFAULT_ARCHS, archs, 8, &d) : 0;
    struct kernel_stats st;
    if (n < 0 || kernels_build(&F, archs, n, &st, &d))
        fail_msg("%s", diag_first_error(&d));
    struct backend *cpu = backend_open(BACKEND_CPU, &F, &d), *cuda = NULL, *emulated = emulated_backend_open(&F);
    assert_non_null(cpu);
    if (gpu && have_gpu(why, sizeof why) && !(cuda = backend_open(BACKEND_CUDA, &F, &d)))
        fail_msg("%s", diag_first_error(&d));
    const int64_t shapes[][4] = {{1000, 2, 8, 200}, {37, 1, 3, 5}, {4096, 2, 64, 160}, {300, 4, 1500, 2}};
    for (size_t s = 0; s < WF_COUNT(shapes); s++) {
        struct lrun x;
        lrun_prepare_route(&F, 0, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], 11 + s, &x);
        if (lrun_run(&x, cpu, BACKEND_CPU, &d))
            fail_msg("%s", diag_first_error(&d));
        const int32_t *idx = x.bufs[0].init, *routes = x.bufs[1].got[BACKEND_CPU], *fills = x.bufs[2].got[BACKEND_CPU];
        int64_t E = shapes[s][2], C = shapes[s][3], *count = calloc((size_t)E, sizeof *count), dropped = 0;
        for (int64_t e = 0; e < x.route.entries; e++) {
            int64_t want = -1;
            if (idx[e] >= 0 && idx[e] < E && count[idx[e]] < C)
                want = idx[e] * C + count[idx[e]]++;
            dropped += want < 0;
            assert_int_equal(routes[e], want);
            if (want >= 0)
                assert_int_equal(fills[want], e);
        }
        for (int64_t e = 0; e < E; e++)
            for (int64_t slot = count[e]; slot < C; slot++)
                assert_int_equal(fills[e * C + slot], -1);
        free(count);
        if (lrun_check(&x, BACKEND_CPU, why, sizeof why))
            fail_msg("%s", why);
        struct backend *gpus[] = {emulated, cuda};
        for (int g = 0; g < 2; g++) {
            if (!gpus[g])
                continue;
            if (lrun_run(&x, gpus[g], BACKEND_CUDA, &d))
                fail_msg("%s", diag_first_error(&d));
            struct lrun_diff r;
            lrun_compare(&x, &r);
            if (r.mismatch)
                fail_msg("%lld routes or fills differ on %s: %s", (long long)r.mismatch, backend_describe(gpus[g]), r.where);
        }
        printf("    %lld tokens, top-%lld of %lld experts, capacity %lld: %lld entries dropped; the emulated GPU agrees%s\n",
               (long long)shapes[s][0], (long long)shapes[s][1], (long long)E, (long long)C, (long long)dropped, cuda ? ", and the GPU" : "");
        lrun_free(&x);
    }
    if (!cuda)
        printf("    no GPU run: %s\n", why);
    backend_close(cpu);
    backend_close(cuda);
    backend_close(emulated);
    diag_free(&d);
    kn_set_free(&F);
}

/* ---- GEMMs and copies: the executor's own operations --------------------- */

/* The backends a test of the executor's operations runs on (no kernels of
 * a plan): the CPU always, a GPU where there is one (else *why says why not). */
static int open_backends(struct backend *be[2], char *why, size_t n)
{
    static const struct kn_set none;
    struct diag d;
    diag_init(&d);
    be[0] = backend_open(BACKEND_CPU, &none, &d);
    if (!be[0])
        fail_msg("%s", diag_first_error(&d));
    be[1] = have_gpu(why, n) ? backend_open(BACKEND_CUDA, &none, &d) : NULL;
    diag_free(&d);
    return be[1] ? 2 : 1;
}

/* Element i of a buffer of dtype (f32 or bf16), as a double. */
static double elem(const void *p, int dtype, int64_t i)
{
    return dtype == IR_DTYPE_BF16 ? wf_bf16_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* A buffer of n elements of dtype drawn from seed in [-1, 1) (bf16: values bf16 holds exactly). */
static void *draw(int dtype, int64_t n, uint64_t seed)
{
    size_t e = dtype == IR_DTYPE_BF16 ? 2 : 4;
    void *p = calloc((size_t)n + 1, e);
    for (int64_t i = 0; i < n; i++) {
        float f = (float)(2 * kn_uniform(seed, 7, (uint64_t)i) - 1);
        if (dtype == IR_DTYPE_BF16)
            ((uint16_t *)p)[i] = wf_bf16(f);
        else
            ((float *)p)[i] = f;
    }
    return p;
}

/* backend_gemm against the definition, summed in double: c[z](i, j) =
 * sum_k op(a)[z](i, k) op(b)[z](k, j) (+ c's before), every batch and
 * stride the plans use: transposes, leading dimensions past the width,
 * batches apart and broadcast (stride 0), products added into one c
 * (a weight's gradient over a batch), bf16 operands into fp32 and into
 * bf16.  The bound: fp32 sums err by at most k ulps of the sum of the
 * products' magnitudes (k * 2^-24 * sum |a||b|, taken as 1e-5 of it);
 * a bf16 result adds its own rounding, 2^-8 of itself.  Elements between
 * a row's n and ldc are left as they were. */
static void test_gemm(void **state)
{
    (void)state;
    struct backend *be[2];
    char why[512];
    int n_be = open_backends(be, why, sizeof why);
    struct {
        int64_t batch, m, n, k;
        bool ta, tb;
        float beta;
        int dtype, c_dtype;
        int64_t pad;       /* leading dimensions past the minimum */
        int broadcast;     /* 0; 1: b's stride 0; 2: c's stride 0 (the products added into one) */
    } cases[] = {
        {1, 5, 7, 9, false, false, 0, IR_DTYPE_F32, IR_DTYPE_F32, 0, 0},
        {1, 5, 7, 9, true, false, 0, IR_DTYPE_F32, IR_DTYPE_F32, 3, 0},
        {1, 5, 7, 9, false, true, 1, IR_DTYPE_F32, IR_DTYPE_F32, 1, 0},
        {1, 33, 17, 65, true, true, 1, IR_DTYPE_F32, IR_DTYPE_F32, 2, 0},
        {3, 6, 4, 8, false, false, 0, IR_DTYPE_F32, IR_DTYPE_F32, 0, 0},
        {3, 6, 4, 8, true, false, 1, IR_DTYPE_F32, IR_DTYPE_F32, 5, 1},
        {4, 6, 4, 8, true, false, 1, IR_DTYPE_F32, IR_DTYPE_F32, 0, 2},
        {1, 64, 48, 32, false, false, 0, IR_DTYPE_BF16, IR_DTYPE_BF16, 8, 0},
        {2, 16, 24, 40, false, true, 0, IR_DTYPE_BF16, IR_DTYPE_BF16, 0, 0},
        {2, 16, 24, 40, true, false, 1, IR_DTYPE_BF16, IR_DTYPE_BF16, 8, 0},
        {1, 24, 40, 16, true, false, 1, IR_DTYPE_BF16, IR_DTYPE_F32, 0, 0},
        {3, 24, 40, 16, true, false, 1, IR_DTYPE_BF16, IR_DTYPE_F32, 4, 2},
        {2, 9, 11, 13, false, true, 0, IR_DTYPE_BF16, IR_DTYPE_F32, 3, 1},
    };
    int checked = 0, described = 0;
    char no_lt[512] = "";
    for (size_t t = 0; t < WF_COUNT(cases); t++) {
        int64_t B = cases[t].batch, M = cases[t].m, N = cases[t].n, K = cases[t].k, pad = cases[t].pad;
        bool ta = cases[t].ta, tb = cases[t].tb;
        int dt = cases[t].dtype, ct = cases[t].c_dtype;
        int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        int64_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
        int64_t sa = ar * lda, sb = cases[t].broadcast == 1 ? 0 : br * ldb, sc = cases[t].broadcast == 2 ? 0 : M * ldc;
        int64_t na = B * sa, nb = (sb ? B : 1) * br * ldb, nc = (sc ? B : 1) * M * ldc;
        size_t e = dt == IR_DTYPE_BF16 ? 2 : 4, ec = ct == IR_DTYPE_BF16 ? 2 : 4;
        void *a = draw(dt, na, 100 + t), *b = draw(dt, nb, 200 + t), *c0 = draw(ct, nc, 300 + t), *got = calloc((size_t)nc + 1, ec);
        struct backend_gemm host = {.batch = B, .m = M, .n = N, .k = K, .ta = ta, .tb = tb, .beta = cases[t].beta, .dtype = dt,
                                    .c_dtype = ct, .lda = lda, .ldb = ldb, .ldc = ldc, .stride_a = sa, .stride_b = sb, .stride_c = sc,
                                    .a = a, .b = b, .c = c0};
        struct diag dl;
        diag_init(&dl);
        if (!no_lt[0] && backend_cuda_gemm_check(&host, &dl)) { /* cuBLASLt takes its descriptors (no GPU needed) */
            if (!strstr(diag_first_error(&dl), "no cuBLASLt"))
                fail_msg("case %zu: %s", t, diag_first_error(&dl));
            snprintf(no_lt, sizeof no_lt, "%s", diag_first_error(&dl));
        }
        described += !no_lt[0];
        diag_free(&dl);
        for (int k = 0; k < n_be; k++) {
            struct diag d;
            diag_init(&d);
            void *da = backend_alloc(be[k], (size_t)na * e, &d), *db = backend_alloc(be[k], (size_t)nb * e, &d);
            void *dc = backend_alloc(be[k], (size_t)nc * ec, &d);
            struct backend_gemm g = {.batch = B, .m = M, .n = N, .k = K, .ta = ta, .tb = tb, .beta = cases[t].beta, .dtype = dt,
                                     .c_dtype = ct, .lda = lda, .ldb = ldb, .ldc = ldc, .stride_a = sa, .stride_b = sb,
                                     .stride_c = sc, .a = da, .b = db, .c = dc};
            if (!da || !db || !dc || backend_put(be[k], da, a, (size_t)na * e, &d) || backend_put(be[k], db, b, (size_t)nb * e, &d) ||
                backend_put(be[k], dc, c0, (size_t)nc * ec, &d) || backend_gemm(be[k], &g, &d) ||
                backend_get(be[k], got, dc, (size_t)nc * ec, &d))
                fail_msg("case %zu on %s: %s", t, backend_describe(be[k]), diag_first_error(&d));
            double worst = 0;
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < ldc; j++) {
                    int64_t zs = sc ? B : 1;
                    for (int64_t zc = 0; zc < zs; zc++) {
                        int64_t at = zc * sc + i * ldc + j;
                        double want = elem(c0, ct, at), mag = cases[t].beta ? fabs(want) : 0;
                        if (j >= N) { /* past the row: untouched */
                            if (elem(got, ct, at) != want)
                                fail_msg("case %zu on %s: c[%lld] past row %lld's %lld columns changed", t, backend_describe(be[k]),
                                         (long long)at, (long long)i, (long long)N);
                            continue;
                        }
                        double sum = cases[t].beta ? want : 0;
                        for (int64_t z = sc ? zc : 0; z < (sc ? zc + 1 : B); z++)
                            for (int64_t q = 0; q < K; q++) {
                                double x = elem(a, dt, z * sa + (ta ? q * lda + i : i * lda + q));
                                double y = elem(b, dt, z * sb + (tb ? j * ldb + q : q * ldb + j));
                                sum += x * y, mag += fabs(x * y);
                            }
                        double err = fabs(elem(got, ct, at) - sum);
                        double bound = 1e-5 * mag + (ct == IR_DTYPE_BF16 ? 0x1p-8 * fabs(sum) : 0) + 1e-30;
                        worst = err / bound > worst ? err / bound : worst;
                        if (err > bound)
                            fail_msg("case %zu (batch %lld, %lld x %lld x %lld%s%s) on %s: c[%lld] = %.9g, want %.9g (bound %.3g)", t,
                                     (long long)B, (long long)M, (long long)N, (long long)K, ta ? ", a^T" : "", tb ? ", b^T" : "",
                                     backend_describe(be[k]), (long long)at, elem(got, ct, at), sum, bound);
                    }
                }
            checked++;
            backend_free(be[k], da);
            backend_free(be[k], db);
            backend_free(be[k], dc);
            diag_free(&d);
        }
        free(a), free(b), free(c0), free(got);
    }
    printf("    %d GEMMs within their bounds%s%s\n", checked, n_be > 1 ? " on the CPU and " : "; no GPU run: ",
           n_be > 1 ? backend_describe(be[1]) : why);
    printf("    cuBLASLt took the descriptors of %d of them%s%s\n", described, no_lt[0] ? ": " : "", no_lt);
    backend_close(be[0]);
    backend_close(be[1]);
}

/* A GEMM's epilogues: cuBLASLt takes the descriptors cuda.c makes for each
 * (its epilogue, the bias's and the kept input's pointers, that input's
 * leading dimension), fp32 and bf16; the CPU backend runs none itself (the
 * executor runs the epilogue's kernel after the GEMM) and refuses a GEMM
 * that asks it to. */
static void test_gemm_epilogues(void **state)
{
    (void)state;
    struct backend *be[2];
    char why[512];
    int n_be = open_backends(be, why, sizeof why), described = 0, ran = 0;
    enum { M = 64, N = 48, K = 32 };
    char no_lt[512] = "";
    for (int e = IR_EPI_BIAS; e < IR_EPI_COUNT; e++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            int dt = bf16 ? IR_DTYPE_BF16 : IR_DTYPE_F32;
            size_t es = bf16 ? 2 : 4;
            void *a = draw(dt, M * K, 10 + e), *b = draw(dt, K * N, 20 + e), *bias = draw(dt, N, 30 + e);
            void *got = calloc(M * N, es), *got_aux = calloc(M * N, es);
            struct backend_gemm g = {.batch = 1, .m = M, .n = N, .k = K, .dtype = dt, .c_dtype = dt, .lda = K, .ldb = N, .ldc = N,
                                     .a = a, .b = b, .c = got, .epilogue = e, .bias = bias,
                                     .aux = e == IR_EPI_GELU_AUX_BIAS ? got_aux : NULL};
            struct diag d;
            diag_init(&d);
            if (!no_lt[0] && backend_cuda_gemm_check(&g, &d)) {
                if (!strstr(diag_first_error(&d), "no cuBLASLt"))
                    fail_msg("%s, %s: %s", ir_epilogue_name((enum ir_epilogue)e), ir_dtype_name((enum ir_dtype)dt), diag_first_error(&d));
                snprintf(no_lt, sizeof no_lt, "%s", diag_first_error(&d));
            }
            described += !no_lt[0];
            for (int k = 0; k < n_be; k++) { /* each backend that runs it: against the definition, in double */
                void *da = backend_alloc(be[k], M * K * es, &d), *db = backend_alloc(be[k], K * N * es, &d);
                void *dc = backend_alloc(be[k], M * N * es, &d), *dx = backend_alloc(be[k], M * N * es, &d);
                void *dbias = backend_alloc(be[k], N * es, &d);
                struct backend_gemm h = g;
                h.a = da, h.b = db, h.c = dc, h.bias = dbias, h.aux = g.aux ? dx : NULL;
                if (!da || !db || !dc || !dx || !dbias || backend_put(be[k], da, a, M * K * es, &d) ||
                    backend_put(be[k], db, b, K * N * es, &d) || backend_put(be[k], dbias, bias, N * es, &d))
                    fail_msg("%s: %s", backend_describe(be[k]), diag_first_error(&d));
                if (!backend_gemm_epilogue(be[k], &h)) { /* the CPU's: refused when asked, the executor runs the kernel */
                    assert_int_equal(backend_gemm(be[k], &h, &d), -1);
                    assert_non_null(strstr(diag_first_error(&d), "): not one this backend runs"));
                    diag_free(&d);
                    diag_init(&d);
                } else {
                    if (backend_gemm(be[k], &h, &d) || backend_get(be[k], got, dc, M * N * es, &d) ||
                        (h.aux && backend_get(be[k], got_aux, dx, M * N * es, &d)))
                        fail_msg("%s on %s: %s", ir_epilogue_name((enum ir_epilogue)e), backend_describe(be[k]), diag_first_error(&d));
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            double x = elem(bias, dt, j), mag = fabs(x);
                            for (int q = 0; q < K; q++)
                                x += elem(a, dt, i * K + q) * elem(b, dt, q * N + j), mag += fabs(elem(a, dt, i * K + q) * elem(b, dt, q * N + j));
                            double y = e == IR_EPI_BIAS ? x : 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
                            double bound = 1e-5 * mag + (bf16 ? 0x1p-7 * fabs(y) : 0) + 1e-6;
                            if (fabs(elem(got, dt, i * N + j) - y) > bound || (h.aux && fabs(elem(got_aux, dt, i * N + j) - x) > bound + 0x1p-7 * fabs(x)))
                                fail_msg("%s (%s) on %s: c[%d][%d] = %.7g (x + bias %.7g), want %.7g (%.7g)", ir_epilogue_name((enum ir_epilogue)e),
                                         ir_dtype_name((enum ir_dtype)dt), backend_describe(be[k]), i, j, elem(got, dt, i * N + j),
                                         h.aux ? elem(got_aux, dt, i * N + j) : NAN, y, x);
                        }
                    ran++;
                }
                backend_free(be[k], da), backend_free(be[k], db), backend_free(be[k], dc), backend_free(be[k], dx), backend_free(be[k], dbias);
            }
            diag_free(&d);
            free(a), free(b), free(bias), free(got), free(got_aux);
        }
    printf("    cuBLASLt took the descriptors of %d of the 6 epilogues%s%s; %d run within their bounds%s%s (the CPU runs none "
           "itself)\n", described, no_lt[0] ? ": " : "", no_lt, ran, n_be > 1 ? " on " : "; no GPU: ", n_be > 1 ? backend_describe(be[1]) : why);
    backend_close(be[0]);
    backend_close(be[1]);
}

/* backend_copy_rows against the definition: planes x rows of width bytes
 * from their strides, copied or added (fp32 exactly; bf16 summed in fp32
 * and rounded to nearest even, as wf_bf16 rounds); bytes between the rows
 * are left as they were. */
static void test_copy_rows(void **state)
{
    (void)state;
    struct backend *be[2];
    char why[512];
    int n_be = open_backends(be, why, sizeof why);
    struct backend_rows cases[] = {
        {.planes = 1, .rows = 1, .width = 40},
        {.planes = 1, .rows = 6, .width = 24, .src_pitch = 24, .dst_pitch = 24},
        {.planes = 3, .rows = 5, .width = 12, .src_plane = 80, .src_pitch = 16, .dst_plane = 64, .dst_pitch = 12},
        {.planes = 2, .rows = 4, .width = 16, .src_plane = 64, .src_pitch = 16, .dst_plane = 160, .dst_pitch = 40},
        {.planes = 2, .rows = 3, .width = 20, .src_plane = 100, .src_pitch = 28, .dst_plane = 128, .dst_pitch = 32, .add = true,
         .dtype = IR_DTYPE_F32},
        {.planes = 1, .rows = 7, .width = 14, .src_pitch = 16, .dst_pitch = 18, .add = true, .dtype = IR_DTYPE_BF16},
        {.planes = 3, .rows = 1, .width = 8, .src_plane = 8, .dst_plane = 12, .add = true, .dtype = IR_DTYPE_BF16},
    };
    int checked = 0;
    for (size_t t = 0; t < WF_COUNT(cases); t++) {
        const struct backend_rows *c = &cases[t];
        int64_t src_bytes = (c->planes - 1) * c->src_plane + (c->rows - 1) * c->src_pitch + c->width;
        int64_t dst_bytes = (c->planes - 1) * c->dst_plane + (c->rows - 1) * c->dst_pitch + c->width + 32;
        int dt = c->add ? c->dtype : IR_DTYPE_BF16; /* plain copies: bytes, drawn as bf16 */
        int64_t e = dt == IR_DTYPE_BF16 ? 2 : 4;
        uint8_t *src = draw(dt, src_bytes / e + 1, 400 + t), *dst0 = draw(dt, dst_bytes / e + 1, 500 + t);
        uint8_t *want = malloc((size_t)dst_bytes), *got = malloc((size_t)dst_bytes);
        memcpy(want, dst0, (size_t)dst_bytes);
        for (int64_t p = 0; p < c->planes; p++)
            for (int64_t r = 0; r < c->rows; r++)
                for (int64_t i = 0; i < c->width / e; i++) {
                    uint8_t *o = want + p * c->dst_plane + r * c->dst_pitch + i * e;
                    const uint8_t *s = src + p * c->src_plane + r * c->src_pitch + i * e;
                    if (!c->add)
                        memcpy(o, s, (size_t)e);
                    else if (dt == IR_DTYPE_F32) {
                        float x, y;
                        memcpy(&x, s, 4), memcpy(&y, o, 4);
                        y += x;
                        memcpy(o, &y, 4);
                    } else {
                        uint16_t x, y;
                        memcpy(&x, s, 2), memcpy(&y, o, 2);
                        y = wf_bf16(wf_bf16_float(x) + wf_bf16_float(y));
                        memcpy(o, &y, 2);
                    }
                }
        for (int k = 0; k < n_be; k++) {
            struct diag d;
            diag_init(&d);
            struct backend_rows x = *c;
            void *ds = backend_alloc(be[k], (size_t)src_bytes, &d), *dd = backend_alloc(be[k], (size_t)dst_bytes, &d);
            x.src = ds, x.dst = dd;
            if (!ds || !dd || backend_put(be[k], ds, src, (size_t)src_bytes, &d) || backend_put(be[k], dd, dst0, (size_t)dst_bytes, &d) ||
                backend_copy_rows(be[k], &x, &d) || backend_get(be[k], got, dd, (size_t)dst_bytes, &d))
                fail_msg("case %zu on %s: %s", t, backend_describe(be[k]), diag_first_error(&d));
            for (int64_t i = 0; i < dst_bytes; i++)
                if (got[i] != want[i])
                    fail_msg("case %zu (%s) on %s: byte %lld is %d, want %d", t, c->add ? "add" : "copy", backend_describe(be[k]),
                             (long long)i, got[i], want[i]);
            checked++;
            backend_free(be[k], ds);
            backend_free(be[k], dd);
            diag_free(&d);
        }
        free(src), free(dst0), free(want), free(got);
    }
    printf("    %d copies byte for byte%s%s\n", checked, n_be > 1 ? " on the CPU and " : "; no GPU run: ", n_be > 1 ? backend_describe(be[1]) : why);
    backend_close(be[0]);
    backend_close(be[1]);
}

/* Which GPU a rank takes: WEFT_CUDA_DEVICE where it is set (and names a
 * GPU there is), else the rank on its node mod the node's GPUs. */
static void test_cuda_ordinal(void **state)
{
    (void)state;
    struct diag d;
    diag_init(&d);
    assert_int_equal(backend_cuda_ordinal(4, NULL, "5", &d), 1);
    assert_int_equal(backend_cuda_ordinal(4, "", "3", &d), 3);
    assert_int_equal(backend_cuda_ordinal(4, "2", "5", &d), 2);
    assert_int_equal(backend_cuda_ordinal(8, NULL, NULL, &d), 0);
    assert_int_equal(backend_cuda_ordinal(1, NULL, "7", &d), 0);
    assert_int_equal(d.n_errors, 0);
    assert_int_equal(backend_cuda_ordinal(4, "4", NULL, &d), -1);
    assert_non_null(strstr(diag_first_error(&d), "WEFT_CUDA_DEVICE=4: there are 4 GPUs here (0 to 3)"));
    assert_int_equal(backend_cuda_ordinal(2, "one", NULL, &d), -1);
    diag_free(&d);
}

/* The text of file dir/name, or NULL. */
static char *read_text(const char *dir, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc((size_t)n + 1, 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n)
        s[0] = 0;
    fclose(f);
    return s;
}

/* The value the header gives an enumerator ("NAME = 0x02,"), or -1. */
/* An enumerator's value: a number, or numbers and enumerators or'd
 * together, in parentheses or not (cuBLASLt's epilogues are). */
static long header_value(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = strstr(text, name); p; p = strstr(p + 1, name)) {
        if ((p > text && (isalnum((unsigned char)p[-1]) || p[-1] == '_')) || isalnum((unsigned char)p[n]) || p[n] == '_')
            continue;
        const char *q = p + n;
        while (*q == ' ' || *q == '\t')
            q++;
        if (*q != '=')
            continue;
        long v = 0;
        for (q++;; q++) {
            while (*q == ' ' || *q == '\t' || *q == '(' || *q == ')')
                q++;
            if (isdigit((unsigned char)*q))
                v |= strtol(q, (char **)&q, 0);
            else {
                char term[128];
                size_t k = 0;
                while ((isalnum((unsigned char)q[k]) || q[k] == '_') && k + 1 < sizeof term)
                    term[k] = q[k], k++;
                term[k] = 0;
                long t = k ? header_value(text, term) : -1;
                if (t < 0)
                    return -1;
                v |= t, q += k;
            }
            while (*q == ' ' || *q == '\t' || *q == ')')
                q++;
            if (*q != '|')
                return v;
        }
    }
    return -1;
}

/* The declarations of the struct whose body `close` ends in text (from
 * the "{" before it), its comments taken out and its spaces made single. */
static void struct_fields(const char *text, const char *close, char *out, size_t n)
{
    out[0] = 0;
    const char *b = strstr(text, close), *a = b;
    while (a && a > text && *a != '{')
        a--;
    size_t len = 0;
    bool space = false;
    for (const char *p = a && *a == '{' ? a + 1 : NULL; p && p < b && len + 2 < n; p++) {
        if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            p = e ? e + 1 : b;
            continue;
        }
        if (p[0] == '/' && p[1] == '/') {
            while (p < b && *p != '\n')
                p++;
            continue;
        }
        if (isspace((unsigned char)*p)) {
            space = len > 0;
            continue;
        }
        if (space)
            out[len++] = ' ';
        space = false;
        out[len++] = *p;
    }
    out[len] = 0;
}

/* cuda_abi.h against the toolkit's headers: every constant weft passes to
 * the driver and cuBLASLt has the header's value, and the structs it
 * lays out itself have the header's fields in the header's order. */
static void test_cuda_abi(void **state)
{
    (void)state;
    const char *home = getenv("CUDA_HOME");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/include", home && *home ? home : "/usr/local/cuda");
    char *lt_h = read_text(dir, "cublasLt.h");
    if (!lt_h)
        SKIP_BECAUSE("no CUDA toolkit headers at %s (cublasLt.h): the constants are checked where they are installed", dir);
    const char *names[] = {"cuda.h", "library_types.h", "cublas_api.h"};
    char *text[4] = {lt_h};
    for (int i = 0; i < 3; i++)
        if (!(text[i + 1] = read_text(dir, names[i])))
            fail_msg("%s/%s is missing beside cublasLt.h", dir, names[i]);
    int checked = 0;
#define X(name, value)                                                                                                        \
    {                                                                                                                         \
        long got = -1;                                                                                                        \
        for (int i = 0; i < 4 && got < 0; i++)                                                                                \
            got = header_value(text[i], #name);                                                                               \
        if (got != (value))                                                                                                   \
            fail_msg("%s: cuda_abi.h says %d, the headers in %s say %ld", #name, (value), dir, got);                         \
        checked++;                                                                                                            \
    }
    CUDA_ABI_CONSTANTS(X)
#undef X
    char fields[1024];
    struct_fields(lt_h, "} cublasLtMatmulHeuristicResult_t;", fields, sizeof fields);
    assert_string_equal(fields, "cublasLtMatmulAlgo_t algo; size_t workspaceSize; cublasStatus_t state; float wavesCount; int reserved[4];");
    struct_fields(lt_h, "} cublasLtMatmulAlgo_t;", fields, sizeof fields);
    assert_string_equal(fields, "uint64_t data[8];");
    struct_fields(text[1], "} CUDA_MEMCPY2D_v2;", fields, sizeof fields);
    assert_string_equal(fields, "size_t srcXInBytes; size_t srcY; CUmemorytype srcMemoryType; const void *srcHost; CUdeviceptr srcDevice; "
                                "CUarray srcArray; size_t srcPitch; size_t dstXInBytes; size_t dstY; CUmemorytype dstMemoryType; "
                                "void *dstHost; CUdeviceptr dstDevice; CUarray dstArray; size_t dstPitch; size_t WidthInBytes; "
                                "size_t Height;");
    struct_fields(text[1], "} CUDA_KERNEL_NODE_PARAMS_v1;", fields, sizeof fields);
    assert_string_equal(fields, "CUfunction func; unsigned int gridDimX; unsigned int gridDimY; unsigned int gridDimZ; "
                                "unsigned int blockDimX; unsigned int blockDimY; unsigned int blockDimZ; unsigned int sharedMemBytes; "
                                "void **kernelParams; void **extra;");
    printf("    %d constants and 4 structs as %s has them\n", checked, dir);
    for (int i = 0; i < 4; i++)
        free(text[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_launches_keep_their_extents),
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_cuda_matches_cpu),
        cmocka_unit_test(test_emulated_gpu_matches_cpu),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_epilogues),
        cmocka_unit_test(test_copy_rows),
        cmocka_unit_test(test_cuda_ordinal),
        cmocka_unit_test(test_cuda_abi),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
