/* launches.h: one launch of a compiled plan's kernels, run on a backend
 * (runtime/backend.h) on random inputs, for the tests that compare the
 * backends and for bench/kernel_time.c.  Every buffer the launch binds is
 * sized by ir/launch.h's extents and followed by guard bytes; outputs it
 * stores start poisoned (a NaN with a payload no arithmetic makes), those
 * it adds into start random, like its inputs.  The same launch run on two
 * backends starts from the same bytes.
 *
 *   struct lrun x;
 *   lrun_prepare(P, F, l, rank, seed, &x);
 *   lrun_run(&x, cpu, &d);   lrun_run(&x, cuda, &d);   // results in x.bufs[i].got[backend kind]
 *   lrun_compare(&x, &report);
 *   lrun_free(&x);
 * An attention launch runs its forward and, with a backward, delta, dK/dV
 * and dQ after it, on a random upstream gradient. */
#ifndef WEFT_TESTS_LAUNCHES_H
#define WEFT_TESTS_LAUNCHES_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "fuse.h"
#include "launch.h"
#include "partition.h"

#define LRUN_GUARD 256 /* bytes after each buffer that no launch may touch */
#define LRUN_MAX_BUFS (2 * KN_MAX_SLOTS + KN_ATTN_BUFS)

struct lbuf {
    char name[64];
    int dtype;          /* enum ir_dtype, or KN_DTYPE_U8 */
    int64_t elems;      /* the extent */
    bool out;           /* the launch writes it */
    bool stored_whole;  /* a FULL or ROW output it stores: every element must be written */
    int attn;           /* an attention launch's: which buffer of kn_attn_args (enum kn_attn_buf) */
    void *init;         /* elems + guard bytes, as every backend starts it */
    void *got[2];       /* what each backend left (enum backend_kind), elems + guard bytes */
};

struct lrun {
    const struct kn_set *F;
    int l, kind, kernel;    /* the launch (-1 for a routing launch of no plan's), its kernel and its kind */
    struct kn_args a;
    struct kn_attn_args attn;
    struct kn_route_args route;
    int n_bufs;
    struct lbuf bufs[LRUN_MAX_BUFS];
    int in_buf[KN_MAX_SLOTS], out_buf[KN_MAX_SLOTS];
    uint64_t seed;
};

static inline size_t lrun_elem_size(int dtype)
{
    return dtype == IR_DTYPE_BF16 || dtype == IR_DTYPE_F16 ? 2 : dtype == KN_DTYPE_U8 ? 1 : 4;
}

static inline size_t lbuf_bytes(const struct lbuf *b) { return (size_t)b->elems * lrun_elem_size(b->dtype); }

static inline uint64_t lrun_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 11;
}

static inline double lrun_uniform(uint64_t *s) { return (double)lrun_next(s) / 9007199254740992.0; }

static inline float lrun_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t lrun_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* Element e of a buffer as a double; integers and bytes as their values. */
static inline double lrun_value(const void *p, int dtype, int64_t e)
{
    switch (dtype) {
    case IR_DTYPE_BF16:
    case IR_DTYPE_F16: return lrun_from_bf16(((const uint16_t *)p)[e]);
    case IR_DTYPE_I32: return ((const int32_t *)p)[e];
    case KN_DTYPE_U8: return ((const uint8_t *)p)[e];
    default: return ((const float *)p)[e];
    }
}

/* The poison an unwritten element keeps: a NaN no arithmetic makes, 0xa5 bytes. */
static inline bool lrun_poisoned(const void *p, int dtype, int64_t e)
{
    switch (dtype) {
    case IR_DTYPE_BF16:
    case IR_DTYPE_F16: return ((const uint16_t *)p)[e] == 0x7fa5;
    case KN_DTYPE_U8: return ((const uint8_t *)p)[e] == 0xa5;
    default: return ((const uint32_t *)p)[e] == 0x7fa5a5a5u;
    }
}

/* A new buffer: random in [lo, hi) (integers: [0, ints)), or poisoned. */
static inline int lrun_buf(struct lrun *x, const char *name, int dtype, int64_t elems, bool out, bool poison, double lo, double hi,
                           int64_t ints)
{
    struct lbuf *b = &x->bufs[x->n_bufs];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->dtype = dtype, b->elems = elems > 0 ? elems : 1, b->out = out;
    size_t n = lbuf_bytes(b) + LRUN_GUARD;
    unsigned char *p = malloc(n);
    memset(p, 0xa5, n);
    for (int64_t e = 0; !poison && e < b->elems; e++) {
        double u = lrun_uniform(&x->seed), v = lo + (hi - lo) * u;
        switch (dtype) {
        case IR_DTYPE_BF16:
        case IR_DTYPE_F16: ((uint16_t *)p)[e] = lrun_to_bf16((float)v); break;
        case IR_DTYPE_I32: ((int32_t *)p)[e] = (int32_t)(u * (double)(ints > 0 ? ints : 1)); break;
        case KN_DTYPE_U8: ((uint8_t *)p)[e] = u < 0.9; break;
        default: ((float *)p)[e] = (float)v;
        }
    }
    b->init = p;
    return x->n_bufs++;
}

/* Whether two binds are one buffer (an optimizer state read and written in place). */
static inline bool lrun_same_bind(const struct kn_bind *a, const struct kn_bind *b)
{
    return a->what == b->what && a->id == b->id && a->xfer == b->xfer && a->view == b->view;
}

static inline void lrun_prepare_fused(const struct partition *P, struct lrun *x, int rank)
{
    const struct kn_launch *L = &x->F->launches[x->l];
    const struct kn_kernel *k = &x->F->kernels[L->kernel].k;
    struct kn_args *a = &x->a;
    fuse_launch_args(P, x->F, x->l, rank, a);
    a->seed = 5;
    for (int i = 0; i < k->n_args; i++)
        a->arg[i] = 0.5f + 0.125f * (float)i;
    int64_t ints = a->cols + a->off[a->rank - 1]; /* labels across the vocabulary's shards, ids across the table's */
    for (int s = 0; s < KN_MAX_SLOTS; s++) {
        if (s < k->n_in && (k->in[s].access == KN_GATHER || k->in[s].access == KN_PICK) && a->vin[s][0] + a->vin[s][1] > ints)
            ints = a->vin[s][0] + a->vin[s][1];
        if (s < k->n_out && k->out[s].access == KN_GATHER && a->vout[s][0] + a->vout[s][1] > ints)
            ints = a->vout[s][0] + a->vout[s][1];
    }
    for (int io = 0; io < 2; io++)
        for (int s = 0; s < (io ? k->n_out : k->n_in); s++) {
            const struct kn_bind *b = io ? &L->out[s] : &L->in[s];
            const struct kn_slot *slot = io ? &k->out[s] : &k->in[s];
            int64_t elems = kn_slot_extent(k, a, io, s);
            int *at = io ? &x->out_buf[s] : &x->in_buf[s], same = -1;
            for (int t = 0; t < k->n_in && same < 0; t++) /* an output that is an input's buffer */
                if (io && lrun_same_bind(b, &L->in[t]))
                    same = x->in_buf[t];
            if (same >= 0) {
                struct lbuf *o = &x->bufs[same];
                o->out = true;
                if (elems > o->elems) /* not expected: the plan binds one buffer at two sizes */
                    o->elems = elems;
                *at = same;
                continue;
            }
            bool accum = false, store = false;
            for (int i = 0; io && i < k->n_nodes; i++) {
                accum |= k->nodes[i].op == KN_ACCUM && k->nodes[i].slot == s;
                store |= k->nodes[i].op == KN_STORE && k->nodes[i].slot == s;
            }
            bool positive = b->what == IR_BUF_ROWSTATS || b->what == IR_BUF_SUMSQ || b->what == IR_BUF_EXP_AVG_SQ;
            char name[64];
            snprintf(name, sizeof name, "%s %d (%s %s)", io ? "out" : "in", s, ir_buf_what_name(b->what), kn_access_name(slot->access));
            *at = lrun_buf(x, name, slot->dtype, elems, io, io && !accum, positive ? 0.5 : -1, positive ? 1.5 : 1, ints);
            x->bufs[*at].stored_whole = store && !accum && (slot->access == KN_FULL || slot->access == KN_ROW);
        }
}

static inline void lrun_prepare_attention(const struct partition *P, struct lrun *x)
{
    const struct kn_launch *L = &x->F->launches[x->l];
    const struct kn_attn *c = &x->F->kernels[L->kernel].attn;
    struct kn_attn_args *a = &x->attn;
    kn_launch_attn_args(L, a);
    double scale = ir_op_float(&P->g->ops[x->F->ops[L->first_op]], IR_ATTR_SCALE);
    a->scale = (float)(isnan(scale) ? 1 / sqrt((double)c->D) : scale);
    for (int b = 0; b < KN_ATTN_BUFS; b++) {
        int64_t elems = kn_attn_extent(c, a, (enum kn_attn_buf)b);
        if (!elems)
            continue;
        bool in = b == KN_ATTN_BUF_Q || b == KN_ATTN_BUF_K || b == KN_ATTN_BUF_V || b == KN_ATTN_BUF_BIAS || b == KN_ATTN_BUF_DOUT;
        bool adds = b == KN_ATTN_BUF_DBIAS; /* a bias's gradient is added into (layers share a bias): it starts with values */
        int dtype = b == KN_ATTN_BUF_STATS || b == KN_ATTN_BUF_DELTA ? IR_DTYPE_F32 : c->dtype;
        int i = lrun_buf(x, kn_attn_buf_name[b], dtype, elems, !in, !in && !adds, -1, 1, 0);
        x->bufs[i].attn = b; /* q, k, v, out may be views with gaps: none is stored whole */
    }
}

/* A routing launch's buffers for x->route: choices over the experts, a
 * tenth of them past the last expert and 3% -1 (no expert). */
static inline void lrun_prepare_route_bufs(struct lrun *x)
{
    const int64_t E = x->route.experts;
    int i = lrun_buf(x, "idx", IR_DTYPE_I32, kn_route_extent(&x->route, KN_ROUTE_BUF_IDX), false, false, 0, 0, E + E / 10 + 1);
    for (int64_t e = 0; e < x->route.entries; e++)
        if (lrun_uniform(&x->seed) < 0.03)
            ((int32_t *)x->bufs[i].init)[e] = -1;
    lrun_buf(x, "routes", IR_DTYPE_I32, kn_route_extent(&x->route, KN_ROUTE_BUF_ROUTES), true, true, 0, 0, 0);
    lrun_buf(x, "fills", IR_DTYPE_I32, kn_route_extent(&x->route, KN_ROUTE_BUF_FILLS), true, true, 0, 0, 0);
}

/* Launch l (its arguments as rank `rank` has them), buffers made from seed. */
static inline void lrun_prepare(const struct partition *P, const struct kn_set *F, int l, int rank, uint64_t seed, struct lrun *x)
{
    memset(x, 0, sizeof *x);
    x->F = F, x->l = l, x->seed = seed ? seed : 1;
    x->kernel = F->launches[l].kernel;
    x->kind = F->kernels[x->kernel].kind;
    if (x->kind == KN_KIND_ATTENTION)
        lrun_prepare_attention(P, x);
    else if (x->kind == KN_KIND_ROUTE) {
        kn_launch_route_args(&F->launches[l], &x->route);
        lrun_prepare_route_bufs(x);
    } else
        lrun_prepare_fused(P, x, rank);
}

/* A routing launch of no plan's: tokens x topk choices over experts. */
static inline void lrun_prepare_route(const struct kn_set *F, int kernel, int64_t tokens, int64_t topk, int64_t experts,
                                      int64_t capacity, uint64_t seed, struct lrun *x)
{
    memset(x, 0, sizeof *x);
    x->F = F, x->l = -1, x->kernel = kernel, x->seed = seed ? seed : 1, x->kind = KN_KIND_ROUTE;
    x->route = (struct kn_route_args){.entries = tokens * topk, .topk = topk, .experts = experts, .capacity = capacity};
    lrun_prepare_route_bufs(x);
}

static inline void lrun_free(struct lrun *x)
{
    for (int i = 0; i < x->n_bufs; i++) {
        free(x->bufs[i].init);
        free(x->bufs[i].got[0]);
        free(x->bufs[i].got[1]);
    }
    x->n_bufs = 0;
}

/* The launch's buffers on be, copied from init (guards too). */
static inline int lrun_upload(const struct lrun *x, struct backend *be, void **dev, struct diag *d)
{
    memset(dev, 0, sizeof *dev * LRUN_MAX_BUFS);
    for (int i = 0; i < x->n_bufs; i++) {
        size_t n = lbuf_bytes(&x->bufs[i]) + LRUN_GUARD;
        if (!(dev[i] = backend_alloc(be, n, d)) || backend_put(be, dev[i], x->bufs[i].init, n, d))
            return -1;
    }
    return 0;
}

static inline void lrun_release(const struct lrun *x, struct backend *be, void **dev)
{
    for (int i = 0; i < x->n_bufs; i++)
        backend_free(be, dev[i]);
}

/* The launch on the buffers dev (asynchronous on a GPU); an attention
 * launch runs its functions [first, last]: its forward, or its backward's three. */
static inline int lrun_launch(const struct lrun *x, struct backend *be, void *const *dev, int first, int last, struct diag *d)
{
    if (x->kind == KN_KIND_FUSED) {
        const struct kn_launch *L = &x->F->launches[x->l];
        struct kn_args a = x->a;
        for (int s = 0; s < L->n_in; s++)
            a.in[s] = dev[x->in_buf[s]];
        for (int s = 0; s < L->n_out; s++)
            a.out[s] = dev[x->out_buf[s]];
        return backend_fused(be, x->kernel, &a, d);
    }
    if (x->kind == KN_KIND_ATTENTION) {
        struct kn_attn_args a = x->attn;
        for (int i = 0; i < x->n_bufs; i++)
            *kn_attn_buf(&a, (enum kn_attn_buf)x->bufs[i].attn) = dev[i];
        for (int f = first; f <= last; f++)
            if (backend_attention(be, x->kernel, (enum kn_attn_fn)f, &a, d))
                return -1;
        return 0;
    }
    struct kn_route_args a = x->route;
    a.idx = dev[0], a.routes = dev[1], a.fills = dev[2];
    return backend_route(be, x->kernel, &a, d);
}

/* The functions an attention launch has: its forward, and its backward's. */
static inline int lrun_attn_fns(const struct lrun *x)
{
    return x->kind == KN_KIND_ATTENTION && x->F->kernels[x->kernel].attn.backward ? KN_ATTN_FNS : 1;
}

/* The prepared launch on be, all of it: buffers copied in, the launch (or
 * attention's sequence), everything copied back into bufs[i].got[kind].
 * -1 with d filled if the backend fails. */
static inline int lrun_run(struct lrun *x, struct backend *be, enum backend_kind kind, struct diag *d)
{
    void *dev[LRUN_MAX_BUFS];
    int rc = lrun_upload(x, be, dev, d) || lrun_launch(x, be, dev, 0, lrun_attn_fns(x) - 1, d) || backend_sync(be, d);
    for (int i = 0; i < x->n_bufs && !rc; i++) {
        size_t n = lbuf_bytes(&x->bufs[i]) + LRUN_GUARD;
        free(x->bufs[i].got[kind]);
        x->bufs[i].got[kind] = malloc(n);
        rc = backend_get(be, x->bufs[i].got[kind], dev[i], n, d);
    }
    lrun_release(x, be, dev);
    return rc ? -1 : 0;
}

/* What one backend left against the launch's contract: a guard byte
 * changed, an input changed, an element of a whole store left unwritten.
 * 0, or -1 with the first breach in why. */
static inline int lrun_check(const struct lrun *x, enum backend_kind kind, char *why, size_t n)
{
    for (int i = 0; i < x->n_bufs; i++) {
        const struct lbuf *b = &x->bufs[i];
        const unsigned char *got = b->got[kind], *init = b->init;
        size_t bytes = lbuf_bytes(b);
        for (size_t g = bytes; g < bytes + LRUN_GUARD; g++)
            if (got[g] != init[g]) {
                snprintf(why, n, "%s: wrote byte %zu past its extent of %lld elements", b->name, g - bytes, (long long)b->elems);
                return -1;
            }
        if (!b->out && memcmp(got, init, bytes)) {
            snprintf(why, n, "%s: an input, changed", b->name);
            return -1;
        }
        for (int64_t e = 0; b->stored_whole && e < b->elems; e++)
            if (lrun_poisoned(got, b->dtype, e)) {
                snprintf(why, n, "%s: element %lld of %lld left unwritten", b->name, (long long)e, (long long)b->elems);
                return -1;
            }
    }
    return 0;
}

struct lrun_diff {
    double worst;      /* the largest |a - b| / (|b| + floor), floor a share of the buffer's rms (a hundredth, by default) */
    double norm;       /* the largest ||a - b|| / ||b|| over the buffers */
    int64_t mismatch;  /* integer or byte outputs that differ, NaN against a number, poison against a value */
    char where[160];   /* the worst element, or the first mismatch */
};

/* Backend CUDA's results against the CPU's, output by output; elementwise errors relative to the element, or to
 * floor_share of the buffer's rms where that is larger. */
static inline void lrun_compare_floor(const struct lrun *x, double floor_share, struct lrun_diff *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < x->n_bufs; i++) {
        const struct lbuf *b = &x->bufs[i];
        if (!b->out)
            continue;
        const void *cpu = b->got[BACKEND_CPU], *gpu = b->got[BACKEND_CUDA];
        bool exact = b->dtype == IR_DTYPE_I32 || b->dtype == KN_DTYPE_U8;
        double ss = 0, dd = 0;
        int64_t counted = 0;
        for (int64_t e = 0; e < b->elems; e++) {
            double w = lrun_value(cpu, b->dtype, e);
            if (isfinite(w))
                ss += w * w, counted++;
        }
        double floor = floor_share * sqrt(ss / (double)(counted ? counted : 1)) + 1e-30;
        for (int64_t e = 0; e < b->elems; e++) {
            bool pc = lrun_poisoned(cpu, b->dtype, e), pg = lrun_poisoned(gpu, b->dtype, e);
            double w = lrun_value(cpu, b->dtype, e), g = lrun_value(gpu, b->dtype, e);
            if (pc || pg || exact || isnan(w) || isnan(g)) {
                bool same = pc == pg && (exact ? w == g : (pc || (isnan(w) && isnan(g)) || w == g));
                if (!same && !r->mismatch++)
                    snprintf(r->where, sizeof r->where, "%s[%lld]: cuda %s%g, cpu %s%g", b->name, (long long)e, pg ? "unwritten " : "", g,
                             pc ? "unwritten " : "", w);
                continue;
            }
            double err = fabs(g - w) / (fabs(w) + floor);
            dd += (g - w) * (g - w);
            if (err > r->worst && !r->mismatch) {
                r->worst = err;
                snprintf(r->where, sizeof r->where, "%s[%lld]: cuda %.9g, cpu %.9g", b->name, (long long)e, g, w);
            }
        }
        double norm = ss > 0 ? sqrt(dd / ss) : sqrt(dd);
        r->norm = norm > r->norm ? norm : r->norm;
    }
}

static inline void lrun_compare(const struct lrun *x, struct lrun_diff *r) { lrun_compare_floor(x, 0.01, r); }

#endif
