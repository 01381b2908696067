/* launch.c: the launch contract of the plan's kernels (see launch.h). */
#include "launch.h"

#include <stddef.h>
#include <string.h>

enum kn_cuda_shape kn_cuda_shape(const struct kn_kernel *k)
{
    if (kn_has_gather_accum(k))
        return KN_CUDA_OWNED_ROWS;
    bool per[KN_MAX_NODES], varies = false;
    kn_per_element(k, per);
    for (int i = 0; i < k->n_nodes; i++)
        varies |= per[i];
    if (!varies)
        return KN_CUDA_PER_ROW;
    if (!kn_has_reduction(k) && !kn_has_column_sum(k) && !kn_has_full_accum(k))
        return KN_CUDA_PER_ELEMENT;
    return KN_CUDA_BLOCK_ROWS;
}

static bool column_sum(const struct kn_kernel *k, int slot)
{
    for (int i = 0; i < k->n_nodes; i++)
        if (k->nodes[i].op == KN_ACCUM && k->nodes[i].slot == slot && k->out[slot].access == KN_COLUMN)
            return true;
    return false;
}

int kn_column_sum_index(const struct kn_kernel *k, int slot)
{
    int n = 0;
    for (int s = 0; s < slot; s++)
        n += column_sum(k, s);
    return column_sum(k, slot) ? n : -1;
}

int kn_column_sums(const struct kn_kernel *k)
{
    int n = 0;
    for (int s = 0; s < k->n_out; s++)
        n += column_sum(k, s);
    return n;
}

static int64_t ceil_div(int64_t a, int64_t b) { return b > 0 ? (a + b - 1) / b : 0; }
static int64_t clamp_blocks(int64_t n, int64_t max) { return n < 1 ? 1 : n > max ? max : n; }
static int64_t gcd(int64_t a, int64_t b) { return b ? gcd(b, a % b) : a; }

void kn_cuda_grid(const struct kn_kernel *k, const struct kn_args *a, int64_t max_blocks, struct kn_grid *g)
{
    int64_t modulus = 0; /* rows added into one element modulo it must share a block */
    for (int i = 0; i < k->n_nodes; i++)
        if (k->nodes[i].op == KN_ACCUM && k->out[k->nodes[i].slot].access == KN_FULL && a->omod[k->nodes[i].slot] > 0)
            modulus = gcd(a->omod[k->nodes[i].slot], modulus);
    switch (kn_cuda_shape(k)) {
    case KN_CUDA_PER_ELEMENT: g->blocks = clamp_blocks(ceil_div(a->rows * a->cols, KN_CUDA_THREADS), max_blocks); break;
    case KN_CUDA_PER_ROW: g->blocks = clamp_blocks(ceil_div(a->rows, KN_CUDA_THREADS), max_blocks); break;
    case KN_CUDA_OWNED_ROWS: { /* as many blocks as table rows, at most: a block owns rows modulo the grid */
        int64_t table = 1;
        for (int s = 0; s < k->n_out; s++)
            if (k->out[s].access == KN_GATHER && a->vout[s][1] > table)
                table = a->vout[s][1];
        g->blocks = clamp_blocks(table, max_blocks);
        break;
    }
    case KN_CUDA_BLOCK_ROWS: g->blocks = clamp_blocks(a->rows, max_blocks); break;
    }
    if (modulus)
        g->blocks = modulus;
    int sums = kn_column_sums(k);
    g->partial = sums ? sums * g->blocks * a->cols : 0;
    g->colsum_blocks = sums ? clamp_blocks(ceil_div(a->cols, KN_CUDA_THREADS), max_blocks) : 0;
}

/* The furthest row of a HEADS view, plus one row: (B, H, S) rows in dim[0..2]. */
static int64_t heads_extent(const struct kn_args *a, const int64_t *v)
{
    int64_t B = a->dim[0], H = a->dim[1], S = a->dim[2], far_h = 0;
    if (B < 1 || H < 1 || S < 1)
        return 0;
    for (int64_t h = 0; h < H; h++) {
        int64_t at = (v[4] ? (h / v[4]) * v[5] + (h % v[4]) * v[2] : 0);
        far_h = at > far_h ? at : far_h;
    }
    return v[0] + (B - 1) * v[1] + far_h + (S - 1) * v[3] + a->cols;
}

static int64_t rowmap_at(const int64_t *v, int64_t r) { return v[0] ? ((r / v[0]) * v[1] + v[2] + r % v[0]) * v[3] + v[4] : 0; }

int64_t kn_slot_extent(const struct kn_kernel *k, const struct kn_args *a, bool out, int slot)
{
    const struct kn_slot *s = out ? &k->out[slot] : &k->in[slot];
    const int64_t rows = a->rows, cols = a->cols, *v = out ? a->vout[slot] : a->vin[slot];
    if (rows < 1 || cols < 1)
        return 0;
    switch ((enum kn_access)s->access) {
    case KN_FULL: {
        int64_t mod = out ? a->omod[slot] : a->mod[slot];
        return (mod > 0 && mod < rows ? mod : rows) * cols;
    }
    case KN_COLUMN: return cols;
    case KN_ROW: return rows;
    case KN_ROW_DIV: return a->mod[slot] > 0 ? ((rows - 1) / a->mod[slot] + 1) * cols : rows * cols;
    case KN_ROWSTATS: return rows * 2;
    case KN_ROWVEC: return rows * v[0];
    case KN_ROWMAP: { /* the furthest row: the last, or the last of the last whole run */
        int64_t last = rowmap_at(v, rows - 1), run_end = v[0] ? (rows / v[0]) * v[0] - 1 : -1;
        if (run_end >= 0 && rowmap_at(v, run_end) > last)
            last = rowmap_at(v, run_end);
        return last + cols;
    }
    case KN_HEADS: return heads_extent(a, v);
    case KN_GATHER: return v[1] * cols;
    case KN_PICK: return v[1];
    case KN_PATCHES: return v[0] ? rows / v[0] * v[3] * v[4] * v[5] : 0;
    case KN_SCALAR: return 1;
    default: return 0;
    }
}

const char *const kn_attn_fn_suffix[KN_ATTN_FNS] = {"_fwd", "_delta", "_bwd_kv", "_bwd_q"};
const char *const kn_attn_buf_name[KN_ATTN_BUFS] = {"q", "k", "v", "bias", "out", "stats",
                                                    "delta", "dout", "dq", "dk", "dv", "dbias"};

void **kn_attn_buf(struct kn_attn_args *a, enum kn_attn_buf b)
{
    switch (b) {
    case KN_ATTN_BUF_Q: return (void **)&a->q;
    case KN_ATTN_BUF_K: return (void **)&a->k;
    case KN_ATTN_BUF_V: return (void **)&a->v;
    case KN_ATTN_BUF_BIAS: return (void **)&a->bias;
    case KN_ATTN_BUF_OUT: return &a->out;
    case KN_ATTN_BUF_STATS: return (void **)&a->stats;
    case KN_ATTN_BUF_DELTA: return (void **)&a->delta;
    case KN_ATTN_BUF_DOUT: return (void **)&a->dout;
    case KN_ATTN_BUF_DQ: return &a->dq;
    case KN_ATTN_BUF_DK: return &a->dk;
    case KN_ATTN_BUF_DV: return &a->dv;
    default: return &a->dbias;
    }
}

int64_t kn_attn_extent(const struct kn_attn *c, const struct kn_attn_args *a, enum kn_attn_buf b)
{
    const int64_t B = a->B, Hq = a->Hq, Hk = a->Hk, Sq = a->Sq, Sk = a->Sk;
    if (B < 1 || Hq < 1 || Hk < 1 || Sq < 1 || Sk < 1)
        return 0;
    int64_t far_q = 0; /* the furthest query head of the grouped layout */
    for (int64_t h = 0; h < Hq; h++) {
        int64_t at = a->q_hg ? (h / a->q_hg) * a->q_sg + (h % a->q_hg) * a->q_sh : 0;
        far_q = at > far_q ? at : far_q;
    }
    bool grad = b == KN_ATTN_BUF_DQ || b == KN_ATTN_BUF_DK || b == KN_ATTN_BUF_DV || b == KN_ATTN_BUF_DOUT ||
                b == KN_ATTN_BUF_DELTA;
    if ((grad && !c->backward) || (b == KN_ATTN_BUF_DBIAS && !c->bias_grad) || (b == KN_ATTN_BUF_BIAS && !c->bias))
        return 0;
    switch (b) { /* a gradient has its tensor's layout */
    case KN_ATTN_BUF_Q:
    case KN_ATTN_BUF_DQ: return a->q_off + (B - 1) * a->q_sb + far_q + (Sq - 1) * a->q_ss + c->D;
    case KN_ATTN_BUF_K:
    case KN_ATTN_BUF_DK: return a->k_off + (B - 1) * a->k_sb + (Hk - 1) * a->k_sh + (Sk - 1) * a->k_ss + c->D;
    case KN_ATTN_BUF_V:
    case KN_ATTN_BUF_DV: return a->v_off + (B - 1) * a->v_sb + (Hk - 1) * a->v_sh + (Sk - 1) * a->v_ss + c->Dv;
    case KN_ATTN_BUF_OUT:
    case KN_ATTN_BUF_DOUT: return a->o_off + (B - 1) * a->o_sb + (Hq - 1) * a->o_sh + (Sq - 1) * a->o_ss + c->Dv;
    case KN_ATTN_BUF_BIAS:
    case KN_ATTN_BUF_DBIAS: return (B - 1) * a->bias_sb + (Hq - 1) * a->bias_sh + (Sq - 1) * a->bias_si + Sk;
    case KN_ATTN_BUF_STATS: return B * Hq * Sq * 2;
    case KN_ATTN_BUF_DELTA: return B * Hq * Sq;
    default: return 0;
    }
}

static bool mma_head_dim(int d) { return d == 64 || d == 80 || d == 96 || d == 128; }

bool kn_attn_mma(const struct kn_attn *c) { return c->dtype == IR_DTYPE_BF16 && mma_head_dim(c->D) && mma_head_dim(c->Dv); }

/* Whether fn runs on the tensor cores: the delta pre-pass never does (it only reads, a thread a row). */
static bool mma_fn(const struct kn_attn *c, enum kn_attn_fn fn) { return fn != KN_ATTN_DELTA && kn_attn_mma(c); }

int kn_attn_threads(const struct kn_attn *c, enum kn_attn_fn fn) { return mma_fn(c, fn) ? KN_ATTN_MMA_THREADS : KN_ATTN_THREADS; }

int kn_attn_mma_tile(const struct kn_attn *c, enum kn_attn_fn fn)
{
    if (!mma_fn(c, fn))
        return 0;
    int widest = c->D > c->Dv ? c->D : c->Dv;
    /* bwd_kv and bwd_q hold two accumulators of a tile each besides their
     * rows' (dK and dV, or dQ and dO's fragments): beyond head dim 64 a
     * tile of 64 would not fit 255 registers without spilling */
    return fn == KN_ATTN_FWD || widest <= 64 ? 64 : fn == KN_ATTN_BWD_KV && widest > 96 ? 16 : 32;
}

int64_t kn_attn_shared_bytes(const struct kn_attn *c, enum kn_attn_fn fn)
{
    int tile = kn_attn_mma_tile(c, fn);
    if (!tile)
        return 0;
    int64_t row = 2 * ((int64_t)c->D + 8 + c->Dv + 8); /* a bf16 row of K and of V (or of Q and dO), padded by 16 bytes */
    if (fn == KN_ATTN_BWD_KV) /* the block's keys; two buffers of query tiles, their log-sum-exps and deltas */
        return KN_ATTN_MMA_ROWS * row + 2 * tile * row + 2 * 2 * tile * (int64_t)sizeof(float);
    return 2 * tile * row; /* two buffers of key tiles */
}

void kn_attn_grid(const struct kn_attn *c, const struct kn_attn_args *a, enum kn_attn_fn fn, int64_t grid[3])
{
    int rows = mma_fn(c, fn) ? KN_ATTN_MMA_ROWS : KN_ATTN_THREADS; /* a block's query (or key) rows */
    grid[0] = ceil_div(fn == KN_ATTN_BWD_KV ? a->Sk : a->Sq, rows);
    grid[1] = fn == KN_ATTN_BWD_KV ? a->Hk : a->Hq;
    grid[2] = fn == KN_ATTN_BWD_Q && c->bias_grad ? 1 : a->B; /* with bias_grad a block walks the batch */
}

void kn_launch_attn_args(const struct kn_launch *L, struct kn_attn_args *a)
{
    memset(a, 0, sizeof *a);
    memcpy(a, L->sizes, offsetof(struct kn_attn_args, scale));
}

void kn_launch_route_args(const struct kn_launch *L, struct kn_route_args *a)
{
    memset(a, 0, sizeof *a);
    memcpy(a, L->sizes, offsetof(struct kn_route_args, idx));
}

void kn_launch_set_attn_args(struct kn_launch *L, const struct kn_attn_args *a)
{
    memcpy(L->sizes, a, offsetof(struct kn_attn_args, scale));
}

void kn_launch_set_route_args(struct kn_launch *L, const struct kn_route_args *a)
{
    memcpy(L->sizes, a, offsetof(struct kn_route_args, idx));
}

int64_t kn_route_extent(const struct kn_route_args *a, enum kn_route_buf b)
{
    return b == KN_ROUTE_BUF_FILLS ? a->experts * a->capacity : a->entries;
}

int64_t kn_route_grid(const struct kn_route_args *a, int64_t max_blocks) { return clamp_blocks(a->experts, max_blocks); }
