/* memory.c: every role's arena (see memory.h, ir/memplan.h).
 *   requires:  a partition and its schedule
 *   produces:  per stage, every buffer with its region, lifetime and offset
 * Lifetimes come from walking the stage's program (blocks, boundary
 * buffers) and its steps' ops (working buffers); offsets from one packer
 * used for every region; ir_memory_check proves the result. */
#include "memory.h"
#include "autodiff.h"
#include "fuse.h"
#include "util.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKSPACE_BYTES (32LL << 20)

static int64_t align_up(int64_t n) { return (n + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN; }

/* ---- the packer ------------------------------------------------------- */

struct bufs {
    struct ir_buf *v;
    int n, cap;
};

static int push(struct bufs *b, struct ir_buf x)
{
    WF_GROW(b->v, b->n, b->cap);
    b->v[b->n] = x;
    return b->n++;
}

static int larger_first(const void *x, const void *y)
{
    const struct ir_buf *a = *(struct ir_buf *const *)x, *b = *(struct ir_buf *const *)y;
    if (a->bytes != b->bytes)
        return a->bytes < b->bytes ? 1 : -1;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    return (a > b) - (a < b); /* the order they were listed in: the same on every compile */
}

struct span {
    int64_t lo, hi;
};

static int span_order(const void *x, const void *y)
{
    const struct span *a = x, *b = y;
    return (a->lo > b->lo) - (a->lo < b->lo);
}

/* Offsets for the buffers in the given order, each at the lowest aligned
 * offset where it shares no byte with a placed buffer it is alive with.
 * Returns the bytes the buffers need. */
static int64_t place(struct ir_buf **order, int n, struct span *busy)
{
    int64_t size = 0;
    for (int a = 0; a < n; a++) {
        struct ir_buf *x = order[a];
        int nb = 0;
        for (int b = 0; b < a; b++) {
            const struct ir_buf *y = order[b];
            if (y->bytes && ir_buf_meet(x, y))
                busy[nb++] = (struct span){y->offset, y->offset + align_up(y->bytes)};
        }
        qsort(busy, (size_t)nb, sizeof *busy, span_order);
        int64_t at = 0;
        for (int b = 0; b < nb && busy[b].lo < at + x->bytes; b++)
            at = busy[b].hi > at ? busy[b].hi : at;
        x->offset = at;
        size = at + x->bytes > size ? at + x->bytes : size;
    }
    return size;
}

/* A buffer with the busiest moment of its life: the bytes alive then, and when. */
struct breadth {
    struct ir_buf *x;
    int64_t bytes;
    int vstage, at;
};

static int broader_first(const void *p, const void *q)
{
    const struct breadth *a = p, *b = q;
    if (a->bytes != b->bytes)
        return a->bytes < b->bytes ? 1 : -1;
    if (a->vstage != b->vstage || a->at != b->at)
        return a->vstage != b->vstage ? (a->vstage < b->vstage ? -1 : 1) : (a->at < b->at ? -1 : 1);
    return larger_first(&a->x, &b->x);
}

/* The buffers by the busiest moment of their lives, busiest first (then
 * by that moment, then largest first): the moments that set the size are
 * packed first, their buffers side by side (TFLite's greedy by breadth).
 * False where the moments are too many to count. */
static bool by_breadth(struct ir_buf *v, int n, struct ir_buf **order)
{
    int T = 0, V = 1;
    int64_t always = 0;
    for (int i = 0; i < n; i++) {
        T = v[i].last > T ? v[i].last : T;
        if (v[i].region == IR_REGION_WORKING && v[i].vstage + 2 > V)
            V = v[i].vstage + 2;
    }
    if ((int64_t)V * (T + 1) > 1 << 22)
        return false;
    int64_t *live = wf_calloc((size_t)V * (size_t)(T + 1) + 1, sizeof *live);
#define SLOT(x) ((x)->region == IR_REGION_WORKING ? (x)->vstage + 1 : 0)
    for (int i = 0; i < n; i++) { /* alive from first to last, or (0, 0) throughout */
        if (!v[i].first && !v[i].last)
            always += v[i].bytes;
        for (int t = v[i].first; t <= v[i].last && (v[i].first || v[i].last); t++)
            live[(size_t)SLOT(&v[i]) * (size_t)(T + 1) + (size_t)t] += v[i].bytes;
    }
    struct breadth *b = wf_calloc((size_t)n + 1, sizeof *b);
    for (int i = 0; i < n; i++) {
        b[i] = (struct breadth){.x = &v[i], .vstage = SLOT(&v[i]), .at = v[i].first};
        bool throughout = !v[i].first && !v[i].last;
        for (int s = throughout ? 0 : SLOT(&v[i]); s <= (throughout ? V - 1 : SLOT(&v[i])); s++)
            for (int t = throughout ? 0 : v[i].first; t <= (throughout ? T : v[i].last); t++) {
                int64_t here = live[(size_t)s * (size_t)(T + 1) + (size_t)t];
                if (here > b[i].bytes)
                    b[i].bytes = here, b[i].at = t;
            }
        b[i].bytes += always;
    }
#undef SLOT
    qsort(b, (size_t)n, sizeof *b, broader_first);
    for (int i = 0; i < n; i++)
        order[i] = b[i].x;
    free(b);
    free(live);
    return true;
}

/* Offsets for v[0..n): the smaller of two greedy placements, largest first
 * (which places equal-sized buffers as an interval colouring would) and
 * busiest moment first (by_breadth); neither is best for every step, and
 * the placement is the arena's size.  Returns the bytes the buffers need. */
static int64_t pack(struct ir_buf *v, int n)
{
    struct ir_buf **order = wf_calloc((size_t)n + 1, sizeof *order);
    struct span *busy = wf_calloc((size_t)n + 1, sizeof *busy);
    int64_t *best = wf_calloc((size_t)n + 1, sizeof *best), size = -1;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < n; i++)
            order[i] = &v[i];
        if (k == 0)
            qsort(order, (size_t)n, sizeof *order, larger_first);
        else if (!by_breadth(v, n, order))
            break;
        int64_t got = place(order, n, busy);
        if (size < 0 || got < size) {
            size = got;
            for (int i = 0; i < n; i++)
                best[i] = v[i].offset;
        }
    }
    for (int i = 0; i < n; i++)
        v[i].offset = best[i];
    free(order);
    free(busy);
    free(best);
    return size;
}

/* ---- what a step holds ------------------------------------------------- */

/* Ops whose output is its input's bytes: heads split and merged in place, a
 * reshape, the first rows of a position table. */
static bool is_view(enum ir_op_kind k)
{
    return k == IR_OP_SPLIT_HEADS || k == IR_OP_MERGE_HEADS || k == IR_OP_RESHAPE || k == IR_OP_POSITION_EMBEDDING;
}

int memory_root(const struct partition *P, const int *pos, int t)
{
    for (;;) {
        int p = P->g->tensors[t].producer;
        if (p < 0 || !pos[p] || !is_view(P->g->ops[p].kind))
            return t;
        t = P->g->ops[p].in[0];
    }
}

static int64_t shard_bytes_of(const struct partition *P, int t, const struct ir_shard *sh)
{
    const struct ir_tensor *x = &P->g->tensors[t];
    struct ir_shape l = partition_local_shape(P, x->part, &x->shape, sh);
    return ir_shape_numel(&l) * partition_elem_bytes(P, x);
}

static int64_t held_bytes(const struct partition *P, int t) { return shard_bytes_of(P, t, &P->shard[t]); }

/* A gradient is held as its tensor is made (partition_made_shard). */
static int64_t grad_bytes(const struct partition *P, int t)
{
    struct ir_shard made = partition_made_shard(P, t);
    return shard_bytes_of(P, t, &made);
}

/* The buffer an op's backward reads that is not a tensor: a dropout mask
 * (a byte per output element), row statistics (two floats per row of the
 * first input); 0 for a word that names a tensor. */
static int64_t aux_bytes(const struct partition *P, const struct ir_op *o, const char *word, enum ir_buf_what *what)
{
    const struct ir_graph *g = P->g;
    if (!strcmp(word, "mask")) {
        const struct ir_tensor *y = &g->tensors[o->out[0]];
        struct ir_shape l = partition_local_shape(P, y->part, &y->shape, &P->shard[o->out[0]]);
        *what = IR_BUF_MASK;
        return ir_shape_numel(&l);
    }
    if (!strcmp(word, "rowstats")) {
        const struct ir_tensor *x = &g->tensors[o->in[0]];
        struct ir_shape l = partition_local_shape(P, x->part, &x->shape, &P->shard[o->in[0]]);
        int64_t last = l.rank && l.ax[l.rank - 1].size ? l.ax[l.rank - 1].size : 1;
        *what = IR_BUF_ROWSTATS;
        return ir_shape_numel(&l) / last * 2 * 4;
    }
    return 0;
}

/* ---- transfers' buffers ------------------------------------------------ */

int memory_xfer_next(const struct partition *P, int x)
{
    return x + 1 < P->n_xfers && P->xfers[x + 1].prev == x ? x + 1 : -1;
}

bool memory_xfer_loss_stats(const struct partition *P, int x)
{
    const struct part_xfer *px = &P->xfers[x];
    return px->inner && (px->kind == PART_XFER_ALL_REDUCE || px->kind == PART_XFER_ALL_REDUCE_MAX);
}

static bool made_by(const struct partition *P, int op, int t)
{
    for (int k = 0; k < P->g->ops[op].n_out; k++)
        if (P->g->ops[op].out[k] == t)
            return true;
    return false;
}

bool memory_xfer_of_output(const struct partition *P, int x) { return made_by(P, P->xfers[x].op, P->xfers[x].tensor); }

/* Whether t is a parameter, or a view of one's bytes (a position table's first rows). */
static bool param_bytes(const struct partition *P, int t)
{
    for (int p; (p = P->g->tensors[t].producer) >= 0 && is_view(P->g->ops[p].kind);)
        t = P->g->ops[p].in[0];
    return P->g->tensors[t].kind == IR_TENSOR_PARAM;
}

int memory_xfer_elem_bytes(const struct partition *P, int x)
{
    const struct part_xfer *px = &P->xfers[x];
    if (memory_xfer_loss_stats(P, x))
        return 4; /* the loss's f32 statistics */
    if (px->grad && param_bytes(P, px->tensor))
        return partition_grad_bytes(P); /* a parameter's main gradient */
    return partition_elem_bytes(P, &P->g->tensors[px->tensor]);
}

/* The tensor whose bytes a view lays out in a stride (split_heads: a
 * head's columns of a fused QKV) in x's chunk, or -1: none, or a view of
 * another kind. */
static int strided_root(const struct partition *P, int x)
{
    const struct part_xfer *px = &P->xfers[x];
    int t = px->tensor, p = P->g->tensors[t].producer;
    if (p < 0 || P->g->ops[p].kind != IR_OP_SPLIT_HEADS || P->op_chunk[p] != px->to_chunk)
        return -1;
    return P->g->ops[p].in[0];
}

bool memory_xfer_moved(const struct partition *P, int x, struct memory_moved *m)
{
    const struct part_xfer *px = &P->xfers[x];
    *m = (struct memory_moved){.tensor = px->tensor, .axis = px->axis, .first = x, .before = px->before, .after = px->after};
    int root = strided_root(P, x);
    if (root < 0)
        return true;
    /* the root's sequence gathered (forward) or its gradient's reduce-scattered back (backward) */
    uint8_t bit = (uint8_t)IR_PDIM_BIT(px->over);
    struct ir_shard held = P->shard[root];
    held.partial = 0;
    int axis = -1;
    for (int k = 0; k < P->g->tensors[root].shape.rank; k++)
        if (held.split[k] & bit)
            axis = k;
    if (axis < 0 || !(px->grad ? px->kind == PART_XFER_REDUCE_SCATTER : px->kind == PART_XFER_ALL_GATHER))
        return false;
    struct ir_shard whole = held;
    whole.split[axis] &= (uint8_t)~bit;
    if (px->grad)
        whole.partial = bit;
    m->tensor = root, m->axis = axis;
    m->before = px->grad ? whole : held;
    m->after = px->grad ? held : whole;
    for (int y = 0; y < x && m->first == x; y++) /* keys and values of one QKV: one gather, and one reduce-scatter */
        if (P->xfers[y].op == px->op && P->xfers[y].grad == px->grad && P->xfers[y].kind == px->kind &&
            P->xfers[y].over == px->over && P->xfers[y].kind != PART_XFER_SEND && strided_root(P, y) == root)
            m->first = y;
    return true;
}

static int64_t shard_bytes(const struct partition *P, int x, bool after)
{
    const struct part_xfer *px = &P->xfers[x];
    if (memory_xfer_loss_stats(P, x))
        return px->bytes;
    struct memory_moved m;
    if (!memory_xfer_moved(P, x, &m))
        return 0;
    const struct ir_tensor *t = &P->g->tensors[m.tensor];
    struct ir_shape l = partition_local_shape(P, P->chunks[px->to_chunk].part, &t->shape, after ? &m.after : &m.before);
    return ir_shape_numel(&l) * memory_xfer_elem_bytes(P, x);
}

int64_t memory_xfer_in_bytes(const struct partition *P, int x) { return shard_bytes(P, x, false); }
int64_t memory_xfer_out_bytes(const struct partition *P, int x) { return shard_bytes(P, x, true); }

int memory_a2a_axis(const struct part_xfer *px, bool send)
{
    uint8_t p = (uint8_t)IR_PDIM_BIT(px->over);
    const struct ir_shard *a = send ? &px->after : &px->before, *b = send ? &px->before : &px->after;
    for (int k = 0; k < px->shape.rank; k++)
        if (((a->split[k] & p) && !(b->split[k] & p)) || ((b->stack[k] & p) && !(a->stack[k] & p)))
            return k;
    return -1;
}

int64_t memory_outer(const struct ir_shape *s, int axis)
{
    int64_t n = 1;
    for (int k = 0; k < axis && k < s->rank; k++)
        n *= s->ax[k].size;
    return n;
}

/* Whether a gradient's chain from `head` is all-reduces that can run in
 * place in the tensor's gradient: every reader of the tensor in the chunk
 * gives it alike, and none of it comes back from a later stage. */
static bool grad_in_place(const struct partition *P, int head)
{
    const struct part_xfer *h = &P->xfers[head];
    for (int x = head; x >= 0; x = memory_xfer_next(P, x))
        if (P->xfers[x].kind != PART_XFER_ALL_REDUCE)
            return false;
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].kind == PART_XFER_SEND && P->xfers[x].tensor == h->tensor && P->xfers[x].from_chunk == h->to_chunk)
            return false;
    for (int i = 0; i < P->g->n_ops; i++)
        for (int k = 0; k < P->g->ops[i].n_in; k++)
            if (P->g->ops[i].in[k] == h->tensor && P->op_chunk[i] == h->to_chunk && partition_grad_via(P, i, k) != head)
                return false;
    return true;
}

bool memory_xfer_place(const struct partition *P, const int *pos, int x, bool restaged, struct ir_ref *in, struct ir_ref *out,
                       bool *adds)
{
    const struct part_xfer *px = &P->xfers[x];
    int t = px->tensor, root = memory_root(P, pos, t);
    *adds = false;
    bool in_place = px->kind == PART_XFER_ALL_REDUCE || px->kind == PART_XFER_ALL_REDUCE_MAX;
    struct memory_moved m;
    if (!memory_xfer_moved(P, x, &m))
        return false;
    if (m.first != x) /* it moves bytes an earlier transfer moves */
        return memory_xfer_place(P, pos, m.first, restaged, in, out, adds);
    if (m.tensor != t) { /* a strided view's root: gathered whole, or its gradient reduce-scattered back */
        struct ir_ref mine = {.what = restaged ? IR_BUF_RESTAGED : IR_BUF_STAGED, .id = x};
        *in = px->grad ? (struct ir_ref){.what = IR_BUF_XFER_IN, .id = x} : (struct ir_ref){.what = IR_BUF_VALUE, .id = root};
        *out = mine;
        *adds = px->grad;
        return px->prev < 0 && memory_xfer_next(P, x) < 0;
    }
    for (int v = t; v != root && !in_place; v = P->g->ops[P->g->tensors[v].producer].in[0]) {
        enum ir_op_kind k = P->g->ops[P->g->tensors[v].producer].kind;
        if (k != IR_OP_RESHAPE && k != IR_OP_POSITION_EMBEDDING)
            return false; /* its bytes are not its root's first ones, in order */
    }
    struct ir_ref mine = {.what = restaged ? IR_BUF_RESTAGED : IR_BUF_STAGED, .id = x};
    bool ok = true;
    if (memory_xfer_loss_stats(P, x)) { /* the loss's launches write it and read it */
        *in = *out = (struct ir_ref){.what = IR_BUF_STAGED, .id = x};
        return true;
    }
    if (px->inner) { /* an op's exchange (the experts'): of what its kernels write, or read */
        bool of_output = made_by(P, px->op, t);
        struct ir_ref tensor = {.what = px->grad ? IR_BUF_GRAD : IR_BUF_VALUE, .id = root}, given = {.what = IR_BUF_XFER_IN, .id = x};
        *in = of_output != px->grad ? given : tensor;
        *out = of_output && !px->grad ? tensor : mine;
        *adds = px->grad && !of_output;
        return true;
    }
    if (px->prev >= 0) {
        struct ir_ref ignored;
        bool a;
        ok = memory_xfer_place(P, pos, px->prev, restaged, &ignored, in, &a);
    } else if (px->grad) {
        *in = grad_in_place(P, x) ? (struct ir_ref){.what = IR_BUF_GRAD, .id = root}
                                  : (struct ir_ref){.what = IR_BUF_XFER_IN, .id = x};
    } else if (px->before.partial) {
        int made = partition_made_xfer(P, t);
        *in = made >= 0 ? (struct ir_ref){.what = IR_BUF_XFER_IN, .id = made} : (struct ir_ref){.what = IR_BUF_VALUE, .id = root};
    } else {
        *in = (struct ir_ref){.what = IR_BUF_VALUE, .id = root};
    }
    if (in_place) {
        *out = *in;
    } else if (!px->grad && px->before.partial && px->kind == PART_XFER_REDUCE_SCATTER) {
        bool later = false; /* a later reduce-scatter of the chain leaves it in the tensor's buffer */
        for (int y = memory_xfer_next(P, x); y >= 0; y = memory_xfer_next(P, y))
            later |= P->xfers[y].kind == PART_XFER_REDUCE_SCATTER;
        *out = later ? mine : (struct ir_ref){.what = IR_BUF_VALUE, .id = root};
    } else {
        *out = mine;
    }
    *adds = px->grad && memory_xfer_next(P, x) < 0 && !(out->what == IR_BUF_GRAD);
    return ok;
}

bool memory_backward_rereads(const struct partition *P, const struct kn_set *K, int x)
{
    const struct part_xfer *px = &P->xfers[x];
    if (!px->inner || px->grad || memory_xfer_loss_stats(P, x) || made_by(P, px->op, px->tensor))
        return false;
    for (int l = 0; K && l < K->n_launches; l++)
        for (int i = 0; K->launches[l].when == KN_WHEN_BACKWARD && K->ops[K->launches[l].first_op] == px->op &&
                        i < K->launches[l].n_in; i++)
            if (K->launches[l].in[i].xfer == x)
                return true;
    return false;
}

bool memory_backward_reads(const struct partition *P, const struct kn_set *K, const bool *needs, int op, int k)
{
    const struct ir_op *o = &P->g->ops[op];
    if (o->kind == IR_OP_MATMUL)
        return o->n_in > 1 && needs[o->in[1 - k]];
    int t = o->in[k], via = partition_reads_via(P, op, k);
    for (int l = 0; K && l < K->n_launches; l++) {
        const struct kn_launch *L = &K->launches[l];
        bool mine = false;
        for (int i = 0; i < L->n_ops; i++)
            mine |= K->ops[L->first_op + i] == op;
        bool attention = K->kernels[L->kernel].kind == KN_KIND_ATTENTION && K->kernels[L->kernel].attn.backward;
        if (!mine || !(L->when == KN_WHEN_BACKWARD || (L->when == KN_WHEN_FORWARD && attention)))
            continue;
        for (int i = 0; i < L->n_in; i++) /* a value as the op reads it: through its transfer, else the tensor's own */
            if (L->in[i].what == IR_BUF_VALUE && (via >= 0 ? L->in[i].xfer == via : L->in[i].id == t && L->in[i].xfer < 0))
                return true;
    }
    return false;
}

enum home { HOME_NONE, HOME_PARAM, HOME_BLOCK, HOME_BOUNDARY, HOME_WORKING };

/* One step: the ops of a stage's chunks of one virtual stage. */
struct step {
    int vstage, n;
    int *ops;            /* in graph order */
    int *pos;            /* per op: 1..n within the step, 0 outside */
    enum home *home;     /* per tensor root */
    bool *crosses;       /* per root: received or sent */
    int *fwd_first, *fwd_last, *bwd_first, *bwd_last; /* working lifetimes; 0: none */
};

/* Whether a send crosses into or out of step st (not within it). */
static bool send_touches(const struct partition *P, const struct part_xfer *px, int stage, int v)
{
    bool from = P->chunks[px->from_chunk].stage == stage && P->chunks[px->from_chunk].vstage == v;
    bool to = P->chunks[px->to_chunk].stage == stage && P->chunks[px->to_chunk].vstage == v;
    return px->kind == PART_XFER_SEND && from != to;
}

static void span_at(int *first, int *last, int t, int at)
{
    if (!first[t] || at < first[t])
        first[t] = at;
    if (at > last[t])
        last[t] = at;
}

/* Homes, the block's items and the working buffers of one step. */
/* Which values (and gradients) live only inside a fused kernel, and which
 * ops' launches write row statistics (the loss's, even forward only). */
struct fused {
    bool *value, *grad; /* per tensor */
    bool *rowstats;     /* per op */
    uint8_t *routed;    /* per op: 1 its forward routes tokens, 2 its backward does (ROUTES and FILLS, working) */
    int *lead;          /* per op: the first op of its fused group (itself if none): one launch runs the group's ops
                         * together, forward and backward, so their buffers live as at that op */
    int *made;          /* per op: where its forward writes its outputs: its lead's place, or an epilogue's matmul's */
};

static void plan_step(const struct partition *P, const struct ir_schedule *S, const bool *needs, const struct fused *fu,
                      struct step *st, int stage, struct bufs *items, struct bufs *working, int64_t *block_bytes)
{
    const struct ir_graph *g = P->g;
    bool train = !S->forward_only;
    int n = st->n, v = st->vstage;
    /* where op i's work runs: its group's launch, at the group's first op */
#define AT(i) st->pos[fu->lead[i]]
    for (int k = 0; k < P->n_xfers; k++)
        if (send_touches(P, &P->xfers[k], stage, v))
            st->crosses[memory_root(P, st->pos, P->xfers[k].tensor)] = true;
    /* The block: what the backward reads, in op order. */
    int64_t at = 0;
    for (int a = 0; train && a < n; a++) {
        const struct ir_op *o = &g->ops[st->ops[a]];
        const struct ir_op_info *info = ir_op_info(o->kind);
        for (int k = 0; k < info->n_saves; k++) {
            const char *w = info->saves_words[k];
            enum ir_buf_what what = IR_BUF_VALUE;
            int64_t b = aux_bytes(P, o, w, &what);
            int id = st->ops[a];
            if (what == IR_BUF_VALUE) {
                int t = ir_op_saved_tensor(o, w);
                if (t < 0 || g->tensors[t].kind == IR_TENSOR_PARAM)
                    continue; /* an absent optional input, or a parameter (in PARAMS) */
                id = memory_root(P, st->pos, t);
                if (st->home[id] == HOME_BLOCK)
                    continue;
                st->home[id] = HOME_BLOCK;
                b = held_bytes(P, id);
            }
            push(items, (struct ir_buf){.what = (uint8_t)what, .region = IR_REGION_ACTIVATIONS, .id = id, .vstage = v,
                                        .micro = -1, .offset = at, .bytes = b});
            at += align_up(b);
        }
    }
    block_bytes[v] = at;
    /* Forward only, the block keeps nothing: the row statistics a launch
     * writes (the loss's row losses) are working, to the step's end. */
    for (int a = 0; !train && a < n; a++) {
        enum ir_buf_what what;
        if (fu->rowstats[st->ops[a]])
            push(working, (struct ir_buf){.what = IR_BUF_ROWSTATS, .region = IR_REGION_WORKING, .id = st->ops[a], .vstage = v,
                                          .micro = -1, .first = AT(st->ops[a]), .last = n,
                                          .bytes = aux_bytes(P, &g->ops[st->ops[a]], "rowstats", &what)});
    }
    /* Every other value: a boundary buffer if it crosses, else working,
     * alive from its producer (or the step's start) to its last reader (the
     * step's end for the model's outputs). */
    for (int a = 0; a < n; a++) {
        const struct ir_op *o = &g->ops[st->ops[a]];
        for (int k = 0; k < o->n_in + o->n_out; k++) {
            int t = k < o->n_in ? o->in[k] : o->out[k - o->n_in];
            if (t < 0)
                continue;
            int r = memory_root(P, st->pos, t);
            if (g->tensors[r].kind == IR_TENSOR_PARAM)
                st->home[r] = HOME_PARAM;
            else if (!st->home[r] || st->home[r] == HOME_WORKING)
                st->home[r] = st->crosses[r] ? HOME_BOUNDARY : HOME_WORKING;
            if (st->home[r] != HOME_WORKING || fu->value[r])
                continue;
            int p = g->tensors[r].producer;
            span_at(st->fwd_first, st->fwd_last, r, p >= 0 && st->pos[p] ? st->pos[fu->made[p]] : 1);
            span_at(st->fwd_first, st->fwd_last, r, AT(st->ops[a]));
        }
    }
    for (int k = 0; k < g->n_outputs; k++) {
        int r = g->outputs[k];
        if (g->tensors[r].producer >= 0 && st->pos[g->tensors[r].producer] && (r = memory_root(P, st->pos, r)) >= 0 &&
            st->home[r] == HOME_WORKING)
            span_at(st->fwd_first, st->fwd_last, r, n);
    }
    /* The backward of op k runs at 2n+1-k: it reads its outputs' gradients
     * and adds into its inputs'.  A crossing tensor's gradient is a boundary
     * buffer; a parameter's is in GRADS. */
    for (int a = 0; train && a < n; a++) {
        const struct ir_op *o = &g->ops[st->ops[a]];
        int back = 2 * n + 1 - AT(st->ops[a]);
        for (int k = 0; k < o->n_in + o->n_out; k++) {
            int t = k < o->n_in ? o->in[k] : o->out[k - o->n_in];
            if (t < 0 || !needs[t])
                continue;
            int r = memory_root(P, st->pos, t);
            if (st->home[r] == HOME_PARAM || st->crosses[r] || fu->grad[r])
                continue;
            span_at(st->bwd_first, st->bwd_last, r, back);
        }
    }
    if (train && g->n_outputs && needs[g->outputs[0]]) { /* the loss's gradient, seeded as the backward starts */
        int p = g->tensors[g->outputs[0]].producer;
        if (p >= 0 && st->pos[p])
            span_at(st->bwd_first, st->bwd_last, memory_root(P, st->pos, g->outputs[0]), n + 1);
    }
    for (int a = 0; a < n; a++) { /* the routing's scratch: one buffer an op, alive from its forward's routing to its
                                     * backward's (one identity, so a launch finds it by op alone) */
        int op = st->ops[a], first = 0, last = 0;
        for (int pass = 0; pass < 2; pass++) {
            if (!(fu->routed[op] & (1 << pass)) || (pass && !train))
                continue;
            int when = pass ? 2 * n + 1 - AT(op) : AT(op);
            first = first ? first : when;
            last = when;
        }
        if (!first)
            continue;
        int64_t entries, topk, experts, capacity;
        fuse_route_sizes(P, op, &entries, &topk, &experts, &capacity);
        push(working, (struct ir_buf){.what = IR_BUF_ROUTES, .region = IR_REGION_WORKING, .id = op, .vstage = v, .micro = -1,
                                      .first = first, .last = last, .bytes = entries * 4});
        push(working, (struct ir_buf){.what = IR_BUF_FILLS, .region = IR_REGION_WORKING, .id = op, .vstage = v, .micro = -1,
                                      .first = first, .last = last, .bytes = experts * capacity * 4});
    }
    for (int t = 0; t < g->n_tensors; t++) {
        if (st->fwd_first[t])
            push(working, (struct ir_buf){.what = IR_BUF_VALUE, .region = IR_REGION_WORKING, .id = t, .vstage = v,
                                          .micro = -1, .first = st->fwd_first[t], .last = st->fwd_last[t], .bytes = held_bytes(P, t)});
        if (st->bwd_first[t])
            push(working, (struct ir_buf){.what = IR_BUF_GRAD, .region = IR_REGION_WORKING, .id = t, .vstage = v,
                                          .micro = -1, .first = st->bwd_first[t], .last = st->bwd_last[t], .bytes = grad_bytes(P, t)});
    }
#undef AT
}

/* Whether transfer y moves the bytes transfer x moves (it is x, or x is the first to move them). */
static bool same_bytes(const struct partition *P, int y, int x)
{
    struct memory_moved m;
    return y >= 0 && (y == x || (memory_xfer_moved(P, y, &m) && m.first == x));
}

/* The working buffers of step st's transfers (memory_xfer_place): a
 * forward transfer's result alive from the transfer, just before its first
 * reader, to its last reader; brought again (RESTAGED) from the backward of
 * the last reader whose backward reads it to the first's; a producer's
 * partial sums from it to their reduce-scatter; a gradient's readers' sum
 * from the first to give it to its conversion, after the last; a
 * gradient's converted result at that conversion.  Returns the packing
 * scratch the transfers need. */
static int64_t plan_transfers(const struct partition *P, const struct kn_set *K, const bool *needs, const struct fused *fu,
                              const struct step *st, int stage, struct bufs *working)
{
    const struct ir_graph *g = P->g;
    int n = st->n, v = st->vstage;
    int64_t pack_bytes = 0;
#define AT(i) st->pos[fu->lead[i]]
#define BACK(i) (2 * n + 1 - AT(i))
    for (int x = 0; x < P->n_xfers; x++) {
        const struct part_xfer *px = &P->xfers[x];
        if (px->kind == PART_XFER_SEND || P->chunks[px->to_chunk].stage != stage || P->chunks[px->to_chunk].vstage != v ||
            (px->grad && !needs[px->tensor]))
            continue;
        struct ir_ref in, out;
        bool adds;
        struct memory_moved moved;
        if (!memory_xfer_moved(P, x, &moved) || moved.first != x || !memory_xfer_place(P, st->pos, x, false, &in, &out, &adds))
            continue; /* one that cannot run (the plan is refused), or whose bytes an earlier one moves */
        int at = px->grad ? BACK(px->op) : AT(px->op);
        int64_t in_bytes = memory_xfer_in_bytes(P, x), out_bytes = memory_xfer_out_bytes(P, x);
        struct ir_buf b = {.region = IR_REGION_WORKING, .vstage = v, .micro = -1, .id = x};
        if (in.what == IR_BUF_XFER_IN && in.id == x) {
            int first = at;
            if (!px->grad && !px->inner) { /* from the producer */
                int p = g->tensors[px->tensor].producer;
                first = p >= 0 && st->pos[p] ? st->pos[fu->made[p]] : 1;
            }
            for (int i = 0; px->grad && i < g->n_ops; i++) /* from the first reader to give it */
                for (int k = 0; k < g->ops[i].n_in; k++)
                    if (same_bytes(P, partition_grad_via(P, i, k), x) && st->pos[i] && BACK(i) < first)
                        first = BACK(i);
            b.what = IR_BUF_XFER_IN, b.first = first, b.last = at, b.bytes = in_bytes;
            push(working, b);
        }
        if (px->kind == PART_XFER_ALL_GATHER || px->kind == PART_XFER_REDUCE_SCATTER || px->kind == PART_XFER_ALL_TO_ALL) {
            const struct ir_tensor *t = &g->tensors[moved.tensor];
            enum ir_part part = P->chunks[px->to_chunk].part;
            struct ir_shape before = partition_local_shape(P, part, &t->shape, &moved.before),
                            after = partition_local_shape(P, part, &t->shape, &moved.after);
            int send = px->kind == PART_XFER_ALL_TO_ALL ? memory_a2a_axis(px, true) : moved.axis,
                recv = px->kind == PART_XFER_ALL_TO_ALL ? memory_a2a_axis(px, false) : moved.axis;
            bool packs = memory_outer(&before, send) > 1 || memory_outer(&after, recv) > 1;
            int64_t need = packs ? 2 * (in_bytes > out_bytes ? in_bytes : out_bytes) : 0;
            pack_bytes = need > pack_bytes ? need : pack_bytes;
        }
        if (out.what != IR_BUF_STAGED || out.id != x)
            continue;
        int last = at; /* forward: to the last reader of the chain it is in */
        int rfirst = 0, rlast = 0; /* the backwards that bring it again */
        for (int i = 0; !px->grad && !memory_xfer_loss_stats(P, x) && i < g->n_ops; i++)
            for (int k = 0; st->pos[i] && k < g->ops[i].n_in; k++) {
                bool reads = false;
                for (int y = partition_reads_via(P, i, k); y >= 0 && !reads; y = P->xfers[y].prev)
                    reads = same_bytes(P, y, x);
                if (!reads)
                    continue;
                last = AT(i) > last ? AT(i) : last;
                if (needs[g->ops[i].out[0]] && memory_backward_reads(P, K, needs, i, k)) {
                    rfirst = !rfirst || BACK(i) < rfirst ? BACK(i) : rfirst;
                    rlast = BACK(i) > rlast ? BACK(i) : rlast;
                }
            }
        if (memory_backward_rereads(P, K, x)) /* an op's exchange of its input, its backward reads again */
            rfirst = rlast = BACK(px->op);
        b.what = IR_BUF_STAGED, b.first = at, b.last = last, b.bytes = out_bytes;
        push(working, b);
        if (rfirst) {
            b.what = IR_BUF_RESTAGED, b.first = rfirst, b.last = rlast;
            push(working, b);
        }
    }
#undef AT
#undef BACK
    return pack_bytes;
}

/* ---- a role ------------------------------------------------------------ */

static void widen(struct ir_buf *b, int at)
{
    if (b->first < 0 || at < b->first)
        b->first = at;
    if (at > b->last)
        b->last = at;
}

/* The ACTIVATIONS region: a block per (virtual stage, micro-batch) alive
 * from its forward (or the receive of an input it keeps) to its backward
 * (or the send of a value it keeps); a boundary buffer per crossing value
 * and gradient per micro-batch, alive from the transfer or step that fills
 * it to the one that drains it. */
static void plan_activations(const struct partition *P, const struct ir_schedule *S, int stage, struct step *steps,
                             struct ir_role_memory *m, struct bufs *acts)
{
    const struct ir_program *prog = &S->programs[stage];
    int V = S->virtual_stages, M = S->n_micro;
    int *block = wf_calloc((size_t)V * M + 1, sizeof *block); /* index in acts, or -1 */
    int *from = wf_calloc((size_t)V * M + 1, sizeof *from), *to = wf_calloc((size_t)V * M + 1, sizeof *to);
    for (int v = 0; v < V; v++)
        for (int j = 0; j < M; j++) {
            int vj = v * M + j;
            block[vj] = m->block_bytes[v] ? push(acts, (struct ir_buf){.what = IR_BUF_BLOCK, .region = IR_REGION_ACTIVATIONS,
                                                                      .id = -1, .vstage = v, .micro = j, .first = -1,
                                                                      .last = -1, .bytes = m->block_bytes[v]})
                                          : -1;
            /* the boundary buffers of (v, j): a value not kept in the block,
             * and (training) a gradient, per crossing tensor */
            from[vj] = acts->n;
            for (int k = 0; k < P->n_xfers; k++) {
                const struct part_xfer *px = &P->xfers[k];
                if (!send_touches(P, px, stage, v))
                    continue;
                int r = memory_root(P, steps[v].pos, px->tensor);
                for (int w = IR_BUF_VALUE; w <= (S->forward_only ? IR_BUF_VALUE : IR_BUF_GRAD); w++) {
                    bool have = w == IR_BUF_VALUE && steps[v].home[r] == HOME_BLOCK;
                    for (int b = from[vj]; b < acts->n; b++)
                        have |= acts->v[b].id == r && acts->v[b].what == w;
                    if (!have)
                        push(acts, (struct ir_buf){.what = (uint8_t)w, .region = IR_REGION_ACTIVATIONS, .id = r, .vstage = v,
                                                   .micro = j, .first = -1, .last = -1, .bytes = px->bytes});
                }
            }
            to[vj] = acts->n;
        }
    for (int i = 0; i < prog->n; i++) {
        const struct ir_ins *x = &prog->ins[i];
        if (x->kind == IR_INS_FORWARD || x->kind == IR_INS_BACKWARD) {
            int vj = x->vstage * M + x->micro;
            if (block[vj] >= 0)
                widen(&acts->v[block[vj]], i + 1);
            for (int b = from[vj]; b < to[vj]; b++) /* a step fills or drains its boundary buffers */
                if ((acts->v[b].what == IR_BUF_GRAD) == (x->kind == IR_INS_BACKWARD))
                    widen(&acts->v[b], i + 1);
            continue;
        }
        for (int k = 0; x->kind == IR_INS_P2P && k < x->n_p2p; k++) {
            const struct ir_p2p *p = &x->p2p[k];
            int v = P->chunks[p->chunk].vstage, vj = v * M + p->micro;
            int r = memory_root(P, steps[v].pos, p->tensor);
            enum ir_buf_what what = p->grad ? IR_BUF_GRAD : IR_BUF_VALUE;
            if (what == IR_BUF_VALUE && steps[v].home[r] == HOME_BLOCK) {
                widen(&acts->v[block[vj]], i + 1);
                continue;
            }
            for (int b = from[vj]; b < to[vj]; b++)
                if (acts->v[b].id == r && acts->v[b].what == what)
                    widen(&acts->v[b], i + 1);
        }
    }
    free(block);
    free(from);
    free(to);
}

static void plan_role(const struct partition *P, const struct ir_schedule *S, const struct kn_set *K, const bool *needs,
                      const struct fused *fu, int stage, struct ir_role_memory *m)
{
    const struct ir_graph *g = P->g;
    bool bf16 = P->L->pc.bf16, train = !S->forward_only;
    struct bufs bufs = {0}, items = {0};
    m->grad_bytes = partition_grad_bytes(P);
    /* Parameters and their gradients, in the order the backward finishes them. */
    int *params = wf_calloc((size_t)g->n_tensors + 1, sizeof *params), *owner = wf_calloc((size_t)g->n_tensors + 1, sizeof *owner);
    int np = partition_stage_params(P, stage, params, owner);
    for (int i = 0; i < np; i++) {
        const struct ir_tensor *x = &g->tensors[params[i]];
        struct ir_shape l = partition_local_shape(P, P->chunks[owner[i]].part, &x->shape, &P->shard[params[i]]);
        int64_t elems = ir_shape_numel(&l);
        push(&bufs, (struct ir_buf){.what = IR_BUF_VALUE, .region = IR_REGION_PARAMS, .id = params[i], .vstage = -1,
                                    .micro = -1, .offset = m->size[IR_REGION_PARAMS], .bytes = elems * (bf16 ? 2 : 4)});
        m->size[IR_REGION_PARAMS] += align_up(elems * (bf16 ? 2 : 4));
        if (!train)
            continue;
        push(&bufs, (struct ir_buf){.what = IR_BUF_GRAD, .region = IR_REGION_GRADS, .id = params[i], .vstage = -1,
                                    .micro = -1, .offset = m->size[IR_REGION_GRADS], .bytes = elems * m->grad_bytes});
        m->size[IR_REGION_GRADS] += align_up(elems * m->grad_bytes);
    }
    free(params);
    free(owner);
    m->size[IR_REGION_OPTIMIZER] = ir_memory_state_bytes(m) * (bf16 ? 3 : 2);
    /* Each virtual stage's step. */
    int V = S->virtual_stages, nt = g->n_tensors;
    m->n_vstages = V;
    m->block_bytes = wf_calloc((size_t)V, sizeof *m->block_bytes);
    struct step *steps = wf_calloc((size_t)V, sizeof *steps);
    struct bufs working = {0};
    for (int v = 0; v < V; v++) {
        struct step *st = &steps[v];
        st->vstage = v;
        st->ops = wf_calloc((size_t)g->n_ops + 1, sizeof *st->ops);
        st->pos = wf_calloc((size_t)g->n_ops + 1, sizeof *st->pos);
        for (int i = 0; i < g->n_ops; i++)
            if (P->chunks[P->op_chunk[i]].stage == stage && P->chunks[P->op_chunk[i]].vstage == v) {
                st->ops[st->n++] = i;
                st->pos[i] = st->n;
            }
        st->home = wf_calloc((size_t)nt + 1, sizeof *st->home);
        st->crosses = wf_calloc((size_t)nt + 1, sizeof *st->crosses);
        st->fwd_first = wf_calloc((size_t)nt + 1, sizeof *st->fwd_first);
        st->fwd_last = wf_calloc((size_t)nt + 1, sizeof *st->fwd_last);
        st->bwd_first = wf_calloc((size_t)nt + 1, sizeof *st->bwd_first);
        st->bwd_last = wf_calloc((size_t)nt + 1, sizeof *st->bwd_last);
        int from = working.n;
        plan_step(P, S, needs, fu, st, stage, &items, &working, m->block_bytes);
        int64_t pack_bytes = plan_transfers(P, K, needs, fu, st, stage, &working);
        m->size[IR_REGION_COMM] = pack_bytes > m->size[IR_REGION_COMM] ? pack_bytes : m->size[IR_REGION_COMM];
        int64_t need = pack(working.v + from, working.n - from);
        m->size[IR_REGION_WORKING] = need > m->size[IR_REGION_WORKING] ? need : m->size[IR_REGION_WORKING];
    }
    struct bufs acts = {0};
    plan_activations(P, S, stage, steps, m, &acts);
    int kept = 0; /* a buffer no instruction touches is not needed */
    for (int a = 0; a < acts.n; a++)
        if (acts.v[a].first > 0)
            acts.v[kept++] = acts.v[a];
    acts.n = kept;
    m->size[IR_REGION_ACTIVATIONS] = pack(acts.v, acts.n);
    /* The most blocks alive at once. */
    for (int a = 0; a < acts.n; a++) {
        int alive = 0;
        for (int b = 0; acts.v[a].what == IR_BUF_BLOCK && b < acts.n; b++)
            alive += acts.v[b].what == IR_BUF_BLOCK && acts.v[b].first <= acts.v[a].first && acts.v[a].first <= acts.v[b].last;
        m->in_flight = alive > m->in_flight ? alive : m->in_flight;
    }
    for (int a = 0; a < acts.n; a++)
        push(&bufs, acts.v[a]);
    for (int a = 0; a < working.n; a++)
        push(&bufs, working.v[a]);
    free(acts.v);
    free(working.v);
    for (int v = 0; v < V; v++) {
        struct step *st = &steps[v];
        free(st->ops), free(st->pos), free(st->home), free(st->crosses);
        free(st->fwd_first), free(st->fwd_last), free(st->bwd_first), free(st->bwd_last);
    }
    free(steps);
    /* An encoder rank below a wider decoder (--etp below --tp) gets a gradient's copy from each decoder
     * tensor-parallel rank above it: the first into its buffer, the others into COMM (exec.c). */
    const struct par_config *pc = &P->L->pc;
    if (P->L->has_encoder && pc->etp < pc->tp && pc->etp > 0) {
        int64_t back = 0;
        for (int x = 0; x < P->n_xfers; x++)
            if (P->xfers[x].kind == PART_XFER_SEND && P->chunks[P->xfers[x].from_chunk].stage == stage &&
                P->chunks[P->xfers[x].from_chunk].part == IR_PART_ENCODER)
                back += align_up(P->xfers[x].bytes);
        back *= pc->tp / pc->etp - 1;
        m->size[IR_REGION_COMM] = back > m->size[IR_REGION_COMM] ? back : m->size[IR_REGION_COMM];
    }
    m->size[IR_REGION_WORKSPACE] = WORKSPACE_BYTES;
    m->bufs = bufs.v;
    m->n_bufs = bufs.n;
    m->items = items.v;
    m->n_items = items.n;
    ir_role_memory_layout(m);
}

void memory_plan(const struct partition *P, const struct ir_schedule *S, const struct kn_set *K, struct ir_memory *M)
{
    const struct ir_graph *g = P->g;
    memset(M, 0, sizeof *M);
    M->n_roles = S->n_stages;
    M->roles = wf_calloc((size_t)S->n_stages, sizeof *M->roles);
    bool *needs = wf_calloc((size_t)g->n_tensors + 1, sizeof *needs);
    int loss = ir_graph_loss(g);
    if (!S->forward_only && loss >= 0)
        autodiff_needs_grad(g, loss, needs);
    struct fused fu = {.value = wf_calloc((size_t)g->n_tensors + 1, 1), .grad = wf_calloc((size_t)g->n_tensors + 1, 1),
                       .rowstats = wf_calloc((size_t)g->n_ops + 1, 1), .routed = wf_calloc((size_t)g->n_ops + 1, 1),
                       .lead = wf_calloc((size_t)g->n_ops + 1, sizeof(int)), .made = wf_calloc((size_t)g->n_ops + 1, sizeof(int))};
    int *epilogue = wf_calloc((size_t)g->n_ops + 1, sizeof *epilogue);
    fuse_leads(P, K, fu.lead, epilogue);
    memcpy(fu.made, fu.lead, (size_t)g->n_ops * sizeof *fu.made);
    for (int i = 0; i < g->n_ops; i++) /* a GEMM that runs an epilogue writes the epilogue's results, never its own */
        if (epilogue[i] >= 0) {
            const struct kn_launch *L = &K->launches[epilogue[i]];
            fu.value[g->ops[i].out[0]] = true;
            for (int k = 0; k < L->n_ops; k++)
                fu.made[K->ops[L->first_op + k]] = i;
        }
    free(epilogue);
    int *backward = wf_calloc((size_t)g->n_ops + 1, sizeof *backward); /* per first op: its group's backward + 1 */
    for (int l = 0; K && l < K->n_launches; l++)
        if (K->launches[l].when == KN_WHEN_BACKWARD)
            backward[K->ops[K->launches[l].first_op]] = l + 1;
    for (int l = 0; K && l < K->n_launches; l++) {
        const struct kn_launch *L = &K->launches[l];
        for (int k = 0; k < L->n_out; k++)
            if (L->out[k].what == IR_BUF_ROWSTATS)
                fu.rowstats[L->out[k].id] = true;
        if (K->kernels[L->kernel].kind == KN_KIND_ROUTE)
            fu.routed[K->ops[L->first_op]] |= L->when == KN_WHEN_FORWARD ? 1 : 2;
        if (L->when != KN_WHEN_FORWARD || K->kernels[L->kernel].kind != KN_KIND_FUSED ||
            g->ops[K->ops[L->first_op]].kind == IR_OP_CROSS_ENTROPY) /* the loss: the runtime adds the row losses into it */
            continue;
        int b = backward[K->ops[L->first_op]];
        const struct kn_launch *B = b ? &K->launches[b - 1] : NULL;
        for (int i = 0; i < L->n_ops; i++) {
            int t = g->ops[K->ops[L->first_op + i]].out[0];
            bool stored = false, read = false;
            for (int k = 0; k < L->n_out; k++)
                stored |= L->out[k].what == IR_BUF_VALUE && L->out[k].id == t;
            for (int k = 0; B && k < B->n_in; k++)
                read |= B->in[k].what == IR_BUF_GRAD && B->in[k].id == t;
            fu.value[t] = !stored;
            fu.grad[t] = B && !read;
        }
    }
    for (int s = 0; s < S->n_stages; s++)
        plan_role(P, S, K, needs, &fu, s, &M->roles[s]);
    free(backward);
    free(fu.value);
    free(fu.grad);
    free(fu.rowstats);
    free(fu.routed);
    free(fu.lead);
    free(fu.made);
    free(needs);
}

int memory_largest(const struct ir_memory *M)
{
    int big = 0;
    for (int s = 1; s < M->n_roles; s++)
        if (M->roles[s].total > M->roles[big].total)
            big = s;
    return big;
}

int64_t memory_block_bytes(const struct ir_role_memory *m)
{
    int64_t b = 0;
    for (int v = 0; v < m->n_vstages; v++)
        b += m->block_bytes[v];
    return b;
}

int memory_check(const struct partition *P, const struct ir_memory *M, int64_t limit, struct diag *d)
{
    int errors = 0;
    for (int s = 0; s < M->n_roles; s++) {
        const struct ir_role_memory *m = &M->roles[s];
        if (m->total <= limit)
            continue;
        int r = 0;
        while (r < P->L->n_ranks && P->L->ranks[r].stage != s)
            r++;
        /* Its regions, largest first. */
        int order[IR_REGION_COUNT];
        for (int k = 0; k < IR_REGION_COUNT; k++)
            order[k] = k;
        for (int a = 0; a < IR_REGION_COUNT; a++)
            for (int b = a + 1; b < IR_REGION_COUNT; b++)
                if (m->size[order[b]] > m->size[order[a]]) {
                    int t = order[a];
                    order[a] = order[b];
                    order[b] = t;
                }
        char items[1024], x[32], y[32];
        size_t n = 0;
        for (int k = 0; k < 3; k++) {
            n += (size_t)snprintf(items + n, sizeof items - n, "%s%s %s", k ? ", " : "",
                                  ir_region_name((enum ir_region)order[k]), wf_bytes((double)m->size[order[k]], x));
            if (order[k] == IR_REGION_ACTIVATIONS && n < sizeof items)
                n += (size_t)snprintf(items + n, sizeof items - n, " (%d micro-batch%s in flight)", m->in_flight,
                                      m->in_flight == 1 ? "" : "es");
        }
        diag_error(d, NULL, 0, "--memory-limit %s: rank %d (%s stage %d, and every rank of that stage) needs %s: %s",
                   wf_bytes((double)limit, y), r, ir_part_name(P->L->ranks[r].part), s, wf_bytes((double)m->total, x),
                   items);
        errors++;
    }
    return errors ? -1 : 0;
}

int64_t memory_parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0) || !isfinite(v))
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    static const struct {
        const char *suffix;
        double scale;
    } units[] = {{"", 1},        {"B", 1},        {"K", 1024.0},    {"KiB", 1024.0},  {"KB", 1e3},
                 {"M", 1048576.0}, {"MiB", 1048576.0}, {"MB", 1e6},     {"G", 1073741824.0},
                 {"GiB", 1073741824.0}, {"GB", 1e9}, {"T", 1099511627776.0}, {"TiB", 1099511627776.0}, {"TB", 1e12}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].suffix)) {
            double b = v * units[i].scale;
            return b < 9e18 ? (int64_t)b : -1;
        }
    return -1;
}
