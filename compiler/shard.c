/* shard.c: tensor shards by propagation, and the transfers they imply.
 *   requires:  a partition with chunks and op_chunk (partition.c)
 *   produces:  P->shard (each tensor as its producer's ranks hold it) and
 *              P->xfers (every collective, slice and pipeline send)
 *   reports:   a split that does not divide an axis, at the tensor's line
 *
 * Parameters start from their split annotations, token inputs from context
 * parallelism; then each op, in order, states what it needs of its inputs
 * and what it gives.  Where an input is held otherwise than its op needs,
 * the difference becomes the fewest transfers that close it: partial sums
 * are all-reduced (or reduce-scattered, when the op wants the result split),
 * splits are all-gathered, exchanged all-to-all, or sliced locally for free.
 * Nothing here knows a model: Megatron's column/row pattern, sequence
 * parallelism, vocab-parallel embedding and cross-entropy, and expert
 * all-to-alls all follow from the rules of a handful of op classes.
 *
 * The backward's collectives follow from the same algebra (grad_xfers): an
 * op whose work is divided over a group gives a partial gradient to each
 * input it reads whole over that group (Megatron's f operator), and each
 * gradient is converted, by the same convert(), from how its readers give it
 * to how its producer holds the tensor: partial sums are added up, slices
 * gathered, and identical copies left alone. */
#include "partition.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *xfer_names[] = {
#define X(id, name) name,
    PART_XFERS(X)
#undef X
};

const char *part_xfer_name(enum part_xfer_kind k) { return xfer_names[k]; }

enum ir_coll part_xfer_coll(enum part_xfer_kind k)
{
    switch (k) {
    case PART_XFER_ALL_REDUCE: return IR_COLL_ALL_REDUCE;
    case PART_XFER_ALL_GATHER: return IR_COLL_ALL_GATHER;
    case PART_XFER_REDUCE_SCATTER: return IR_COLL_REDUCE_SCATTER;
    case PART_XFER_ALL_TO_ALL: return IR_COLL_ALL_TO_ALL;
    case PART_XFER_ALL_REDUCE_MAX: return IR_COLL_ALL_REDUCE_MAX;
    default: WF_ASSERT(!"a send or a slice is no collective"); return IR_COLL_COUNT;
    }
}

enum shard_class {
    SC_UNSET, SC_UNARY, SC_LINEAR, SC_ADD, SC_MUL, SC_BIAS_ADD, SC_NORM, SC_SOFTMAX, SC_MATMUL, SC_ATTENTION,
    SC_ROTARY, SC_SPLIT_HEADS, SC_MERGE_HEADS, SC_EMBEDDING, SC_POSITION_EMBEDDING, SC_CROSS_ENTROPY, SC_ROUTER,
    SC_DISPATCH, SC_COMBINE, SC_RELPOS_BIAS, SC_CONCAT, SC_WHOLE,
};

/* Every op kind has a class; shard_classes_complete() checks none is missing. */
static const enum shard_class classes[IR_OP_COUNT] = {
    [IR_OP_EMBEDDING] = SC_EMBEDDING,     [IR_OP_POSITION_EMBEDDING] = SC_POSITION_EMBEDDING,
    [IR_OP_MATMUL] = SC_MATMUL,           [IR_OP_ADD] = SC_ADD,
    [IR_OP_MUL] = SC_MUL,                 [IR_OP_SCALE] = SC_LINEAR,
    [IR_OP_BIAS_ADD] = SC_BIAS_ADD,       [IR_OP_GELU] = SC_UNARY,
    [IR_OP_SILU] = SC_UNARY,              [IR_OP_RELU] = SC_UNARY,
    [IR_OP_SWIGLU] = SC_MUL,              [IR_OP_LAYERNORM] = SC_NORM,
    [IR_OP_RMSNORM] = SC_NORM,            [IR_OP_SOFTMAX] = SC_SOFTMAX,
    [IR_OP_ATTENTION] = SC_ATTENTION,     [IR_OP_ROTARY] = SC_ROTARY,
    [IR_OP_DROPOUT] = SC_UNARY,           [IR_OP_SPLIT_HEADS] = SC_SPLIT_HEADS,
    [IR_OP_MERGE_HEADS] = SC_MERGE_HEADS, [IR_OP_RESHAPE] = SC_WHOLE,
    [IR_OP_CONCAT] = SC_CONCAT,           [IR_OP_CROSS_ENTROPY] = SC_CROSS_ENTROPY,
    [IR_OP_ROUTER] = SC_ROUTER,           [IR_OP_DISPATCH] = SC_DISPATCH,
    [IR_OP_COMBINE] = SC_COMBINE,         [IR_OP_RELPOS_BIAS] = SC_RELPOS_BIAS,
    [IR_OP_PATCHIFY] = SC_WHOLE,
};

/* ---- degrees and local shapes --------------------------------------------------- */

int partition_degree(const struct partition *P, enum ir_part part, enum ir_pdim p)
{
    return par_pdim_degree(&P->L->pc, part, p);
}

int partition_degrees(const struct partition *P, enum ir_part part, uint8_t set)
{
    int n = 1;
    for (int p = 1; p < IR_PDIM_COUNT; p++)
        if (set & IR_PDIM_BIT(p))
            n *= partition_degree(P, part, (enum ir_pdim)p);
    return n;
}

int partition_axis_coord(const struct partition *P, enum ir_part part, uint8_t set, const struct rank_coords *rc)
{
    return par_axis_coord(&P->L->pc, part, set, rc);
}

struct ir_shape partition_local_shape(const struct partition *P, enum ir_part part, const struct ir_shape *s,
                                      const struct ir_shard *sh)
{
    struct ir_shape l = *s;
    for (int k = 0; k < s->rank; k++)
        l.ax[k].size = l.ax[k].size / partition_degrees(P, part, sh->split[k]) * partition_degrees(P, part, sh->stack[k]);
    return l;
}

/* ---- how a tensor is made, and the chains that read it -------------------- */

static int first_reduction(const struct partition *P, int t)
{
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].tensor == t && !P->xfers[x].grad && P->xfers[x].kind != PART_XFER_SEND && P->xfers[x].before.partial)
            return x;
    return -1;
}

struct ir_shard partition_made_shard(const struct partition *P, int t)
{
    int x = first_reduction(P, t);
    struct ir_shard s = x >= 0 ? P->xfers[x].before : P->shard[t];
    s.partial = 0;
    return s;
}

int partition_made_xfer(const struct partition *P, int t)
{
    int first = first_reduction(P, t);
    for (int x = first; x >= 0 && x < P->n_xfers; x++) { /* the chain follows its first, one after another */
        const struct part_xfer *px = &P->xfers[x];
        if (x > first && px->prev != x - 1)
            break;
        if (px->kind == PART_XFER_REDUCE_SCATTER)
            return first;
    }
    return -1;
}

int partition_reads_via(const struct partition *P, int op, int k)
{
    return P->reads_via ? P->reads_via[(size_t)op * IR_MAX_IN + (size_t)k] : -1;
}

int partition_grad_via(const struct partition *P, int op, int k)
{
    return P->grad_via ? P->grad_via[(size_t)op * IR_MAX_IN + (size_t)k] : -1;
}

const struct ir_shard *partition_read_shard(const struct partition *P, int op, int k)
{
    int x = partition_reads_via(P, op, k);
    return x >= 0 ? &P->xfers[x].after : &P->shard[P->g->ops[op].in[k]];
}

struct ir_shape partition_read_shape(const struct partition *P, int op, int k)
{
    const struct ir_tensor *t = &P->g->tensors[P->g->ops[op].in[k]];
    return partition_local_shape(P, P->chunks[P->op_chunk[op]].part, &t->shape, partition_read_shard(P, op, k));
}

/* ---- the context of one op ---------------------------------------------------------- */

struct sctx {
    struct partition *P;
    struct diag *d;
    int op_i;
    const struct ir_op *op;
    enum ir_part part;
    int chunk;
    const struct ir_tensor *t[IR_MAX_IN];
    struct ir_shard have[IR_MAX_IN], want[IR_MAX_IN], out[IR_MAX_OUT];
    const char *why[IR_MAX_IN];
    int errors;
    struct part_xfer inner[2]; /* the op's own transfers, recorded after its inputs' */
    int n_inner;
    bool grad; /* converting gradients: the backward's transfers */
};

static int deg(const struct sctx *c, int p) { return partition_degree(c->P, c->part, (enum ir_pdim)p); }
static int degs(const struct sctx *c, uint8_t set) { return partition_degrees(c->P, c->part, set); }
static bool has(uint8_t set, int p) { return set & IR_PDIM_BIT(p); }
/* The one pdim of a set that holds one (a collective runs over one group). */
static enum ir_pdim only(uint8_t set)
{
    for (int p = 1; p < IR_PDIM_COUNT; p++)
        if (set == IR_PDIM_BIT(p))
            return (enum ir_pdim)p;
    WF_ASSERT(!"a set of more than one pdim where one group is meant");
    return IR_PDIM_NONE;
}
static int rank_in(const struct sctx *c, int i) { return c->t[i]->shape.rank; }
static int rank_out(const struct sctx *c, int o) { return c->P->g->tensors[c->op->out[o]].shape.rank; }
static int64_t size_in(const struct sctx *c, int i, int k) { return c->t[i]->shape.ax[k].size; }

/* Drop splits, stacks and partials over groups of one rank: they are none at all. */
static void normalize(const struct sctx *c, struct ir_shard *s)
{
    uint8_t live = 0;
    for (int p = 1; p < IR_PDIM_COUNT; p++)
        if (deg(c, p) > 1)
            live |= IR_PDIM_BIT(p);
    for (int k = 0; k < IR_MAX_RANK; k++) {
        s->split[k] &= live;
        s->stack[k] &= live;
    }
    s->partial &= live;
}

/* Sequence parallelism cannot split input i's sequence, `held` positions a
 * rank: Megatron's scatter to the sequence-parallel region asserts that tp
 * divides it; here it is the user's error, never a silent all-reduce. */
static void sequence_error(struct sctx *c, int i, int64_t held)
{
    const struct ir_tensor *t = c->t[i];
    int seq = rank_in(c, i) - 2, tp = deg(c, IR_PDIM_TP), cp = deg(c, IR_PDIM_CP);
    char ax[96], where[256] = "";
    if (t->producer >= 0)
        snprintf(where, sizeof where, "<op kind=\"%s\" out=\"%s\">: ", ir_op_info(c->P->g->ops[t->producer].kind)->name,
                 t->local_name);
    ir_axis_str(&t->shape.ax[seq], ax, sizeof ax);
    if (has(c->want[i].split[seq], IR_PDIM_CP))
        diag_error(c->d, t->loc.file, t->loc.line,
                   "%s--sequence-parallel splits each context-parallel rank's share of the sequence over its %d "
                   "tensor-parallel ranks, but '%s' holds %" PRId64 " of its %s positions on each of the --cp %d ranks, "
                   "which %d does not divide (Megatron's rule: with sequence parallelism tp divides the sequence each "
                   "rank holds; a length that is a multiple of cp x tp = %d would, or drop --sequence-parallel)",
                   where, tp, t->local_name, held, ax, cp, tp, cp * tp);
    else
        diag_error(c->d, t->loc.file, t->loc.line,
                   "%s--sequence-parallel splits the sequence over the %d tensor-parallel ranks, but axis %d of '%s' (%s) "
                   "does not split over %d (Megatron's rule: with sequence parallelism the sequence length must be a multiple "
                   "of tp; make it one, or drop --sequence-parallel)",
                   where, tp, seq, t->local_name, ax, tp);
    c->errors++;
}

/* Partial sums must be added before a non-linear op reads them.  With
 * sequence parallelism a tensor-parallel sum lands split along the sequence
 * (reduce-scatter), within each context-parallel rank's share where cp
 * splits it too (Megatron splits the sequence by cp, then the cp-local
 * sequence by tp); else whole (all-reduce). */
static void resolve(struct sctx *c, int i, const char *why)
{
    struct ir_shard *w = &c->want[i];
    if (!w->partial)
        return;
    int r = rank_in(c, i), seq = r - 2;
    if (has(w->partial, IR_PDIM_TP) && c->P->L->pc.sequence_parallel && r >= 2 && !has(w->split[seq], IR_PDIM_TP)) {
        int64_t held = size_in(c, i, seq) / degs(c, w->split[seq]) * degs(c, w->stack[seq]);
        if (held % deg(c, IR_PDIM_TP) == 0)
            w->split[seq] |= IR_PDIM_BIT(IR_PDIM_TP);
        else if (!c->errors)
            sequence_error(c, i, held);
    }
    w->partial = 0;
    c->why[i] = why;
}

/* Input i's axis k gathered from the groups in `set` (those that split it). */
static void gather_axis(struct sctx *c, int i, int k, uint8_t set, const char *why)
{
    if (c->want[i].split[k] & set) {
        c->want[i].split[k] &= (uint8_t)~set;
        c->why[i] = why;
    }
}

static void whole_axis(struct sctx *c, int i, int k, const char *why) { gather_axis(c, i, k, 0xff, why); }

static void whole(struct sctx *c, int i, const char *why)
{
    resolve(c, i, why);
    for (int k = 0; k < rank_in(c, i); k++)
        whole_axis(c, i, k, why);
}

/* Input i's axis k to be split over the set `p` (slice it if whole, exchange if split otherwise). */
static void split_like(struct sctx *c, int i, int k, uint8_t p, const char *why)
{
    if (k < 0 || k >= rank_in(c, i) || c->want[i].split[k] == p)
        return;
    if (p && size_in(c, i, k) == 1)
        return; /* a broadcast axis: every rank reads the one element */
    c->want[i].split[k] = p;
    c->why[i] = why;
}

/* Broadcast-align inputs a and b (already whole in partials); the output
 * takes the union of their splits, the other side sliced to match. */
static void align(struct sctx *c, int a, int b, struct ir_shard *out, int r_out)
{
    int ra = rank_in(c, a), rb = rank_in(c, b);
    for (int k = 0; k < r_out; k++) {
        int ka = ra - r_out + k, kb = rb - r_out + k;
        uint8_t sa = ka >= 0 && size_in(c, a, ka) > 1 ? c->want[a].split[ka] : 0;
        uint8_t sb = kb >= 0 && size_in(c, b, kb) > 1 ? c->want[b].split[kb] : 0;
        uint8_t s = sa ? sa : sb;
        if (s) {
            split_like(c, a, ka, s, "matches the other operand's split");
            split_like(c, b, kb, s, "matches the other operand's split");
        }
        out->split[k] = s;
        /* rows stacked from a group's ranks line up only with rows stacked alike (stacked_reader checks) */
        out->stack[k] = ka >= 0 && size_in(c, a, ka) > 1 ? c->want[a].stack[ka] : kb >= 0 ? c->want[b].stack[kb] : 0;
    }
}

/* ---- the rules, one per class --------------------------------------------------------- */

static void rule_matmul(struct sctx *c)
{
    bool ta = ir_op_int(c->op, IR_ATTR_TRANSPOSE_A), tb = ir_op_int(c->op, IR_ATTR_TRANSPOSE_B);
    int ra = rank_in(c, 0), rb = rank_in(c, 1), ro = rank_out(c, 0);
    int am = ta ? ra - 1 : ra - 2, ak = ta ? ra - 2 : ra - 1, bk = tb ? rb - 1 : rb - 2, bn = tb ? rb - 2 : rb - 1;
    resolve(c, 0, "a matmul reads whole values");
    resolve(c, 1, "a matmul reads whole values");
    struct ir_shard *a = &c->want[0], *b = &c->want[1];
    /* The contracted axis: split alike on both sides gives partial sums (row-parallel). */
    uint8_t ka = a->split[ak], kb = b->split[bk];
    if (ka != kb) {
        if (ka && !kb)
            split_like(c, 1, bk, ka, "row-parallel: the weight's rows follow the input's split");
        else if (kb && !ka)
            split_like(c, 0, ak, kb, "row-parallel: each rank takes its slice of the input");
        else {
            whole_axis(c, 0, ak, "the two operands split the contracted axis differently");
            whole_axis(c, 1, bk, "the two operands split the contracted axis differently");
        }
    }
    uint8_t k = a->split[ak];
    /* Output rows and columns may not be split over the same group, nor over
     * the contracted axis's group: gather the input rows over that group
     * (sequence parallel; the rows stay split over the others, context
     * parallelism's). */
    uint8_t m = a->split[am], n = b->split[bn];
    if (n & k)
        gather_axis(c, 1, bn, n & k, "a weight split twice over one group");
    n = b->split[bn];
    if (m & (n | k))
        gather_axis(c, 0, am, m & (n | k),
                    has(m & (n | k), IR_PDIM_TP) ? "sequence parallel: gather the sequence before a column-parallel matmul"
                                                 : "rows and columns cannot split over one group");
    struct ir_shard o = {0};
    o.split[ro - 2] = a->split[am];
    o.split[ro - 1] = b->split[bn];
    o.stack[ro - 2] = a->stack[am]; /* each row of a stack is its own token */
    o.partial = k;
    /* Batch axes broadcast like elementwise ops. */
    for (int j = 0; j < ro - 2; j++) {
        int ja = ra - ro + j, jb = rb - ro + j;
        uint8_t sa = ja >= 0 && size_in(c, 0, ja) > 1 ? a->split[ja] : 0, sb = jb >= 0 && size_in(c, 1, jb) > 1 ? b->split[jb] : 0;
        uint8_t s = sa ? sa : sb;
        if (s) {
            split_like(c, 0, ja, s, "batch axes split alike");
            split_like(c, 1, jb, s, "batch axes split alike");
        }
        o.split[j] = s;
        o.stack[j] = ja >= 0 && size_in(c, 0, ja) > 1 ? a->stack[ja] : jb >= 0 ? b->stack[jb] : 0;
    }
    c->out[0] = o;
}

static void rule_attention(struct sctx *c)
{
    for (int i = 0; i < c->op->n_in; i++)
        if (c->t[i])
            resolve(c, i, "attention reads whole values");
    whole_axis(c, 0, 3, "attention contracts head_dim");
    whole_axis(c, 1, 3, "attention contracts head_dim");
    whole_axis(c, 2, 3, "each head's values whole");
    for (int i = 1; i < 3; i++) {
        whole_axis(c, i, 2, "context parallel: every query reads every key");
        split_like(c, i, 1, c->want[0].split[1], "heads split like the queries'");
        split_like(c, i, 0, c->want[0].split[0], "batch split like the queries'");
    }
    if (c->op->n_in > 3 && c->t[3]) {
        int r = rank_in(c, 3), o = r - 3;
        if (o)
            split_like(c, 3, 0, c->want[0].split[0], "batch split like the queries'");
        split_like(c, 3, o, c->want[0].split[1], "bias heads split like the queries'");
        split_like(c, 3, o + 1, c->want[0].split[2], "bias rows split like the queries'");
        whole_axis(c, 3, o + 2, "every query reads every key");
    }
    c->out[0] = c->want[0];
    c->out[0].split[3] = IR_PDIM_NONE;
}

static void check_heads(struct sctx *c, enum ir_attr_id id, uint8_t p)
{
    const struct ir_attr *a = ir_op_attr(c->op, id);
    if (!a || a->i % degs(c, p) == 0)
        return;
    char names[64];
    diag_error(c->d, c->op->loc.file, c->op->loc.line,
               "<op kind=\"split_heads\">: %s %s=%" PRId64 " does not split over %d %s ranks: each rank must hold whole heads",
               ir_attr_name(id), a->label ? a->label : "", a->i, degs(c, p), ir_pdims_str(p, names, sizeof names));
    c->errors++;
}

static void rule_split_heads(struct sctx *c)
{
    resolve(c, 0, "heads are cut from whole values");
    uint8_t f = c->want[0].split[2];
    if (f) {
        check_heads(c, IR_ATTR_HEADS, f);
        if (c->op->n_out > 1)
            check_heads(c, IR_ATTR_GROUPS, f);
    }
    for (int o = 0; o < c->op->n_out; o++) {
        struct ir_shard s = {0};
        s.split[0] = c->want[0].split[0];
        s.split[1] = f;
        s.split[2] = c->want[0].split[1];
        c->out[o] = s;
    }
}

static void rule_merge_heads(struct sctx *c)
{
    resolve(c, 0, "heads merge whole values");
    whole_axis(c, 0, 3, "head_dim stays whole within a head");
    struct ir_shard s = {0};
    s.split[0] = c->want[0].split[0];
    s.split[1] = c->want[0].split[2];
    s.split[2] = c->want[0].split[1];
    c->out[0] = s;
}

static void rule_embedding(struct sctx *c)
{
    struct ir_shard s = {0};
    int r = rank_in(c, 1);
    for (int k = 0; k < r; k++)
        s.split[k] = c->want[1].split[k];
    s.partial = c->want[0].split[0]; /* vocab-parallel: each rank looks up its rows, zero elsewhere */
    s.split[r] = c->want[0].split[1];
    c->out[0] = s;
}

static void add_inner(struct sctx *c, enum part_xfer_kind kind, enum ir_pdim over, int tensor, int axis,
                      const struct ir_shard *before, const struct ir_shard *after, int64_t bytes, const char *why);

static void rule_cross_entropy(struct sctx *c)
{
    resolve(c, 0, "the loss reads whole logits");
    int r = rank_in(c, 0);
    for (int k = 0; k < r - 1; k++)
        split_like(c, 1, k, c->want[0].split[k], "labels split like the logits");
    struct ir_shard s = {0};
    for (int k = 0; k < r - 1; k++)
        s.partial |= c->want[0].split[k]; /* a mean over this rank's tokens */
    c->out[0] = s;
    uint8_t v = c->want[0].split[r - 1];
    if (v) { /* vocab-parallel, as Megatron: no rank holds whole logits; per token, the
              * largest logit over the shards, then the sum of exponentials under it
              * and the target's logit, added over the shards */
        struct ir_shard per_token = c->want[0];
        per_token.split[r - 1] = IR_PDIM_NONE;
        int64_t tokens = ir_shape_numel(&c->t[1]->shape);
        for (int k = 0; k < r - 1; k++)
            tokens /= degs(c, c->want[0].split[k]);
        add_inner(c, PART_XFER_ALL_REDUCE_MAX, only(v), c->op->in[0], -1, &c->want[0], &per_token, tokens * 4,
                  "vocab-parallel cross-entropy: each token's largest logit");
        add_inner(c, PART_XFER_ALL_REDUCE, only(v), c->op->in[0], -1, &c->want[0], &per_token, 2 * tokens * 4,
                  "vocab-parallel cross-entropy: each token's sum of exponentials and target logit");
    }
}

/* Dispatch: each rank routes its own tokens into a whole experts' buffer
 * (experts, capacity, hidden).  With expert parallelism an all-to-all over
 * the ep group sends each expert's rows to the rank that holds the expert,
 * as Megatron's MoE does: a rank's experts then process the tokens of every
 * rank of its group.  It holds (experts/ep, ep x capacity, hidden), split
 * over ep along the experts and stacked over ep along the capacity: the
 * expert matmuls run on ep times the rows of one rank's tokens. */
static void rule_dispatch(struct sctx *c)
{
    whole(c, 0, "tokens are routed whole");
    whole(c, 1, "routing reads every choice");
    struct ir_shard s = {0};
    s.split[0] = IR_PDIM_BIT(IR_PDIM_EP);
    s.stack[1] = IR_PDIM_BIT(IR_PDIM_EP);
    normalize(c, &s);
    c->out[0] = s;
    if (s.split[0]) { /* the tokens travel to the ranks of their experts: each rank's whole buffer goes in */
        const struct ir_tensor *out = &c->P->g->tensors[c->op->out[0]];
        struct ir_shard whole_s = {0};
        add_inner(c, PART_XFER_ALL_TO_ALL, IR_PDIM_EP, c->op->out[0], 0, &whole_s, &s,
                  ir_shape_numel(&out->shape) * partition_elem_bytes(c->P, out), "expert parallel: tokens to their experts' ranks");
    }
}

/* Combine: the experts' rows go back to the ranks of their tokens (the
 * dispatch's all-to-all reversed), and each token sums its choices. */
static void rule_combine(struct sctx *c)
{
    resolve(c, 0, "expert outputs are added whole");
    whole_axis(c, 0, 2, "expert outputs return whole");
    whole(c, 1, "token weights whole");
    whole(c, 2, "routing reads every choice");
    if (has(c->want[0].split[0], IR_PDIM_EP)) { /* the tokens come back */
        struct ir_shard back = c->want[0];
        back.split[0] &= (uint8_t)~IR_PDIM_BIT(IR_PDIM_EP);
        for (int k = 0; k < IR_MAX_RANK; k++)
            back.stack[k] &= (uint8_t)~IR_PDIM_BIT(IR_PDIM_EP);
        struct ir_shape l = partition_local_shape(c->P, c->part, &c->t[0]->shape, &c->want[0]);
        add_inner(c, PART_XFER_ALL_TO_ALL, IR_PDIM_EP, c->op->in[0], 0, &c->want[0], &back,
                 ir_shape_numel(&l) * partition_elem_bytes(c->P, c->t[0]), "expert parallel: tokens back from their experts");
    }
    c->out[0] = (struct ir_shard){0};
}

/* Rows stacked from a group's ranks (an expert-parallel all-to-all's) are
 * tokens of different ranks: ops that treat each row alike may read them
 * (elementwise ops, norms, a matmul's rows, combine), and the operands of an
 * elementwise op must stack alike; any other reader is an error at its line. */
static bool stack_readable(const struct sctx *c, int i, int k)
{
    enum shard_class cls = classes[c->op->kind];
    uint8_t st = c->want[i].stack[k];
    if (cls == SC_ADD || cls == SC_MUL) { /* every operand's aligned axis stacked alike, or a broadcast one */
        int r = rank_in(c, i);
        for (int j = 0; j < c->op->n_in; j++) {
            int kj = c->t[j] ? k - r + rank_in(c, j) : -1;
            if (kj >= 0 && size_in(c, j, kj) > 1 && size_in(c, i, k) > 1 && c->want[j].stack[kj] != st)
                return false;
        }
        return true;
    }
    if (!st)
        return true;
    if (cls == SC_MATMUL) { /* rows or columns, never the contracted axis */
        int r = rank_in(c, i);
        bool t = ir_op_int(c->op, i == 0 ? IR_ATTR_TRANSPOSE_A : IR_ATTR_TRANSPOSE_B);
        int contracted = i == 0 ? (t ? r - 2 : r - 1) : (t ? r - 1 : r - 2);
        return k != contracted;
    }
    return cls == SC_UNARY || cls == SC_LINEAR || cls == SC_BIAS_ADD || cls == SC_NORM || cls == SC_SOFTMAX || cls == SC_COMBINE;
}

static void check_stacks(struct sctx *c)
{
    for (int i = 0; i < c->op->n_in && !c->errors; i++)
        for (int k = 0; c->t[i] && k < rank_in(c, i) && !c->errors; k++) {
            if (stack_readable(c, i, k))
                continue;
            char sh[128], names[64];
            uint8_t st = 0; /* the stack at fault: this operand's, or another's it does not match */
            for (int j = 0; j < c->op->n_in; j++)
                for (int kj = 0; c->t[j] && kj < rank_in(c, j); kj++)
                    st |= c->want[j].stack[kj];
            diag_error(c->d, c->op->loc.file, c->op->loc.line,
                       "<op kind=\"%s\">: reads '%s' held %s, with rows of every %s rank one rank's after another (an "
                       "expert-parallel all-to-all's), which it cannot: only elementwise ops on operands stacked alike, "
                       "norms, a matmul's rows and combine read such a buffer",
                       ir_op_info(c->op->kind)->name, c->t[i]->local_name, ir_shard_str(&c->want[i], rank_in(c, i), sh, sizeof sh),
                       ir_pdims_str(st, names, sizeof names));
            c->errors++;
        }
}

static void rule(struct sctx *c)
{
    int r0 = c->t[0] ? rank_in(c, 0) : 0;
    switch (classes[c->op->kind]) {
    case SC_LINEAR: /* scaling keeps partial sums partial */
        c->out[0] = c->want[0];
        break;
    case SC_UNARY:
        resolve(c, 0, "a non-linear op reads whole values");
        c->out[0] = c->want[0];
        break;
    case SC_ROTARY:
        resolve(c, 0, "a non-linear op reads whole values");
        whole_axis(c, 0, 3, "rotary pairs within head_dim");
        c->out[0] = c->want[0];
        break;
    case SC_ADD:
        if (c->want[0].partial && c->want[0].partial == c->want[1].partial &&
            !memcmp(c->want[0].split, c->want[1].split, sizeof c->want[0].split) &&
            !memcmp(c->want[0].stack, c->want[1].stack, sizeof c->want[0].stack) && r0 == rank_in(c, 1)) {
            c->out[0] = c->want[0]; /* partial + partial stays partial */
            break;
        }
        /* fall through */
    case SC_MUL:
        resolve(c, 0, "added to a whole value");
        resolve(c, 1, "added to a whole value");
        align(c, 0, 1, &c->out[0], rank_out(c, 0));
        break;
    case SC_BIAS_ADD:
        resolve(c, 0, "the bias is added once, to the whole sum");
        split_like(c, 1, 0, c->want[0].split[r0 - 1], "the bias follows the last axis");
        c->out[0] = c->want[0];
        break;
    case SC_NORM:
        resolve(c, 0, "a norm reads whole values");
        whole_axis(c, 0, r0 - 1, "a norm reduces over the last axis");
        for (int i = 1; i < c->op->n_in; i++)
            if (c->t[i])
                whole(c, i, "norm weights whole");
        c->out[0] = c->want[0];
        break;
    case SC_SOFTMAX:
        resolve(c, 0, "softmax reads whole values");
        whole_axis(c, 0, r0 - 1, "softmax reduces over the last axis");
        if (c->op->n_in > 1 && c->t[1]) {
            split_like(c, 1, 0, c->want[0].split[0], "mask batch split like the scores");
            whole_axis(c, 1, 1, "every key's mask");
        }
        c->out[0] = c->want[0];
        break;
    case SC_MATMUL: rule_matmul(c); break;
    case SC_ATTENTION: rule_attention(c); break;
    case SC_SPLIT_HEADS: rule_split_heads(c); break;
    case SC_MERGE_HEADS: rule_merge_heads(c); break;
    case SC_EMBEDDING: rule_embedding(c); break;
    case SC_POSITION_EMBEDDING:
        whole_axis(c, 0, 0, "positions are read whole");
        c->out[0] = (struct ir_shard){.split = {0, c->want[0].split[1]}};
        break;
    case SC_CROSS_ENTROPY: rule_cross_entropy(c); break;
    case SC_ROUTER:
        resolve(c, 0, "routing reads whole scores");
        whole_axis(c, 0, r0 - 1, "routing compares every expert");
        c->out[0] = c->out[1] = c->want[0];
        break;
    case SC_DISPATCH: rule_dispatch(c); break;
    case SC_COMBINE: rule_combine(c); break;
    case SC_RELPOS_BIAS:
        whole_axis(c, 0, 0, "every bucket");
        c->out[0] = (struct ir_shard){.split = {c->want[0].split[1]}};
        break;
    case SC_CONCAT: {
        int ax = (int)ir_op_int(c->op, IR_ATTR_AXIS);
        ax = ax < 0 ? ax + r0 : ax;
        for (int i = 0; i < c->op->n_in; i++) {
            resolve(c, i, "joined whole");
            whole_axis(c, i, ax, "the concat axis is joined whole");
        }
        for (int i = 1; i < c->op->n_in; i++)
            for (int k = 0; k < r0; k++)
                if (k != ax)
                    split_like(c, i, k, c->want[0].split[k], "split like the first input");
        c->out[0] = c->want[0];
        break;
    }
    case SC_WHOLE:
        for (int i = 0; i < c->op->n_in; i++)
            if (c->t[i])
                whole(c, i, "this op reads whole tensors");
        for (int o = 0; o < c->op->n_out; o++)
            c->out[o] = (struct ir_shard){0};
        break;
    case SC_UNSET:
        WF_ASSERT(!"op kind without a shard class");
    }
    check_stacks(c);
}

/* ---- transfers ----------------------------------------------------------------------- */

static struct part_xfer make_xfer(struct sctx *c, enum part_xfer_kind kind, enum ir_pdim over, int tensor, int from,
                                  int axis, const struct ir_shard *before, const struct ir_shard *after, int64_t bytes,
                                  const char *why)
{
    const struct ir_tensor *t = &c->P->g->tensors[tensor];
    return (struct part_xfer){
        .kind = kind, .over = over, .tensor = tensor, .op = c->op_i, .from_chunk = from, .to_chunk = c->chunk,
        .axis = axis, .before = *before, .after = *after,
        .shape = partition_local_shape(c->P, c->part, &t->shape, before), .bytes = bytes, .prev = -1, .why = why};
}

static void push_xfer(struct partition *P, const struct part_xfer *x)
{
    P->xfers = wf_realloc(P->xfers, (size_t)(P->n_xfers + 1) * sizeof *P->xfers);
    P->xfers[P->n_xfers++] = *x;
}

/* A transfer; returns its index.  prev: the one whose result it takes. */
static int add_xfer(struct sctx *c, enum part_xfer_kind kind, enum ir_pdim over, int tensor, int from, int axis,
                    const struct ir_shard *before, const struct ir_shard *after, int64_t bytes, const char *why, int prev)
{
    struct part_xfer x = make_xfer(c, kind, over, tensor, from, axis, before, after, bytes, why);
    x.grad = c->grad;
    x.prev = prev;
    push_xfer(c->P, &x);
    return c->P->n_xfers - 1;
}

/* A transfer inside the op (vocab-parallel loss, expert all-to-all): it
 * happens once the op's inputs are ready, so it is recorded after theirs. */
static void add_inner(struct sctx *c, enum part_xfer_kind kind, enum ir_pdim over, int tensor, int axis,
                      const struct ir_shard *before, const struct ir_shard *after, int64_t bytes, const char *why)
{
    WF_ASSERT(c->n_inner < (int)WF_COUNT(c->inner));
    c->inner[c->n_inner] = make_xfer(c, kind, over, tensor, c->chunk, axis, before, after, bytes, why);
    c->inner[c->n_inner++].inner = true;
}

static int64_t local_bytes(const struct sctx *c, const struct ir_tensor *t, const struct ir_shard *s)
{
    struct ir_shape l = partition_local_shape(c->P, c->part, &t->shape, s);
    return ir_shape_numel(&l) * partition_elem_bytes(c->P, t);
}

/* Turn input i from how it is held into how the op needs it, one group at a
 * time.  Forward, returns the last transfer of the chain the op reads
 * through (partial sums reduced for every reader leave the tensor's buffer
 * so: the chain that follows starts from it); backward, the first transfer
 * of the gradient's chain; -1 if none. */
static int convert(struct sctx *c, int i)
{
    struct ir_shard cur = c->have[i];
    const struct ir_shard *want = &c->want[i];
    if (ir_shard_equal(&cur, want))
        return -1;
    int tensor = c->op->in[i];
    /* An earlier op of this chunk may have made the same conversion already
     * (in the backward: its readers' gradients are summed before one). */
    for (int x = c->P->n_xfers - 1; x >= 0; x--) {
        const struct part_xfer *px = &c->P->xfers[x];
        if (px->tensor == tensor && px->to_chunk == c->chunk && px->kind != PART_XFER_SEND && px->grad == c->grad &&
            (!c->grad || ir_shard_equal(&px->before, &cur)) && ir_shard_equal(&px->after, want)) {
            WF_ASSERT(!c->grad); /* grad_xfers converts each (chunk, given) once */
            return x;
        }
    }
    int r = rank_in(c, i), head = -1, last = -1;
    /* Partial sums first.  Once added up for one reader they stay added up:
     * the tensor is held whole (or split, with sequence parallelism) from
     * here on, as Megatron holds the residual stream. */
    for (int p = 1; p < IR_PDIM_COUNT; p++) {
        if (!has(cur.partial, p) || has(want->partial, p))
            continue; /* none, or a gradient held as shares too */
        struct ir_shard next = cur;
        next.partial &= (uint8_t)~IR_PDIM_BIT(p);
        int target = -1;
        for (int k = 0; k < r; k++)
            if (has(want->split[k], p) && !has(cur.split[k], p))
                target = k;
        if (target >= 0) { /* within the share the axis's outer groups leave this rank */
            next.split[target] |= IR_PDIM_BIT(p);
            last = add_xfer(c, PART_XFER_REDUCE_SCATTER, (enum ir_pdim)p, tensor, c->chunk, target, &cur, &next,
                            local_bytes(c, c->t[i], &cur), c->why[i], last);
        } else {
            last = add_xfer(c, PART_XFER_ALL_REDUCE, (enum ir_pdim)p, tensor, c->chunk, -1, &cur, &next,
                            local_bytes(c, c->t[i], &cur), c->why[i], last);
        }
        head = head < 0 ? last : head;
        cur = next;
    }
    if (cur.partial != c->have[i].partial && !c->grad) {
        c->P->shard[tensor] = cur;
        last = -1; /* the readers' chains start from the tensor's buffer */
    }
    /* Then splits, group by group, the innermost first (tp before cp): a
     * gather joins the pieces within the share the outer groups leave. */
    for (int p = 1; p < IR_PDIM_COUNT; p++) {
        int target = -1, source = -1; /* the axes p splits in want and in cur */
        for (int k = 0; k < r; k++) {
            if (has(want->split[k], p) && !has(cur.split[k], p))
                target = k;
            if (has(cur.split[k], p) && !has(want->split[k], p))
                source = k;
        }
        struct ir_shard next = cur;
        if (source >= 0 && target >= 0) {
            next.split[source] &= (uint8_t)~IR_PDIM_BIT(p);
            next.split[target] |= IR_PDIM_BIT(p);
            last = add_xfer(c, PART_XFER_ALL_TO_ALL, (enum ir_pdim)p, tensor, c->chunk, target, &cur, &next,
                            local_bytes(c, c->t[i], &cur), c->why[i], last);
        } else if (source >= 0) {
            next.split[source] &= (uint8_t)~IR_PDIM_BIT(p);
            if (has(want->partial, p)) /* wanted as shares: each rank's piece in its place, nothing elsewhere */
                next.partial |= IR_PDIM_BIT(p);
            last = add_xfer(c, PART_XFER_ALL_GATHER, (enum ir_pdim)p, tensor, c->chunk, source, &cur, &next,
                            local_bytes(c, c->t[i], &cur), c->why[i], last);
        } else if (target >= 0) {
            next.split[target] |= IR_PDIM_BIT(p);
            last = add_xfer(c, PART_XFER_SLICE, (enum ir_pdim)p, tensor, c->chunk, target, &cur, &next, 0, c->why[i], last);
        } else
            continue;
        head = head < 0 ? last : head;
        cur = next;
    }
    WF_ASSERT(ir_shard_equal(&cur, want));
    return c->grad ? head : last;
}

/* ---- the pass -------------------------------------------------------------------------- */

static bool divides(struct partition *P, struct diag *d, enum ir_part part, const struct ir_tensor *t,
                    const struct ir_shard *s, struct ir_loc loc, const char *what)
{
    for (int k = 0; k < t->shape.rank; k++) {
        int n = partition_degrees(P, part, s->split[k]);
        if (t->shape.ax[k].size % n) {
            char ax[96], names[64];
            diag_error(d, loc.file, loc.line, "%s: axis %d of '%s' (%s) does not split over %d %s ranks", what, k,
                       t->local_name, ir_axis_str(&t->shape.ax[k], ax, sizeof ax), n, ir_pdims_str(s->split[k], names, sizeof names));
            return false;
        }
    }
    return true;
}

/* How a parameter or an input is held before any op reads it. */
static struct ir_shard initial(const struct sctx *c, const struct ir_tensor *t)
{
    struct ir_shard s = {0};
    int r = t->shape.rank;
    if (t->kind == IR_TENSOR_PARAM) {
        bool expert = false;
        for (int i = 0; i < t->n_splits; i++)
            expert |= t->splits[i] == IR_SPLIT_EXPERT;
        uint8_t tp = IR_PDIM_BIT(expert ? IR_PDIM_XTP : IR_PDIM_TP);
        for (int i = 0; i < t->n_splits; i++) {
            switch (t->splits[i]) {
            case IR_SPLIT_COL: s.split[r - 1] = tp; break;
            case IR_SPLIT_ROW: s.split[r - 2] = tp; break;
            case IR_SPLIT_VOCAB: s.split[0] = IR_PDIM_BIT(IR_PDIM_TP); break;
            case IR_SPLIT_EXPERT: s.split[0] = IR_PDIM_BIT(IR_PDIM_EP); break;
            default: break;
            }
        }
    } else if (t->kind == IR_TENSOR_INPUT && t->dtype == IR_DTYPE_I32 && r == 2) {
        s.split[1] = IR_PDIM_BIT(IR_PDIM_CP); /* token ids (batch, seq): context parallelism splits the sequence */
    }
    normalize(c, &s);
    return s;
}

/* What the forward pass decided for one op, for the backward's. */
struct op_record {
    struct ir_shard want[IR_MAX_IN], out[IR_MAX_OUT];
    struct part_xfer inner[2];
    int n_inner;
};

/* The groups an op's work is divided over: every group splitting one of
 * its operands.  A partial sum does not divide work: a linear op on one
 * (scale, add) is the same op on every rank, and so is its gradient. */
static uint8_t work_groups(const struct ir_op *o, const struct op_record *rec)
{
    uint8_t w = 0;
    for (int i = 0; i < o->n_in + o->n_out; i++) {
        if (i < o->n_in && o->in[i] < 0)
            continue;
        const struct ir_shard *sh = i < o->n_in ? &rec->want[i] : &rec->out[i - o->n_in];
        for (int k = 0; k < IR_MAX_RANK; k++)
            w |= sh->split[k];
    }
    return w;
}

/* How op's reader gives input k's gradient: split as it read the input, and
 * partial over every group that divides the op's work but not the input.
 * An op with transfers of its own (vocab-parallel loss, expert dispatch)
 * gives whole gradients; its transfers' adjoints move them. */
static struct ir_shard grad_given(const struct ir_op *o, const struct op_record *rec, int k)
{
    struct ir_shard g = rec->want[k];
    g.partial = 0;
    if (rec->n_inner)
        return g;
    uint8_t w = work_groups(o, rec);
    for (int a = 0; a < IR_MAX_RANK; a++)
        w &= (uint8_t)~g.split[a];
    g.partial = w & (uint8_t)~1u;
    return g;
}

/* Whether cp > 1 and no axis of sh is split over it: every context-parallel rank holds it all. */
static bool replicated_over_cp(const struct partition *P, const struct ir_shard *sh, int rank)
{
    if (P->L->pc.cp < 2)
        return false;
    for (int k = 0; k < rank; k++)
        if (sh->split[k] & IR_PDIM_BIT(IR_PDIM_CP))
            return false;
    return true;
}

struct grad_seen {
    int chunk, next;
    struct ir_shard given;
    int head; /* its conversion's first transfer */
};

/* The backward's transfers, in the order the backward runs (reverse op
 * order).  A chunk sums its readers' gradients of one tensor that arrive
 * alike, and converts the sum once, after the first reader's backward (the
 * last to run) to how the producer holds the tensor, whole where it held a
 * partial sum.  Parameters leave their sums over data and context parallel
 * ranks to the step's gradient reduction. */
static void grad_xfers(struct partition *P, const struct op_record *rec)
{
    struct ir_graph *g = P->g;
    bool *needs = wf_calloc((size_t)g->n_tensors + 1, sizeof *needs);
    struct ir_shard *held = wf_calloc((size_t)g->n_tensors + 1, sizeof *held);
    for (int t = 0; t < g->n_tensors; t++) {
        needs[t] = g->tensors[t].kind == IR_TENSOR_PARAM && ir_dtype_is_float(g->tensors[t].dtype);
        held[t] = P->shard[t];
    }
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *o = &g->ops[i];
        bool any = false;
        for (int k = 0; k < o->n_in; k++)
            any |= o->in[k] >= 0 && needs[o->in[k]];
        for (int k = 0; k < o->n_out; k++) {
            needs[o->out[k]] = any && ir_dtype_is_float(g->tensors[o->out[k]].dtype);
            held[o->out[k]] = rec[i].out[k];
        }
    }
    /* first[i*IR_MAX_IN+k]: op i is the first reader in its chunk to give
     * input k's gradient so */
    bool *first = wf_calloc((size_t)g->n_ops * IR_MAX_IN + 1, sizeof *first);
    int *entry = wf_calloc((size_t)g->n_ops * IR_MAX_IN + 1, sizeof *entry); /* per (op, input): its seen entry + 1 */
    int *head = wf_calloc((size_t)g->n_tensors + 1, sizeof *head);
    struct grad_seen *seen = NULL;
    int n_seen = 0, cap_seen = 0;
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *o = &g->ops[i];
        for (int k = 0; k < o->n_in; k++) {
            int t = o->in[k];
            if (t < 0 || !needs[t])
                continue;
            struct ir_shard given = grad_given(o, &rec[i], k);
            int e = head[t];
            while (e && !(seen[e - 1].chunk == P->op_chunk[i] && ir_shard_equal(&seen[e - 1].given, &given)))
                e = seen[e - 1].next;
            entry[(size_t)i * IR_MAX_IN + (size_t)k] = e ? e : n_seen + 1;
            if (e)
                continue;
            WF_GROW(seen, n_seen, cap_seen);
            seen[n_seen++] = (struct grad_seen){.chunk = P->op_chunk[i], .next = head[t], .given = given, .head = -1};
            head[t] = n_seen;
            first[(size_t)i * IR_MAX_IN + (size_t)k] = true;
        }
    }
    for (int i = g->n_ops - 1; i >= 0; i--) {
        struct sctx c = {.P = P, .op_i = i, .op = &g->ops[i], .chunk = P->op_chunk[i], .grad = true};
        c.part = P->chunks[c.chunk].part;
        for (int x = rec[i].n_inner - 1; x >= 0; x--) { /* the adjoints of the op's own transfers */
            struct part_xfer a = rec[i].inner[x];
            if (a.kind != PART_XFER_ALL_TO_ALL)
                continue; /* a forward sum of statistics: the backward reuses them */
            a.grad = true;
            a.before = rec[i].inner[x].after;
            a.after = rec[i].inner[x].before;
            a.why = "the adjoint of the forward's all-to-all: gradients go back where the tokens came from";
            push_xfer(P, &a);
        }
        for (int k = 0; k < c.op->n_in; k++) {
            int t = c.op->in[k];
            if (t < 0 || !needs[t] || !first[(size_t)i * IR_MAX_IN + (size_t)k])
                continue;
            c.t[k] = &g->tensors[t];
            c.have[k] = grad_given(c.op, &rec[i], k);
            c.want[k] = held[t];
            c.want[k].partial = 0;
            /* Context-parallel ranks that compute the same rows (LLaVA's after its concat) each carry a share of
             * their gradients (the loss's is over every rank's tokens): partial over cp, summed where a tensor
             * split over cp takes them (a reduce-scatter), and a parameter's by the step's gradient reduction. */
            if (replicated_over_cp(P, &c.have[k], g->tensors[t].shape.rank))
                c.have[k].partial |= IR_PDIM_BIT(IR_PDIM_CP);
            if (replicated_over_cp(P, &c.want[k], g->tensors[t].shape.rank))
                c.want[k].partial |= IR_PDIM_BIT(IR_PDIM_CP);
            if (g->tensors[t].kind == IR_TENSOR_PARAM)
                c.have[k].partial &= (uint8_t)~IR_PDIM_BIT(IR_PDIM_CP), c.want[k].partial &= (uint8_t)~IR_PDIM_BIT(IR_PDIM_CP);
            c.why[k] = c.have[k].partial ? "the readers' gradients are partial sums: added up for the producer"
                                         : "each reader has its slice of the gradient: gathered for the producer";
            seen[entry[(size_t)i * IR_MAX_IN + (size_t)k] - 1].head = convert(&c, k);
        }
    }
    for (size_t i = 0; i < (size_t)g->n_ops * IR_MAX_IN; i++)
        if (entry[i])
            P->grad_via[i] = seen[entry[i] - 1].head;
    free(entry);
    free(needs);
    free(held);
    free(first);
    free(head);
    free(seen);
}

int partition_shard(struct partition *P, struct diag *d)
{
    struct ir_graph *g = P->g;
    struct op_record *rec = wf_calloc((size_t)g->n_ops + 1, sizeof *rec);
    for (int k = 0; k < IR_OP_COUNT; k++)
        WF_ASSERT(classes[k] != SC_UNSET);
    P->shard = wf_calloc((size_t)g->n_tensors + 1, sizeof *P->shard);
    P->reads_via = wf_calloc((size_t)g->n_ops * IR_MAX_IN + 1, sizeof *P->reads_via);
    P->grad_via = wf_calloc((size_t)g->n_ops * IR_MAX_IN + 1, sizeof *P->grad_via);
    for (size_t i = 0; i < (size_t)g->n_ops * IR_MAX_IN; i++)
        P->reads_via[i] = P->grad_via[i] = -1;
    bool *ready = wf_calloc((size_t)g->n_tensors + 1, sizeof *ready);
    int errors = d->n_errors;
    for (int i = 0; i < g->n_ops && d->n_errors == errors; i++) {
        struct sctx c = {.P = P, .d = d, .op_i = i, .op = &g->ops[i], .chunk = P->op_chunk[i]};
        c.part = P->chunks[c.chunk].part;
        for (int k = 0; k < c.op->n_in; k++) {
            int t = c.op->in[k];
            if (t < 0)
                continue;
            c.t[k] = &g->tensors[t];
            if (!ready[t]) { /* a parameter or input, first read here */
                P->shard[t] = initial(&c, c.t[k]);
                ready[t] = true;
                if (!divides(P, d, c.part, c.t[k], &P->shard[t], c.t[k]->loc,
                             c.t[k]->kind == IR_TENSOR_PARAM ? "<param>" : "<input>"))
                    break;
            }
            c.have[k] = c.want[k] = P->shard[t];
            /* Activations from another pipeline stage arrive by sends, as held,
             * from chunk to next chunk: a stage between producer and reader
             * relays the tensor, as Megatron passes T5's encoder output down
             * the decoder pipeline, so that stages talk only to neighbours. */
            int p = c.t[k]->producer;
            if (p >= 0 && P->chunks[P->op_chunk[p]].stage != P->chunks[c.chunk].stage) {
                for (int to = P->op_chunk[p] + 1; to <= c.chunk; to++) {
                    int from = to - 1;
                    while (from > P->op_chunk[p] && P->chunks[from].stage == P->chunks[to].stage)
                        from--; /* chunks sharing a stage (an encoder on the decoder's first) need no send */
                    if (P->chunks[from].stage == P->chunks[to].stage)
                        continue;
                    bool sent = false;
                    for (int x = 0; x < P->n_xfers && !sent; x++)
                        sent = P->xfers[x].kind == PART_XFER_SEND && P->xfers[x].tensor == t && P->xfers[x].to_chunk == to;
                    if (sent)
                        continue;
                    struct sctx relay = c;
                    relay.chunk = to;
                    add_xfer(&relay, PART_XFER_SEND, IR_PDIM_NONE, t, from, -1, &c.have[k], &c.have[k],
                             local_bytes(&c, c.t[k], &c.have[k]),
                             to == c.chunk ? "pipeline: to the next stage, which reads it"
                                           : "pipeline: relayed through a stage that does not read it", -1);
                }
            }
        }
        if (d->n_errors != errors)
            break;
        rule(&c);
        if (c.errors)
            break;
        for (int k = 0; k < c.op->n_in; k++)
            if (c.t[k]) {
                normalize(&c, &c.want[k]);
                if (!divides(P, d, c.part, c.t[k], &c.want[k], c.op->loc, "op input"))
                    break;
                P->reads_via[(size_t)i * IR_MAX_IN + (size_t)k] = convert(&c, k);
            }
        for (int x = 0; x < c.n_inner; x++)
            push_xfer(P, &c.inner[x]);
        memcpy(rec[i].want, c.want, sizeof c.want);
        memcpy(rec[i].inner, c.inner, sizeof c.inner);
        rec[i].n_inner = c.n_inner;
        for (int o = 0; o < c.op->n_out; o++) {
            const struct ir_tensor *t = &g->tensors[c.op->out[o]];
            normalize(&c, &c.out[o]);
            char where[256];
            snprintf(where, sizeof where, "<op kind=\"%s\" out=\"%s\">", ir_op_info(c.op->kind)->name, t->local_name);
            if (!divides(P, d, c.part, t, &c.out[o], c.op->loc, where))
                break;
            P->shard[c.op->out[o]] = c.out[o];
            rec[i].out[o] = c.out[o];
            ready[c.op->out[o]] = true;
        }
    }
    free(ready);
    if (d->n_errors == errors)
        grad_xfers(P, rec);
    free(rec);
    return d->n_errors == errors ? 0 : -1;
}
