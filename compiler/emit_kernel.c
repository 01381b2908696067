/* emit_kernel.c: C and CUDA C from a fused-kernel description (see
 * emit_kernel.h).  One walk over the description serves both languages:
 * they differ in the loops around a pass and in how a reduction ends. */
#include "emit_kernel.h"
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct text {
    char *s;
    size_t n, cap;
};

static void put(struct text *t, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int need = vsnprintf(t->s ? t->s + t->n : NULL, t->s ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (t->s && (size_t)need < t->cap - t->n) {
            t->n += (size_t)need;
            return;
        }
        t->cap = (t->cap + (size_t)need + 1) * 2;
        t->s = wf_realloc(t->s, t->cap);
    }
}

/* What both languages share: the argument struct, bf16 conversions, the
 * counter-based generator (kn_uniform's bits), positions. */
static const char common[] =
    "static KN_FN float kn_from_bf16(uint16_t v) { return kn_bits_float((uint32_t)v << 16); }\n"
    "static KN_FN uint16_t kn_to_bf16(float f)\n"
    "{\n"
    "    uint32_t u = kn_float_bits(f);\n"
    "    if (f != f)\n"
    "        return 0x7fc0;\n"
    "    u += 0x7fff + ((u >> 16) & 1); /* round to nearest, ties to even */\n"
    "    return (uint16_t)(u >> 16);\n"
    "}\n"
    "static KN_FN uint64_t kn_mix(uint64_t x)\n"
    "{\n"
    "    x ^= x >> 30;\n"
    "    x *= 0xbf58476d1ce4e5b9ull;\n"
    "    x ^= x >> 27;\n"
    "    x *= 0x94d049bb133111ebull;\n"
    "    x ^= x >> 31;\n"
    "    return x;\n"
    "}\n"
    "/* dropout's keep: the draw of the element's index in the whole tensor is at least p */\n"
    "static KN_FN int kn_keep(const struct kn_args *a, int s, int64_t r, int64_t c, double p)\n"
    "{\n"
    "    int64_t idx = (c + a->off[a->rank - 1]) * a->stride[a->rank - 1], rr = r;\n"
    "    for (int64_t i = a->rank - 2; i >= 0; i--) {\n"
    "        idx += (rr % a->dim[i] + a->off[i]) * a->stride[i];\n"
    "        rr /= a->dim[i];\n"
    "    }\n"
    "    uint64_t h = kn_mix(kn_mix(a->seed ^ 0x9e3779b97f4a7c15ull) ^ kn_mix(a->stream[s]) ^\n"
    "                        kn_mix((uint64_t)idx * 0x2545f4914f6cdd1dull + 1));\n"
    "    return (double)(h >> 11) * (1.0 / 9007199254740992.0) >= p;\n"
    "}\n"
    "/* where row r of a (B, H, S) x D domain starts in a view of a fused QKV (kernel.h, HEADS) */\n"
    "static KN_FN int64_t kn_view(const struct kn_args *a, const int64_t *v, int64_t r)\n"
    "{\n"
    "    const int64_t s = r % a->dim[2], h = r / a->dim[2] % a->dim[1], b = r / (a->dim[2] * a->dim[1]);\n"
    "    return v[0] + b * v[1] + (h / v[4]) * v[5] + (h % v[4]) * v[2] + s * v[3];\n"
    "}\n"
    "/* where row r of a part starts in the whole it is a part of (kernel.h, ROWMAP) */\n"
    "static KN_FN int64_t kn_rowmap(const int64_t *v, int64_t r) { return ((r / v[0]) * v[1] + v[2] + r % v[0]) * v[3] + v[4]; }\n"
    "/* patchify's element (r, c) in its image (kernel.h, PATCHES) */\n"
    "static KN_FN int64_t kn_patch(const int64_t *v, int64_t r, int64_t c)\n"
    "{\n"
    "    const int64_t b = r / v[0], i = r % v[0], ch = c / (v[2] * v[2]), di = c / v[2] % v[2], dj = c % v[2];\n"
    "    return ((b * v[3] + ch) * v[4] + (i / v[1]) * v[2] + di) * v[5] + (i % v[1]) * v[2] + dj;\n"
    "}\n"
    "/* whether a table's shard (view v: its first row, its rows) holds row i */\n"
    "static KN_FN int kn_holds(const int64_t *v, float i) { return (int64_t)i >= v[0] && (int64_t)i < v[0] + v[1]; }\n"
    "/* row r's local coordinate along the row axis `inward` places before the last one */\n"
    "static KN_FN float kn_coord(const struct kn_args *a, int64_t r, int inward)\n"
    "{\n"
    "    const int64_t axis = a->rank - 2 - inward;\n"
    "    if (axis < 0)\n"
    "        return 0.f;\n"
    "    for (int64_t i = a->rank - 2; i > axis; i--)\n"
    "        r /= a->dim[i];\n"
    "    return (float)(r % a->dim[axis]);\n"
    "}\n"
    "static KN_FN float kn_rowpos(const struct kn_args *a, int64_t r)\n"
    "{\n"
    "    return a->rank >= 2 ? (float)(r % a->dim[a->rank - 2] + a->off[a->rank - 2]) : 0.f;\n"
    "}\n";

/* CUDA: consecutive elements a thread, in one access each: eight where
 * the kernel's per-element slots are all bf16 or bytes (16 and 8 bytes),
 * four where one is f32 (16 bytes; eight would be two accesses that each
 * fill half of every 32-byte sector a warp touches).  The kernel checks at
 * its start that every pointer and row allows them (kn_vec), else it runs
 * its scalar loops. */
static const char cuda_vector[] =
    "struct alignas(16) kn_x16 { uint32_t x, y, z, w; };\n"
    "struct alignas(8) kn_x8 { uint32_t x, y; };\n"
    "static KN_FN int kn_aligned(const void *p) { return ((unsigned long long)p & 15) == 0; }\n"
    "/* a HEADS view whose rows all start at multiples of eight elements */\n"
    "static KN_FN int kn_view_ok(const int64_t *v) { return ((v[0] | v[1] | v[2] | v[3] | v[5]) & 7) == 0; }\n"
    "static KN_FN void kn_ld8_bf16(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    const kn_x16 x = *(const kn_x16 *)((const uint16_t *)p + i);\n"
    "    const uint32_t w[4] = {x.x, x.y, x.z, x.w};\n"
    "    for (int j = 0; j < 4; j++)\n"
    "        v[2 * j] = kn_bits_float(w[j] << 16), v[2 * j + 1] = kn_bits_float(w[j] & 0xffff0000u);\n"
    "}\n"
    "static KN_FN void kn_st8_bf16(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    uint32_t w[4];\n"
    "    for (int j = 0; j < 4; j++)\n"
    "        w[j] = (uint32_t)kn_to_bf16(v[2 * j]) | (uint32_t)kn_to_bf16(v[2 * j + 1]) << 16;\n"
    "    *(kn_x16 *)((uint16_t *)p + i) = kn_x16{w[0], w[1], w[2], w[3]};\n"
    "}\n"
    "static KN_FN void kn_ld4_f32(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    const kn_x16 x = *(const kn_x16 *)((const float *)p + i);\n"
    "    v[0] = __uint_as_float(x.x), v[1] = __uint_as_float(x.y), v[2] = __uint_as_float(x.z), v[3] = __uint_as_float(x.w);\n"
    "}\n"
    "static KN_FN void kn_st4_f32(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    *(kn_x16 *)((float *)p + i) = kn_x16{__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3])};\n"
    "}\n"
    "static KN_FN void kn_ld4_bf16(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    const kn_x8 x = *(const kn_x8 *)((const uint16_t *)p + i);\n"
    "    v[0] = kn_bits_float(x.x << 16), v[1] = kn_bits_float(x.x & 0xffff0000u);\n"
    "    v[2] = kn_bits_float(x.y << 16), v[3] = kn_bits_float(x.y & 0xffff0000u);\n"
    "}\n"
    "static KN_FN void kn_st4_bf16(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    *(kn_x8 *)((uint16_t *)p + i) = kn_x8{(uint32_t)kn_to_bf16(v[0]) | (uint32_t)kn_to_bf16(v[1]) << 16,\n"
    "                                         (uint32_t)kn_to_bf16(v[2]) | (uint32_t)kn_to_bf16(v[3]) << 16};\n"
    "}\n"
    "static KN_FN void kn_ld4_u8(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    const uint32_t x = *(const uint32_t *)((const uint8_t *)p + i);\n"
    "    for (int j = 0; j < 4; j++)\n"
    "        v[j] = (float)(x >> 8 * j & 0xff);\n"
    "}\n"
    "static KN_FN void kn_st4_u8(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    uint32_t x = 0;\n"
    "    for (int j = 0; j < 4; j++)\n"
    "        x |= (uint32_t)(v[j] != 0.f) << 8 * j;\n"
    "    *(uint32_t *)((uint8_t *)p + i) = x;\n"
    "}\n"
    "static KN_FN void kn_ld8_u8(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    const kn_x8 x = *(const kn_x8 *)((const uint8_t *)p + i);\n"
    "    for (int j = 0; j < 4; j++)\n"
    "        v[j] = (float)(x.x >> 8 * j & 0xff), v[4 + j] = (float)(x.y >> 8 * j & 0xff);\n"
    "}\n"
    "static KN_FN void kn_st8_u8(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    uint32_t lo = 0, hi = 0;\n"
    "    for (int j = 0; j < 4; j++)\n"
    "        lo |= (uint32_t)(v[j] != 0.f) << 8 * j, hi |= (uint32_t)(v[4 + j] != 0.f) << 8 * j;\n"
    "    *(kn_x8 *)((uint8_t *)p + i) = kn_x8{lo, hi};\n"
    "}\n";

const char emit_c_math[] =
    "#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11\n"
    "#define KN_CLONES __attribute__((target_clones(\"arch=x86-64-v4\", \"arch=x86-64-v3\", \"default\")))\n"
    "#else\n"
    "#define KN_CLONES\n"
    "#endif\n"
    "/* e^x = 2^n e^r, n = x / ln 2 rounded, |r| <= ln 2 / 2 (Cephes's expf); 2^n as two factors, so that\n"
    " * x may run past the exponent's range either way: inf past 88.72, 0 below -103.9 and for -inf */\n"
    "static inline float kn_expf(float x)\n"
    "{\n"
    "    const float xc = x > 89.f ? 89.f : x > -110.f ? x : -110.f;\n"
    "    const float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f; /* to nearest: 1.5 * 2^23 */\n"
    "    const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;\n"
    "    float p = 1.9875691500e-4f;\n"
    "    p = p * r + 1.3981999507e-3f;\n"
    "    p = p * r + 8.3334519073e-3f;\n"
    "    p = p * r + 4.1665795894e-2f;\n"
    "    p = p * r + 1.6666665459e-1f;\n"
    "    p = p * r + 5.0000001201e-1f;\n"
    "    const int32_t i = (int32_t)n, h = i / 2;\n"
    "    const uint32_t u1 = (uint32_t)(h + 127) << 23, u2 = (uint32_t)(i - h + 127) << 23;\n"
    "    float s1, s2;\n"
    "    memcpy(&s1, &u1, 4);\n"
    "    memcpy(&s2, &u2, 4);\n"
    "    return x != x ? x : (p * r * r + r + 1.f) * s1 * s2;\n"
    "}\n"
    "/* fmaxf (a NaN loses), as a select: libm's is a call */\n"
    "static inline float kn_fmaxf(float x, float y) { return x > y || y != y ? x : y; }\n"
    "/* below |x| 0.625 x + x^3 P(x^2) (Cephes's tanhf), above 1 - 2 / (e^2|x| + 1) with x's sign */\n"
    "static inline float kn_tanhf(float x)\n"
    "{\n"
    "    const float ax = fabsf(x), z = x * x;\n"
    "    const float p = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -\n"
    "                     3.33332819422e-1f) * z * x + x;\n"
    "    const float e = 1.f - 2.f / (kn_expf(2.f * ax) + 1.f);\n"
    "    return ax < 0.625f ? p : x < 0.f ? -e : e;\n"
    "}\n";

/* C: KN_C_LANES consecutive columns at a time, read into arrays before the
 * arithmetic and written after it, as the CUDA variant does; the compiler
 * vectorises the loop over the lanes.  (Plain column loops did not
 * vectorise: an output that is also an input, as AdamW's moments are,
 * fails the compiler's run-time overlap check, and a sum into one float
 * is a chain the compiler may not reorder.)  Sums and maxima run per lane,
 * then across the lanes in a fixed order. */
#define KN_C_LANES 16
static const char c_vector[] =
    "#define KN_LANES 16\n"
    "static inline void kn_ld16_f32(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    for (int j = 0; j < KN_LANES; j++)\n"
    "        v[j] = ((const float *)p)[i + j];\n"
    "}\n"
    "static inline void kn_st16_f32(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    for (int j = 0; j < KN_LANES; j++)\n"
    "        ((float *)p)[i + j] = v[j];\n"
    "}\n"
    "static inline void kn_ld16_bf16(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    for (int j = 0; j < KN_LANES; j++)\n"
    "        v[j] = kn_from_bf16(((const uint16_t *)p)[i + j]);\n"
    "}\n"
    "static inline void kn_st16_bf16(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    for (int j = 0; j < KN_LANES; j++)\n"
    "        ((uint16_t *)p)[i + j] = kn_to_bf16(v[j]);\n"
    "}\n"
    "static inline void kn_ld16_u8(const void *p, int64_t i, float *v)\n"
    "{\n"
    "    for (int j = 0; j < KN_LANES; j++)\n"
    "        v[j] = (float)((const uint8_t *)p)[i + j];\n"
    "}\n"
    "static inline void kn_st16_u8(void *p, int64_t i, const float *v)\n"
    "{\n"
    "    for (int j = 0; j < KN_LANES; j++)\n"
    "        ((uint8_t *)p)[i + j] = (uint8_t)(v[j] != 0.f);\n"
    "}\n"
    "/* across the lanes, halving: the same order on every machine */\n"
    "static inline float kn_lanes_sum(float *v)\n"
    "{\n"
    "    for (int w = KN_LANES / 2; w > 0; w /= 2)\n"
    "        for (int j = 0; j < w; j++)\n"
    "            v[j] += v[j + w];\n"
    "    return v[0];\n"
    "}\n"
    "static inline float kn_lanes_max(float *v)\n"
    "{\n"
    "    for (int w = KN_LANES / 2; w > 0; w /= 2)\n"
    "        for (int j = 0; j < w; j++)\n"
    "            v[j] = kn_fmaxf(v[j], v[j + w]);\n"
    "    return v[0];\n"
    "}\n";

static const char c_prelude[] =
    "#include <math.h>\n"
    "#include <stdint.h>\n"
    "#include <string.h>\n"
    "#define KN_FN inline\n"
    "static inline float kn_bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }\n"
    "static inline uint32_t kn_float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }\n";

/* (what tests/cuda_emu.h defines itself stays behind KN_EMULATE: it runs this source on the CPU) */
static const char cuda_prelude[] =
    "#ifndef KN_EMULATE\n"
    "typedef long long int64_t;\n"
    "typedef unsigned long long uint64_t;\n"
    "typedef unsigned int uint32_t;\n"
    "typedef int int32_t;\n"
    "typedef unsigned short uint16_t;\n"
    "typedef unsigned char uint8_t;\n"
    "#define INFINITY __int_as_float(0x7f800000)\n"
    "#endif\n"
    "#define KN_FN __device__ __forceinline__\n"
    "static KN_FN float kn_bits_float(uint32_t u) { return __uint_as_float(u); }\n"
    "static KN_FN uint32_t kn_float_bits(float f) { return __float_as_uint(f); }\n"
    "/* a block's sum and max: every thread gets the result */\n"
    "static __device__ float kn_block_reduce(float v, int max)\n"
    "{\n"
    "    __shared__ float part[32];\n"
    "    for (int o = 16; o > 0; o >>= 1) {\n"
    "        float w = __shfl_xor_sync(0xffffffffu, v, o);\n"
    "        v = max ? fmaxf(v, w) : v + w;\n"
    "    }\n"
    "    __syncthreads(); /* part[] may still be read by the last reduction */\n"
    "    if ((threadIdx.x & 31) == 0)\n"
    "        part[threadIdx.x >> 5] = v;\n"
    "    __syncthreads();\n"
    "    float id = max ? -INFINITY : 0.f;\n"
    "    v = (threadIdx.x & 31) < (blockDim.x >> 5) ? part[threadIdx.x & 31] : id; /* every warp sums the parts */\n"
    "    for (int o = 16; o > 0; o >>= 1) {\n"
    "        float w = __shfl_xor_sync(0xffffffffu, v, o);\n"
    "        v = max ? fmaxf(v, w) : v + w;\n"
    "    }\n"
    "    return __shfl_sync(0xffffffffu, v, 0);\n"
    "}\n"
    "/* the rows r whose own is set, in order, into mine[]; how many.  Every thread of the block calls it */\n"
    "static __device__ int kn_block_compact(int own, int64_t r, int64_t *mine)\n"
    "{\n"
    "    __shared__ int counts[32];\n"
    "    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;\n"
    "    const unsigned ballot = __ballot_sync(0xffffffffu, own);\n"
    "    __syncthreads(); /* the last call's counts are read */\n"
    "    if (lane == 0)\n"
    "        counts[warp] = __popc(ballot);\n"
    "    __syncthreads();\n"
    "    int at = __popc(ballot & ((1u << lane) - 1u)), total = 0;\n"
    "    for (int w = 0; w < (int)(blockDim.x >> 5); w++) {\n"
    "        at += w < warp ? counts[w] : 0;\n"
    "        total += counts[w];\n"
    "    }\n"
    "    if (own)\n"
    "        mine[at] = r;\n"
    "    __syncthreads();\n"
    "    return total;\n"
    "}\n";

struct emitter {
    const struct kn_kernel *k;
    enum kn_lang lang;
    struct text t;
    bool per[KN_MAX_NODES];
    int phase[KN_MAX_NODES];
    bool need[KN_MAX_NODES];
    int stored[KN_MAX_NODES];   /* a per-element value stored whole: the STORE node, else -1 */
    int pass;                   /* the pass being written */
    bool rowwise;               /* no value varies along a row: CUDA runs a thread per row */
    bool split;                 /* C: rows are independent (nothing is added into but whole rows of FULL outputs, which
                                 * the backend splits only where no output has a modulus), the body is NAME_rows(a, r0, r1) */
    int vec;                    /* CUDA: 0, or the variant that takes vec columns a thread (c0 ..), per-element
                                 * slots read into and written from arrays (kn_in<slot>[kn_v], kn_out<slot>[kn_v]) */
    bool resident;              /* CUDA, a block a row, vector variant: where a row fits the block's threads (kn_resident),
                                 * each thread keeps its columns' sums in registers (kn_rs<slot>) across the block's rows
                                 * and writes them once, instead of adding into the block's partial sums row by row */
};

/* Whether pass e->pass reads node i back from the output an earlier pass
 * stored it to, instead of computing it again. */
static bool reloads(const struct emitter *e, int i)
{
    return e->stored[i] >= 0 && e->phase[e->stored[i]] < e->pass;
}

static const char *ctype(int dtype)
{
    switch (dtype) {
    case IR_DTYPE_BF16:
    case IR_DTYPE_F16: return "uint16_t";
    case IR_DTYPE_I32: return "int32_t";
    case KN_DTYPE_U8: return "uint8_t";
    default: return "float";
    }
}

/* A node's variable: e<i> inside a pass's column loop, v<i> per row. */
static void name(struct emitter *e, int i, char *out, size_t n) { snprintf(out, n, "%c%d", e->per[i] ? 'e' : 'v', i); }

/* The offset of row r's first element of a slot, given its access, into out. */
static const char *row_base(const struct kn_slot *s, int slot, bool input, int component, char *out, size_t n)
{
    switch (s->access) {
    case KN_FULL:
        snprintf(out, n, "(a->%s[%d] ? r %% a->%s[%d] : r) * cols", input ? "mod" : "omod", slot, input ? "mod" : "omod", slot);
        break;
    case KN_ROW_DIV: snprintf(out, n, "(r / a->mod[%d]) * cols", slot); break;
    case KN_ROW: snprintf(out, n, "r"); break;
    case KN_ROWSTATS: snprintf(out, n, "r * 2 + %d", component); break;
    case KN_ROWVEC: snprintf(out, n, "r * a->%s[%d][0] + %d", input ? "vin" : "vout", slot, component); break;
    case KN_ROWMAP: snprintf(out, n, "kn_rowmap(a->%s[%d], r)", input ? "vin" : "vout", slot); break;
    case KN_HEADS: snprintf(out, n, "kn_view(a, a->%s[%d], r)", input ? "vin" : "vout", slot); break;
    default: snprintf(out, n, "0"); break;
    }
    return out;
}

/* An input access whose elements of a row lie side by side (so eight of
 * them are one vector access): a HEADS view's row too when its offsets are
 * multiples of eight (kn_view_ok), a GATHER's table row. */
static bool contiguous(int access)
{
    return access == KN_FULL || access == KN_COLUMN || access == KN_ROW_DIV || access == KN_HEADS || access == KN_GATHER;
}

static const char *vec_type(int dtype)
{
    return dtype == IR_DTYPE_F32 ? "f32" : dtype == IR_DTYPE_BF16 || dtype == IR_DTYPE_F16 ? "bf16" : dtype == KN_DTYPE_U8 ? "u8" : NULL;
}

/* The columns a thread of the vector variant takes (cuda_vector): 0 where
 * some per-element access cannot be a vector one (only contiguous loads
 * and FULL stores of f32, bf16 or bytes can; a COLUMN sum goes to the
 * partial sums, which are f32). */
static int vector_width(const struct kn_kernel *k, const bool *per)
{
    int width = 8;
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        if (!per[i] || (n->op != KN_LOAD && n->op != KN_STORE && n->op != KN_ACCUM))
            continue;
        const struct kn_slot *s = n->op == KN_LOAD ? &k->in[n->slot] : &k->out[n->slot];
        bool column_sum = n->op == KN_ACCUM && s->access == KN_COLUMN;
        if (!column_sum && (!vec_type(s->dtype) || !(n->op == KN_LOAD ? contiguous(s->access) : s->access == KN_FULL)))
            return 0;
        if (column_sum || s->dtype == IR_DTYPE_F32)
            width = 4;
    }
    return width;
}

/* C: KN_C_LANES where the CUDA variant could take a vector (its accesses
 * allow it) and some value varies along the row, else 0. */
static int c_lanes(const struct kn_kernel *k, const bool *per)
{
    bool any = false;
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        any |= per[i];
        if (per[i] && n->op == KN_ACCUM && k->out[n->slot].access == KN_COLUMN && !vec_type(k->out[n->slot].dtype))
            return 0; /* C adds a column's sums into the output itself */
    }
    return any && vector_width(k, per) ? KN_C_LANES : 0;
}

static void load(struct emitter *e, const struct kn_node *n)
{
    const struct kn_slot *s = &e->k->in[n->slot];
    if (e->vec && s->access == KN_GATHER) { /* read before the lanes' loop (vec_preload), by the node: its index is its own */
        put(&e->t, "kn_ga%d[kn_v]", (int)(n - e->k->nodes));
        return;
    }
    if (e->vec && contiguous(s->access)) {
        put(&e->t, "kn_in%d%s[kn_v]", n->slot, n->imm == 1 ? "p" : "");
        return;
    }
    if (s->access == KN_PATCHES) {
        put(&e->t, "%s((const %s *)a->in[%d])[kn_patch(a->vin[%d], r, c)])",
            s->dtype == IR_DTYPE_BF16 || s->dtype == IR_DTYPE_F16 ? "kn_from_bf16(" : "(float)(", ctype(s->dtype), n->slot, n->slot);
        return;
    }
    if (s->access == KN_PICK) { /* the index's element of the vector, 0 outside it */
        char i[16];
        name(e, n->a, i, sizeof i);
        put(&e->t, "kn_holds(a->vin[%d], %s) ? %s((const %s *)a->in[%d])[(int64_t)%s - a->vin[%d][0]]) : 0.f", n->slot, i,
            s->dtype == IR_DTYPE_BF16 || s->dtype == IR_DTYPE_F16 ? "kn_from_bf16(" : "(float)(", ctype(s->dtype), n->slot, i, n->slot);
        return;
    }
    if (s->access == KN_GATHER) { /* the index's row of the table, 0 off this rank's shard */
        char i[16];
        name(e, n->a, i, sizeof i);
        put(&e->t, "kn_holds(a->vin[%d], %s) ? %s((const %s *)a->in[%d])[((int64_t)%s - a->vin[%d][0]) * cols + c]) : 0.f",
            n->slot, i, s->dtype == IR_DTYPE_BF16 || s->dtype == IR_DTYPE_F16 ? "kn_from_bf16(" : "(float)(", ctype(s->dtype),
            n->slot, i, n->slot);
        return;
    }
    bool per = s->access == KN_FULL || s->access == KN_COLUMN || s->access == KN_ROW_DIV || s->access == KN_HEADS ||
               s->access == KN_ROWMAP || s->access == KN_PATCHES;
    const char *col = n->imm == 1 && per ? "(c < cols / 2 ? c + cols / 2 : c - cols / 2)" : "c";
    if (s->dtype == IR_DTYPE_BF16 || s->dtype == IR_DTYPE_F16)
        put(&e->t, "kn_from_bf16(");
    else if (s->dtype != IR_DTYPE_F32)
        put(&e->t, "(float)(");
    else
        put(&e->t, "(");
    put(&e->t, "((const %s *)a->in[%d])[", ctype(s->dtype), n->slot);
    char base[96];
    if (s->access == KN_COLUMN)
        put(&e->t, "%s", col);
    else
        put(&e->t, "%s%s%s", row_base(s, n->slot, true, (int)n->imm, base, sizeof base), per ? " + " : "", per ? col : "");
    put(&e->t, "])");
}

static void constant(struct emitter *e, double v)
{
    if (isinf(v))
        put(&e->t, v > 0 ? "INFINITY" : "(-INFINITY)");
    else
        put(&e->t, "%.9gf", v);
    if (!isinf(v) && v == floor(v) && fabs(v) < 1e9) { /* "1f" is not C: make it "1.f" */
        e->t.n -= 1;
        e->t.s[e->t.n] = 0;
        put(&e->t, ".f");
    }
}

/* `const float x = <expr>;` for node i (not a reduction or a store). */
static void define(struct emitter *e, int i)
{
    const struct kn_node *n = &e->k->nodes[i];
    char x[16], a[16] = "", b[16] = "", c[16] = "";
    name(e, i, x, sizeof x);
    if (n->a >= 0)
        name(e, n->a, a, sizeof a);
    if (n->b >= 0)
        name(e, n->b, b, sizeof b);
    if (n->c >= 0)
        name(e, n->c, c, sizeof c);
    put(&e->t, "%*sconst float %s = ", e->per[i] ? 12 : 8, "", x);
    bool cuda = e->lang == KN_LANG_CUDA;
    if (reloads(e, i) && e->vec) {
        put(&e->t, "kn_re%d[kn_v];\n", i);
        return;
    }
    if (reloads(e, i)) { /* written whole by an earlier pass: read it back */
        const struct kn_node *st = &e->k->nodes[e->stored[i]];
        const struct kn_slot *o = &e->k->out[st->slot];
        put(&e->t, "%s((const %s *)a->out[%d])[r * cols + c]);\n",
            o->dtype == IR_DTYPE_BF16 || o->dtype == IR_DTYPE_F16 ? "kn_from_bf16(" : "(float)(", ctype(o->dtype), st->slot);
        return;
    }
    switch ((enum kn_op)n->op) {
    case KN_LOAD: load(e, n); break;
    case KN_CONST: constant(e, n->imm); break;
    case KN_ARG: put(&e->t, "a->arg[%d]", n->slot); break;
    case KN_COL: put(&e->t, "(float)c"); break;
    case KN_GCOL: put(&e->t, "(float)(c + a->off[a->rank - 1])"); break;
    case KN_COLS: put(&e->t, "(float)cols"); break;
    case KN_ROWPOS: put(&e->t, "kn_rowpos(a, r)"); break;
    case KN_COORD: put(&e->t, "kn_coord(a, r, %d)", (int)n->imm); break;
    case KN_KEEP: put(&e->t, "kn_keep(a, %d, r, c, %.17g) ? 1.f : 0.f", n->slot, n->imm); break;
    case KN_NEG: put(&e->t, "-%s", a); break;
    case KN_EXP: put(&e->t, cuda ? "expf(%s)" : "kn_expf(%s)", a); break;
    case KN_LOG: put(&e->t, "logf(%s)", a); break;
    case KN_TANH: put(&e->t, cuda ? "tanhf(%s)" : "kn_tanhf(%s)", a); break;
    case KN_ERF: put(&e->t, "erff(%s)", a); break;
    case KN_RSQRT: put(&e->t, cuda ? "rsqrtf(%s)" : "1.f / sqrtf(%s)", a); break;
    case KN_RECIP: put(&e->t, "1.f / %s", a); break;
    case KN_SQRT: put(&e->t, "sqrtf(%s)", a); break;
    case KN_COS: put(&e->t, "cosf(%s)", a); break;
    case KN_SIN: put(&e->t, "sinf(%s)", a); break;
    case KN_FLOOR: put(&e->t, "floorf(%s)", a); break;
    case KN_ADD: put(&e->t, "%s + %s", a, b); break;
    case KN_SUB: put(&e->t, "%s - %s", a, b); break;
    case KN_MUL: put(&e->t, "%s * %s", a, b); break;
    case KN_DIV: put(&e->t, "%s / %s", a, b); break;
    case KN_MAX: put(&e->t, cuda ? "fmaxf(%s, %s)" : "kn_fmaxf(%s, %s)", a, b); break;
    case KN_LT: put(&e->t, "%s < %s ? 1.f : 0.f", a, b); break;
    case KN_LE: put(&e->t, "%s <= %s ? 1.f : 0.f", a, b); break;
    case KN_EQ: put(&e->t, "%s == %s ? 1.f : 0.f", a, b); break;
    case KN_SELECT: put(&e->t, "%s != 0.f ? %s : %s", a, b, c); break;
    default: WF_ASSERT(!"not a value node");
    }
    put(&e->t, ";\n");
}

/* C: whether output slot is a column sum held in a->partial (f32, a row
 * of cols at its kn_column_sum_index) until the rows are done, then added
 * into the output once: a bf16 output, which adding row by row would round
 * at every row (CUDA sums every block's rows in a->partial anyway). */
static bool c_staged_sum(const struct emitter *e, int slot)
{
    const struct kn_slot *s = &e->k->out[slot];
    return e->lang == KN_LANG_C && kn_column_sum_index(e->k, slot) >= 0 &&
           (s->dtype == IR_DTYPE_BF16 || s->dtype == IR_DTYPE_F16);
}

/* out[...] += v, in the output's type. */
static void accumulate(struct emitter *e, const struct kn_slot *s, int slot, const char *index, const char *v, int indent)
{
    bool half = s->dtype == IR_DTYPE_BF16 || s->dtype == IR_DTYPE_F16;
    if (half)
        put(&e->t, "%*s((uint16_t *)a->out[%d])[%s] = kn_to_bf16(kn_from_bf16(((uint16_t *)a->out[%d])[%s]) + %s);\n", indent,
            "", slot, index, slot, index, v);
    else
        put(&e->t, "%*s((float *)a->out[%d])[%s] += %s;\n", indent, "", slot, index, v);
}

static void store(struct emitter *e, int i)
{
    const struct kn_node *n = &e->k->nodes[i];
    const struct kn_slot *s = &e->k->out[n->slot];
    char v[16];
    name(e, n->a, v, sizeof v);
    bool per = e->per[i];
    int indent = per ? 12 : 8;
    if (per && e->vec && s->access == KN_FULL) { /* into the lanes' array, written after their loop */
        put(&e->t, "%*skn_out%d[kn_v] %s= %s;\n", indent, "", n->slot, n->op == KN_ACCUM ? "+" : "", v);
        return;
    }
    if (per && e->vec && n->op == KN_ACCUM && s->access == KN_COLUMN) { /* this block's partial sums, likewise */
        put(&e->t, "%*skn_ps%d[kn_v] += %s;\n", indent, "", n->slot, v);
        return;
    }
    if (n->op == KN_ACCUM) {
        char index[128];
        if (s->access == KN_COLUMN && e->lang == KN_LANG_CUDA) { /* this block's partial sum of the column */
            snprintf(index, sizeof index, "(%d * a->nblocks + blockIdx.x) * cols + c", kn_column_sum_index(e->k, n->slot));
            put(&e->t, "%*sa->partial[%s] += %s;\n", indent, "", index, v);
            return;
        }
        char base[96];
        if (s->access == KN_GATHER) { /* into the index's row of the table, if this rank holds it */
            char row[16];
            name(e, n->b, row, sizeof row);
            put(&e->t, "%*sif (kn_holds(a->vout[%d], %s))\n", indent, "", n->slot, row);
            snprintf(index, sizeof index, "((int64_t)%s - a->vout[%d][0]) * cols + c", row, n->slot);
            accumulate(e, s, n->slot, index, v, indent + 4);
            return;
        }
        if (c_staged_sum(e, n->slot)) {
            put(&e->t, "%*sa->partial[%d * cols + c] += %s;\n", indent, "", kn_column_sum_index(e->k, n->slot), v);
            return;
        }
        if (s->access == KN_COLUMN)
            snprintf(index, sizeof index, "c");
        else /* imm: the component of a ROWVEC output */
            snprintf(index, sizeof index, "%s%s", row_base(s, n->slot, false, (int)n->imm, base, sizeof base), per ? " + c" : "");
        if (!per && e->lang == KN_LANG_CUDA && !e->rowwise)
            put(&e->t, "%*sif (threadIdx.x == 0)\n    ", indent, "");
        accumulate(e, s, n->slot, index, v, per || e->lang != KN_LANG_CUDA ? indent : 0);
        return;
    }
    if (!per && e->lang == KN_LANG_CUDA && !e->rowwise) /* one thread writes a row's value */
        put(&e->t, "%*sif (%s)\n    ", indent, "", kn_has_reduction(e->k) ? "threadIdx.x == 0" : "c == 0");
    char base[96];
    put(&e->t, "%*s((%s *)a->out[%d])[%s%s", indent, "", ctype(s->dtype), n->slot,
        row_base(s, n->slot, false, (int)n->imm, base, sizeof base), per ? " + c" : "");
    if (s->dtype == IR_DTYPE_BF16 || s->dtype == IR_DTYPE_F16)
        put(&e->t, "] = kn_to_bf16(%s);\n", v);
    else if (s->dtype == KN_DTYPE_U8)
        put(&e->t, "] = (uint8_t)(%s != 0.f);\n", v);
    else if (s->dtype == IR_DTYPE_I32)
        put(&e->t, "] = (int32_t)%s;\n", v);
    else
        put(&e->t, "] = %s;\n", v);
}

static bool is_reduction(const struct kn_node *n) { return n->op == KN_ROWSUM || n->op == KN_ROWMAX; }

/* Mark the per-element nodes pass p must compute: what its reductions and
 * stores read, back to loads and per-row values. */
static void mark(struct emitter *e, int i)
{
    if (i < 0 || !e->per[i] || e->need[i])
        return;
    e->need[i] = true;
    if (reloads(e, i))
        return;
    const struct kn_node *n = &e->k->nodes[i];
    mark(e, n->a);
    mark(e, n->b);
    mark(e, n->c);
}

/* The vector variant's reads before the lanes' loop of pass p: each input
 * it loads (and a rotate-half partner's eight), each value it reloads, and
 * what an output it adds into holds. */
static void vec_preload(struct emitter *e, int p)
{
    const struct kn_kernel *k = e->k;
    bool plain[KN_MAX_SLOTS] = {false}, partner[KN_MAX_SLOTS] = {false}, out[KN_MAX_SLOTS] = {false};
    char base[96];
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        if (n->op == KN_LOAD && e->need[i] && !reloads(e, i) && k->in[n->slot].access == KN_GATHER) {
            char x[16];
            name(e, n->a, x, sizeof x);
            put(&e->t, "            float kn_ga%d[%d] = {0.f};\n            if (kn_holds(a->vin[%d], %s))\n"
                       "                kn_ld%d_%s(a->in[%d], ((int64_t)%s - a->vin[%d][0]) * cols + c0, kn_ga%d);\n",
                i, e->vec, n->slot, x, e->vec, vec_type(k->in[n->slot].dtype), n->slot, x, n->slot, i);
            continue;
        }
        if (n->op == KN_LOAD && e->need[i] && !reloads(e, i) && contiguous(k->in[n->slot].access)) {
            bool half = n->imm == 1;
            bool *seen = half ? &partner[n->slot] : &plain[n->slot];
            if (!*seen)
                put(&e->t, "            float kn_in%d%s[%d];\n            kn_ld%d_%s(a->in[%d], %s + %s, kn_in%d%s);\n", n->slot,
                    half ? "p" : "", e->vec, e->vec, vec_type(k->in[n->slot].dtype), n->slot,
                    row_base(&k->in[n->slot], n->slot, true, 0, base, sizeof base),
                    half ? "(c0 < cols / 2 ? c0 + cols / 2 : c0 - cols / 2)" : "c0", n->slot, half ? "p" : "");
            *seen = true;
        }
        if (n->op != KN_STORE && n->op != KN_ACCUM && e->need[i] && reloads(e, i)) {
            const struct kn_slot *o = &k->out[k->nodes[e->stored[i]].slot];
            put(&e->t, "            float kn_re%d[%d];\n            kn_ld%d_%s(a->out[%d], r * cols + c0, kn_re%d);\n", i, e->vec, e->vec,
                vec_type(o->dtype),
                k->nodes[e->stored[i]].slot, i);
        }
        if ((n->op == KN_STORE || n->op == KN_ACCUM) && e->per[i] && e->phase[i] == p && k->out[n->slot].access == KN_FULL &&
            !out[n->slot]) {
            out[n->slot] = true;
            put(&e->t, "            float kn_out%d[%d];\n", n->slot, e->vec);
            if (n->op == KN_ACCUM)
                put(&e->t, "            kn_ld%d_%s(a->out[%d], %s + c0, kn_out%d);\n", e->vec, vec_type(k->out[n->slot].dtype), n->slot,
                    row_base(&k->out[n->slot], n->slot, false, 0, base, sizeof base), n->slot);
        }
        if (n->op == KN_ACCUM && e->per[i] && e->phase[i] == p && k->out[n->slot].access == KN_COLUMN &&
            e->lang == KN_LANG_CUDA && e->resident)
            put(&e->t, "            float kn_ps%d[%d];\n            if (kn_resident)\n"
                       "                for (int kn_v = 0; kn_v < %d; kn_v++)\n                    kn_ps%d[kn_v] = kn_rs%d[kn_v];\n"
                       "            else\n                kn_ld%d_f32(a->partial, (%d * a->nblocks + blockIdx.x) * cols + c0, kn_ps%d);\n",
                n->slot, e->vec, e->vec, n->slot, n->slot, e->vec, kn_column_sum_index(k, n->slot), n->slot);
        else if (n->op == KN_ACCUM && e->per[i] && e->phase[i] == p && k->out[n->slot].access == KN_COLUMN &&
            e->lang == KN_LANG_CUDA)
            put(&e->t, "            float kn_ps%d[%d];\n            kn_ld%d_f32(a->partial, (%d * a->nblocks + blockIdx.x) * cols + c0, kn_ps%d);\n",
                n->slot, e->vec, e->vec, kn_column_sum_index(k, n->slot), n->slot);
        else if (n->op == KN_ACCUM && e->per[i] && e->phase[i] == p && c_staged_sum(e, n->slot))
            put(&e->t, "            float kn_ps%d[%d];\n            kn_ld%d_f32(a->partial, %d * cols + c0, kn_ps%d);\n", n->slot, e->vec,
                e->vec, kn_column_sum_index(k, n->slot), n->slot);
        else if (n->op == KN_ACCUM && e->per[i] && e->phase[i] == p && k->out[n->slot].access == KN_COLUMN) /* C: the sums themselves */
            put(&e->t, "            float kn_ps%d[%d];\n            kn_ld%d_%s(a->out[%d], c0, kn_ps%d);\n", n->slot, e->vec, e->vec,
                vec_type(k->out[n->slot].dtype), n->slot, n->slot);
    }
}

/* The vector variant's writes after the lanes' loop of pass p. */
static void vec_write(struct emitter *e, int p)
{
    const struct kn_kernel *k = e->k;
    bool done[KN_MAX_SLOTS] = {false};
    char base[96];
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        if ((n->op != KN_STORE && n->op != KN_ACCUM) || !e->per[i] || e->phase[i] != p || done[n->slot])
            continue;
        if (n->op == KN_ACCUM && k->out[n->slot].access == KN_COLUMN && e->lang == KN_LANG_CUDA && e->resident)
            put(&e->t, "            if (kn_resident)\n                for (int kn_v = 0; kn_v < %d; kn_v++)\n"
                       "                    kn_rs%d[kn_v] = kn_ps%d[kn_v];\n"
                       "            else\n                kn_st%d_f32(a->partial, (%d * a->nblocks + blockIdx.x) * cols + c0, kn_ps%d);\n",
                e->vec, n->slot, n->slot, e->vec, kn_column_sum_index(k, n->slot), n->slot);
        else if (n->op == KN_ACCUM && k->out[n->slot].access == KN_COLUMN && e->lang == KN_LANG_CUDA)
            put(&e->t, "            kn_st%d_f32(a->partial, (%d * a->nblocks + blockIdx.x) * cols + c0, kn_ps%d);\n", e->vec,
                kn_column_sum_index(k, n->slot), n->slot);
        else if (n->op == KN_ACCUM && c_staged_sum(e, n->slot))
            put(&e->t, "            kn_st%d_f32(a->partial, %d * cols + c0, kn_ps%d);\n", e->vec, kn_column_sum_index(k, n->slot), n->slot);
        else if (n->op == KN_ACCUM && k->out[n->slot].access == KN_COLUMN)
            put(&e->t, "            kn_st%d_%s(a->out[%d], c0, kn_ps%d);\n", e->vec, vec_type(k->out[n->slot].dtype), n->slot, n->slot);
        done[n->slot] = true;
        if (k->out[n->slot].access != KN_FULL)
            continue;
        put(&e->t, "            kn_st%d_%s(a->out[%d], %s + c0, kn_out%d);\n", e->vec, vec_type(k->out[n->slot].dtype), n->slot,
            row_base(&k->out[n->slot], n->slot, false, 0, base, sizeof base), n->slot);
    }
}

static void pass(struct emitter *e, int p, bool elementwise)
{
    const struct kn_kernel *k = e->k;
    e->pass = p;
    bool cuda = e->lang == KN_LANG_CUDA;
    memset(e->need, 0, sizeof e->need);
    bool any = false;
    const char *lanes = !cuda && e->vec ? "[kn_v]" : ""; /* C's vector variant: a reduction's lane */
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        if (is_reduction(n) && e->phase[n->a] == p && e->per[n->a] && !cuda && e->vec) { /* a sum or maximum per lane */
            put(&e->t, "        float acc%d[KN_LANES];\n        for (int kn_v = 0; kn_v < KN_LANES; kn_v++)\n"
                       "            acc%d[kn_v] = %s;\n", i, i, n->op == KN_ROWSUM ? "0.f" : "-INFINITY");
            mark(e, n->a);
            any = true;
        } else if (is_reduction(n) && e->phase[n->a] == p && e->per[n->a]) {
            put(&e->t, "        float acc%d = %s;\n", i, n->op == KN_ROWSUM ? "0.f" : "-INFINITY");
            mark(e, n->a);
            any = true;
        } else if ((n->op == KN_STORE || n->op == KN_ACCUM) && e->per[i] && e->phase[i] == p) {
            mark(e, n->a);
            any = true;
        }
    }
    if (any && e->vec) {
        if (!elementwise && cuda)
            put(&e->t, "        for (int64_t c0 = threadIdx.x * (int64_t)%d; c0 < cols; c0 += blockDim.x * (int64_t)%d) {\n", e->vec, e->vec);
        else if (!elementwise)
            put(&e->t, "        for (int64_t c0 = 0; c0 < cols; c0 += %d) {\n", e->vec);
        vec_preload(e, p);
        bool column = false; /* whether the lanes need their column */
        for (int i = 0; i < k->n_nodes; i++) {
            const struct kn_node *n = &k->nodes[i];
            column |= e->need[i] && (n->op == KN_COL || n->op == KN_GCOL || n->op == KN_KEEP);
            column |= n->op == KN_ACCUM && e->per[i] && e->phase[i] == p && k->out[n->slot].access == KN_COLUMN;
        }
        put(&e->t, "%s            for (int kn_v = 0; kn_v < %d; kn_v++) {\n", cuda ? "#pragma unroll\n" : "", e->vec);
        if (column)
            put(&e->t, "            const int64_t c = c0 + kn_v;\n");
    } else if (any && !elementwise)
        put(&e->t, cuda ? "        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {\n"
                        : "        for (int64_t c = 0; c < cols; c++) {\n");
    for (int i = 0; any && i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        if (e->need[i] && n->op != KN_STORE && n->op != KN_ACCUM)
            define(e, i);
        else if (is_reduction(n) && e->phase[n->a] == p && e->per[n->a] && n->op == KN_ROWSUM)
            put(&e->t, "            acc%d%s += e%d;\n", i, lanes, n->a);
        else if (is_reduction(n) && e->phase[n->a] == p && e->per[n->a])
            put(&e->t, "            acc%d%s = %s(acc%d%s, e%d);\n", i, lanes, cuda ? "fmaxf" : "kn_fmaxf", i, lanes, n->a);
        else if ((n->op == KN_STORE || n->op == KN_ACCUM) && e->per[i] && e->phase[i] == p)
            store(e, i);
    }
    if (any && e->vec) {
        put(&e->t, "            }\n");
        vec_write(e, p);
        if (!elementwise)
            put(&e->t, "        }\n");
    } else if (any && !elementwise)
        put(&e->t, "        }\n");
    /* the reductions this pass finished; a row reduced over one column
     * (a per-row operand) is the value itself */
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        if (!is_reduction(n) || e->phase[i] != p + 1)
            continue;
        if (!e->per[n->a])
            put(&e->t, "        const float v%d = %sv%d;\n", i, n->op == KN_ROWSUM ? "(float)cols * " : "", n->a);
        else if (cuda)
            put(&e->t, "        const float v%d = kn_block_reduce(acc%d, %d);\n", i, i, n->op == KN_ROWMAX);
        else if (e->vec)
            put(&e->t, "        const float v%d = kn_lanes_%s(acc%d);\n", i, n->op == KN_ROWMAX ? "max" : "sum", i);
        else
            put(&e->t, "        const float v%d = acc%d;\n", i, i);
    }
}

/* The loop over rows around the passes (CUDA: as its shape says), in the
 * variant e->vec says; ends with the loop closed. */
static void rows_loop(struct emitter *e, enum kn_cuda_shape shape, int passes)
{
    const struct kn_kernel *k = e->k;
    bool cuda = e->lang == KN_LANG_CUDA, elementwise = shape == KN_CUDA_PER_ELEMENT, owned = cuda && shape == KN_CUDA_OWNED_ROWS;
    if (owned) { /* rows a chunk at a time: the block finds together which add into the table rows it owns, then adds those in order */
        put(&e->t, "    __shared__ int64_t kn_mine[%d];\n"
                  "    for (int64_t kn_base = 0; kn_base < rows; kn_base += blockDim.x) {\n"
                  "        int kn_own = 0;\n"
                  "        if (kn_base + threadIdx.x < rows) {\n"
                  "        const int64_t r = kn_base + threadIdx.x;\n", KN_CUDA_THREADS);
        for (int i = 0; i < k->n_nodes; i++) /* the row's index, and what it needs */
            if (!e->per[i] && e->phase[i] == 0 && k->nodes[i].op != KN_STORE && k->nodes[i].op != KN_ACCUM && !is_reduction(&k->nodes[i]))
                define(e, i);
        for (int i = 0; i < k->n_nodes; i++) {
            const struct kn_node *n = &k->nodes[i];
            if (n->op != KN_ACCUM || k->out[n->slot].access != KN_GATHER)
                continue;
            char x[16];
            name(e, n->b, x, sizeof x);
            put(&e->t, "        kn_own = kn_holds(a->vout[%d], %s) && ((int64_t)%s - a->vout[%d][0]) %% gridDim.x == blockIdx.x;\n", n->slot, x,
                x, n->slot);
        }
        put(&e->t, "        }\n"
                  "        const int kn_n = kn_block_compact(kn_own, kn_base + threadIdx.x, kn_mine);\n"
                  "        for (int kn_i = 0; kn_i < kn_n; kn_i++) {\n"
                  "        const int64_t r = kn_mine[kn_i];\n");
    } else if (cuda && e->rowwise)
        put(&e->t, "    for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < rows; r += (int64_t)gridDim.x * blockDim.x) {\n");
    else if (cuda && elementwise && e->vec)
        put(&e->t, "    for (int64_t i0 = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * %d; i0 < rows * cols;\n"
                   "         i0 += (int64_t)gridDim.x * blockDim.x * %d) {\n"
                   "        const int64_t r = i0 / cols, c0 = i0 - r * cols;\n", e->vec, e->vec);
    else if (cuda && elementwise)
        put(&e->t, "    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * cols;\n"
                  "         i += (int64_t)gridDim.x * blockDim.x) {\n"
                  "        const int64_t r = i / cols, c = i - r * cols;\n");
    else if (cuda)
        put(&e->t, "    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {\n");
    else
        put(&e->t, e->split ? "    for (int64_t r = r0; r < r1; r++) {\n" : "    for (int64_t r = 0; r < rows; r++) {\n");
    for (int p = 0; p < passes; p++) {
        e->pass = p;
        /* this pass's per-row values (after the reductions before it) */
        for (int i = 0; i < k->n_nodes; i++) {
            const struct kn_node *n = &k->nodes[i];
            if (e->per[i] || e->phase[i] != p || is_reduction(n))
                continue;
            if (n->op == KN_STORE || n->op == KN_ACCUM)
                store(e, i);
            else
                define(e, i);
        }
        pass(e, p, cuda && elementwise);
    }
    if (owned)
        put(&e->t, "        }\n"
                  "        __syncthreads(); /* kn_mine is read before the next chunk writes it */\n");
    put(&e->t, "    }\n");
}

/* One kernel's function, appended to t. */
static void function(struct text *t, const struct kn_kernel *k, const char *kname, enum kn_lang lang)
{
    struct emitter e = {.k = k, .lang = lang, .t = *t};
    kn_per_element(k, e.per);
    int passes = kn_phases(k, e.phase);
    enum kn_cuda_shape shape = kn_cuda_shape(k);
    e.rowwise = shape == KN_CUDA_PER_ROW;
    for (int i = 0; i < k->n_nodes; i++)
        e.stored[i] = -1;
    for (int i = 0; i < k->n_nodes; i++) { /* a mask is stored as bytes: not the value itself */
        const struct kn_node *n = &k->nodes[i];
        if (n->op == KN_STORE && e.per[i] && k->out[n->slot].access == KN_FULL && k->out[n->slot].dtype != KN_DTYPE_U8 &&
            e.stored[n->a] < 0)
            e.stored[n->a] = i;
    }
    bool cuda = lang == KN_LANG_CUDA;
    e.split = !cuda;
    for (int i = 0; i < k->n_nodes; i++)
        e.split &= k->nodes[i].op != KN_ACCUM || k->out[k->nodes[i].slot].access == KN_FULL;
    put(&e.t, "\n/* %s: %d node%s, %d pass%s */\n", kname, k->n_nodes, k->n_nodes == 1 ? "" : "s", passes,
        passes == 1 ? "" : "es");
    if (cuda)
        put(&e.t, "extern \"C\" __global__ void __launch_bounds__(%d) %s(const struct kn_args args)\n{\n"
                  "    const struct kn_args *a = &args;\n", KN_CUDA_THREADS, kname);
    else if (e.split)
        put(&e.t, "KN_CLONES void %s_rows(const struct kn_args *a, int64_t r0, int64_t r1)\n{\n", kname);
    else
        put(&e.t, "KN_CLONES void %s(const struct kn_args *a)\n{\n", kname);
    put(&e.t, "    const int64_t rows = a->rows, cols = a->cols;\n");
    int column_sums = kn_column_sums(k);
    if (cuda && column_sums) /* this block's partial sums start at zero, before any thread adds: the vector loops' thread
                              * adds into columns 4t .. 4t+3, which other threads zeroed (tests/cuda_emu.h found the race) */
        put(&e.t, "    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)\n"
                  "        for (int j = 0; j < %d; j++)\n"
                  "            a->partial[(j * a->nblocks + blockIdx.x) * cols + c] = 0.f;\n"
                  "    __syncthreads();\n", column_sums);
    for (int slot = 0; slot < k->n_out; slot++) /* C: a bf16 column sum's f32 row starts at zero */
        if (c_staged_sum(&e, slot))
            put(&e.t, "    for (int64_t c = 0; c < cols; c++)\n        a->partial[%d * cols + c] = 0.f;\n", kn_column_sum_index(k, slot));
    int vec = !cuda ? c_lanes(k, e.per) : shape == KN_CUDA_PER_ELEMENT || shape == KN_CUDA_BLOCK_ROWS ? vector_width(k, e.per) : 0;
    if (vec) { /* the vector variant where the row's length and every pointer allow it */
        bool halves = false;
        for (int i = 0; i < k->n_nodes; i++)
            halves |= k->nodes[i].op == KN_LOAD && k->nodes[i].imm == 1 && contiguous(k->in[k->nodes[i].slot].access);
        put(&e.t, "    const int kn_vec = cols %% %d == 0", halves ? 2 * vec : vec);
        for (int slot = 0; cuda && slot < k->n_in; slot++) /* C reads and writes lanes at any address */
            if (contiguous(k->in[slot].access))
                put(&e.t, " && kn_aligned(a->in[%d])", slot);
        for (int slot = 0; cuda && slot < k->n_in; slot++)
            if (k->in[slot].access == KN_HEADS)
                put(&e.t, " && kn_view_ok(a->vin[%d])", slot);
        if (cuda && column_sums)
            put(&e.t, " && kn_aligned(a->partial)");
        for (int slot = 0; cuda && slot < k->n_out; slot++)
            if (k->out[slot].access == KN_FULL)
                put(&e.t, " && kn_aligned(a->out[%d])", slot);
        for (int i = 0; i < k->n_out; i++) /* two outputs that are one buffer take their adds one element at a time */
            for (int j = i + 1; j < k->n_out; j++) {
                bool lanes_i = k->out[i].access == KN_FULL || (!cuda && k->out[i].access == KN_COLUMN);
                bool lanes_j = k->out[j].access == KN_FULL || (!cuda && k->out[j].access == KN_COLUMN);
                if (lanes_i && lanes_j)
                    put(&e.t, " && a->out[%d] != a->out[%d]", i, j);
            }
        put(&e.t, ";\n    if (kn_vec) {\n");
    }
    for (int variant = 0; variant < (vec ? 2 : 1); variant++) { /* the vector loops, then the scalar ones */
        e.vec = variant ? 0 : vec;
        e.resident = !variant && cuda && column_sums && shape == KN_CUDA_BLOCK_ROWS;
        if (e.resident) { /* a thread's columns c0 .. c0 + vec, the same in every row: their sums stay in registers */
            put(&e.t, "    const bool kn_resident = cols <= (int64_t)blockDim.x * %d;\n", vec);
            for (int slot = 0; slot < k->n_out; slot++)
                if (k->out[slot].access == KN_COLUMN && kn_column_sum_index(k, slot) >= 0)
                    put(&e.t, "    float kn_rs%d[%d] = {0.f};\n", slot, vec);
        }
        rows_loop(&e, shape, passes);
        for (int slot = 0; e.resident && slot < k->n_out; slot++) /* then written once: every column is one thread's */
            if (k->out[slot].access == KN_COLUMN && kn_column_sum_index(k, slot) >= 0)
                put(&e.t, "    if (kn_resident && threadIdx.x * (int64_t)%d < cols)\n"
                          "        kn_st%d_f32(a->partial, (%d * a->nblocks + blockIdx.x) * cols + threadIdx.x * (int64_t)%d, kn_rs%d);\n",
                    vec, vec, kn_column_sum_index(k, slot), vec, slot);
        e.resident = false;
        if (vec)
            put(&e.t, variant ? "    }\n" : "    } else {\n");
    }
    for (int slot = 0; slot < k->n_out; slot++) /* C: then added into the bf16 output once, as CUDA's _colsum adds */
        if (c_staged_sum(&e, slot)) {
            char v[64];
            snprintf(v, sizeof v, "a->partial[%d * cols + c]", kn_column_sum_index(k, slot));
            put(&e.t, "    for (int64_t c = 0; c < cols; c++)\n");
            accumulate(&e, &k->out[slot], slot, "c", v, 8);
        }
    put(&e.t, "}\n");
    if (cuda && column_sums) { /* then the blocks' partial sums, added in block order: deterministic */
        put(&e.t, "\n/* %s's column sums: launch after it, a thread per column */\n"
                  "extern \"C\" __global__ void __launch_bounds__(%d) %s_colsum(const struct kn_args args)\n{\n"
                  "    const struct kn_args *a = &args;\n"
                  "    const int64_t cols = a->cols;\n"
                  "    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < cols; c += (int64_t)gridDim.x * blockDim.x) {\n",
            kname, KN_CUDA_THREADS, kname);
        for (int slot = 0; slot < k->n_out; slot++) {
            int j = kn_column_sum_index(k, slot);
            if (j < 0)
                continue;
            put(&e.t, "        float s%d = 0.f;\n        for (int64_t b = 0; b < a->nblocks; b++)\n"
                      "            s%d += a->partial[(%d * a->nblocks + b) * cols + c];\n", slot, slot, j);
            char v[16];
            snprintf(v, sizeof v, "s%d", slot);
            accumulate(&e, &k->out[slot], slot, "c", v, 8);
        }
        put(&e.t, "    }\n}\n");
    }
    if (e.split)
        put(&e.t, "void %s(const struct kn_args *a) { %s_rows(a, 0, a->rows); }\n", kname, kname);
    *t = e.t;
}

char *emit_kernels(const struct kn_kernel *const *ks, const char *const *names, int n, enum kn_lang lang)
{
    struct text t = {0};
    put(&t, "/* generated by weft " WEFT_VERSION " from fused-kernel descriptions */\n");
    bool cuda = lang == KN_LANG_CUDA;
    put(&t, "%s%s%s%s%s", cuda ? cuda_prelude : c_prelude, cuda ? "" : emit_c_math, kn_args_source, common, cuda ? cuda_vector : c_vector);
    for (int i = 0; i < n; i++)
        function(&t, ks[i], names[i], lang);
    return t.s;
}

char *emit_kernel(const struct kn_kernel *k, const char *name, enum kn_lang lang) { return emit_kernels(&k, &name, 1, lang); }
