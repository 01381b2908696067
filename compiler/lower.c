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
    int stage, v; /* the stage and virtual stage being lowered */
};

static struct ir_ref ref(const struct lowering *w, int what, int t)
{
    return (struct ir_ref){.what = (uint8_t)what, .id = memory_root(w->P, w->pos, t)};
}

/* Where op reads tensor t (its value, or in the backward its gradient) when
 * a transfer brings it: an all-reduce in place, in t's own buffer; any
 * other collective's result staged in COMM (the loss's sums after its row
 * maxima, memory.c).  Else t's buffer. */
static struct ir_ref read_ref(const struct lowering *w, int op, int what, int t, int xfer)
{
    const struct partition *P = w->P;
    for (int x = 0; x < P->n_xfers && xfer < 0; x++) {
        const struct part_xfer *px = &P->xfers[x];
        if (px->op == op && px->tensor == t && px->grad == (what == IR_BUF_GRAD) && px->kind != PART_XFER_SEND &&
            px->kind != PART_XFER_SLICE)
            xfer = x;
    }
    const struct part_xfer *px = xfer >= 0 ? &P->xfers[xfer] : NULL;
    if (!px || px->kind == PART_XFER_SEND || px->kind == PART_XFER_SLICE)
        return ref(w, what, t);
    const struct part_xfer *maxima = xfer > 0 ? &P->xfers[xfer - 1] : NULL;
    bool loss_sums = px->kind == PART_XFER_ALL_REDUCE && maxima && maxima->kind == PART_XFER_ALL_REDUCE_MAX && maxima->op == px->op;
    if (loss_sums) /* the loss's sums, staged after its maxima (memory.c sized COMM so) */
        return (struct ir_ref){.what = IR_BUF_STAGED, .id = xfer, .offset = (maxima->bytes + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN};
    if (px->kind == PART_XFER_ALL_REDUCE) /* in place */
        return ref(w, what, t);
    return (struct ir_ref){.what = IR_BUF_STAGED, .id = xfer};
}

static struct ir_shape local(const struct lowering *w, int t)
{
    const struct ir_tensor *x = &w->P->g->tensors[t];
    return partition_local_shape(w->P, x->part, &x->shape, &w->P->shard[t]);
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

/* Whether op reads or writes across a transfer inside a step that is not
 * lowered yet (all but the all-reduces; a pipeline send is the program's). */
static bool awaits(const struct lowering *w, int op)
{
    for (int x = 0; x < w->P->n_xfers; x++) {
        const struct part_xfer *px = &w->P->xfers[x];
        if (px->op == op && px->kind != PART_XFER_SEND && px->kind != PART_XFER_ALL_REDUCE && px->kind != PART_XFER_ALL_REDUCE_MAX)
            return true;
    }
    return false;
}

/* A matmul's GEMMs: its forward, or the gradients of the inputs that need one (added into their buffers). */
static int matmul(const struct lowering *w, int op, bool backward, struct ir_action_list *out, struct diag *d)
{
    const struct ir_op *o = &w->P->g->ops[op];
    bool ta = ir_op_int(o, IR_ATTR_TRANSPOSE_A), tb = ir_op_int(o, IR_ATTR_TRANSPOSE_B);
    struct ir_shape A = local(w, o->in[0]), B = local(w, o->in[1]), C = local(w, o->out[0]);
    int64_t M = C.ax[C.rank - 2].size, N = C.ax[C.rank - 1].size, Kd = ta ? A.ax[A.rank - 2].size : A.ax[A.rank - 1].size;
    int64_t nb = batch_of(&C), na = batch_of(&A), nbb = batch_of(&B);
    int dtype = partition_elem_bytes(w->P, &w->P->g->tensors[o->in[0]]) == 2 ? IR_DTYPE_BF16 : IR_DTYPE_F32;
    int64_t batch = nb, sa = M * Kd, sb = Kd * N, sc = M * N;
    if (nbb == 1 && na == nb && !ta) /* a weight: every row of the activation at once */
        M *= nb, batch = 1, sa = sb = sc = 0;
    else if (na != nb || nbb != nb) {
        diag_error(d, NULL, 0, "%s:%d: matmul with batch %lld of %lld and %lld: the executor broadcasts only a weight",
                   o->loc.file, o->loc.line, (long long)nb, (long long)na, (long long)nbb);
        return -1;
    }
    struct ir_action x = {.kind = IR_ACT_GEMM, .awaits = awaits(w, op)};
    struct ir_ref a = read_ref(w, op, IR_BUF_VALUE, o->in[0], -1), b = read_ref(w, op, IR_BUF_VALUE, o->in[1], -1);
    if (!backward) {
        x.gemm = gemm(batch, M, N, Kd, ta, tb, sa, sb, sc, a, b, ref(w, IR_BUF_VALUE, o->out[0]), 0, dtype, dtype);
        ir_action_push(out, &x);
        return 0;
    }
    struct ir_ref dc = ref(w, IR_BUF_GRAD, o->out[0]);
    if (w->needs[o->in[0]]) { /* dA = dC op(B)^T, or stored transposed: op(B) dC^T */
        struct ir_ref da = ref(w, IR_BUF_GRAD, o->in[0]);
        int dt = w->P->g->tensors[o->in[0]].kind == IR_TENSOR_PARAM ? IR_DTYPE_F32 : dtype;
        x.gemm = ta ? gemm(batch, Kd, M, N, tb, true, sb, sc, sa, b, dc, da, 1, dtype, dt)
                    : gemm(batch, M, Kd, N, false, !tb, sc, sb, sa, dc, b, da, 1, dtype, dt);
        ir_action_push(out, &x);
    }
    if (w->needs[o->in[1]]) { /* dB = op(A)^T dC, or stored transposed: dC^T op(A) */
        struct ir_ref db = ref(w, IR_BUF_GRAD, o->in[1]);
        int dt = w->P->g->tensors[o->in[1]].kind == IR_TENSOR_PARAM ? IR_DTYPE_F32 : dtype;
        x.gemm = tb ? gemm(batch, N, Kd, M, true, ta, sc, sa, sb, dc, a, db, 1, dtype, dt)
                    : gemm(batch, Kd, N, M, !ta, false, sa, sc, sb, a, dc, db, 1, dtype, dt);
        ir_action_push(out, &x);
    }
    return 0;
}

static struct ir_action launch(const struct lowering *w, int l, int fn_first, int fn_last)
{
    struct ir_action x = {.kind = IR_ACT_LAUNCH};
    for (int i = 0; i < w->K->launches[l].n_ops && !x.awaits; i++)
        x.awaits = awaits(w, w->K->ops[w->K->launches[l].first_op + i]);
    fuse_launch_template(w->P, w->K, l, &x.launch);
    x.launch.launch = l;
    x.launch.fn_first = (uint8_t)fn_first, x.launch.fn_last = (uint8_t)fn_last;
    const struct kn_launch *L = &w->K->launches[l];
    x.launch.n_in = L->n_in, x.launch.n_out = L->n_out;
    for (int i = 0; i < L->n_in + L->n_out; i++) {
        const struct kn_bind *b = i < L->n_in ? &L->in[i] : &L->out[i - L->n_in];
        struct ir_ref *r = i < L->n_in ? &x.launch.in[i] : &x.launch.out[i - L->n_in];
        *r = ir_buf_of_op(b->what) || b->what == IR_BUF_SUMSQ || b->id < 0 ? (struct ir_ref){.what = b->what, .id = b->id}
             : b->xfer >= 0                                                  ? read_ref(w, -1, b->what, b->id, b->xfer)
                                                                            : ref(w, b->what, b->id);
    }
    const struct kn_entry *e = &w->K->kernels[w->K->launches[l].kernel];
    if (e->kind == KN_KIND_ATTENTION) {
        double scale = ir_op_float(&w->P->g->ops[w->K->ops[w->K->launches[l].first_op]], IR_ATTR_SCALE);
        x.launch.scale = (float)(isnan(scale) ? 1 / sqrt((double)e->attn.D) : scale);
    }
    return x;
}

/* A transfer as an action: an all-reduce (sum or max) in place on where
 * it leaves its result; any other collective is not lowered yet. */
static struct ir_action transfer(const struct lowering *w, int x, struct ir_ref where)
{
    const struct part_xfer *px = &w->P->xfers[x];
    if (px->kind != PART_XFER_ALL_REDUCE && px->kind != PART_XFER_ALL_REDUCE_MAX)
        return (struct ir_action){.kind = IR_ACT_PENDING, .coll = {.coll = (uint8_t)part_xfer_coll(px->kind),
                                                                   .group = (uint8_t)ir_group_of_pdim(px->over)}};
    int dtype = where.what == IR_BUF_STAGED || partition_elem_bytes(w->P, &w->P->g->tensors[px->tensor]) == 4 ? IR_DTYPE_F32
                                                                                                             : IR_DTYPE_BF16;
    return (struct ir_action){.kind = IR_ACT_COLL,
                              .coll = {.coll = (uint8_t)part_xfer_coll(px->kind), .group = (uint8_t)ir_group_of_pdim(px->over),
                                       .dtype = (uint8_t)dtype, .buf = where, .bytes = px->bytes}};
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

/* The transfers a step runs at op: forward, those that bring its inputs
 * (before it); backward, those of the gradients it gives (after it), but a
 * parameter's, which the program moves once for all micro-batches. */
static void step_transfers(const struct lowering *w, int op, bool backward, struct ir_action_list *out)
{
    const struct partition *P = w->P;
    for (int x = 0; x < P->n_xfers; x++) {
        const struct part_xfer *px = &P->xfers[x];
        if (px->op != op || px->grad != backward || px->kind == PART_XFER_SEND || px->kind == PART_XFER_SLICE ||
            (backward && P->g->tensors[px->tensor].kind == IR_TENSOR_PARAM) || (!backward && written_by_launch(w, op, x)))
            continue;
        struct ir_action a = transfer(w, x, ref(w, backward ? IR_BUF_GRAD : IR_BUF_VALUE, px->tensor));
        ir_action_push(out, &a);
    }
}

static void forward_step(const struct lowering *w, const int *ops, int n, struct ir_action_list *out)
{
    const struct ir_graph *g = w->P->g;
    const struct kn_set *K = w->K;
    int loss = ir_graph_loss(g);
    for (int a = 0; a < n; a++) {
        int op = ops[a];
        const struct ir_op *o = &g->ops[op];
        step_transfers(w, op, false, out);
        if (o->kind == IR_OP_MATMUL) {
            matmul(w, op, false, out, NULL);
            continue;
        }
        for (int l = 0; l < K->n_launches; l++) {
            const struct kn_launch *L = &K->launches[l];
            if (L->when != KN_WHEN_FORWARD || K->ops[L->first_op] != op)
                continue;
            struct ir_action x = launch(w, l, KN_ATTN_FWD, KN_ATTN_FWD);
            ir_action_push(out, &x);
            for (int i = 0; i < L->n_out; i++) /* a transfer on what it wrote (the loss's maxima, then its sums) */
                if (L->out[i].xfer >= 0) {
                    struct ir_action t = transfer(w, L->out[i].xfer, read_ref(w, op, L->out[i].what, L->out[i].id, L->out[i].xfer));
                    ir_action_push(out, &t);
                }
        }
        if (loss >= 0 && o->out[0] == loss) { /* the loss's row losses, summed by the executor */
            struct ir_action x = {.kind = IR_ACT_LOSS, .loss = {.what = IR_BUF_ROWSTATS, .id = op}};
            struct ir_shape s = local(w, o->in[0]);
            x.loss_rows = ir_shape_numel(&s) / s.ax[s.rank - 1].size;
            ir_action_push(out, &x);
        }
    }
}

static void zero_from(const struct lowering *w, int at, int *done, struct ir_action_list *out)
{
    for (int b = 0; b < w->m->n_bufs; b++) {
        const struct ir_buf *x = &w->m->bufs[b];
        if (done[b] || x->region != IR_REGION_WORKING || x->what != IR_BUF_GRAD || x->vstage != w->v || x->first > at)
            continue;
        done[b] = 1;
        ir_action_push(out, &(struct ir_action){.kind = IR_ACT_ZERO, .zero = {.what = IR_BUF_GRAD, .id = x->id}, .zero_bytes = x->bytes});
    }
}

static int backward_step(const struct lowering *w, const int *ops, int n, struct ir_action_list *out, struct diag *d)
{
    const struct ir_graph *g = w->P->g;
    const struct kn_set *K = w->K;
    int *done = wf_calloc((size_t)w->m->n_bufs + 1, sizeof *done);
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
        zero_from(w, 2 * n + 1 - w->pos[w->lead[op]], done, out);
        if (o->kind == IR_OP_MATMUL) {
            rc = matmul(w, op, true, out, d);
            step_transfers(w, op, true, out);
            continue;
        }
        if (w->lead[op] != op)
            continue; /* its group's launches run at the group's first op */
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
        step_transfers(w, op, true, out);
    }
    free(done);
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

/* A tied set's all-reduce: the gradient of each parameter whose holders are
 * the set's stages, in tensor order on every holder; pending where the
 * holders hold it differently (T5's table at etp < tp). */
static void tied_actions(const struct lowering *w, const struct ir_schedule *S, int set, struct ir_action_list *out)
{
    const struct partition *P = w->P;
    const struct ir_graph *g = P->g;
    uint8_t *on = wf_calloc((size_t)S->n_stages + 1, 1);
    for (int t = 0; t < g->n_tensors; t++) {
        int64_t held;
        bool alike;
        if (g->tensors[t].kind != IR_TENSOR_PARAM || schedule_param_holders(P, S->n_stages, t, on, &held, &alike) < 2 ||
            memcmp(on, S->tied_stages[set], (size_t)S->n_stages))
            continue;
        int64_t start, bytes = grad_extent(w->m, t, &start);
        (void)start;
        struct ir_action a = {.kind = alike ? IR_ACT_COLL : IR_ACT_PENDING,
                              .coll = {.coll = IR_COLL_ALL_REDUCE, .group = IR_GROUP_TIED, .set = set, .dtype = IR_DTYPE_F32,
                                       .buf = {.what = IR_BUF_GRAD, .id = t}, .bytes = bytes}};
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
            struct ir_action a = {.kind = IR_ACT_COLL, .coll = {.coll = IR_COLL_ALL_REDUCE, .group = (uint8_t)x->group, .dtype = IR_DTYPE_F32}};
            if (!mixed) {
                a.coll.buf = (struct ir_ref){.what = IR_BUF_GRAD, .id = first[b]}, a.coll.bytes = hi + end - lo;
                ir_action_push(out, &a);
                continue;
            }
            for (int k = 0; k < m->n_bufs; k++) { /* in GRADS' order, the same on every member */
                const struct ir_buf *gb = &m->bufs[k];
                if (gb->region != IR_REGION_GRADS || gb->offset < lo || gb->offset > hi || schedule_is_expert_param(P, gb->id) != experts)
                    continue;
                a.coll.buf = (struct ir_ref){.what = IR_BUF_GRAD, .id = gb->id}, a.coll.bytes = gb->bytes;
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
                ir_action_push(out, &(struct ir_action){.kind = IR_ACT_COLL,
                                                        .coll = {.coll = IR_COLL_ALL_REDUCE, .group = (uint8_t)g, .dtype = IR_DTYPE_F32,
                                                                 .buf = {.what = IR_BUF_GRAD, .id = px->tensor}, .bytes = have}});
            }
            continue;
        }
        if (x->kind == IR_INS_COLLECTIVE && x->group == IR_GROUP_MP && x->tag == SCHED_TAG_NORM) {
            append(out, sums);
            summed = true;
            ir_action_push(out, &(struct ir_action){.kind = IR_ACT_COLL,
                                                    .coll = {.coll = IR_COLL_ALL_REDUCE, .group = IR_GROUP_MP, .dtype = IR_DTYPE_F32,
                                                             .buf = {.what = IR_BUF_NORM, .id = -1}, .bytes = 4}});
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
    w.lead = wf_calloc((size_t)g->n_ops + 1, sizeof *w.lead);
    for (int i = 0; i < g->n_ops; i++)
        w.lead[i] = i;
    for (int l = 0; l < K->n_launches; l++)
        for (int i = 1; i < K->launches[l].n_ops; i++)
            w.lead[K->ops[K->launches[l].first_op + i]] = K->ops[K->launches[l].first_op];
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
    free(w.lead);
    if (rc)
        ir_actions_free(A);
    return rc;
}
