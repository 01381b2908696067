/* test_attention.c: the fused attention kernels against the naive
 * softmax(q k^T * scale + bias) v, forward and backward, computed here in
 * double with the whole probability matrix: causal and not, grouped-query,
 * with a bias shared by the batch or one per sample, q/k/v as views of a
 * fused QKV buffer, bf16.  Each case runs twice: the CPU's kernels, and the
 * GPU's CUDA source run on the CPU by tests/cuda_emu.h (thread by thread,
 * warp collectives and cp.async as the PTX ISA defines them), launched as
 * ir/launch.h says: the CUDA-core kernels and, at head dims 64 to 128 in
 * bf16, the tensor-core ones.  And every configuration's CUDA C through
 * NVRTC, the tensor-core kernels' with ptxas's report (no spills) and their SASS. */
#include "testing.h"

#include "cc.h"
#include "emulated.h"
#include "emit_attention.h"
#include "kernel.h"
#include "nvrtc.h"

#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

struct shape {
    int64_t B, Hq, Hk, Sq, Sk, D, Dv;
    bool causal;
    int bias; /* 0 none, 1 shared by the batch, 2 one per sample */
    bool fused; /* q, k, v as views of one (B, S, (Hq + 2 Hk) D) buffer, Megatron's grouped layout */
    bool bf16;
    int shift; /* elements every buffer starts past 16-byte alignment (the GPU's plain loads instead of cp.async) */
};

/* Which kernels a case runs: the CPU's, or the GPU's source on the emulator. */
enum side { ON_CPU, ON_EMULATED_GPU };
static const char *const side_name[] = {"CPU", "emulated GPU"};

struct kernels {
    void *lib;
    void (*fn[KN_ATTN_FNS])(const struct kn_attn_args *); /* the CPU's */
    struct kn_set set;                                     /* the GPU's: one kernel, on the emulated backend */
    struct kn_entry entry;
    struct backend *emulated;
};

static void build(const struct kn_attn *c, enum side side, struct kernels *k)
{
    memset(k, 0, sizeof *k);
    if (side == ON_EMULATED_GPU) {
        k->entry = (struct kn_entry){.kind = KN_KIND_ATTENTION, .attn = *c, .name = "attn"};
        k->set = (struct kn_set){.n_kernels = 1, .kernels = &k->entry};
        k->emulated = emulated_backend_open(&k->set);
        return;
    }
    char *src = emit_attention(c, "attn", KN_LANG_C);
    char so[128], log[8192];
    snprintf(so, sizeof so, "/tmp/weft-test-attn-%d.so", (int)getpid());
    if (cc_cached(src, so, log, sizeof log))
        fail_msg("the attention kernel does not compile:\n%s", log);
    free(src);
    k->lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(k->lib);
    unlink(so);
    for (int f = 0; f < KN_ATTN_FNS; f++) {
        char name[32];
        snprintf(name, sizeof name, "attn%s", kn_attn_fn_suffix[f]);
        *(void **)&k->fn[f] = dlsym(k->lib, name);
        assert_non_null(k->fn[f]);
    }
}

/* Function fn of the kernels on args a: the CPU's call, or the GPU's launch (grid, block and shared memory as a GPU gets them). */
static void call(const struct kernels *k, enum kn_attn_fn fn, const struct kn_attn_args *a)
{
    if (!k->emulated) {
        k->fn[fn](a);
        return;
    }
    struct diag d;
    diag_init(&d);
    if (backend_attention(k->emulated, 0, fn, a, &d))
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
}

static void unbuild(struct kernels *k)
{
    if (k->lib)
        dlclose(k->lib);
    backend_close(k->emulated);
}

static double rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0 * 2 - 1;
}

static float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* A buffer the kernel reads or writes, as f32 or bf16. */
struct buf {
    float *f;      /* the values (bf16-rounded when bf16) */
    void *raw;     /* what the kernel sees */
    void *base;    /* raw's allocation */
    int64_t n;
    bool bf16;
};

static int shift; /* the case's: raw starts this many elements into base */

static void make(struct buf *b, int64_t n, bool bf16, uint64_t *seed, double scale)
{
    b->n = n;
    b->bf16 = bf16;
    b->f = calloc((size_t)n, sizeof *b->f);
    b->base = calloc((size_t)(n + shift), bf16 ? 2 : 4);
    b->raw = (char *)b->base + shift * (bf16 ? 2 : 4);
    for (int64_t i = 0; seed && i < n; i++)
        b->f[i] = bf16 ? round_bf16((float)(rnd(seed) * scale)) : (float)(rnd(seed) * scale);
    for (int64_t i = 0; i < n; i++) {
        if (!bf16) {
            ((float *)b->raw)[i] = b->f[i];
            continue;
        }
        uint32_t u;
        memcpy(&u, &b->f[i], 4);
        ((uint16_t *)b->raw)[i] = (uint16_t)(u >> 16);
    }
}

static double get(const struct buf *b, int64_t i)
{
    if (!b->bf16)
        return ((float *)b->raw)[i];
    uint32_t u = (uint32_t)((uint16_t *)b->raw)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void unmake(struct buf *b)
{
    free(b->f);
    free(b->base);
}

/* Worst |got - want| / (|want| + 1) over a tensor read through strides. */
/* The worst normwise error seen so far, ||got - want|| / ||want||, of each side's bf16 buffers. */
static double bf16_norm[2];

static double compare(const char *what, const struct shape *s, enum side side, const struct buf *got, const double *want, int64_t n)
{
    double worst = 0, diff = 0, size = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(get(got, i) - want[i]) / (fabs(want[i]) + 1);
        if (!(e <= worst))
            worst = e;
        diff += (get(got, i) - want[i]) * (get(got, i) - want[i]);
        size += want[i] * want[i];
    }
    if (s->bf16 && size > 0)
        bf16_norm[side] = fmax(bf16_norm[side], sqrt(diff / size));
    if (!(worst < (s->bf16 ? 2e-2 : 1e-4)))
        fail_msg("%s on the %s: worst error %g (B%lld Hq%lld Hk%lld Sq%lld Sk%lld D%lld Dv%lld%s bias %d%s%s, shift %d)", what, side_name[side], worst,
                 (long long)s->B, (long long)s->Hq, (long long)s->Hk, (long long)s->Sq, (long long)s->Sk, (long long)s->D,
                 (long long)s->Dv, s->causal ? " causal" : "", s->bias, s->fused ? " fused" : "", s->bf16 ? " bf16" : "", s->shift);
    return worst;
}

static double run_case(const struct shape *s, enum side side)
{
    struct kn_attn c = {.dtype = s->bf16 ? IR_DTYPE_BF16 : IR_DTYPE_F32, .D = (int)s->D, .Dv = (int)s->Dv,
                            .causal = s->causal, .bias = s->bias != 0, .bias_grad = s->bias != 0, .backward = true};
    struct kernels K;
    build(&c, side, &K);
    shift = s->shift;
    uint64_t seed = 42;
    const int64_t B = s->B, Hq = s->Hq, Hk = s->Hk, Sq = s->Sq, Sk = s->Sk, D = s->D, Dv = s->Dv, G = Hq / Hk;
    struct kn_attn_args a = {.B = B, .Hq = Hq, .Hk = Hk, .Sq = Sq, .Sk = Sk, .scale = (float)(1 / sqrt((double)D))};
    /* layouts: plain (B, H, S, D), or views of a fused buffer (D == Dv, Sq == Sk) */
    struct buf q, k, v, bias, out, dout, dq, dk, dv, dbias;
    int64_t F = (Hq + 2 * Hk) * D;
    if (s->fused) {
        struct buf qkv;
        make(&qkv, B * Sq * F, s->bf16, &seed, 1);
        q = qkv;
        a.q_sb = a.k_sb = a.v_sb = Sq * F, a.q_ss = a.k_ss = a.v_ss = F;
        a.q_hg = G, a.q_sg = (G + 2) * D, a.q_sh = D;
        a.k_off = G * D, a.k_sh = (G + 2) * D;
        a.v_off = (G + 1) * D, a.v_sh = (G + 2) * D;
        k = v = q;
    } else {
        make(&q, B * Hq * Sq * D, s->bf16, &seed, 1);
        make(&k, B * Hk * Sk * D, s->bf16, &seed, 1);
        make(&v, B * Hk * Sk * Dv, s->bf16, &seed, 1);
        a.q_sb = Hq * Sq * D, a.q_sh = Sq * D, a.q_ss = D, a.q_hg = 1, a.q_sg = Sq * D;
        a.k_sb = Hk * Sk * D, a.k_sh = Sk * D, a.k_ss = D;
        a.v_sb = Hk * Sk * Dv, a.v_sh = Sk * Dv, a.v_ss = Dv;
    }
    /* out as merge_heads reads it: (B, Sq, Hq, Dv) */
    a.o_sb = Sq * Hq * Dv, a.o_sh = Dv, a.o_ss = Hq * Dv;
    int64_t nbias = (s->bias == 2 ? B : 1) * Hq * Sq * Sk;
    make(&bias, s->bias ? nbias : 1, s->bf16, &seed, 0.5);
    a.bias_sb = s->bias == 2 ? Hq * Sq * Sk : 0, a.bias_sh = Sq * Sk, a.bias_si = Sk;
    make(&out, B * Sq * Hq * Dv, s->bf16, NULL, 0);
    make(&dout, B * Sq * Hq * Dv, s->bf16, &seed, 1);
    make(&dq, s->fused ? B * Sq * F : B * Hq * Sq * D, s->bf16, NULL, 0);
    dk = dv = dq;
    if (!s->fused) {
        make(&dk, B * Hk * Sk * D, s->bf16, NULL, 0);
        make(&dv, B * Hk * Sk * Dv, s->bf16, NULL, 0);
    }
    make(&dbias, nbias, s->bf16, NULL, 0);
    float *stats = calloc((size_t)(B * Hq * Sq * 2), 4), *delta = calloc((size_t)(B * Hq * Sq), 4);
    a.q = q.raw, a.k = k.raw, a.v = v.raw, a.bias = s->bias ? bias.raw : NULL, a.out = out.raw, a.stats = stats;
    a.delta = delta, a.dout = dout.raw, a.dq = dq.raw, a.dk = dk.raw, a.dv = dv.raw, a.dbias = dbias.raw;
    for (int fn = 0; fn < KN_ATTN_FNS; fn++)
        call(&K, fn, &a);

    /* the naive way, in double: P whole */
#define QI(b, h, i) (a.q_off + (b) * a.q_sb + ((h) / a.q_hg) * a.q_sg + ((h) % a.q_hg) * a.q_sh + (i) * a.q_ss)
#define KI(b, h, j) (a.k_off + (b) * a.k_sb + (h) * a.k_sh + (j) * a.k_ss)
#define VI(b, h, j) (a.v_off + (b) * a.v_sb + (h) * a.v_sh + (j) * a.v_ss)
#define OI(b, h, i) ((b) * a.o_sb + (h) * a.o_sh + (i) * a.o_ss)
#define BI(b, h, i, j) ((b) * a.bias_sb + (h) * a.bias_sh + (i) * a.bias_si + (j))
    double *wo = calloc((size_t)out.n, 8), *wdq = calloc((size_t)dq.n, 8), *wdk = calloc((size_t)dk.n, 8);
    double *wdv = calloc((size_t)dv.n, 8), *wdb = calloc((size_t)dbias.n, 8);
    double *P = calloc((size_t)(Sq * Sk), 8), *dS = calloc((size_t)(Sq * Sk), 8);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++) {
            int64_t hk = h / G;
            for (int64_t i = 0; i < Sq; i++) {
                double m = -INFINITY, sum = 0;
                for (int64_t j = 0; j < Sk; j++) {
                    double x = -INFINITY;
                    if (!s->causal || j <= i) {
                        x = 0;
                        for (int64_t d = 0; d < D; d++)
                            x += (double)q.f[QI(b, h, i) + d] * k.f[KI(b, hk, j) + d];
                        x = x * a.scale + (s->bias ? bias.f[BI(b, h, i, j)] : 0);
                    }
                    P[i * Sk + j] = x;
                    m = x > m ? x : m;
                }
                for (int64_t j = 0; j < Sk; j++)
                    sum += P[i * Sk + j] = exp(P[i * Sk + j] - m);
                for (int64_t j = 0; j < Sk; j++)
                    P[i * Sk + j] /= sum;
                for (int64_t e = 0; e < Dv; e++) {
                    double o = 0;
                    for (int64_t j = 0; j < Sk; j++)
                        o += P[i * Sk + j] * v.f[VI(b, hk, j) + e];
                    wo[OI(b, h, i) + e] = o;
                }
            }
            for (int64_t i = 0; i < Sq; i++) { /* dS = P (dP - rowsum(dP P)), dP = dout v^T */
                double dot = 0;
                for (int64_t j = 0; j < Sk; j++) {
                    double dp = 0;
                    for (int64_t e = 0; e < Dv; e++)
                        dp += (double)dout.f[OI(b, h, i) + e] * v.f[VI(b, hk, j) + e];
                    dS[i * Sk + j] = dp;
                    dot += dp * P[i * Sk + j];
                }
                for (int64_t j = 0; j < Sk; j++)
                    dS[i * Sk + j] = P[i * Sk + j] * (dS[i * Sk + j] - dot);
            }
            for (int64_t i = 0; i < Sq; i++)
                for (int64_t j = 0; j < Sk; j++) {
                    for (int64_t d = 0; d < D; d++) {
                        wdq[QI(b, h, i) + d] += dS[i * Sk + j] * a.scale * k.f[KI(b, hk, j) + d];
                        wdk[KI(b, hk, j) + d] += dS[i * Sk + j] * a.scale * q.f[QI(b, h, i) + d];
                    }
                    for (int64_t e = 0; e < Dv; e++)
                        wdv[VI(b, hk, j) + e] += P[i * Sk + j] * dout.f[OI(b, h, i) + e];
                    if (s->bias)
                        wdb[BI(b, h, i, j)] += dS[i * Sk + j];
                }
        }
    double worst = compare("out", s, side, &out, wo, out.n);
    if (s->fused) /* dq, dk, dv fill one buffer, each its own columns */
        for (int64_t i = 0; i < dq.n; i++)
            wdq[i] += wdk[i] + wdv[i];
    worst = fmax(worst, compare("dq", s, side, &dq, wdq, dq.n));
    if (!s->fused) {
        worst = fmax(worst, compare("dk", s, side, &dk, wdk, dk.n));
        worst = fmax(worst, compare("dv", s, side, &dv, wdv, dv.n));
    }
    if (s->bias)
        worst = fmax(worst, compare("dbias", s, side, &dbias, wdb, dbias.n));
    free(wo), free(wdq), free(wdk), free(wdv), free(wdb), free(P), free(dS), free(stats), free(delta);
    unmake(&q), unmake(&bias), unmake(&out), unmake(&dout), unmake(&dq), unmake(&dbias);
    if (!s->fused)
        unmake(&k), unmake(&v), unmake(&dk), unmake(&dv);
    unbuild(&K);
    return worst;
}

static const struct shape cases[] = {
    /* B  Hq Hk  Sq  Sk   D  Dv  causal bias fused bf16 shift */
    {2, 4, 4, 37, 37, 16, 16, true, 0, false, false, 0},  /* causal, tiles not filled */
    {2, 4, 4, 37, 37, 16, 16, false, 0, false, false, 0}, /* not causal */
    {2, 4, 2, 37, 37, 16, 16, true, 0, false, false, 0},  /* grouped-query */
    {2, 4, 4, 21, 45, 8, 12, false, 0, false, false, 0},  /* cross attention: Sq != Sk, D != Dv */
    {2, 4, 4, 37, 37, 16, 16, false, 1, false, false, 0}, /* a bias shared by the batch (T5) */
    {2, 4, 4, 37, 37, 16, 16, true, 2, false, false, 0},  /* one bias per sample, causal */
    {2, 4, 2, 70, 70, 16, 16, true, 0, true, false, 0},   /* views of a fused QKV, grouped, two key tiles */
    {2, 4, 2, 37, 37, 16, 16, true, 1, false, true, 0},   /* bf16 */
    /* bf16 at head dims the GPU runs on its tensor cores (kn_attn_mma) */
    {1, 2, 2, 100, 100, 64, 64, true, 0, false, true, 0},  /* causal, two query blocks, the last key tile not filled */
    {1, 8, 1, 70, 70, 128, 128, true, 0, false, true, 0},  /* grouped-query, 8 query heads a key head */
    {1, 2, 2, 37, 150, 80, 80, false, 0, false, true, 0},  /* cross attention: keys past a tile of queries */
    {2, 2, 2, 50, 50, 96, 96, true, 1, false, true, 0},    /* T5's bias, shared by the batch, and its gradient */
    {1, 2, 2, 40, 1, 64, 64, false, 0, false, true, 0},    /* one key */
    {1, 2, 2, 90, 30, 64, 128, true, 0, false, true, 0},   /* causal with fewer keys than queries; D != Dv */
    {2, 4, 2, 70, 70, 64, 64, true, 0, true, true, 0},     /* views of a fused QKV, grouped */
    {1, 2, 2, 70, 70, 64, 64, false, 2, false, true, 1},   /* rows off 16 bytes: plain loads, not cp.async */
};

/* Shapes drawn from a fixed seed over the tensor cores' edges: every head
 * dim, lengths from 1 to 150 (rarely a multiple of a tile), causal or not,
 * grouped-query up to 8 query heads a key head, either kind of bias. */
static struct shape random_shape(uint64_t *seed)
{
    static const int64_t dims[] = {64, 80, 96, 128}, groups[] = {1, 2, 4, 8};
#define PICK(n) ((int64_t)((rnd(seed) + 1) / 2 * (n)) % (n))
    struct shape s = {.B = 1 + PICK(2), .Hk = 1 + PICK(2), .Sq = 1 + PICK(150), .Sk = 1 + PICK(150), .D = dims[PICK(4)],
                      .causal = PICK(2), .bias = (int)PICK(3), .bf16 = true};
    s.Hq = s.Hk * groups[PICK(4)];
    s.Dv = PICK(3) ? s.D : dims[PICK(4)];
#undef PICK
    return s;
}

enum { RANDOM_SHAPES = 6 };

/* Every case on the CPU's kernels: the reference the plan's CPU backend runs. */
static void test_matches_naive(void **state)
{
    (void)state;
    double worst = 0, bf = 0;
    for (size_t i = 0; i < WF_COUNT(cases); i++) {
        double e = run_case(&cases[i], ON_CPU);
        *(cases[i].bf16 ? &bf : &worst) = fmax(*(cases[i].bf16 ? &bf : &worst), e);
    }
    uint64_t seed = 7;
    for (int i = 0; i < RANDOM_SHAPES; i++) {
        struct shape s = random_shape(&seed);
        bf = fmax(bf, run_case(&s, ON_CPU));
    }
    printf("    %zu cases and %d random shapes on the CPU, forward and backward: worst relative error %.2e (fp32), %.2e (bf16; "
           "normwise %.2e)\n",
           WF_COUNT(cases), RANDOM_SHAPES, worst, bf, bf16_norm[ON_CPU]);
}

/* Every case on the GPU's kernels, emulated: the CUDA-core ones, and the
 * tensor-core ones where kn_attn_mma takes the configuration. */
static void test_emulated_gpu(void **state)
{
    (void)state;
    double worst = 0, bf = 0, mma = 0;
    int n_mma = 0;
    uint64_t seed = 7;
    for (size_t i = 0; i < WF_COUNT(cases) + RANDOM_SHAPES; i++) {
        struct shape drawn = i >= WF_COUNT(cases) ? random_shape(&seed) : (struct shape){0};
        const struct shape *s = i < WF_COUNT(cases) ? &cases[i] : &drawn;
        double e = run_case(s, ON_EMULATED_GPU);
        bool tensor = kn_attn_mma(&(struct kn_attn){.dtype = s->bf16 ? IR_DTYPE_BF16 : IR_DTYPE_F32, .D = (int)s->D, .Dv = (int)s->Dv});
        double *w = tensor ? &mma : s->bf16 ? &bf : &worst;
        *w = fmax(*w, e);
        n_mma += tensor;
    }
    printf("    %zu cases and %d random shapes on the emulated GPU, forward and backward: worst relative error %.2e (fp32), %.2e "
           "(bf16), %.2e (bf16 on the tensor cores, %d of them); bf16 normwise %.2e\n",
           WF_COUNT(cases), RANDOM_SHAPES, worst, bf, mma, n_mma, bf16_norm[ON_EMULATED_GPU]);
}

/* The CUDA-core kernels through NVRTC for sm_80 and sm_90: GPT-2's in
 * fp32 (64, causal), T5's (a bias and its gradient).  (NVRTC takes about
 * two seconds a configuration and architecture; the bf16 configurations
 * models use, Llama's 128 and GPT-2's 64 among them, are test_mma_kernels'.) */
static void test_nvrtc(void **state)
{
    (void)state;
    skip_without_nvrtc();
    static const struct kn_attn configs[] = {
        {.dtype = IR_DTYPE_F32, .D = 64, .Dv = 64, .causal = true, .backward = true},
        {.dtype = IR_DTYPE_F32, .D = 16, .Dv = 16, .causal = true, .bias = true, .bias_grad = true, .backward = true},
    };
    int n = 0;
    double seconds = 0;
    for (size_t c = 0; c < WF_COUNT(configs); c++) {
        char *src = emit_attention(&configs[c], "attn", KN_LANG_CUDA);
        int archs[] = {80, 90};
        for (int k = 0; k < 2; k++) {
            struct nvrtc_out o;
            if (nvrtc_compile(src, "attn", archs[k], false, &o))
                fail_msg("NVRTC rejects attention config %zu for sm_%d:\n%s", c, archs[k], o.log);
            seconds += o.seconds;
            n++;
            nvrtc_out_free(&o);
        }
        free(src);
    }
    printf("    %d attention cubins in %.2f s\n", n, seconds);
}

/* The first number after each `key` in ptxas's report (0 when none). */
static long report_number(const char *log, const char *key)
{
    const char *at = strstr(log, key);
    if (!at)
        return 0;
    while (at > log && (at[-1] == ' ' || (at[-1] >= '0' && at[-1] <= '9')))
        at--;
    return strtol(at, NULL, 10);
}

/* Whether SASS in cubin (bytes, size) names every one of ops, read by
 * nvdisasm ($CUDA_HOME/bin, else the PATH); -1 with why when there is none. */
static int sass_has(const void *bytes, size_t size, const char *const *ops, int n_ops, char *why, size_t n_why)
{
    const char *home = getenv("CUDA_HOME");
    char path[512], cmd[1200], cubin[] = "/tmp/weft-attn-XXXXXX";
    snprintf(path, sizeof path, "%s/bin/nvdisasm", home && *home ? home : "/usr/local/cuda");
    if (access(path, X_OK) && system("command -v nvdisasm > /dev/null 2>&1") != 0) {
        snprintf(why, n_why, "no nvdisasm (%s, nor on the PATH): the SASS is not read", path);
        return -1;
    }
    int fd = mkstemp(cubin);
    assert_true(fd >= 0 && write(fd, bytes, size) == (ssize_t)size);
    close(fd);
    snprintf(cmd, sizeof cmd, "%s %s", access(path, X_OK) ? "nvdisasm" : path, cubin);
    FILE *p = popen(cmd, "r");
    char line[512];
    int seen = 0;
    while (p && fgets(line, sizeof line, p))
        for (int i = 0; i < n_ops; i++)
            if (strstr(line, ops[i]))
                seen |= 1 << i;
    if (p)
        pclose(p);
    unlink(cubin);
    return seen == (1 << n_ops) - 1;
}

/* ptxas's report of one function in a log of several: the lines from its
 * "Compiling entry function 'NAME'" to the next one (NULL when absent). */
static char *function_report(const char *log, const char *name)
{
    char key[128];
    snprintf(key, sizeof key, "entry function '%s'", name);
    const char *at = strstr(log, key);
    if (!at)
        return NULL;
    const char *end = strstr(at + strlen(key), "entry function '");
    size_t n = end ? (size_t)(end - at) : strlen(at);
    char *r = malloc(n + 1);
    memcpy(r, at, n);
    r[n] = 0;
    return r;
}

/* The tensor-core kernels (kn_attn_mma): which configs take them, their
 * launches, and every head dim through NVRTC for sm_80 and sm_90 with
 * ptxas's report of each function: no local memory (spills, stack), and in
 * the SASS the tensor-core ops (HMMA) fed by ldmatrix (LDSM) and cp.async
 * (LDGSTS) where a disassembler is. */
static void test_mma_kernels(void **state)
{
    (void)state;
    /* the predicate: bf16 and head dims of 64, 80, 96 or 128, else the CUDA cores */
    assert_true(kn_attn_mma(&(struct kn_attn){.dtype = IR_DTYPE_BF16, .D = 80, .Dv = 80}));
    assert_true(kn_attn_mma(&(struct kn_attn){.dtype = IR_DTYPE_BF16, .D = 64, .Dv = 128}));
    assert_false(kn_attn_mma(&(struct kn_attn){.dtype = IR_DTYPE_F32, .D = 64, .Dv = 64}));
    assert_false(kn_attn_mma(&(struct kn_attn){.dtype = IR_DTYPE_BF16, .D = 16, .Dv = 16}));
    /* the launches: 4 warps of 16 rows, so 64 query rows (bwd_kv: keys) a block, 1000 rows in 16 blocks; delta stays a thread a row */
    const struct kn_attn fast = {.dtype = IR_DTYPE_BF16, .D = 128, .Dv = 128, .backward = true};
    const struct kn_attn_args args = {.B = 3, .Hq = 8, .Hk = 2, .Sq = 1000, .Sk = 900};
    int64_t grid[3];
    kn_attn_grid(&fast, &args, KN_ATTN_FWD, grid);
    assert_true(grid[0] == 16 && grid[1] == 8 && grid[2] == 3);
    kn_attn_grid(&fast, &args, KN_ATTN_BWD_KV, grid);
    assert_true(grid[0] == 15 && grid[1] == 2 && grid[2] == 3);
    for (int fn = 0; fn < KN_ATTN_FNS; fn++)
        assert_int_equal(kn_attn_threads(&fast, fn), fn == KN_ATTN_DELTA ? KN_ATTN_THREADS : 128);
    /* shared memory, counted by hand: two buffers of 64 keys of K and V rows padded to 136 bf16s; bwd_kv's
     * block of 64 keys, two buffers of 16 queries' Q and dO rows, their log-sum-exps and deltas */
    assert_int_equal(kn_attn_shared_bytes(&fast, KN_ATTN_FWD), 2 * 64 * 2 * 136 * 2);
    assert_int_equal(kn_attn_shared_bytes(&fast, KN_ATTN_BWD_KV), 64 * 2 * 136 * 2 + 2 * 16 * 2 * 136 * 2 + 2 * 2 * 16 * 4);
    assert_int_equal(kn_attn_shared_bytes(&fast, KN_ATTN_DELTA), 0);
    char *src = emit_attention(&fast, "attn", KN_LANG_CUDA), *slow = emit_attention(&(struct kn_attn){.dtype = IR_DTYPE_F32, .D = 128, .Dv = 128}, "attn", KN_LANG_CUDA);
    assert_non_null(strstr(src, "mma.sync.aligned.m16n8k16"));
    assert_null(strstr(slow, "mma.sync"));
    free(src), free(slow);

    skip_without_nvrtc();
    static const struct kn_attn configs[] = {
        {.dtype = IR_DTYPE_BF16, .D = 64, .Dv = 64, .causal = true, .backward = true},
        {.dtype = IR_DTYPE_BF16, .D = 80, .Dv = 80, .bias = true, .bias_grad = true, .backward = true},
        {.dtype = IR_DTYPE_BF16, .D = 96, .Dv = 96, .causal = true, .bias = true, .backward = true},
        {.dtype = IR_DTYPE_BF16, .D = 128, .Dv = 128, .causal = true, .backward = true},
    };
    static const char *const tensor_ops[] = {"HMMA.16816.F32.BF16", "LDSM.16.M88.4", "LDSM.16.MT88.4", "LDGSTS"};
    static const enum kn_attn_fn fns[] = {KN_ATTN_FWD, KN_ATTN_BWD_KV, KN_ATTN_BWD_Q};
    char why[600] = "";
    int disassembled = 0;
    for (size_t c = 0; c < WF_COUNT(configs); c++) {
        src = emit_attention(&configs[c], "attn", KN_LANG_CUDA);
        int archs[] = {80, 90};
        for (int k = 0; k < 2; k++) {
            struct nvrtc_out o;
            if (nvrtc_compile_report(src, "attn", archs[k], &o))
                fail_msg("NVRTC rejects the tensor-core kernels, head dim %d, for sm_%d:\n%s", configs[c].D, archs[k], o.log);
            printf("    head dim %3d%s%s, sm_%d:", configs[c].D, configs[c].causal ? ", causal" : "", configs[c].bias ? ", bias" : "", archs[k]);
            for (size_t f = 0; f < WF_COUNT(fns); f++) {
                char name[32];
                snprintf(name, sizeof name, "attn%s", kn_attn_fn_suffix[fns[f]]);
                char *r = function_report(o.log, name);
                if (!r)
                    fail_msg("ptxas reports nothing of %s:\n%s", name, o.log);
                long regs = report_number(r, " registers"), spills = report_number(r, " bytes spill stores"),
                     stack = report_number(r, " bytes stack frame"), smem = report_number(r, " bytes smem");
                int64_t dynamic = kn_attn_shared_bytes(&configs[c], fns[f]);
                printf(" %s %ld registers%s", name + 5, regs, f + 1 < WF_COUNT(fns) ? "," : "");
                if (spills || stack || regs > 255 || smem || dynamic > 99 * 1024)
                    fail_msg("%s, head dim %d, sm_%d, uses local memory or static shared memory, or %lld bytes of dynamic:\n%s", name,
                             configs[c].D, archs[k], (long long)dynamic, r);
                free(r);
            }
            printf("; no spills, no stack\n");
            int has = sass_has(o.bytes, o.size, tensor_ops, (int)WF_COUNT(tensor_ops), why, sizeof why);
            if (has == 0)
                fail_msg("the SASS of head dim %d, sm_%d, lacks HMMA, LDSM or LDGSTS", configs[c].D, archs[k]);
            disassembled += has == 1;
            nvrtc_out_free(&o);
        }
        free(src);
    }
    if (disassembled)
        printf("    %d cubins' SASS hold HMMA.16816.F32.BF16, LDSM (.M88 and .MT88) and LDGSTS\n", disassembled);
    else
        printf("    SASS not read: %s\n", why);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_naive),
        cmocka_unit_test(test_emulated_gpu),
        cmocka_unit_test(test_nvrtc),
        cmocka_unit_test(test_mma_kernels),
    };
    return cmocka_run_group_tests_name("attention", tests, NULL, NULL);
}
