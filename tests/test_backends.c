/* test_backends.c: the plan's kernels on the backends that run them
 * (runtime/backend.h), as the runtime will launch them: from the plan's
 * CPU object and cubins, with the grids and buffer extents of
 * ir/launch.h.  On the CPU every launch of every model keeps to its
 * extents, leaves its inputs alone and writes every element it stores; on
 * a GPU (skipped, saying why, where there is none) every launch gives what
 * the CPU gives, within a stated tolerance; and on the emulated GPU
 * (tests/emulated.h: the same CUDA source run on the CPU, thread by
 * thread) so do the launches of five layouts that hold every kind of kernel. */
#include "testing.h"

#include "backend.h"
#include "emulated.h"
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
} configs[] = {
    {"models/gpt2.xml", 1, 1, true, false, "60"},
    {"models/gpt2.xml", 1, 1, false, false, NULL},   {"models/gpt2.xml", 2, 1, true, true, NULL},
    {"models/llama2.xml", 1, 1, false, false, NULL}, {"models/llama2.xml", 2, 1, true, false, NULL},
    {"models/llama2.xml", 1, 1, true, false, "256"},
    {"models/mixtral.xml", 1, 1, true, false, NULL}, {"models/mixtral.xml", 1, 2, false, false, NULL},
    {"models/t5.xml", 1, 1, false, false, NULL},     {"models/t5.xml", 2, 1, true, false, NULL},
    {"models/llava.xml", 1, 1, true, false, NULL},
};

/* The config's model compiled for training (GPU binaries only when gpu). */
static void build(int c, bool gpu, struct compiled *C)
{
    struct par_config pc = par_config_default();
    pc.tp = configs[c].tp, pc.ep = configs[c].ep, pc.bf16 = configs[c].bf16, pc.sequence_parallel = configs[c].sp;
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
    snprintf(buf, n, "%s tp%d ep%d %s%s%s%s", strrchr(configs[c].file, '/') + 1, configs[c].tp, configs[c].ep,
             configs[c].bf16 ? "bf16" : "fp32", configs[c].sp ? " sp" : "", configs[c].hidden ? " hidden " : "",
             configs[c].hidden ? configs[c].hidden : "");
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
 * (attention on the tensor cores). */
static void test_emulated_gpu_matches_cpu(void **state)
{
    (void)state;
    static const int chosen[] = {0, 2, 5, 7, 9};
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_launches_keep_their_extents),
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_cuda_matches_cpu),
        cmocka_unit_test(test_emulated_gpu_matches_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
