/* lower.c: every role's steps as actions (lower.h). */
#include "lower.h"
#include "autodiff.h"
#include "fuse.h"
#include "launch.h"
#include "memory.h"
#include "schedule.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct lowering {
    const struct partition *P;
    const struct kn_set *K;
    const struct ir_role_memory *m;
    bool *needs;  /* per tensor: it gets a gradient */
    int *pos;     /* per op: its place in the step being lowered, from 1; 0 outside it */
    int *lead;    /* per op: the first op of its fused group */
    int *epilogue; /* per matmul: the launch its GEMM runs as its epilogue, or -1 */
    int stage, v; /* the stage and virtual stage being lowered */
    bool *moves;  /* per transfer: the lowering moves it in the step being lowered (lowered()) */
};

static struct ir_ref ref(const struct lowering *w, int what, int t)
{
    return (struct ir_ref){.what = (uint8_t)what, .id = memory_root(w->P, w->pos, t)};
}

/* Where transfer x reads (input) or leaves its result (restaged: brought
 * again for a backward): memory_xfer_place's.  Where it cannot be placed,
 * the tensor's `fallback` buffer: its op awaits it, unchecked, never run. */
static struct ir_ref xfer_side(const struct lowering *w, int x, bool restaged, bool input, int fallback)
{
    struct ir_ref in, out;
    bool adds;
    if (!memory_xfer_place(w->P, w->pos, x, restaged, &in, &out, &adds))
        return ref(w, fallback, w->P->xfers[x].tensor);
    return input ? in : out;
}

/* Where op reads its input k: through the transfers that bring it, or as held. */
static struct ir_ref value_ref(const struct lowering *w, int op, int k, bool backward)
{
    int x = partition_reads_via(w->P, op, k);
    return x >= 0 ? xfer_side(w, x, backward, false, IR_BUF_VALUE) : ref(w, IR_BUF_VALUE, w->P->g->ops[op].in[k]);
}

/* Where op's producer writes tensor t: the partial sums a reduce-scatter
 * takes, or t's buffer. */
static struct ir_ref made_ref(const struct lowering *w, int t)
{
    int x = partition_made_xfer(w->P, t);
    return x >= 0 ? (struct ir_ref){.what = IR_BUF_XFER_IN, .id = x} : ref(w, IR_BUF_VALUE, t);
}

/* Where op adds its gradient of input k: its chunk's readers' sum before
 * their conversion, or t's gradient. */
static struct ir_ref grad_ref(const struct lowering *w, int op, int k)
{
    int x = partition_grad_via(w->P, op, k);
    return x >= 0 ? xfer_side(w, x, false, true, IR_BUF_GRAD) : ref(w, IR_BUF_GRAD, w->P->g->ops[op].in[k]);
}

/* Tensor t as its producer makes it. */
static struct ir_shape made_shape(const struct lowering *w, int t)
{
    const struct ir_tensor *x = &w->P->g->tensors[t];
    struct ir_shard made = partition_made_shard(w->P, t);
    return partition_local_shape(w->P, x->part, &x->shape, &made);
}

static int64_t batch_of(const struct ir_shape *s)
{
    int64_t n = 1;
    for (int i = 0; i + 2 < s->rank; i++)
        n *= s->ax[i].size;
    return n;
}

/* c (M, N) = op(a) (M, K) @ op(b) (K, N), over the leading axes: a batch
 * that b broadcasts over folds into M (one GEMM of the whole activation). */
static struct ir_gemm gemm(int64_t batch, int64_t m, int64_t n, int64_t k, bool ta, bool tb, int64_t sa, int64_t sb,
                           int64_t sc, struct ir_ref a, struct ir_ref b, struct ir_ref c, float beta, int dtype, int c_dtype)
{
    return (struct ir_gemm){.batch = batch, .m = m, .n = n, .k = k, .ta = ta, .tb = tb, .beta = beta, .dtype = (uint8_t)dtype,
                            .c_dtype = (uint8_t)c_dtype,
                            .lda = ta ? m : k, .ldb = tb ? k : n, .ldc = n, .stride_a = sa, .stride_b = sb, .stride_c = sc,
                            .a = a, .b = b, .c = c};
}

/* Whether a collective over px->over along `axis` of shard sh leaves each
 * member's piece where its coordinate says: no inner group splits the axis
 * too (the groups nest, the higher-numbered outside). */
static bool nests(const struct part_xfer *px, int axis, const struct ir_shard *sh)
{
    return axis >= 0 && !(sh->split[axis] & (IR_PDIM_BIT(px->over) - 1));
}

/* The first of the slices along one axis that lead to slice x (a chain
 * slices the innermost group first: cut at once, the pieces nest as the
 * groups do), and the groups they slice over. */
static int slices_from(const struct partition *P, int x)
{
    while (P->xfers[x].prev >= 0 && P->xfers[P->xfers[x].prev].kind == PART_XFER_SLICE &&
           P->xfers[P->xfers[x].prev].axis == P->xfers[x].axis)
        x = P->xfers[x].prev;
    return x;
}

static int slice_pdims(const struct partition *P, int first, int x)
{
    int pdims = 0;
    for (int y = first; y >= 0; y = y == x ? -1 : memory_xfer_next(P, y))
        pdims |= IR_PDIM_BIT(P->xfers[y].over);
    return pdims;
}

/* Whether the lowering moves transfer x itself (a send is the program's; a
 * parameter's gradient is summed by the program): once a step, in moves. */
static bool lowered(const struct lowering *w, int x)
{
    const struct part_xfer *px = &w->P->xfers[x];
    struct ir_ref in, out;
    bool adds;
    if (px->kind == PART_XFER_SEND)
        return true;
    if (px->grad && w->P->g->tensors[px->tensor].kind == IR_TENSOR_PARAM)
        return px->kind == PART_XFER_ALL_REDUCE;
    struct memory_moved m;
    if (!memory_xfer_moved(w->P, x, &m) || !memory_xfer_place(w->P, w->pos, x, false, &in, &out, &adds))
        return false;
    switch (px->kind) {
    case PART_XFER_ALL_GATHER: /* to shares (placed, not gathered), only into the tensor's gradient */
        return nests(px, m.axis, &m.before) && (!(m.after.partial & IR_PDIM_BIT(px->over)) || adds);
    case PART_XFER_REDUCE_SCATTER: return nests(px, m.axis, &m.after);
    case PART_XFER_SLICE: { /* with the slices before it along the axis: inner to what splits it */
        int pdims = slice_pdims(w->P, slices_from(w->P, x), x), lowest = pdims & -pdims;
        return !(m.after.split[m.axis] & (lowest - 1) & ~pdims);
    }
    case PART_XFER_ALL_TO_ALL: return memory_a2a_axis(px, true) >= 0 && memory_a2a_axis(px, false) >= 0;
    default: return true;
    }
}

/* Whether op reads or writes across a transfer the lowering cannot move yet. */
static bool awaits(const struct lowering *w, int op)
{
    for (int x = 0; x < w->P->n_xfers; x++)
        if (w->P->xfers[x].op == op && !w->moves[x])
            return true;
    return false;
}

static struct ir_action launch(const struct lowering *w, int l, int fn_first, int fn_last);

/* The GEMM x runs launch l as its epilogue: it writes the launch's result
 * (and x + bias, where kept) itself; the launch, for a backend without the
 * epilogue, reads the product from where the GEMM would then write it. */
static void epilogue(const struct lowering *w, int l, struct ir_action *x)
{
    struct fuse_epilogue ep;
    struct ir_gemm *g = &x->gemm;
    g->epilogue = (uint8_t)fuse_gemm_epilogue(w->P, w->K, l, &ep);
    WF_ASSERT(g->epilogue != IR_EPI_NONE && g->batch == 1);
    bool awaits = x->awaits;
    struct ir_gemm keep = *g;
    *x = launch(w, l, KN_ATTN_FWD, KN_ATTN_FWD);
    x->kind = IR_ACT_GEMM, x->awaits |= awaits, x->gemm = keep;
    g->gemm_in = (uint8_t)ep.x_slot;
    g->bias = x->launch.in[ep.bias_slot];
    g->c = x->launch.out[ep.out_slot];
    if (ep.aux_slot >= 0)
        g->aux = x->launch.out[ep.aux_slot];
    x->launch.in[ep.x_slot] = ep.aux_slot >= 0 ? g->aux : g->c;
}

/* A matmul's GEMMs: its forward, or the gradients of the inputs that need one (added into their buffers). */
static int matmul(const struct lowering *w, int op, bool backward, struct ir_action_list *out, struct diag *d)
{
    const struct ir_op *o = &w->P->g->ops[op];
    bool ta = ir_op_int(o, IR_ATTR_TRANSPOSE_A), tb = ir_op_int(o, IR_ATTR_TRANSPOSE_B);
    struct ir_shape A = partition_read_shape(w->P, op, 0), B = partition_read_shape(w->P, op, 1), C = made_shape(w, o->out[0]);
    int64_t M = C.ax[C.rank - 2].size, N = C.ax[C.rank - 1].size, Kd = ta ? A.ax[A.rank - 2].size : A.ax[A.rank - 1].size;
    int64_t nb = batch_of(&C), na = batch_of(&A), nbb = batch_of(&B);
    int dtype = partition_elem_bytes(w->P, &w->P->g->tensors[o->in[0]]) == 2 ? IR_DTYPE_BF16 : IR_DTYPE_F32;
    int64_t batch = nb, sa = M * Kd, sb = Kd * N, sc = M * N;
    if (fuse_matmul_folds(w->P, op)) /* a weight: every row of the activation at once */
        M *= nb, batch = 1, sa = sb = sc = 0;
    else if (na != nb || nbb != nb) {
        diag_error(d, NULL, 0, "%s:%d: matmul with batch %lld of %lld and %lld: the executor broadcasts only a weight",
                   o->loc.file, o->loc.line, (long long)nb, (long long)na, (long long)nbb);
        return -1;
    }
    struct ir_action x = {.kind = IR_ACT_GEMM, .awaits = awaits(w, op)};
    struct ir_ref a = value_ref(w, op, 0, backward), b = value_ref(w, op, 1, backward);
    if (!backward) {
        x.gemm = gemm(batch, M, N, Kd, ta, tb, sa, sb, sc, a, b, made_ref(w, o->out[0]), 0, dtype, dtype);
        if (w->epilogue[op] >= 0)
            epilogue(w, w->epilogue[op], &x);
        ir_action_push(out, &x);
        return 0;
    }
    struct ir_ref dc = ref(w, IR_BUF_GRAD, o->out[0]);
    if (w->needs[o->in[0]]) { /* dA = dC op(B)^T, or stored transposed: op(B) dC^T */
        struct ir_ref da = grad_ref(w, op, 0);
        int dt = w->P->g->tensors[o->in[0]].kind == IR_TENSOR_PARAM ? partition_grad_dtype(w->P) : dtype;
        x.gemm = ta ? gemm(batch, Kd, M, N, tb, true, sb, sc, sa, b, dc, da, 1, dtype, dt)
                    : gemm(batch, M, Kd, N, false, !tb, sc, sb, sa, dc, b, da, 1, dtype, dt);
        ir_action_push(out, &x);
    }
    if (w->needs[o->in[1]]) { /* dB = op(A)^T dC, or stored transposed: dC^T op(A) */
        struct ir_ref db = grad_ref(w, op, 1);
        int dt = w->P->g->tensors[o->in[1]].kind == IR_TENSOR_PARAM ? partition_grad_dtype(w->P) : dtype;
        x.gemm = tb ? gemm(batch, N, Kd, M, true, ta, sc, sa, sb, dc, a, db, 1, dtype, dt)
                    : gemm(batch, Kd, N, M, !ta, false, sa, sc, sb, a, dc, db, 1, dtype, dt);
        ir_action_push(out, &x);
    }
    return 0;
}

/* The op of launch l's group that reads tensor t as input k, or -1. */
static int reader_in(const struct lowering *w, int l, int t, int *k)
{
    const struct kn_launch *L = &w->K->launches[l];
    for (int i = 0; i < L->n_ops; i++) {
        int op = w->K->ops[L->first_op + i];
        for (*k = 0; *k < w->P->g->ops[op].n_in; (*k)++)
            if (w->P->g->ops[op].in[*k] == t)
                return op;
    }
    return -1;
}

/* A launch's slots' buffers: a value through the transfers that bring it
 * (brought again in the backward), a value its group makes where its
 * producer writes it, a gradient where its reader adds it. */
static struct ir_action launch(const struct lowering *w, int l, int fn_first, int fn_last)
{
    struct ir_action x = {.kind = IR_ACT_LAUNCH};
    for (int i = 0; i < w->K->launches[l].n_ops && !x.awaits; i++)
        x.awaits = awaits(w, w->K->ops[w->K->launches[l].first_op + i]);
    fuse_launch_template(w->P, w->K, l, &x.launch);
    x.launch.launch = l;
    x.launch.fn_first = (uint8_t)fn_first, x.launch.fn_last = (uint8_t)fn_last;
    const struct kn_launch *L = &w->K->launches[l];
    const struct kn_entry *e = &w->K->kernels[L->kernel];
    bool backward = L->when == KN_WHEN_BACKWARD || fn_last > KN_ATTN_FWD;
    x.launch.n_in = L->n_in, x.launch.n_out = L->n_out;
    for (int i = 0; i < L->n_in + L->n_out; i++) {
        const struct kn_bind *b = i < L->n_in ? &L->in[i] : &L->out[i - L->n_in];
        struct ir_ref *r = i < L->n_in ? &x.launch.in[i] : &x.launch.out[i - L->n_in];
        int k, reader;
        if (ir_buf_of_op(b->what) || b->what == IR_BUF_SUMSQ || b->id < 0)
            *r = (struct ir_ref){.what = b->what, .id = b->id};
        else if (b->xfer >= 0) /* an output: what the transfer takes; an input: its result */
            *r = xfer_side(w, b->xfer, i < L->n_in && backward && b->what == IR_BUF_VALUE, i >= L->n_in, IR_BUF_VALUE);
        else if (i >= L->n_in && b->what == IR_BUF_VALUE && L->when == KN_WHEN_FORWARD)
            *r = made_ref(w, b->id);
        else if (i >= L->n_in && b->what == IR_BUF_GRAD && L->when == KN_WHEN_BACKWARD && e->kind == KN_KIND_FUSED &&
                 e->k.out[i - L->n_in].access != KN_HEADS && (reader = reader_in(w, l, b->id, &k)) >= 0)
            *r = grad_ref(w, reader, k);
        else
            *r = ref(w, b->what, b->id);
    }
    for (int i = 0; e->kind == KN_KIND_ATTENTION && backward && i <= L->n_in; i++) { /* slot i: input i; then the output's
                                                                                     * (its row statistics have none) */
        if (i < L->n_in)
            x.launch.grad_in[i] = grad_ref(w, w->K->ops[L->first_op], i);
        else
            x.launch.grad_out[0] = ref(w, IR_BUF_GRAD, L->out[0].id);
    }
    if (e->kind == KN_KIND_ATTENTION) { /* where this rank's queries and keys sit along the sequence */
        const struct ir_op *o = &w->P->g->ops[w->K->ops[L->first_op]];
        x.launch.q_pos_pdim = w->P->shard[o->in[0]].split[2];
        x.launch.k_pos_pdim = partition_read_shard(w->P, w->K->ops[L->first_op], 1)->split[2];
        double scale = ir_op_float(&w->P->g->ops[w->K->ops[w->K->launches[l].first_op]], IR_ATTR_SCALE);
        x.launch.scale = (float)(isnan(scale) ? 1 / sqrt((double)e->attn.D) : scale);
    }
    return x;
}

static void push_copy(struct ir_action_list *out, struct ir_copy c)
{
    if (!c.src_coords)
        c.src_coords = 1;
    if (!c.dst_coords)
        c.dst_coords = 1;
    ir_action_push(out, &(struct ir_action){.kind = IR_ACT_COPY, .copy = c});
}

/* Transfer x as actions: a collective from where it reads to where it
 * leaves its result, its pieces packed side by side in COMM where the
 * axis it cuts is not the outermost; a slice, a copy of the rank's piece;
 * the last of a gradient's chain then added into the tensor's gradient. */
static void transfer(const struct lowering *w, int x, bool restaged, struct ir_action_list *list)
{
    const struct partition *P = w->P;
    const struct part_xfer *px = &P->xfers[x];
    struct ir_ref in, out;
    bool adds;
    if (!w->moves[x] || !memory_xfer_place(P, w->pos, x, restaged, &in, &out, &adds)) {
        ir_action_push(list, &(struct ir_action){.kind = IR_ACT_PENDING, .coll = {.coll = (uint8_t)(px->kind == PART_XFER_SLICE ? IR_COLL_COUNT : part_xfer_coll(px->kind)),
                                                                                  .group = (uint8_t)ir_group_of_pdim(px->over)}});
        return;
    }
    struct memory_moved m;
    memory_xfer_moved(P, x, &m);
    if (m.first != x)
        return; /* the first to move these bytes moved them (keys and values of one QKV) */
    int dtype = memory_xfer_elem_bytes(P, x) == 2 ? IR_DTYPE_BF16 : IR_DTYPE_F32,
        deg = partition_degree(P, P->chunks[px->to_chunk].part, px->over);
    int64_t in_bytes = memory_xfer_in_bytes(P, x), out_bytes = memory_xfer_out_bytes(P, x);
    const struct ir_tensor *t = &P->g->tensors[m.tensor];
    enum ir_part part = P->chunks[px->to_chunk].part;
    struct ir_shape before = partition_local_shape(P, part, &t->shape, &m.before),
                    after = partition_local_shape(P, part, &t->shape, &m.after);
    struct ir_ref pack = {.what = IR_BUF_PACK, .id = -1}, pack2 = {.what = IR_BUF_PACK, .id = -1,
                                                                   .offset = (in_bytes + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN};
    struct ir_coll_action c = {.group = (uint8_t)ir_group_of_pdim(px->over), .dtype = (uint8_t)dtype, .buf = in, .bytes = in_bytes,
                               .out = out, .out_bytes = out_bytes};
    if (px->kind != PART_XFER_SLICE)
        c.coll = (uint8_t)part_xfer_coll(px->kind);
    if (px->kind == PART_XFER_ALL_GATHER && (m.after.partial & IR_PDIM_BIT(px->over))) { /* to shares: each rank's piece
                                                                                            * added at its place */
        int64_t outer = memory_outer(&before, m.axis), width = in_bytes / outer;
        push_copy(list, (struct ir_copy){.src = in, .dst = ref(w, IR_BUF_GRAD, m.tensor), .planes = 1, .rows = outer, .width = width,
                                         .src_pitch = width, .dst_pitch = deg * width, .dst_pdim = (uint8_t)IR_PDIM_BIT(px->over),
                                         .dst_coords = deg, .dst_step = width, .add = 1, .dtype = (uint8_t)dtype});
        return;
    }
    switch (px->kind) {
    case PART_XFER_ALL_REDUCE:
    case PART_XFER_ALL_REDUCE_MAX:
        c.out = in, c.out_bytes = in_bytes;
        ir_action_push(list, &(struct ir_action){.kind = IR_ACT_COLL, .coll = c});
        break;
    case PART_XFER_ALL_GATHER: { /* pieces side by side, then each to its place along the axis */
        int64_t outer = memory_outer(&before, m.axis), width = in_bytes / outer;
        if (outer > 1)
            c.out = pack;
        ir_action_push(list, &(struct ir_action){.kind = IR_ACT_COLL, .coll = c});
        if (outer > 1)
            push_copy(list, (struct ir_copy){.src = pack, .dst = out, .planes = deg, .rows = outer, .width = width,
                                             .src_plane = in_bytes, .src_pitch = width, .dst_plane = width, .dst_pitch = deg * width});
        break;
    }
    case PART_XFER_REDUCE_SCATTER: { /* each member's piece packed side by side, then reduced into its own */
        int64_t outer = memory_outer(&before, m.axis), width = out_bytes / outer;
        if (outer > 1) {
            push_copy(list, (struct ir_copy){.src = in, .dst = pack, .planes = deg, .rows = outer, .width = width,
                                             .src_plane = width, .src_pitch = deg * width, .dst_plane = out_bytes, .dst_pitch = width});
            c.buf = pack;
        }
        ir_action_push(list, &(struct ir_action){.kind = IR_ACT_COLL, .coll = c});
        break;
    }
    case PART_XFER_ALL_TO_ALL: { /* pieces cut along one axis, joined along another */
        int64_t outer_t = memory_outer(&before, memory_a2a_axis(px, true)), width_t = in_bytes / deg / outer_t;
        int64_t outer_s = memory_outer(&after, memory_a2a_axis(px, false)), width_s = out_bytes / deg / outer_s;
        if (outer_t > 1) {
            push_copy(list, (struct ir_copy){.src = in, .dst = pack, .planes = deg, .rows = outer_t, .width = width_t,
                                             .src_plane = width_t, .src_pitch = deg * width_t, .dst_plane = in_bytes / deg,
                                             .dst_pitch = width_t});
            c.buf = pack;
        }
        if (outer_s > 1)
            c.out = pack2;
        ir_action_push(list, &(struct ir_action){.kind = IR_ACT_COLL, .coll = c});
        if (outer_s > 1)
            push_copy(list, (struct ir_copy){.src = pack2, .dst = out, .planes = deg, .rows = outer_s, .width = width_s,
                                             .src_plane = out_bytes / deg, .src_pitch = width_s, .dst_plane = width_s,
                                             .dst_pitch = deg * width_s});
        break;
    }
    case PART_XFER_SLICE: { /* the rank's piece along the axis, cut at once from before the slices that precede it */
        int next = memory_xfer_next(P, x);
        bool read = false;
        for (int i = 0; i < P->g->n_ops && !read; i++)
            for (int k = 0; k < P->g->ops[i].n_in; k++)
                read |= partition_reads_via(P, i, k) == x;
        if (!read && next >= 0 && P->xfers[next].kind == PART_XFER_SLICE && P->xfers[next].axis == px->axis)
            break; /* the next slice cuts from where this one starts */
        int first = slices_from(P, x), pdims = slice_pdims(P, first, x), n = partition_degrees(P, part, (uint8_t)pdims);
        struct ir_ref from = in, first_out;
        bool a;
        if (first != x)
            memory_xfer_place(P, w->pos, first, restaged, &from, &first_out, &a);
        int64_t outer = memory_outer(&before, m.axis), width = out_bytes / outer;
        push_copy(list, (struct ir_copy){.src = from, .dst = out, .planes = 1, .rows = outer, .width = width,
                                         .src_pitch = n * width, .dst_pitch = width, .src_pdim = (uint8_t)pdims,
                                         .src_coords = n, .src_step = width});
        break;
    }
    default: WF_ASSERT(!"a send is the program's");
    }
    if (adds) /* the converted gradient joins the tensor's */
        push_copy(list, (struct ir_copy){.src = out, .dst = ref(w, IR_BUF_GRAD, m.tensor), .planes = 1, .rows = 1,
                                         .width = out_bytes, .add = 1, .dtype = (uint8_t)dtype});
}

/* Whether a launch of op writes transfer x's buffer (the loss's maxima and
 * sums): then x runs after that launch, not before the op. */
static bool written_by_launch(const struct lowering *w, int op, int x)
{
    const struct kn_set *K = w->K;
    for (int l = 0; l < K->n_launches; l++)
        for (int i = 0; K->ops[K->launches[l].first_op] == op && i < K->launches[l].n_out; i++)
            if (K->launches[l].out[i].xfer == x)
                return true;
    return false;
}

/* The ops that run together with op (its fused group, led by op), or op alone. */
static int group_of(const struct lowering *w, int op, const int *ops, int n, int *group)
{
    int m = 0;
    for (int a = 0; a < n; a++)
        if (w->lead[ops[a]] == op)
            group[m++] = ops[a];
    return m;
}

/* The transfers a step runs at a group of ops: forward, those that bring
 * their inputs (before its launch); backward, those of the gradients it
 * gives (after it), but a parameter's, which the program moves once for
 * all micro-batches. */
static void step_transfers(const struct lowering *w, const int *group, int m, bool backward, bool before,
                           struct ir_action_list *out)
{
    const struct partition *P = w->P;
    for (int x = 0; x < P->n_xfers; x++) {
        const struct part_xfer *px = &P->xfers[x];
        bool mine = false;
        for (int i = 0; i < m; i++)
            mine |= px->op == group[i];
        if (!mine || px->grad != backward || px->kind == PART_XFER_SEND ||
            (backward && (px->inner && memory_xfer_of_output(P, x)) != before) ||
            (backward && P->g->tensors[px->tensor].kind == IR_TENSOR_PARAM) || (!backward && written_by_launch(w, px->op, x)) ||
            (backward && !w->needs[px->tensor]))
            continue;
        transfer(w, x, false, out);
    }
}

/* Before a group's backward: the forward transfers whose results it reads,
 * brought again (each chain once a step; `done` per transfer). */
static void restage(const struct lowering *w, const int *group, int m, bool *done, struct ir_action_list *out)
{
    const struct partition *P = w->P;
    for (int i = 0; i < m; i++) {
        int op = group[i];
        if (!w->needs[P->g->ops[op].out[0]])
            continue;
        for (int x = 0; x < P->n_xfers; x++)
            if (P->xfers[x].op == op && !done[x] && memory_backward_rereads(P, w->K, x))
                transfer(w, x, true, out), done[x] = true;
        for (int k = 0; k < P->g->ops[op].n_in; k++) {
            int last = partition_reads_via(P, op, k);
            if (last < 0 || done[last] || !memory_backward_reads(P, w->K, w->needs, op, k))
                continue;
            int first = last;
            while (P->xfers[first].prev >= 0)
                first = P->xfers[first].prev;
            for (int x = first; x >= 0; x = x == last ? -1 : memory_xfer_next(P, x))
                transfer(w, x, true, out), done[x] = true;
        }
    }
}

static void forward_step(const struct lowering *w, const int *ops, int n, struct ir_action_list *out)
{
    const struct ir_graph *g = w->P->g;
    const struct kn_set *K = w->K;
    int loss = ir_graph_loss(g), *group = wf_calloc((size_t)n + 1, sizeof *group);
    for (int a = 0; a < n; a++) {
        int op = ops[a];
        const struct ir_op *o = &g->ops[op];
        if (w->lead[op] != op)
            continue; /* its group's transfers and launches run at the group's first op */
        step_transfers(w, group, group_of(w, op, ops, n, group), false, true, out);
        if (o->kind == IR_OP_MATMUL) {
            matmul(w, op, false, out, NULL);
            continue;
        }
        for (int l = 0; l < K->n_launches; l++) {
            const struct kn_launch *L = &K->launches[l];
            if (L->when != KN_WHEN_FORWARD || K->ops[L->first_op] != op || L->epilogue) /* an epilogue: its matmul's GEMM ran it */
                continue;
            struct ir_action x = launch(w, l, KN_ATTN_FWD, KN_ATTN_FWD);
            ir_action_push(out, &x);
            for (int i = 0; i < L->n_out; i++) /* a transfer on what it wrote (the loss's maxima, then its sums) */
                if (L->out[i].xfer >= 0)
                    transfer(w, L->out[i].xfer, false, out);
        }
        if (loss >= 0 && o->out[0] == loss) { /* the loss's row losses, summed by the executor */
            struct ir_action x = {.kind = IR_ACT_LOSS, .loss = {.what = IR_BUF_ROWSTATS, .id = op}};
            struct ir_shape s = partition_read_shape(w->P, op, 0);
            x.loss_rows = ir_shape_numel(&s) / s.ax[s.rank - 1].size;
            const struct ir_shard *rows = partition_read_shard(w->P, op, 0);
            uint8_t split = 0; /* the groups that split the rows; over the others they are copies, counted once */
            for (int k = 0; k + 1 < s.rank; k++)
                split |= rows->split[k];
            x.sq_only_first = (uint8_t)((IR_PDIM_BIT(IR_PDIM_TP) | IR_PDIM_BIT(IR_PDIM_CP)) & ~split);
            ir_action_push(out, &x);
        }
    }
    free(group);
}

/* Gradients the backward adds into, zeroed as it reaches the first to add:
 * the step's working gradients, and its readers' sums before conversion. */
static void zero_from(const struct lowering *w, int at, int n, int *done, struct ir_action_list *out)
{
    for (int b = 0; b < w->m->n_bufs; b++) {
        const struct ir_buf *x = &w->m->bufs[b];
        bool sum = x->what == IR_BUF_XFER_IN && x->first > n;
        if (done[b] || x->region != IR_REGION_WORKING || (x->what != IR_BUF_GRAD && !sum) || x->vstage != w->v || x->first > at)
            continue;
        done[b] = 1;
        ir_action_push(out, &(struct ir_action){.kind = IR_ACT_ZERO, .zero = {.what = x->what, .id = x->id}, .zero_bytes = x->bytes});
    }
}

static int backward_step(const struct lowering *w, const int *ops, int n, struct ir_action_list *out, struct diag *d)
{
    const struct ir_graph *g = w->P->g;
    const struct kn_set *K = w->K;
    int *done = wf_calloc((size_t)w->m->n_bufs + 1, sizeof *done), *group = wf_calloc((size_t)n + 1, sizeof *group);
    bool *restaged = wf_calloc((size_t)w->P->n_xfers + 1, sizeof *restaged);
    for (int b = 0; b < w->m->n_bufs; b++) /* a gradient that crosses into the step's inputs: added into from the start */
        if (w->m->bufs[b].what == IR_BUF_GRAD && w->m->bufs[b].region == IR_REGION_ACTIVATIONS && w->m->bufs[b].vstage == w->v &&
            w->m->bufs[b].micro == 0) {
            int t = w->m->bufs[b].id, p = g->tensors[t].producer;
            bool relayed = false; /* passed on to a later chunk too: its gradient from there arrives first, to be added to */
            for (int x = 0; x < w->P->n_xfers; x++) {
                const struct part_xfer *px = &w->P->xfers[x];
                relayed |= px->kind == PART_XFER_SEND && memory_root(w->P, w->pos, px->tensor) == t &&
                           w->P->chunks[px->from_chunk].stage == w->stage && w->P->chunks[px->from_chunk].vstage == w->v;
            }
            if ((p < 0 || !w->pos[p]) && !relayed) /* made before this step: its gradient is this step's to send back */
                ir_action_push(out, &(struct ir_action){.kind = IR_ACT_ZERO, .zero = {.what = IR_BUF_GRAD, .id = t},
                                                        .zero_bytes = w->m->bufs[b].bytes});
        }
    int rc = 0;
    for (int a = n - 1; a >= 0 && !rc; a--) {
        int op = ops[a];
        const struct ir_op *o = &g->ops[op];
        zero_from(w, 2 * n + 1 - w->pos[w->lead[op]], n, done, out);
        if (w->lead[op] != op)
            continue; /* its group's launches run at the group's first op */
        int m = group_of(w, op, ops, n, group);
        restage(w, group, m, restaged, out);
        step_transfers(w, group, m, true, true, out); /* the adjoints of an op's exchange of its output */
        if (o->kind == IR_OP_MATMUL) {
            rc = matmul(w, op, true, out, d);
            step_transfers(w, group, m, true, false, out);
            continue;
        }
        for (int l = 0; l < K->n_launches; l++) {
            const struct kn_launch *L = &K->launches[l];
            if (K->ops[L->first_op] != op)
                continue;
            bool attention = K->kernels[L->kernel].kind == KN_KIND_ATTENTION;
            if (attention && L->when == KN_WHEN_FORWARD && K->kernels[L->kernel].attn.backward) {
                struct ir_action x = launch(w, l, KN_ATTN_DELTA, KN_ATTN_BWD_Q);
                ir_action_push(out, &x);
            } else if (L->when == KN_WHEN_BACKWARD) { /* a routing's backward launch routes again for its gather's */
                struct ir_action x = launch(w, l, 0, 0);
                ir_action_push(out, &x);
            }
        }
        step_transfers(w, group, m, true, false, out);
    }
    free(done);
    free(group);
    free(restaged);
    return rc;
}

/* Each parameter's sums of squares, added into the norm's where the rank
 * counts it (sums); each one's update (updates). */
static void optimizer_step(const struct lowering *w, int stage, struct ir_action_list *sums, struct ir_action_list *updates)
{
    const struct partition *P = w->P;
    const struct kn_set *K = w->K;
    int first = 0; /* the role's rank with every coordinate 0 but dp's */
    while (P->L->ranks[first].stage != stage)
        first++;
    bool *counts = wf_calloc((size_t)P->g->n_tensors + 1, 1), *other = wf_calloc((size_t)P->g->n_tensors + 1, 1);
    partition_norm_counts(P, first, counts);
    uint8_t *only_first = wf_calloc((size_t)P->g->n_tensors + 1, 1);
    for (int r = 0; r < P->L->n_ranks; r++) { /* a pdim along which a rank at coordinate 1 does not count it */
        const struct rank_coords *c = &P->L->ranks[r], *f = &P->L->ranks[first];
        if (c->stage != stage || c->dp != f->dp)
            continue;
        int pdim = c->tp == 1 && !c->cp && !c->expert_tp ? IR_PDIM_TP : c->cp == 1 && !c->tp ? IR_PDIM_CP
                 : c->expert_tp == 1 && !c->cp ? IR_PDIM_XTP : -1;
        if (pdim < 0)
            continue;
        partition_norm_counts(P, r, other);
        for (int t = 0; t < P->g->n_tensors; t++)
            if (counts[t] && !other[t])
                only_first[t] |= (uint8_t)(1u << pdim);
    }
    for (int pass = 0; pass < 2; pass++)
        for (int l = 0; l < K->n_launches; l++) {
            const struct kn_launch *L = &K->launches[l];
            if (L->when != (pass ? KN_WHEN_OPTIMIZER : KN_WHEN_NORM) || P->chunks[L->chunk].stage != stage)
                continue;
            struct ir_action x = launch(w, l, 0, 0);
            ir_action_push(pass ? updates : sums, &x);
            if (!pass && counts[L->domain]) {
                struct ir_action s = {.kind = IR_ACT_SQSUM, .loss = {.what = IR_BUF_SUMSQ, .id = L->domain},
                                      .loss_rows = x.launch.args.rows, .sq_only_first = only_first[L->domain]};
                if (schedule_norm_over_dp(P)) /* the norm sums over data-parallel ranks too: one replica counts */
                    s.sq_replica = schedule_is_expert_param(P, L->domain) ? IR_SQ_EXPERT_DP0 : IR_SQ_DP0;
                ir_action_push(sums, &s);
            }
        }
    free(counts);
    free(other);
    free(only_first);
}

/* A parameter's gradient's bytes in GRADS, and where it starts. */
static int64_t grad_extent(const struct ir_role_memory *m, int param, int64_t *start)
{
    for (int b = 0; b < m->n_bufs; b++)
        if (m->bufs[b].region == IR_REGION_GRADS && m->bufs[b].id == param) {
            *start = m->bufs[b].offset;
            return m->bufs[b].bytes;
        }
    WF_ASSERT(0 && "a bucket's parameter has no gradient");
    return 0;
}

/* The places of virtual stage v's ops on `stage` (pos, from 1; 0 outside it). */
static void step_positions(const struct partition *P, int stage, int v, int *pos)
{
    int n = 0;
    for (int i = 0; i < P->g->n_ops; i++)
        pos[i] = P->chunks[P->op_chunk[i]].stage == stage && P->chunks[P->op_chunk[i]].vstage == v ? ++n : 0;
}

/* A P2P instruction's halves: each the buffer of its tensor (its gradient
 * going back) in the step of its chunk and micro-batch. */
static void p2p_actions(const struct lowering *w, int stage, const struct ir_ins *x, struct ir_action_list *out)
{
    const struct partition *P = w->P;
    int *pos = wf_calloc((size_t)P->g->n_ops + 1, sizeof *pos);
    for (int k = 0; k < x->n_p2p; k++) {
        const struct ir_p2p *h = &x->p2p[k];
        int v = P->chunks[h->chunk].vstage;
        step_positions(P, stage, v, pos);
        struct ir_action a = {.kind = h->send ? IR_ACT_SEND : IR_ACT_RECV};
        a.p2p.peer_chunk = h->peer_chunk, a.p2p.tag = h->tensor % 32768, a.p2p.vstage = v, a.p2p.micro = h->micro;
        a.p2p.buf = (struct ir_ref){.what = h->grad ? IR_BUF_GRAD : IR_BUF_VALUE, .id = memory_root(P, pos, h->tensor)};
        a.p2p.bytes = h->bytes;
        ir_action_push(out, &a);
    }
    free(pos);
}

/* A sum over a group, in place, of elements of dtype (main gradients: partition_grad_dtype). */
static struct ir_action sum_in_place(int group, int set, struct ir_ref buf, int64_t bytes, int dtype)
{
    return (struct ir_action){.kind = IR_ACT_COLL, .coll = {.coll = IR_COLL_ALL_REDUCE, .group = (uint8_t)group, .set = set,
                                                             .dtype = (uint8_t)dtype, .buf = buf, .bytes = bytes, .out = buf,
                                                             .out_bytes = bytes}};
}

/* A tied set's all-reduce: the gradient of each parameter whose holders are
 * the set's stages, in tensor order on every holder; pending where the
 * holders hold it differently (T5's table at etp < tp). */
static void tied_actions(const struct lowering *w, const struct ir_schedule *S, int set, struct ir_action_list *out)
{
    const struct partition *P = w->P;
    const struct ir_graph *g = P->g;
    uint8_t *on = wf_calloc((size_t)S->n_stages + 1, 1);
    bool shared = false; /* pipelines share a rank: the tied group spans several */
    int *component = ir_pp_components(P->L);
    for (int k = 0; k < P->L->groups[PAR_GROUP_PP].n_groups; k++)
        shared |= component[k] != k;
    free(component);
    for (int t = 0; t < g->n_tensors; t++) {
        int64_t held;
        bool alike;
        if (g->tensors[t].kind != IR_TENSOR_PARAM || schedule_param_holders(P, S->n_stages, t, on, &held, &alike) < 2 ||
            memcmp(on, S->tied_stages[set], (size_t)S->n_stages))
            continue;
        int64_t start, bytes = grad_extent(w->m, t, &start);
        (void)start;
        struct ir_action a = sum_in_place(IR_GROUP_TIED, set, (struct ir_ref){.what = IR_BUF_GRAD, .id = t}, bytes, partition_grad_dtype(P));
        bool split = false; /* over tp: pipelines sharing an encoder rank would sum different pieces */
        for (int k = 0; k < g->tensors[t].shape.rank; k++)
            split |= (P->shard[t].split[k] & IR_PDIM_BIT(IR_PDIM_TP)) != 0;
        a.coll.copies = shared;
        if (!alike || (shared && split))
            a.kind = IR_ACT_PENDING;
        ir_action_push(out, &a);
    }
    free(on);
}

static void append(struct ir_action_list *to, const struct ir_action_list *from)
{
    for (int i = 0; i < from->n; i++)
        ir_action_push(to, &from->v[i]);
}

/* The program's instructions that are not steps:
 * - a collective a step runs itself (its tag a transfer): none here;
 * - a data-parallel bucket's all-reduce, on its range of GRADS (its
 *   parameters lie side by side there, in the order the backward finishes them);
 * - a chunk's parameter gradients partial over a group: an all-reduce each,
 *   in one order on every member;
 * - the norm's all-reduce: the sums of squares first, then the sum over the
 *   model-parallel group (forward-only plans have none);
 * - the optimizer: the sums where no norm collective ran them, then the updates;
 * - the rest (pipeline transfers, tied parameters' sums) pending. */
static void program_actions(const struct lowering *w, const struct ir_schedule *S, int stage, struct ir_stage_actions *st,
                            const struct ir_action_list *sums, const struct ir_action_list *updates)
{
    const struct ir_program *prog = &S->programs[stage];
    const struct partition *P = w->P;
    const struct ir_role_memory *m = w->m;
    st->n_ins = prog->n;
    st->ins = wf_calloc((size_t)prog->n + 1, sizeof *st->ins);
    int64_t *bytes = wf_calloc(SCHED_MAX_BUCKETS, sizeof *bytes);
    int *first = wf_calloc(SCHED_MAX_BUCKETS, sizeof *first), *last = wf_calloc(SCHED_MAX_BUCKETS, sizeof *last);
    bool summed = false;
    int have_c = -1, have_experts = -1, n = 0; /* the buckets last found (a chunk's come one after another) */
    for (int i = 0; i < prog->n; i++) {
        const struct ir_ins *x = &prog->ins[i];
        struct ir_action_list *out = &st->ins[i];
        if (x->kind == IR_INS_FORWARD || x->kind == IR_INS_BACKWARD)
            continue;
        if (x->kind == IR_INS_P2P) {
            p2p_actions(w, stage, x, out);
            continue;
        }
        if (x->kind == IR_INS_COLLECTIVE && x->group == IR_GROUP_TIED) {
            tied_actions(w, S, x->tag, out);
            continue;
        }
        if (x->kind == IR_INS_OPTIMIZER) {
            if (!summed)
                append(out, sums);
            append(out, updates);
            continue;
        }
        if (x->kind == IR_INS_COLLECTIVE && x->tag < SCHED_TAG_GRADS && x->group != IR_GROUP_TIED) {
            const struct part_xfer *px = &P->xfers[x->tag];
            if (P->g->tensors[px->tensor].kind == IR_TENSOR_PARAM) /* a parameter's gradient moved otherwise than summed */
                ir_action_push(out, &(struct ir_action){.kind = IR_ACT_PENDING, .coll = {.coll = (uint8_t)x->coll, .group = (uint8_t)x->group}});
            continue; /* the step ran it */
        }
        bool dense = x->kind == IR_INS_COLLECTIVE && x->tag >= SCHED_TAG_GRADS && x->tag < SCHED_TAG_NORM,
             experts = x->kind == IR_INS_COLLECTIVE && x->tag >= SCHED_TAG_EXPERT_GRADS;
        if (dense || experts) { /* a bucket: its range of GRADS where only its kind of parameter lies there, else one by one */
            int base = experts ? SCHED_TAG_EXPERT_GRADS : SCHED_TAG_GRADS;
            int c = (x->tag - base) / SCHED_MAX_BUCKETS, b = (x->tag - base) % SCHED_MAX_BUCKETS;
            if (c != have_c || experts != have_experts)
                n = schedule_grad_buckets(P, c, experts, bytes, first, last), have_c = c, have_experts = experts;
            WF_ASSERT(b < n);
            int64_t lo, hi, end = grad_extent(m, last[b], &hi);
            grad_extent(m, first[b], &lo);
            bool mixed = false;
            for (int k = 0; k < m->n_bufs; k++) {
                const struct ir_buf *gb = &m->bufs[k];
                mixed |= gb->region == IR_REGION_GRADS && gb->offset >= lo && gb->offset <= hi &&
                         schedule_is_expert_param(P, gb->id) != experts;
            }
            if (!mixed) {
                struct ir_action a = sum_in_place(x->group, 0, (struct ir_ref){.what = IR_BUF_GRAD, .id = first[b]}, hi + end - lo, partition_grad_dtype(P));
                ir_action_push(out, &a);
                continue;
            }
            for (int k = 0; k < m->n_bufs; k++) { /* in GRADS' order, the same on every member */
                const struct ir_buf *gb = &m->bufs[k];
                if (gb->region != IR_REGION_GRADS || gb->offset < lo || gb->offset > hi || schedule_is_expert_param(P, gb->id) != experts)
                    continue;
                struct ir_action a = sum_in_place(x->group, 0, (struct ir_ref){.what = IR_BUF_GRAD, .id = gb->id}, gb->bytes, partition_grad_dtype(P));
                ir_action_push(out, &a);
            }
            continue;
        }
        if (x->kind == IR_INS_COLLECTIVE && x->tag >= SCHED_TAG_PARAM_GRADS && x->tag < SCHED_TAG_EXPERT_GRADS && x->group != IR_GROUP_TIED) {
            int c = (x->tag - SCHED_TAG_PARAM_GRADS) / IR_GROUP_COUNT, g = (x->tag - SCHED_TAG_PARAM_GRADS) % IR_GROUP_COUNT;
            for (int k = 0; k < P->n_xfers; k++) { /* as the schedule coalesced them */
                const struct part_xfer *px = &P->xfers[k];
                if (!px->grad || px->to_chunk != c || px->kind != PART_XFER_ALL_REDUCE || ir_group_of_pdim(px->over) != g ||
                    P->g->tensors[px->tensor].kind != IR_TENSOR_PARAM)
                    continue;
                int64_t start, have = grad_extent(m, px->tensor, &start);
                (void)start;
                struct ir_action a = sum_in_place(g, 0, (struct ir_ref){.what = IR_BUF_GRAD, .id = px->tensor}, have, partition_grad_dtype(P));
                ir_action_push(out, &a);
            }
            continue;
        }
        if (x->kind == IR_INS_COLLECTIVE && x->tag == SCHED_TAG_NORM) { /* over MP, then (experts) over DP_CP */
            if (!summed)
                append(out, sums);
            summed = true;
            struct ir_action a = sum_in_place(x->group, 0, (struct ir_ref){.what = IR_BUF_NORM, .id = -1}, 4, IR_DTYPE_F32);
            ir_action_push(out, &a);
            continue;
        }
        ir_action_push(out, &(struct ir_action){.kind = IR_ACT_PENDING,
                                                .coll = {.coll = x->kind == IR_INS_COLLECTIVE ? (uint8_t)x->coll : IR_COLL_COUNT,
                                                         .group = x->kind == IR_INS_COLLECTIVE ? (uint8_t)x->group : IR_GROUP_COUNT}});
    }
    free(bytes);
    free(first);
    free(last);
}

int lower(const struct partition *P, const struct ir_schedule *S, const struct kn_set *K, const struct ir_memory *M,
          struct ir_actions *A, struct diag *d)
{
    const struct ir_graph *g = P->g;
    memset(A, 0, sizeof *A);
    A->n_stages = S->n_stages;
    A->stages = wf_calloc((size_t)S->n_stages + 1, sizeof *A->stages);
    struct lowering w = {.P = P, .K = K};
    w.needs = wf_calloc((size_t)g->n_tensors + 1, sizeof *w.needs);
    if (!S->forward_only)
        autodiff_needs_grad(g, ir_graph_loss(g), w.needs);
    w.pos = wf_calloc((size_t)g->n_ops + 1, sizeof *w.pos);
    w.moves = wf_calloc((size_t)P->n_xfers + 1, sizeof *w.moves);
    w.lead = wf_calloc((size_t)g->n_ops + 1, sizeof *w.lead);
    w.epilogue = wf_calloc((size_t)g->n_ops + 1, sizeof *w.epilogue);
    fuse_leads(P, K, w.lead, w.epilogue);
    int *ops = wf_calloc((size_t)g->n_ops + 1, sizeof *ops);
    int rc = 0;
    for (int s = 0; s < S->n_stages && !rc; s++) {
        struct ir_stage_actions *st = &A->stages[s];
        st->n_vstages = S->virtual_stages;
        st->forward = wf_calloc((size_t)st->n_vstages, sizeof *st->forward);
        st->backward = wf_calloc((size_t)st->n_vstages, sizeof *st->backward);
        w.m = &M->roles[s];
        w.stage = s;
        for (int v = 0; v < st->n_vstages && !rc; v++) {
            w.v = v;
            int n = 0;
            memset(w.pos, 0, (size_t)g->n_ops * sizeof *w.pos);
            for (int i = 0; i < g->n_ops; i++)
                if (P->chunks[P->op_chunk[i]].stage == s && P->chunks[P->op_chunk[i]].vstage == v) {
                    ops[n++] = i;
                    w.pos[i] = n;
                }
            for (int x = 0; x < P->n_xfers; x++)
                w.moves[x] = lowered(&w, x);
            forward_step(&w, ops, n, &st->forward[v]);
            if (!S->forward_only)
                rc = backward_step(&w, ops, n, &st->backward[v], d);
        }
        struct ir_action_list sums = {0}, updates = {0};
        if (!S->forward_only)
            optimizer_step(&w, s, &sums, &updates);
        program_actions(&w, S, s, st, &sums, &updates);
        free(sums.v);
        free(updates.v);
    }
    free(ops);
    free(w.needs);
    free(w.pos);
    free(w.moves);
    free(w.lead);
    free(w.epilogue);
    if (rc)
        ir_actions_free(A);
    return rc;
}
