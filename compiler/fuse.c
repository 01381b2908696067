/* fuse.c: group ops into fused kernels (see fuse.h).
 * Each fusible op is lowered into kernel nodes by one rule (lower()); the
 * pass grows a group while the next op of the chunk continues its chain in
 * the same rows x cols domain, and closes it otherwise. */
#include "fuse.h"
#include "launch.h"
#include "autodiff.h"
#include "memory.h"
#include "memplan.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool fuse_op_fusible(enum ir_op_kind k)
{
    switch (k) {
    case IR_OP_ADD: case IR_OP_MUL: case IR_OP_SCALE: case IR_OP_BIAS_ADD: case IR_OP_GELU: case IR_OP_SILU:
    case IR_OP_RELU: case IR_OP_SWIGLU: case IR_OP_DROPOUT: case IR_OP_LAYERNORM: case IR_OP_RMSNORM:
    case IR_OP_SOFTMAX: case IR_OP_ROTARY: case IR_OP_EMBEDDING: case IR_OP_PATCHIFY:
        return true;
    default:
        return false;
    }
}

/* A group being built: its kernel so far and what its slots bind. */
struct builder {
    const struct partition *P;
    bool train;
    int chunk, op;  /* the op being lowered */
    int64_t rows, cols;
    struct kn_kernel k;
    struct kn_bind in[KN_MAX_SLOTS], out[KN_MAX_SLOTS];
    uint64_t streams[4];
    int n_streams;
    int *value;     /* per tensor: its node in this group, -1 */
    int *touched;   /* tensors whose value was set, to reset */
    int n_touched;
};

static void set_value(struct builder *b, int t, int node)
{
    if (b->value[t] < 0)
        b->touched[b->n_touched++] = t;
    b->value[t] = node;
}

/* The last transfer of the chain that brings op's input t (how op reads
 * it), or -1: as held. */
static int transfer_of(const struct partition *P, int op, int t)
{
    const struct ir_op *o = &P->g->ops[op];
    for (int k = 0; k < o->n_in; k++)
        if (o->in[k] == t)
            return partition_reads_via(P, op, k);
    return -1;
}

/* How op reads tensor t: after the transfers that bring it, else as held. */
static const struct ir_shard *read_shard(const struct partition *P, int op, int t)
{
    int via = transfer_of(P, op, t);
    return via >= 0 ? &P->xfers[via].after : &P->shard[t];
}

/* Tensor t as this rank holds it where the current op reads it: after its
 * transfers, if they bring it; as its producer makes it, outside any op
 * (b->op < 0: the domain of the group that makes it). */
static struct ir_shape local(const struct builder *b, int t)
{
    const struct ir_tensor *x = &b->P->g->tensors[t];
    struct ir_shard made = partition_made_shard(b->P, t);
    return partition_local_shape(b->P, b->P->chunks[b->chunk].part, &x->shape, b->op >= 0 ? read_shard(b->P, b->op, t) : &made);
}

/* Whether a transfer reads tensor t: its readers read it from memory,
 * never as a value made in their group. */
static bool transferred(const struct partition *P, int t)
{
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].tensor == t && !P->xfers[x].grad && P->xfers[x].kind != PART_XFER_SEND)
            return true;
    return false;
}

/* The type a kernel reads or writes tensor t in: bf16 for a float tensor
 * ranks hold in two bytes (--bf16), else its own. */
static int held_dtype(const struct partition *P, int t)
{
    const struct ir_tensor *x = &P->g->tensors[t];
    return ir_dtype_is_float(x->dtype) && partition_elem_bytes(P, x) == 2 ? IR_DTYPE_BF16 : (int)x->dtype;
}

static int slot_dtype(const struct builder *b, int t) { return held_dtype(b->P, t); }

/* How tensor t is read over the domain, or -1 if it cannot be. */
static int access_of(const struct builder *b, int t, bool per_batch)
{
    struct ir_shape s = local(b, t);
    int64_t n = ir_shape_numel(&s), last = s.rank ? s.ax[s.rank - 1].size : 1;
    if (s.rank == 0 || n == 1)
        return KN_SCALAR;
    if (last != b->cols || n == 0 || (b->rows * b->cols) % n)
        return -1;
    if (per_batch)
        return KN_ROW_DIV;
    return n == b->cols && b->rows > 1 ? KN_COLUMN : KN_FULL;
}

/* The node holding tensor t: made in the group, or loaded. */
/* Whether t is a view of a fused QKV made in this chunk (split_heads):
 * its buffer is its producer's input.  Returns that input, or -1. */
static int qkv_view(const struct partition *P, int chunk, int t)
{
    int p = P->g->tensors[t].producer;
    return p >= 0 && P->g->ops[p].kind == IR_OP_SPLIT_HEADS && P->op_chunk[p] == chunk ? P->g->ops[p].in[0] : -1;
}

static int get(struct builder *b, int t, bool per_batch)
{
    if (b->value[t] >= 0)
        return transferred(b->P, t) ? -1 : b->value[t];
    int root = qkv_view(b->P, b->chunk, t);
    if (root >= 0) { /* read through the view's strides */
        if (b->k.n_in == KN_MAX_SLOTS)
            return -1;
        int slot = kn_input(&b->k, slot_dtype(b, t), KN_HEADS);
        b->in[slot] = (struct kn_bind){.what = IR_BUF_VALUE, .id = root, .xfer = -1, .view = t};
        int n = kn_load(&b->k, slot);
        if (n >= 0)
            set_value(b, t, n);
        return n;
    }
    int access = access_of(b, t, per_batch);
    if (access < 0 || b->k.n_in == KN_MAX_SLOTS)
        return -1;
    int slot = kn_input(&b->k, slot_dtype(b, t), (enum kn_access)access);
    b->in[slot] = (struct kn_bind){.what = IR_BUF_VALUE, .id = t, .xfer = transfer_of(b->P, b->op, t)};
    int n = kn_load(&b->k, slot);
    if (n >= 0)
        set_value(b, t, n);
    return n;
}

static int op1(struct builder *b, enum kn_op op, int a) { return kn_node(&b->k, op, a, -1, -1, 0); }
static int op2(struct builder *b, enum kn_op op, int a, int c) { return kn_node(&b->k, op, a, c, -1, 0); }
static int cst(struct builder *b, double v) { return kn_const(&b->k, v); }

/* Rotary's angle for column c of a row at position pos: pos * base^(-2i/D),
 * i = c mod D/2; *sign: -1 in the first half, +1 in the second. */
static int rotary_angle(struct builder *b, double base, int *sign)
{
    int col = kn_node(&b->k, KN_COL, -1, -1, -1, 0), n = kn_node(&b->k, KN_COLS, -1, -1, -1, 0);
    int half = op2(b, KN_MUL, n, cst(b, 0.5)), second = op2(b, KN_LE, half, col);
    int i = op2(b, KN_SUB, col, op2(b, KN_MUL, half, second));
    *sign = kn_node(&b->k, KN_SELECT, second, cst(b, 1), cst(b, -1), 0);
    int freq = op1(b, KN_EXP, op2(b, KN_DIV, op2(b, KN_MUL, i, cst(b, -2 * log(base))), n));
    return op2(b, KN_MUL, kn_node(&b->k, KN_ROWPOS, -1, -1, -1, 0), freq);
}

/* An integer tensor read one value a row (token ids), as a float: its load, or -1. */
static int row_index(struct builder *b, int t)
{
    struct ir_shape s = local(b, t);
    if (ir_shape_numel(&s) != b->rows || b->k.n_in == KN_MAX_SLOTS)
        return -1;
    for (int i = 0; i < b->k.n_in; i++)
        if (b->in[i].id == t && b->in[i].what == IR_BUF_VALUE && b->k.in[i].access == KN_ROW)
            for (int n = 0; n < b->k.n_nodes; n++)
                if (b->k.nodes[n].op == KN_LOAD && b->k.nodes[n].slot == i)
                    return n;
    int slot = kn_input(&b->k, IR_DTYPE_I32, KN_ROW);
    b->in[slot] = (struct kn_bind){.what = IR_BUF_VALUE, .id = t, .xfer = transfer_of(b->P, b->op, t)};
    return kn_load(&b->k, slot);
}

/* Rotary's rotation of v (a load: its partner column, the other half's,
 * must come from memory): v cos t + sign partner sin t forward (dir
 * KN_ADD), v cos t - sign partner sin t back (KN_SUB); -1 if it cannot. */
static int rotate(struct builder *b, int v, double base, enum kn_op dir)
{
    if (v < 0 || b->k.nodes[v].op != KN_LOAD)
        return -1;
    int partner = kn_load(&b->k, b->k.nodes[v].slot);
    if (partner < 0)
        return -1;
    b->k.nodes[partner].imm = 1;
    int sign, theta = rotary_angle(b, base, &sign);
    return op2(b, dir, op2(b, KN_MUL, v, op1(b, KN_COS, theta)), op2(b, KN_MUL, op2(b, KN_MUL, sign, partner), op1(b, KN_SIN, theta)));
}

/* Lower one op into b's kernel: false if it does not fit the domain. */
static bool lower(struct builder *b, int op_index)
{
    const struct ir_op *o = &b->P->g->ops[op_index];
    b->op = -1;
    struct ir_shape os = local(b, o->out[0]);
    b->op = op_index;
    if (ir_shape_numel(&os) != b->rows * b->cols || (os.rank ? os.ax[os.rank - 1].size : 1) != b->cols)
        return false;
    if (o->kind == IR_OP_EMBEDDING) { /* each row the table's row its id names (0 off this rank's vocabulary
                                        * shard); a load, so nothing chains after it: a group of its own, and
                                        * so is its backward, the deterministic scatter */
        int ids = row_index(b, o->in[1]);
        if (ids < 0 || b->k.n_in == KN_MAX_SLOTS)
            return false;
        int slot = kn_input(&b->k, slot_dtype(b, o->in[0]), KN_GATHER);
        b->in[slot] = (struct kn_bind){.what = IR_BUF_VALUE, .id = o->in[0], .xfer = transfer_of(b->P, op_index, o->in[0])};
        int y = kn_load_at(&b->k, slot, ids);
        if (y < 0 || b->k.full)
            return false;
        set_value(b, o->out[0], y);
        return true;
    }
    if (o->kind == IR_OP_PATCHIFY) { /* the image read in patches (a load: a group of its own, as embedding's) */
        if (b->k.n_in == KN_MAX_SLOTS)
            return false;
        int slot = kn_input(&b->k, slot_dtype(b, o->in[0]), KN_PATCHES);
        b->in[slot] = (struct kn_bind){.what = IR_BUF_VALUE, .id = o->in[0], .xfer = transfer_of(b->P, op_index, o->in[0])};
        int y = kn_load(&b->k, slot);
        if (y < 0 || b->k.full)
            return false;
        set_value(b, o->out[0], y);
        return true;
    }
    int x = get(b, o->in[0], false), y = -1;
    if (x < 0)
        return false;
    switch (o->kind) {
    case IR_OP_ADD:
    case IR_OP_MUL: {
        int z = get(b, o->in[1], false);
        if (z < 0)
            return false;
        y = op2(b, o->kind == IR_OP_ADD ? KN_ADD : KN_MUL, x, z);
        break;
    }
    case IR_OP_SCALE: y = op2(b, KN_MUL, x, cst(b, ir_op_float(o, IR_ATTR_BY))); break;
    case IR_OP_BIAS_ADD: {
        int z = get(b, o->in[1], false);
        if (z < 0)
            return false;
        y = op2(b, KN_ADD, x, z);
        break;
    }
    case IR_OP_GELU:
        if (ir_op_int(o, IR_ATTR_TANH)) { /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
            int x3 = op2(b, KN_MUL, op2(b, KN_MUL, x, x), x);
            int in = op2(b, KN_MUL, cst(b, 0.7978845608028654), op2(b, KN_ADD, x, op2(b, KN_MUL, cst(b, 0.044715), x3)));
            y = op2(b, KN_MUL, op2(b, KN_MUL, cst(b, 0.5), x), op2(b, KN_ADD, cst(b, 1), op1(b, KN_TANH, in)));
        } else { /* 0.5 x (1 + erf(x / sqrt 2)) */
            int e = op1(b, KN_ERF, op2(b, KN_MUL, x, cst(b, 0.7071067811865476)));
            y = op2(b, KN_MUL, op2(b, KN_MUL, cst(b, 0.5), x), op2(b, KN_ADD, cst(b, 1), e));
        }
        break;
    case IR_OP_SILU: y = op2(b, KN_DIV, x, op2(b, KN_ADD, cst(b, 1), op1(b, KN_EXP, op1(b, KN_NEG, x)))); break;
    case IR_OP_RELU: y = op2(b, KN_MAX, x, cst(b, 0)); break;
    case IR_OP_SWIGLU: {
        int up = get(b, o->in[1], false);
        if (up < 0)
            return false;
        int silu = op2(b, KN_DIV, x, op2(b, KN_ADD, cst(b, 1), op1(b, KN_EXP, op1(b, KN_NEG, x))));
        y = op2(b, KN_MUL, silu, up);
        break;
    }
    case IR_OP_DROPOUT: {
        double p = ir_op_float(o, IR_ATTR_P);
        if (!b->train || p <= 0) { /* inference: dropout is the identity */
            y = x;
            break;
        }
        if (b->n_streams == 4)
            return false;
        int keep = kn_node(&b->k, KN_KEEP, -1, -1, -1, p);
        if (keep >= 0)
            b->k.nodes[keep].slot = (uint8_t)b->n_streams;
        b->streams[b->n_streams++] = kn_stream(b->P->g->tensors[o->out[0]].name);
        int eval = kn_node(&b->k, KN_ARG, -1, -1, -1, 0); /* 1 in validation: every element kept, unscaled */
        if (eval >= 0)
            b->k.nodes[eval].slot = KN_ARG_EVAL;
        int scale = kn_node(&b->k, KN_SELECT, eval, cst(b, 1), cst(b, 1 / (1 - p)), 0);
        y = kn_node(&b->k, KN_SELECT, op2(b, KN_MAX, keep, eval), op2(b, KN_MUL, x, scale), cst(b, 0), 0);
        int m = kn_output(&b->k, KN_DTYPE_U8, KN_FULL);
        b->out[m] = (struct kn_bind){.what = IR_BUF_MASK, .id = op_index, .xfer = -1};
        kn_store(&b->k, m, keep);
        break;
    }
    case IR_OP_LAYERNORM:
    case IR_OP_RMSNORM: {
        bool layer = o->kind == IR_OP_LAYERNORM;
        int gamma = get(b, o->in[1], false), beta = layer && o->n_in > 2 && o->in[2] >= 0 ? get(b, o->in[2], false) : -2;
        if (gamma < 0 || beta == -1)
            return false;
        int n = kn_node(&b->k, KN_COLS, -1, -1, -1, 0);
        int mean = layer ? op2(b, KN_DIV, op1(b, KN_ROWSUM, x), n) : cst(b, 0);
        int d = layer ? op2(b, KN_SUB, x, mean) : x;
        int var = op2(b, KN_DIV, op1(b, KN_ROWSUM, op2(b, KN_MUL, d, d)), n);
        int inv = op1(b, KN_RSQRT, op2(b, KN_ADD, var, cst(b, ir_op_float(o, IR_ATTR_EPS))));
        y = op2(b, KN_MUL, op2(b, KN_MUL, d, inv), gamma);
        if (beta >= 0)
            y = op2(b, KN_ADD, y, beta);
        if (b->train) { /* the backward's row statistics: mean and 1/deviation */
            int s = kn_output(&b->k, IR_DTYPE_F32, KN_ROWSTATS);
            b->out[s] = (struct kn_bind){.what = IR_BUF_ROWSTATS, .id = op_index, .xfer = -1};
            kn_store_component(&b->k, s, mean, 0);
            kn_store_component(&b->k, s, inv, 1);
        }
        break;
    }
    case IR_OP_ROTARY:
        y = rotate(b, x, ir_op_float(o, IR_ATTR_BASE), KN_ADD);
        break;
    case IR_OP_SOFTMAX: {
        int keep = cst(b, 1);
        if (ir_op_int(o, IR_ATTR_CAUSAL)) /* key k is seen by queries at positions >= k */
            keep = op2(b, KN_LE, kn_node(&b->k, KN_COL, -1, -1, -1, 0), kn_node(&b->k, KN_ROWPOS, -1, -1, -1, 0));
        if (o->n_in > 1 && o->in[1] >= 0) { /* the padding mask (B, Sk): 0 drops a key */
            int mask = get(b, o->in[1], true);
            if (mask < 0)
                return false;
            keep = kn_node(&b->k, KN_SELECT, mask, keep, cst(b, 0), 0);
        }
        int m = op1(b, KN_ROWMAX, kn_node(&b->k, KN_SELECT, keep, x, cst(b, -INFINITY), 0));
        int e = kn_node(&b->k, KN_SELECT, keep, op1(b, KN_EXP, op2(b, KN_SUB, x, m)), cst(b, 0), 0);
        int s = op1(b, KN_ROWSUM, e);
        y = kn_node(&b->k, KN_SELECT, op2(b, KN_LT, cst(b, 0), s), op2(b, KN_DIV, e, s), cst(b, 0), 0);
        break;
    }
    default:
        return false;
    }
    if (y < 0 || b->k.full)
        return false;
    set_value(b, o->out[0], y);
    return true;
}


/* Whether a value made in group g must be stored: something outside the
 * group reads it. */
static bool needed_outside(const struct partition *P, const int *op_launch, int g, int t, bool train)
{
    const struct ir_graph *G = P->g;
    for (int i = 0; i < G->n_outputs; i++)
        if (G->outputs[i] == t)
            return true;
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].tensor == t)
            return true;
    for (int i = 0; i < G->n_ops; i++) {
        const struct ir_op *o = &G->ops[i];
        bool uses = false;
        for (int k = 0; k < o->n_in + o->n_out; k++)
            if ((k < o->n_in ? o->in[k] : o->out[k - o->n_in]) == t) {
                if (k < o->n_in && op_launch[i] != g)
                    return true;
                uses = true;
            }
        if (uses && train && ir_op_keeps(o, t)) /* kept for the backward */
            return true;
    }
    return false;
}

/* The kernel entry for `want` (its kind and description): an equal one, or
 * a new one named k<index><first_ops>. */
static int entry(struct kn_set *F, const struct kn_entry *want, const char *first_ops)
{
    uint64_t h = kn_entry_hash(want);
    int e = 0;
    while (e < F->n_kernels && !(F->kernels[e].hash == h && F->kernels[e].kind == want->kind &&
                                 (want->kind == KN_KIND_FUSED ? kn_equal(&F->kernels[e].k, &want->k)
                                                              : !memcmp(&F->kernels[e].attn, &want->attn, sizeof want->attn))))
        e++;
    if (e == F->n_kernels) {
        struct kn_entry *K = &F->kernels[F->n_kernels++];
        K->kind = want->kind;
        K->k = want->k;
        K->attn = want->attn;
        K->hash = h;
        snprintf(K->name, sizeof K->name, "k%d%s", e, first_ops);
    }
    F->kernels[e].uses++;
    return e;
}

static int fused_entry(struct kn_set *F, const struct kn_kernel *k, const char *first_ops)
{
    struct kn_entry want = {.kind = KN_KIND_FUSED, .k = *k};
    return entry(F, &want, first_ops);
}

static void finish(struct builder *b, struct kn_set *F, int g, const int *op_launch)
{
    struct kn_launch *G = &F->launches[g];
    const struct ir_graph *graph = b->P->g;
    for (int i = 0; i < G->n_ops; i++) {
        const struct ir_op *o = &graph->ops[F->ops[G->first_op + i]];
        int t = o->out[0];
        if (b->value[t] >= 0 && graph->tensors[t].kind == IR_TENSOR_ACT && needed_outside(b->P, op_launch, g, t, b->train)) {
            int s = kn_output(&b->k, slot_dtype(b, t), KN_FULL);
            b->out[s] = (struct kn_bind){.what = IR_BUF_VALUE, .id = t, .xfer = -1};
            kn_store(&b->k, s, b->value[t]);
        }
    }
    G->n_in = b->k.n_in;
    G->n_out = b->k.n_out;
    memcpy(G->in, b->in, sizeof G->in);
    memcpy(G->out, b->out, sizeof G->out);
    memcpy(G->streams, b->streams, sizeof G->streams);
    char ops[96];
    size_t n = 0;
    ops[0] = 0;
    for (int i = 0; i < G->n_ops && n + 1 < sizeof ops; i++) {
        const char *op = ir_op_info(graph->ops[F->ops[G->first_op + i]].kind)->name;
        if (n + strlen(op) + 2 >= sizeof ops)
            break;
        n += (size_t)snprintf(ops + n, sizeof ops - n, "_%s", op);
    }
    int k = fused_entry(F, &b->k, ops);
    G->kernel = k;
    for (int i = 0; i < b->n_touched; i++)
        b->value[b->touched[i]] = -1;
    b->n_touched = 0;
}

static void start(struct builder *b, int chunk, int op)
{
    const struct ir_op *o = &b->P->g->ops[op];
    kn_init(&b->k);
    memset(b->in, 0, sizeof b->in);
    memset(b->out, 0, sizeof b->out);
    memset(b->streams, 0, sizeof b->streams);
    b->n_streams = 0;
    b->chunk = chunk;
    b->op = -1; /* the domain: the op's output as it makes it */
    struct ir_shape s = local(b, o->out[0]);
    b->cols = s.rank ? s.ax[s.rank - 1].size : 1;
    b->rows = b->cols ? ir_shape_numel(&s) / b->cols : 0;
}

/* q, k or v as attention reads it: its bytes' owner (through split_heads,
 * a view of the fused QKV) and its strides; ints: kn_attn_args's, at
 * off/sb/sh/ss (q also hg, sg). */
static int attention_view(const struct partition *P, int chunk, int t, int via, int64_t *off, int64_t *sb, int64_t *sh,
                          int64_t *ss, int64_t *hg, int64_t *sg)
{
    const struct ir_graph *g = P->g;
    enum ir_part part = P->chunks[chunk].part;
    struct memory_moved moved; /* read through a transfer (context parallel: keys and values gathered) */
    bool gathered = via >= 0 && memory_xfer_moved(P, via, &moved);
    struct ir_shape s = partition_local_shape(P, part, &g->tensors[t].shape, gathered ? &P->xfers[via].after : &P->shard[t]);
    int64_t H = s.ax[1].size, S = s.ax[2].size, D = s.ax[3].size;
    int p = g->tensors[t].producer;
    if (p >= 0 && g->ops[p].kind == IR_OP_SPLIT_HEADS && P->op_chunk[p] == chunk) {
        /* Megatron's grouped layout: per group, its query heads, then one head of each other output */
        const struct ir_op *o = &g->ops[p];
        int x = o->in[0], which = 0;
        while (o->out[which] != t)
            which++;
        struct ir_shape xs = partition_local_shape(P, part, &g->tensors[x].shape, gathered && moved.tensor == x ? &moved.after : &P->shard[x]);
        int64_t F = xs.ax[2].size, Hq = partition_local_shape(P, part, &g->tensors[o->out[0]].shape, &P->shard[o->out[0]]).ax[1].size;
        int64_t groups = o->n_out > 1 ? partition_local_shape(P, part, &g->tensors[o->out[1]].shape, &P->shard[o->out[1]]).ax[1].size : Hq;
        int64_t per = Hq / groups, width = (per + o->n_out - 1) * D;
        *sb = xs.ax[1].size * F, *ss = F;
        *off = which ? (per + which - 1) * D : 0;
        *sh = which || !hg ? width : D; /* output 0 read as k or v: one head a group (per is 1) */
        if (hg) /* query heads sit per group side by side; the other outputs one a group */
            *hg = which ? 1 : per, *sg = width;
        WF_ASSERT(hg || which || per == 1);
        return x;
    }
    *off = 0, *sb = H * S * D, *sh = S * D, *ss = D; /* a tensor of its own: (B, H, S, D) */
    if (hg)
        *hg = 1, *sg = S * D;
    return t;
}

/* An attention op: one launch of the attention kernel. */
static void attention(const struct partition *P, int op, bool train, const bool *needs, struct kn_set *F)
{
    const struct ir_graph *g = P->g;
    const struct ir_op *o = &g->ops[op];
    int c = P->op_chunk[op];
    enum ir_part part = P->chunks[c].part;
    struct ir_shape qs = partition_local_shape(P, part, &g->tensors[o->in[0]].shape, &P->shard[o->in[0]]);
    int via[3] = {transfer_of(P, op, o->in[0]), transfer_of(P, op, o->in[1]), transfer_of(P, op, o->in[2])};
    struct ir_shape ks = partition_local_shape(P, part, &g->tensors[o->in[1]].shape, read_shard(P, op, o->in[1]));
    struct ir_shape vs = partition_local_shape(P, part, &g->tensors[o->in[2]].shape, read_shard(P, op, o->in[2]));
    bool bias = o->n_in > 3 && o->in[3] >= 0;
    const struct ir_tensor *q = &g->tensors[o->in[0]];
    struct kn_attn a = {.dtype = ir_dtype_is_float(q->dtype) && partition_elem_bytes(P, q) == 2 ? IR_DTYPE_BF16 : IR_DTYPE_F32,
                        .D = (int)qs.ax[3].size, .Dv = (int)vs.ax[3].size, .causal = ir_op_int(o, IR_ATTR_CAUSAL),
                        .bias = bias, .bias_grad = train && bias && needs[o->in[3]], .backward = train};
    struct kn_launch *L = &F->launches[F->n_launches];
    memset(L, 0, sizeof *L);
    struct kn_entry want = {.kind = KN_KIND_ATTENTION, .attn = a};
    L->kernel = entry(F, &want, "_attention");
    L->chunk = c;
    L->first_op = F->n_ops;
    L->n_ops = 1;
    L->domain = o->out[0];
    F->op_launch[op] = F->n_launches++;
    F->ops[F->n_ops++] = op;
    struct kn_attn_args x = {.B = qs.ax[0].size, .Hq = qs.ax[1].size, .Hk = ks.ax[1].size, .Sq = qs.ax[2].size,
                             .Sk = ks.ax[2].size};
    int roots[3];
    roots[0] = attention_view(P, c, o->in[0], via[0], &x.q_off, &x.q_sb, &x.q_sh, &x.q_ss, &x.q_hg, &x.q_sg);
    roots[1] = attention_view(P, c, o->in[1], via[1], &x.k_off, &x.k_sb, &x.k_sh, &x.k_ss, NULL, NULL);
    roots[2] = attention_view(P, c, o->in[2], via[2], &x.v_off, &x.v_sb, &x.v_sh, &x.v_ss, NULL, NULL);
    /* out as merge_heads reads it, (B, Sq, H, Dv): a view, not a copy */
    x.o_sb = x.Sq * x.Hq * vs.ax[3].size, x.o_sh = vs.ax[3].size, x.o_ss = x.Hq * vs.ax[3].size;
    int bias_via = bias ? transfer_of(P, op, o->in[3]) : -1; /* sliced by heads, as the queries */
    if (bias) {
        struct ir_shape bs = partition_local_shape(P, part, &g->tensors[o->in[3]].shape, read_shard(P, op, o->in[3]));
        bool batched = bs.rank == 4 && bs.ax[0].size > 1;
        x.bias_sb = batched ? x.Hq * x.Sq * x.Sk : 0;
        x.bias_sh = x.Sq * x.Sk, x.bias_si = x.Sk;
    }
    kn_launch_set_attn_args(L, &x);
    for (int k = 0; k < 3; k++)
        L->in[L->n_in++] = (struct kn_bind){.what = IR_BUF_VALUE, .id = roots[k], .xfer = via[k]};
    if (bias)
        L->in[L->n_in++] = (struct kn_bind){.what = IR_BUF_VALUE, .id = o->in[3], .xfer = bias_via};
    L->out[L->n_out++] = (struct kn_bind){.what = IR_BUF_VALUE, .id = o->out[0], .xfer = -1};
    if (train) /* the backward's row statistics; forward only, none are kept */
        L->out[L->n_out++] = (struct kn_bind){.what = IR_BUF_ROWSTATS, .id = op, .xfer = -1};
}

/* ---- the loss ----------------------------------------------------------- */

/* Cross-entropy's kernels over its logits as this rank holds them: rows are
 * tokens, columns this rank's share of the vocabulary.  Where the loss
 * communicates (vocab-parallel, as Megatron's vocab_parallel_cross_entropy)
 * the work splits into three launches around its two all-reduces:
 *   max    m = rowmax(x)                           -> all-reduce-max over tp
 *   sums   s = rowsum(exp(x - m)), t = the label's logit (0 off the shard)
 *                                                  -> all-reduce over tp
 *   loss   lse = m + log s;  row loss = lse - t, 0 where the label is ignore_index
 * and without a vocabulary split they are one kernel.  The launches write
 * the transfers' own buffers (the collective runs on them in place), and
 * the op's row statistics keep (lse, row loss): the runtime adds the row
 * losses and divides by the count of labels not ignore_index, as
 * ref_op does; the backward reads lse. */
/* A kernel an op has of its own (the loss's, the router's), being built. */
struct solo {
    const struct partition *P;
    int op;
    int labels_xfer, logits_xfer, x_max, x_sum; /* the loss's transfers */
    struct kn_kernel k;
    struct kn_bind in[KN_MAX_SLOTS], out[KN_MAX_SLOTS];
};

static int solo_in(struct solo *c, int dtype, enum kn_access access, struct kn_bind b)
{
    int slot = kn_input(&c->k, dtype, access);
    c->in[slot] = b;
    return kn_load(&c->k, slot);
}

static int solo_out(struct solo *c, int dtype, enum kn_access access, struct kn_bind b)
{
    int slot = kn_output(&c->k, dtype, access);
    c->out[slot] = b;
    return slot;
}

static int ce_logits(struct solo *c)
{
    return solo_in(c, held_dtype(c->P, c->P->g->ops[c->op].in[0]), KN_FULL, (struct kn_bind){.what = IR_BUF_VALUE, .id = c->P->g->ops[c->op].in[0], .xfer = c->logits_xfer});
}

static int ce_labels(struct solo *c)
{
    return solo_in(c, IR_DTYPE_I32, KN_ROW, (struct kn_bind){.what = IR_BUF_VALUE, .id = c->P->g->ops[c->op].in[1], .xfer = c->labels_xfer});
}

/* A bind of transfer x's buffer (the logits' per-token statistics). */
static struct kn_bind ce_xfer(const struct solo *c, int x)
{
    return (struct kn_bind){.what = IR_BUF_VALUE, .id = c->P->g->ops[c->op].in[0], .xfer = x};
}

static int ce_label_hit(struct solo *c, int label) /* 1 in the label's column */
{
    return kn_node(&c->k, KN_EQ, kn_node(&c->k, KN_GCOL, -1, -1, -1, 0), label, -1, 0);
}

/* s and t under the row's largest logit m. */
static void ce_sums(struct solo *c, int x, int m, int label, int *s, int *t)
{
    struct kn_kernel *k = &c->k;
    *s = kn_node(k, KN_ROWSUM, kn_node(k, KN_EXP, kn_node(k, KN_SUB, x, m, -1, 0), -1, -1, 0), -1, -1, 0);
    *t = kn_node(k, KN_ROWSUM, kn_node(k, KN_SELECT, ce_label_hit(c, label), x, kn_const(k, 0), 0), -1, -1, 0);
}

static void ce_finish(struct solo *c, int m, int s, int t, int label)
{
    struct kn_kernel *k = &c->k;
    int lse = kn_node(k, KN_ADD, m, kn_node(k, KN_LOG, s, -1, -1, 0), -1, 0);
    int ignored = kn_node(k, KN_EQ, label, kn_const(k, (double)ir_op_int(&c->P->g->ops[c->op], IR_ATTR_IGNORE_INDEX)), -1, 0);
    int stats = solo_out(c, IR_DTYPE_F32, KN_ROWSTATS, (struct kn_bind){.what = IR_BUF_ROWSTATS, .id = c->op, .xfer = -1});
    kn_store_component(k, stats, lse, 0);
    kn_store_component(k, stats, kn_node(k, KN_SELECT, ignored, kn_const(k, 0), kn_node(k, KN_SUB, lse, t, -1, 0), 0), 1);
}

static void solo_start(struct solo *c)
{
    kn_init(&c->k);
    memset(c->in, 0, sizeof c->in);
    memset(c->out, 0, sizeof c->out);
}

/* One of the op's launches, over `domain` (as the launch reads it).  The
 * op's first forward launch records the op; every later one, backward
 * too, shares its entry in F->ops. */
static struct kn_launch *solo_launch_of(struct solo *c, struct kn_set *F, int domain, enum kn_when when, const struct kn_entry *want,
                                        const char *name)
{
    int at;
    if (F->op_launch[c->op] < 0) {
        WF_ASSERT(when == KN_WHEN_FORWARD);
        F->op_launch[c->op] = F->n_launches;
        at = F->n_ops;
        F->ops[F->n_ops++] = c->op;
    } else
        at = F->launches[F->op_launch[c->op]].first_op;
    struct kn_launch *L = &F->launches[F->n_launches++];
    *L = (struct kn_launch){.chunk = c->P->op_chunk[c->op], .first_op = at, .n_ops = 1, .domain = domain, .n_in = c->k.n_in,
                           .n_out = c->k.n_out, .when = (uint8_t)when};
    memcpy(L->in, c->in, sizeof L->in);
    memcpy(L->out, c->out, sizeof L->out);
    WF_ASSERT(!c->k.full);
    L->kernel = entry(F, want, name);
    return L;
}

static struct kn_launch *solo_launch(struct solo *c, struct kn_set *F, int domain, enum kn_when when, const char *name)
{
    struct kn_entry want = {.kind = KN_KIND_FUSED, .k = c->k};
    return solo_launch_of(c, F, domain, when, &want, name);
}

static void ce_slots_of(const struct partition *P, int op, struct solo *c)
{
    const struct ir_op *o = &P->g->ops[op];
    *c = (struct solo){.P = P, .op = op, .logits_xfer = -1, .x_max = -1, .x_sum = -1};
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].op == op && !P->xfers[x].grad && P->xfers[x].kind == PART_XFER_ALL_REDUCE_MAX)
            c->x_max = x, c->x_sum = x + 1; /* shard.c records the two one after the other */
    WF_ASSERT(c->x_max < 0 || (c->x_sum < P->n_xfers && P->xfers[c->x_sum].op == op && P->xfers[c->x_sum].kind == PART_XFER_ALL_REDUCE));
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].op == op && !P->xfers[x].grad && P->xfers[x].tensor == o->in[0] && x != c->x_max && x != c->x_sum &&
            c->logits_xfer < 0)
            c->logits_xfer = x;
    c->labels_xfer = transfer_of(P, op, o->in[1]);
}

static void cross_entropy(const struct partition *P, int op, struct kn_set *F)
{
    struct solo c;
    ce_slots_of(P, op, &c);
    int m, s, t, label, logits = P->g->ops[op].in[0];
    if (c.x_max < 0) { /* the whole vocabulary here: one kernel */
        solo_start(&c);
        int x = ce_logits(&c);
        label = ce_labels(&c);
        m = kn_node(&c.k, KN_ROWMAX, x, -1, -1, 0);
        ce_sums(&c, x, m, label, &s, &t);
        ce_finish(&c, m, s, t, label);
        solo_launch(&c, F, logits, KN_WHEN_FORWARD, "_cross_entropy");
        return;
    }
    solo_start(&c);
    kn_store(&c.k, solo_out(&c, IR_DTYPE_F32, KN_ROW, ce_xfer(&c, c.x_max)), kn_node(&c.k, KN_ROWMAX, ce_logits(&c), -1, -1, 0));
    solo_launch(&c, F, logits, KN_WHEN_FORWARD, "_cross_entropy_max");
    solo_start(&c);
    int x = ce_logits(&c);
    label = ce_labels(&c);
    m = solo_in(&c, IR_DTYPE_F32, KN_ROW, ce_xfer(&c, c.x_max));
    ce_sums(&c, x, m, label, &s, &t);
    int sums = solo_out(&c, IR_DTYPE_F32, KN_ROWSTATS, ce_xfer(&c, c.x_sum));
    kn_store_component(&c.k, sums, s, 0);
    kn_store_component(&c.k, sums, t, 1);
    solo_launch(&c, F, logits, KN_WHEN_FORWARD, "_cross_entropy_sums");
    solo_start(&c);
    m = solo_in(&c, IR_DTYPE_F32, KN_ROW, ce_xfer(&c, c.x_max));
    s = solo_in(&c, IR_DTYPE_F32, KN_ROWSTATS, ce_xfer(&c, c.x_sum));
    t = kn_load(&c.k, c.k.nodes[s].slot);
    c.k.nodes[t].imm = 1;
    label = ce_labels(&c);
    ce_finish(&c, m, s, t, label);
    solo_launch(&c, F, logits, KN_WHEN_FORWARD, "_cross_entropy_loss");
}

/* The loss's backward: d logits = arg0 (exp(x - lse) - [column = label]),
 * 0 where the label is ignored; arg0 is the loss's gradient over the count
 * of labels not ignored (the runtime's, as for the forward).  Local to each
 * vocabulary shard: no communication. */
static void cross_entropy_backward(const struct partition *P, int op, struct kn_set *F)
{
    struct solo c;
    ce_slots_of(P, op, &c);
    solo_start(&c);
    struct kn_kernel *k = &c.k;
    int x = ce_logits(&c), label = ce_labels(&c);
    int lse = solo_in(&c, IR_DTYPE_F32, KN_ROWSTATS, (struct kn_bind){.what = IR_BUF_ROWSTATS, .id = op, .xfer = -1});
    int scale = kn_node(k, KN_ARG, -1, -1, -1, 0);
    k->nodes[scale].slot = (uint8_t)kn_arg(k);
    int p = kn_node(k, KN_EXP, kn_node(k, KN_SUB, x, lse, -1, 0), -1, -1, 0);
    int d = kn_node(k, KN_MUL, scale, kn_node(k, KN_SUB, p, ce_label_hit(&c, label), -1, 0), -1, 0);
    int ignored = kn_node(k, KN_EQ, label, kn_const(k, (double)ir_op_int(&P->g->ops[op], IR_ATTR_IGNORE_INDEX)), -1, 0);
    int slot = solo_out(&c, held_dtype(P, P->g->ops[op].in[0]), KN_FULL,
                      (struct kn_bind){.what = IR_BUF_GRAD, .id = P->g->ops[op].in[0], .xfer = -1});
    kn_accum(k, slot, kn_node(k, KN_SELECT, ignored, kn_const(k, 0), d, 0));
    solo_launch(&c, F, P->g->ops[op].in[0], KN_WHEN_BACKWARD, "_cross_entropy_backward");
}

/* ---- the router ---------------------------------------------------------- */

/* Top-k routing over a row of expert scores, as ref_op: k rounds of the
 * largest score not yet taken (ties to the lower expert: the smallest
 * column holding it), then a softmax over the k chosen.  Each round is two
 * passes over the row (its max, then where it is). */
static int router_row(struct solo *c, int *weights, int *indices)
{
    struct kn_kernel *k = &c->k;
    const struct ir_op *o = &c->P->g->ops[c->op];
    int topk = (int)ir_op_int(o, IR_ATTR_TOPK);
    int x = solo_in(c, held_dtype(c->P, o->in[0]), KN_FULL,
                    (struct kn_bind){.what = IR_BUF_VALUE, .id = o->in[0], .xfer = transfer_of(c->P, c->op, o->in[0])});
    int col = kn_node(k, KN_COL, -1, -1, -1, 0), taken = kn_const(k, 0), ninf = kn_const(k, -INFINITY), m[8];
    if (topk < 1 || topk > 8)
        return -1;
    for (int j = 0; j < topk; j++) {
        int free_x = kn_node(k, KN_SELECT, taken, ninf, x, 0);
        m[j] = kn_node(k, KN_ROWMAX, free_x, -1, -1, 0);
        int at = kn_node(k, KN_SELECT, kn_node(k, KN_EQ, free_x, m[j], -1, 0), kn_node(k, KN_NEG, col, -1, -1, 0), ninf, 0);
        indices[j] = kn_node(k, KN_NEG, kn_node(k, KN_ROWMAX, at, -1, -1, 0), -1, -1, 0);
        taken = kn_node(k, KN_ADD, taken, kn_node(k, KN_EQ, col, indices[j], -1, 0), -1, 0);
    }
    int sum = -1;
    for (int j = 0; j < topk; j++) {
        weights[j] = kn_node(k, KN_EXP, kn_node(k, KN_SUB, m[j], m[0], -1, 0), -1, -1, 0);
        sum = sum < 0 ? weights[j] : kn_node(k, KN_ADD, sum, weights[j], -1, 0);
    }
    for (int j = 0; j < topk; j++)
        weights[j] = kn_node(k, KN_DIV, weights[j], sum, -1, 0);
    return topk;
}

static void router(const struct partition *P, int op, struct kn_set *F)
{
    const struct ir_op *o = &P->g->ops[op];
    struct solo c = {.P = P, .op = op};
    solo_start(&c);
    int w[8], idx[8], topk = router_row(&c, w, idx);
    if (topk < 0)
        return;
    int ws = solo_out(&c, held_dtype(P, o->out[0]), KN_ROWVEC, (struct kn_bind){.what = IR_BUF_VALUE, .id = o->out[0], .xfer = -1});
    int is = solo_out(&c, IR_DTYPE_I32, KN_ROWVEC, (struct kn_bind){.what = IR_BUF_VALUE, .id = o->out[1], .xfer = -1});
    for (int j = 0; j < topk; j++) {
        kn_store_component(&c.k, ws, w[j], j);
        kn_store_component(&c.k, is, idx[j], j);
    }
    if (c.k.full)
        return; /* left to the runtime's own */
    solo_launch(&c, F, o->in[0], KN_WHEN_FORWARD, "_router");
}

/* d score[e] = sum over the chosen j with index e of w_j (g_j - sum_i g_i w_i):
 * the softmax's backward over the k chosen; the others get none. */
static void router_backward(const struct partition *P, int op, struct kn_set *F)
{
    const struct ir_op *o = &P->g->ops[op];
    struct solo c = {.P = P, .op = op};
    solo_start(&c);
    struct kn_kernel *k = &c.k;
    int topk = (int)ir_op_int(o, IR_ATTR_TOPK);
    int g0 = solo_in(&c, held_dtype(P, o->out[0]), KN_ROWVEC, (struct kn_bind){.what = IR_BUF_GRAD, .id = o->out[0], .xfer = -1});
    int w0 = solo_in(&c, held_dtype(P, o->out[0]), KN_ROWVEC, (struct kn_bind){.what = IR_BUF_VALUE, .id = o->out[0], .xfer = -1});
    int i0 = solo_in(&c, IR_DTYPE_I32, KN_ROWVEC, (struct kn_bind){.what = IR_BUF_VALUE, .id = o->out[1], .xfer = -1});
    int g[8], w[8], idx[8], dot = -1;
    for (int j = 0; j < topk; j++) {
        g[j] = j ? kn_load(k, k->nodes[g0].slot) : g0;
        w[j] = j ? kn_load(k, k->nodes[w0].slot) : w0;
        idx[j] = j ? kn_load(k, k->nodes[i0].slot) : i0;
        if (g[j] < 0 || w[j] < 0 || idx[j] < 0)
            return;
        k->nodes[g[j]].imm = k->nodes[w[j]].imm = k->nodes[idx[j]].imm = j;
        int gw = kn_node(k, KN_MUL, g[j], w[j], -1, 0);
        dot = dot < 0 ? gw : kn_node(k, KN_ADD, dot, gw, -1, 0);
    }
    int col = kn_node(k, KN_COL, -1, -1, -1, 0), d = kn_const(k, 0);
    for (int j = 0; j < topk; j++) {
        int mine = kn_node(k, KN_EQ, col, idx[j], -1, 0);
        int part = kn_node(k, KN_MUL, w[j], kn_node(k, KN_SUB, g[j], dot, -1, 0), -1, 0);
        d = kn_node(k, KN_ADD, d, kn_node(k, KN_SELECT, mine, part, kn_const(k, 0), 0), -1, 0);
    }
    int slot = solo_out(&c, held_dtype(P, o->in[0]), KN_FULL, (struct kn_bind){.what = IR_BUF_GRAD, .id = o->in[0], .xfer = -1});
    kn_accum(k, slot, d);
    if (!k->full)
        solo_launch(&c, F, o->in[0], KN_WHEN_BACKWARD, "_router_backward");
}

/* ---- MoE dispatch and combine ------------------------------------------ */

/* A dispatch or combine op's routing: its indices (B, S, k) and its
 * experts' buffer (experts, capacity, hidden). */
static void moe_tensors(const struct ir_op *o, int *indices, int *buffer)
{
    *indices = o->kind == IR_OP_DISPATCH ? o->in[1] : o->in[2];
    *buffer = o->kind == IR_OP_DISPATCH ? o->out[0] : o->in[0];
}

void fuse_route_sizes(const struct partition *P, int op, int64_t *entries, int64_t *topk, int64_t *experts, int64_t *capacity)
{
    const struct ir_op *o = &P->g->ops[op];
    int idx, buf;
    moe_tensors(o, &idx, &buf);
    const struct ir_tensor *t = &P->g->tensors[idx], *e = &P->g->tensors[buf];
    struct ir_shape l = partition_local_shape(P, P->chunks[P->op_chunk[op]].part, &t->shape, read_shard(P, op, idx));
    *entries = ir_shape_numel(&l);
    *topk = l.rank ? l.ax[l.rank - 1].size : 1;
    *experts = e->shape.ax[0].size; /* the whole buffer: dispatch writes it before its all-to-all, combine reads it after */
    *capacity = e->shape.rank > 1 ? e->shape.ax[1].size : 1;
}

/* The op's own all-to-all (the tokens' way to or from their experts' ranks),
 * or its adjoint in the backward; -1 without expert parallelism. */
static int moe_xfer(const struct partition *P, int op, int t, bool grad)
{
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].op == op && P->xfers[x].tensor == t && P->xfers[x].grad == grad && P->xfers[x].kind == PART_XFER_ALL_TO_ALL)
            return x;
    return -1;
}

static struct kn_bind scratch(enum ir_buf_what what, int op) { return (struct kn_bind){.what = (uint8_t)what, .id = op, .xfer = -1}; }

/* The routing launch an op runs before its kernels, forward and again in
 * the backward (ROUTES and FILLS are working buffers of its step). */
static void route(const struct partition *P, int op, enum kn_when when, struct kn_set *F)
{
    int idx, buf;
    moe_tensors(&P->g->ops[op], &idx, &buf);
    struct solo c = {.P = P, .op = op};
    solo_start(&c);
    c.k.n_in = 1, c.k.n_out = 2;
    c.in[0] = (struct kn_bind){.what = IR_BUF_VALUE, .id = idx, .xfer = transfer_of(P, op, idx)};
    c.out[0] = scratch(IR_BUF_ROUTES, op);
    c.out[1] = scratch(IR_BUF_FILLS, op);
    struct kn_entry want = {.kind = KN_KIND_ROUTE};
    struct kn_launch *L = solo_launch_of(&c, F, idx, when, &want, "_route");
    struct kn_route_args a = {0};
    fuse_route_sizes(P, op, &a.entries, &a.topk, &a.experts, &a.capacity);
    kn_launch_set_route_args(L, &a);
}

/* floor(x / d) of a whole x and d: floor((x + 1/2) / d), exact for any x a
 * float holds (the half keeps the quotient off the integers).  An entry's
 * token is floor_div(entry, topk): -1 for -1. */
static int floor_div(struct kn_kernel *k, int x, int64_t d)
{
    return kn_node(k, KN_FLOOR, kn_node(k, KN_DIV, kn_node(k, KN_ADD, x, kn_const(k, 0.5), -1, 0), kn_const(k, (double)d), -1, 0), -1,
                   -1, 0);
}

/* Component j of a ROWVEC input: the slot is made on the first (*slot < 0). */
static int component(struct solo *c, int *slot, int dtype, struct kn_bind b, int j)
{
    int n = *slot < 0 ? solo_in(c, dtype, KN_ROWVEC, b) : kn_load(&c->k, *slot);
    *slot = c->k.nodes[n].slot;
    c->k.nodes[n].imm = j;
    return n;
}

/* Entry j's row of the experts' buffer: the routes' component j. */
static int route_row(struct solo *c, int *slot, int j) { return component(c, slot, IR_DTYPE_I32, scratch(IR_BUF_ROUTES, c->op), j); }

/* A gathered input: the row its index names, 0 for -1. */
static int gather_slot(struct solo *c, int dtype, struct kn_bind b)
{
    int slot = kn_input(&c->k, dtype, KN_GATHER);
    c->in[slot] = b;
    return slot;
}

/* dispatch: each row of the experts' buffer is the token its fill names (0
 * where none), written where its all-to-all takes it; the backward adds
 * each token's k rows of the buffer's gradient into the token's. */
static void dispatch(const struct partition *P, int op, bool backward, const bool *needs, struct kn_set *F)
{
    const struct ir_op *o = &P->g->ops[op];
    int64_t entries, topk, experts, capacity;
    fuse_route_sizes(P, op, &entries, &topk, &experts, &capacity);
    if (backward && !needs[o->in[0]])
        return;
    route(P, op, backward ? KN_WHEN_BACKWARD : KN_WHEN_FORWARD, F);
    struct solo c = {.P = P, .op = op};
    solo_start(&c);
    struct kn_kernel *k = &c.k;
    if (!backward) {
        int fill = solo_in(&c, IR_DTYPE_I32, KN_ROW, scratch(IR_BUF_FILLS, op));
        int x = gather_slot(&c, held_dtype(P, o->in[0]),
                            (struct kn_bind){.what = IR_BUF_VALUE, .id = o->in[0], .xfer = transfer_of(P, op, o->in[0])});
        int out = solo_out(&c, held_dtype(P, o->out[0]), KN_FULL,
                           (struct kn_bind){.what = IR_BUF_VALUE, .id = o->out[0], .xfer = moe_xfer(P, op, o->out[0], false)});
        kn_store(k, out, kn_load_at(k, x, floor_div(k, fill, topk)));
        solo_launch(&c, F, o->out[0], KN_WHEN_FORWARD, "_dispatch");
        return;
    }
    int routes = -1, sum = -1;
    int g = gather_slot(&c, held_dtype(P, o->out[0]),
                        (struct kn_bind){.what = IR_BUF_GRAD, .id = o->out[0], .xfer = moe_xfer(P, op, o->out[0], true)});
    for (int j = 0; j < topk; j++) {
        int row = kn_load_at(k, g, route_row(&c, &routes, (int)j));
        sum = sum < 0 ? row : kn_node(k, KN_ADD, sum, row, -1, 0);
    }
    kn_accum(k, solo_out(&c, held_dtype(P, o->in[0]), KN_FULL, (struct kn_bind){.what = IR_BUF_GRAD, .id = o->in[0], .xfer = -1}), sum);
    if (!k->full)
        solo_launch(&c, F, o->in[0], KN_WHEN_BACKWARD, "_dispatch_backward");
}

/* combine: each token's output is the sum over its k choices of the
 * choice's weight times its row of the experts' output (read where the
 * all-to-all brings it back).  The backward: each weight's gradient, a
 * row's dot product with the output's gradient; each row of the experts'
 * output, its entry's weight times its token's output gradient. */
static void combine(const struct partition *P, int op, bool backward, const bool *needs, struct kn_set *F)
{
    const struct ir_op *o = &P->g->ops[op];
    int64_t entries, topk, experts, capacity;
    fuse_route_sizes(P, op, &entries, &topk, &experts, &capacity);
    bool dw = backward && needs[o->in[1]], dy = backward && needs[o->in[0]];
    if (backward && !dw && !dy)
        return;
    route(P, op, backward ? KN_WHEN_BACKWARD : KN_WHEN_FORWARD, F);
    /* the experts' output where the all-to-all brings it back (after any sum over expert-tp ranks), whole */
    int back = moe_xfer(P, op, o->in[0], false);
    struct kn_bind y = {.what = IR_BUF_VALUE, .id = o->in[0], .xfer = back >= 0 ? back : transfer_of(P, op, o->in[0])},
                   w = {.what = IR_BUF_VALUE, .id = o->in[1], .xfer = transfer_of(P, op, o->in[1])},
                   gout = {.what = IR_BUF_GRAD, .id = o->out[0], .xfer = -1};
    struct solo c = {.P = P, .op = op};
    if (!backward || dw) {
        solo_start(&c);
        struct kn_kernel *k = &c.k;
        int routes = -1, weights = -1, ys = gather_slot(&c, held_dtype(P, o->in[0]), y), sum = -1;
        int g = backward ? solo_in(&c, held_dtype(P, o->out[0]), KN_FULL, gout) : -1;
        int dws = backward ? solo_out(&c, held_dtype(P, o->in[1]), KN_ROWVEC, (struct kn_bind){.what = IR_BUF_GRAD, .id = o->in[1], .xfer = -1})
                           : -1;
        for (int j = 0; j < topk; j++) {
            int row = kn_load_at(k, ys, route_row(&c, &routes, (int)j));
            if (backward) { /* d weight j = the row's dot product with the output's gradient */
                kn_accum_component(k, dws, kn_node(k, KN_ROWSUM, kn_node(k, KN_MUL, g, row, -1, 0), -1, -1, 0), j);
                continue;
            }
            int term = kn_node(k, KN_MUL, component(&c, &weights, held_dtype(P, o->in[1]), w, j), row, -1, 0);
            sum = sum < 0 ? term : kn_node(k, KN_ADD, sum, term, -1, 0);
        }
        if (!backward)
            kn_store(k, solo_out(&c, held_dtype(P, o->out[0]), KN_FULL, (struct kn_bind){.what = IR_BUF_VALUE, .id = o->out[0], .xfer = -1}),
                     sum);
        if (!k->full)
            solo_launch(&c, F, o->out[0], backward ? KN_WHEN_BACKWARD : KN_WHEN_FORWARD,
                        backward ? "_combine_backward_weights" : "_combine");
    }
    if (dy) { /* per row of the experts' output: its entry's weight times its token's gradient */
        solo_start(&c);
        struct kn_kernel *k = &c.k;
        int fill = solo_in(&c, IR_DTYPE_I32, KN_ROW, scratch(IR_BUF_FILLS, op));
        int gs = gather_slot(&c, held_dtype(P, o->out[0]), gout);
        int ws = kn_input(k, held_dtype(P, o->in[1]), KN_PICK);
        c.in[ws] = w;
        int d = kn_node(k, KN_MUL, kn_load_at(k, ws, fill), kn_load_at(k, gs, floor_div(k, fill, topk)), -1, 0);
        kn_accum(k, solo_out(&c, held_dtype(P, o->in[0]), KN_FULL,
                             (struct kn_bind){.what = IR_BUF_GRAD, .id = o->in[0], .xfer = moe_xfer(P, op, o->in[0], true)}),
                 d);
        if (!k->full)
            solo_launch(&c, F, o->in[0], KN_WHEN_BACKWARD, "_combine_backward");
    }
}

/* ---- T5's relative position bias ---------------------------------------- */

/* The bucket of query position q minus key position k (n = q - k, the
 * negated relative position), as T5's: exact below half the buckets, then
 * logarithmic up to max_distance.  The logarithmic part is a count of
 * thresholds the compiler finds with ir_relpos_bucket itself, so the
 * kernel's bucket is the reference's exactly, in any float arithmetic. */
static int relpos_bucket(struct kn_kernel *k, int n, const struct ir_op *o, int64_t buckets)
{
    bool bi = ir_op_int(o, IR_ATTR_BIDIRECTIONAL);
    int64_t maxd = ir_op_int(o, IR_ATTR_MAX_DISTANCE), half = bi ? buckets / 2 : buckets, exact = half / 2;
    int ret = kn_const(k, 0);
    if (bi) { /* the keys after the query take the upper half */
        int after = kn_node(k, KN_LT, n, kn_const(k, 0), -1, 0);
        ret = kn_node(k, KN_SELECT, after, kn_const(k, (double)half), ret, 0);
        n = kn_node(k, KN_SELECT, after, kn_node(k, KN_NEG, n, -1, -1, 0), n, 0);
    } else
        n = kn_node(k, KN_MAX, n, kn_const(k, 0), -1, 0);
    int large = kn_const(k, (double)exact);
    for (int64_t want = exact + 1, at = exact; want < half; want++) { /* the first distance in each bucket past the exact ones */
        while (at < INT32_MAX && ir_relpos_bucket(-at, false, half, maxd) < want)
            at++;
        large = kn_node(k, KN_ADD, large, kn_node(k, KN_LE, kn_const(k, (double)at), n, -1, 0), -1, 0);
    }
    int small = kn_node(k, KN_LT, n, kn_const(k, (double)exact), -1, 0);
    return kn_node(k, KN_ADD, ret, kn_node(k, KN_SELECT, small, n, large, 0), -1, 0);
}

/* relpos_bias: out (heads, q, k) = table[bucket(q - k) * heads + head],
 * the table's element picked per element; the backward, a row per table
 * element summing the output gradient where that element was picked (no
 * two rows add into one element: deterministic without atomics). */
static void relpos_bias(const struct partition *P, int op, bool backward, const bool *needs, struct kn_set *F)
{
    const struct ir_op *o = &P->g->ops[op];
    int table = o->in[0], out = o->out[0];
    if (backward && !needs[table])
        return;
    enum ir_part part = P->chunks[P->op_chunk[op]].part;
    int tx = transfer_of(P, op, table);
    struct ir_shape tl = partition_local_shape(P, part, &P->g->tensors[table].shape, read_shard(P, op, table));
    struct ir_shape ol = partition_local_shape(P, part, &P->g->tensors[out].shape, &P->shard[out]);
    if (tl.rank != 2 || ol.rank != 3)
        return;
    int64_t buckets = tl.ax[0].size, heads = tl.ax[1].size, Sq = ol.ax[1].size, Sk = ol.ax[2].size;
    struct solo c = {.P = P, .op = op};
    solo_start(&c);
    struct kn_kernel *k = &c.k;
    if (!backward) {
        int head = kn_node(k, KN_COORD, -1, -1, -1, 1);
        int n = kn_node(k, KN_SUB, kn_node(k, KN_COORD, -1, -1, -1, 0), kn_node(k, KN_COL, -1, -1, -1, 0), -1, 0);
        int b = relpos_bucket(k, n, o, buckets);
        int at = kn_node(k, KN_ADD, kn_node(k, KN_MUL, b, kn_const(k, (double)heads), -1, 0), head, -1, 0);
        int ts = kn_input(k, held_dtype(P, table), KN_PICK);
        c.in[ts] = (struct kn_bind){.what = IR_BUF_VALUE, .id = table, .xfer = tx};
        kn_store(k, solo_out(&c, held_dtype(P, out), KN_FULL, (struct kn_bind){.what = IR_BUF_VALUE, .id = out, .xfer = -1}),
                 kn_load_at(k, ts, at));
        if (!k->full)
            solo_launch(&c, F, out, KN_WHEN_FORWARD, "_relpos_bias");
        return;
    }
    int row = kn_node(k, KN_COORD, -1, -1, -1, 0), col = kn_node(k, KN_COL, -1, -1, -1, 0);
    int mine = floor_div(k, row, heads); /* the row's bucket: rows are the table's elements, bucket-major */
    int q = floor_div(k, col, Sk);
    int key = kn_node(k, KN_SUB, col, kn_node(k, KN_MUL, q, kn_const(k, (double)Sk), -1, 0), -1, 0);
    int b = relpos_bucket(k, kn_node(k, KN_SUB, q, key, -1, 0), o, buckets);
    int g = solo_in(&c, held_dtype(P, out), KN_FULL, (struct kn_bind){.what = IR_BUF_GRAD, .id = out, .xfer = -1}); /* row mod heads */
    int picked = kn_node(k, KN_SELECT, kn_node(k, KN_EQ, b, mine, -1, 0), g, kn_const(k, 0), 0);
    kn_accum(k, solo_out(&c, partition_grad_dtype(P), KN_ROW, (struct kn_bind){.what = IR_BUF_GRAD, .id = table, .xfer = -1}),
             kn_node(k, KN_ROWSUM, picked, -1, -1, 0));
    if (k->full)
        return;
    struct kn_launch *L = solo_launch(&c, F, out, KN_WHEN_BACKWARD, "_relpos_bias_backward");
    L->sizes[1] = buckets * heads, L->sizes[2] = Sq * Sk;
}

/* ---- concat ------------------------------------------------------------- */

/* A launch per input: its rows copied to their place in the output (a
 * ROWMAP store); the backward, a launch per input that needs a gradient,
 * reads that place of the output's gradient back.  sizes[0] says which
 * input a launch moves (a tensor may be joined to itself). */
static void concat(const struct partition *P, int op, bool backward, const bool *needs, struct kn_set *F)
{
    const struct ir_op *o = &P->g->ops[op];
    for (int i = 0; i < o->n_in; i++) {
        int t = o->in[i];
        if (t < 0 || (backward && !needs[t]))
            continue;
        struct solo c = {.P = P, .op = op};
        solo_start(&c);
        struct kn_bind part = {.what = backward ? IR_BUF_GRAD : IR_BUF_VALUE, .id = t, .xfer = backward ? -1 : transfer_of(P, op, t)};
        struct kn_bind whole = {.what = backward ? IR_BUF_GRAD : IR_BUF_VALUE, .id = o->out[0], .xfer = -1};
        if (backward)
            kn_accum(&c.k, solo_out(&c, held_dtype(P, t), KN_FULL, part), solo_in(&c, held_dtype(P, o->out[0]), KN_ROWMAP, whole));
        else
            kn_store(&c.k, solo_out(&c, held_dtype(P, o->out[0]), KN_ROWMAP, whole), solo_in(&c, held_dtype(P, t), KN_FULL, part));
        solo_launch(&c, F, t, backward ? KN_WHEN_BACKWARD : KN_WHEN_FORWARD, backward ? "_concat_backward" : "_concat")->sizes[0] = i;
    }
}

/* ---- the backward of a fused launch ------------------------------------- */

/* What a backward kernel reads and adds into, slot by slot. */
struct bwd {
    struct builder *b;          /* its kernel, slots and domain (chunk, rows, cols) */
    const struct kn_set *F;
    int launch;                 /* the forward launch */
    const bool *needs;
    int *grad;                  /* per tensor: its gradient's node so far, -1 */
    int *fwd;                   /* per tensor: its forward value's load, -1 */
};

/* A forward value, saved by the forward kernel (or a parameter). */
static int fwd_value(struct bwd *w, int t)
{
    if (w->fwd[t] >= 0)
        return w->fwd[t];
    struct builder *b = w->b;
    int access = access_of(b, t, false);
    if (access < 0 || b->k.n_in == KN_MAX_SLOTS)
        return -1;
    int slot = kn_input(&b->k, slot_dtype(b, t), (enum kn_access)access);
    b->in[slot] = (struct kn_bind){.what = IR_BUF_VALUE, .id = t, .xfer = transfer_of(b->P, b->op, t)};
    return w->fwd[t] = kn_load(&b->k, slot);
}

/* An op's saved mask (dropout) or one component of its row statistics. */
static int saved_aux(struct bwd *w, int op, enum ir_buf_what what, int component)
{
    struct builder *b = w->b;
    for (int i = 0; i < b->k.n_in; i++) /* each slot once; a component is the load's */
        if (b->in[i].what == what && b->in[i].id == op) {
            int n = kn_load(&b->k, i);
            if (n >= 0)
                b->k.nodes[n].imm = component;
            return n;
        }
    if (b->k.n_in == KN_MAX_SLOTS)
        return -1;
    int slot = kn_input(&b->k, what == IR_BUF_MASK ? KN_DTYPE_U8 : IR_DTYPE_F32, what == IR_BUF_MASK ? KN_FULL : KN_ROWSTATS);
    b->in[slot] = (struct kn_bind){.what = (uint8_t)what, .id = op, .xfer = -1};
    int n = kn_load(&b->k, slot);
    if (n >= 0)
        b->k.nodes[n].imm = component;
    return n;
}

/* The dtype a tensor's gradient is held in: a parameter's main gradient's
 * (partition_grad_dtype) for a parameter or a position table's first rows
 * (a view of it), else the tensor's own. */
static int grad_dtype(struct builder *b, int t)
{
    const struct ir_graph *g = b->P->g;
    int p = g->tensors[t].producer;
    if (p >= 0 && g->ops[p].kind == IR_OP_POSITION_EMBEDDING)
        t = g->ops[p].in[0];
    return g->tensors[t].kind == IR_TENSOR_PARAM ? partition_grad_dtype(b->P) : slot_dtype(b, t);
}

/* Add contribution c to input u's gradient: inside the group, to its node;
 * else into its gradient buffer (a parameter broadcast along the rows sums
 * over them).  False if the domain cannot express it. */
static bool contribute(struct bwd *w, int u, int c)
{
    struct builder *b = w->b;
    const struct ir_graph *g = b->P->g;
    if (u < 0 || !w->needs[u] || c < 0)
        return c >= 0 || u < 0 || !w->needs[u];
    int p = g->tensors[u].producer;
    if (p >= 0 && w->F->op_launch[p] == w->launch) {
        w->grad[u] = w->grad[u] >= 0 ? op2(b, KN_ADD, w->grad[u], c) : c;
        return w->grad[u] >= 0;
    }
    int root = qkv_view(b->P, b->chunk, u);
    if (root >= 0) { /* a view of a fused QKV: into its buffer's gradient, through the view's strides */
        int slot = -1;
        for (int i = 0; i < b->k.n_out; i++)
            if (b->out[i].what == IR_BUF_GRAD && b->out[i].id == root && b->out[i].view == u && b->k.out[i].access == KN_HEADS)
                slot = i;
        if (slot < 0) {
            if (b->k.n_out == KN_MAX_SLOTS)
                return false;
            slot = kn_output(&b->k, grad_dtype(b, u), KN_HEADS);
            b->out[slot] = (struct kn_bind){.what = IR_BUF_GRAD, .id = root, .xfer = -1, .view = u};
        }
        kn_accum(&b->k, slot, c);
        return !b->k.full;
    }
    int access = access_of(b, u, false);
    if (access != KN_FULL && access != KN_COLUMN)
        return false; /* a scalar: its sum over everything does not fit one row at a time */
    int slot = -1;
    for (int i = 0; i < b->k.n_out; i++)
        if (b->out[i].what == IR_BUF_GRAD && b->out[i].id == u)
            slot = i;
    if (slot < 0) {
        if (b->k.n_out == KN_MAX_SLOTS)
            return false;
        slot = kn_output(&b->k, grad_dtype(b, u), (enum kn_access)access);
        b->out[slot] = (struct kn_bind){.what = IR_BUF_GRAD, .id = u, .xfer = -1};
    }
    kn_accum(&b->k, slot, c);
    return !b->k.full;
}

/* One op's backward, its output's gradient gy known. */
static bool lower_backward(struct bwd *w, int op_index, int gy)
{
    struct builder *b = w->b;
    const struct ir_op *o = &b->P->g->ops[op_index];
    int in0 = o->in[0], in1 = o->n_in > 1 ? o->in[1] : -1;
    switch (o->kind) {
    case IR_OP_ADD: return contribute(w, in0, gy) && contribute(w, in1, gy);
    case IR_OP_BIAS_ADD: return contribute(w, in0, gy) && contribute(w, in1, gy);
    case IR_OP_MUL: {
        int x = fwd_value(w, in0), y = fwd_value(w, in1);
        return x >= 0 && y >= 0 && contribute(w, in0, op2(b, KN_MUL, gy, y)) && contribute(w, in1, op2(b, KN_MUL, gy, x));
    }
    case IR_OP_SCALE: return contribute(w, in0, op2(b, KN_MUL, gy, cst(b, ir_op_float(o, IR_ATTR_BY))));
    case IR_OP_GELU: {
        int x = fwd_value(w, in0), d;
        if (x < 0)
            return false;
        if (ir_op_int(o, IR_ATTR_TANH)) { /* 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2), t = tanh(k (x + c x^3)) */
            int x2 = op2(b, KN_MUL, x, x);
            int t = op1(b, KN_TANH, op2(b, KN_MUL, cst(b, 0.7978845608028654),
                                         op2(b, KN_ADD, x, op2(b, KN_MUL, cst(b, 0.044715), op2(b, KN_MUL, x2, x)))));
            int left = op2(b, KN_MUL, cst(b, 0.5), op2(b, KN_ADD, cst(b, 1), t));
            int slope = op2(b, KN_MUL, op2(b, KN_SUB, cst(b, 1), op2(b, KN_MUL, t, t)),
                            op2(b, KN_MUL, cst(b, 0.7978845608028654), op2(b, KN_ADD, cst(b, 1), op2(b, KN_MUL, cst(b, 3 * 0.044715), x2))));
            d = op2(b, KN_ADD, left, op2(b, KN_MUL, op2(b, KN_MUL, cst(b, 0.5), x), slope));
        } else { /* 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi) */
            int e = op1(b, KN_ERF, op2(b, KN_MUL, x, cst(b, 0.7071067811865476)));
            int pdf = op2(b, KN_MUL, cst(b, 0.3989422804014327), op1(b, KN_EXP, op2(b, KN_MUL, cst(b, -0.5), op2(b, KN_MUL, x, x))));
            d = op2(b, KN_ADD, op2(b, KN_MUL, cst(b, 0.5), op2(b, KN_ADD, cst(b, 1), e)), op2(b, KN_MUL, x, pdf));
        }
        return contribute(w, in0, op2(b, KN_MUL, gy, d));
    }
    case IR_OP_SILU:
    case IR_OP_SWIGLU: { /* s = sigmoid(x): d silu = s + x s (1 - s) */
        int x = fwd_value(w, in0);
        if (x < 0)
            return false;
        int sg = op1(b, KN_RECIP, op2(b, KN_ADD, cst(b, 1), op1(b, KN_EXP, op1(b, KN_NEG, x))));
        int d = op2(b, KN_ADD, sg, op2(b, KN_MUL, op2(b, KN_MUL, x, sg), op2(b, KN_SUB, cst(b, 1), sg)));
        if (o->kind == IR_OP_SILU)
            return contribute(w, in0, op2(b, KN_MUL, gy, d));
        int up = fwd_value(w, in1);
        return up >= 0 && contribute(w, in0, op2(b, KN_MUL, op2(b, KN_MUL, gy, up), d)) &&
               contribute(w, in1, op2(b, KN_MUL, gy, op2(b, KN_MUL, x, sg)));
    }
    case IR_OP_RELU: {
        int y = fwd_value(w, o->out[0]);
        return y >= 0 && contribute(w, in0, kn_node(&b->k, KN_SELECT, op2(b, KN_LT, cst(b, 0), y), gy, cst(b, 0), 0));
    }
    case IR_OP_DROPOUT: {
        double p = ir_op_float(o, IR_ATTR_P);
        if (p <= 0)
            return contribute(w, in0, gy);
        int keep = saved_aux(w, op_index, IR_BUF_MASK, 0);
        return keep >= 0 && contribute(w, in0, kn_node(&b->k, KN_SELECT, keep, op2(b, KN_MUL, gy, cst(b, 1 / (1 - p))), cst(b, 0), 0));
    }
    case IR_OP_LAYERNORM:
    case IR_OP_RMSNORM: {
        bool layer = o->kind == IR_OP_LAYERNORM;
        int x = fwd_value(w, in0), gamma = fwd_value(w, in1);
        int mean = layer ? saved_aux(w, op_index, IR_BUF_ROWSTATS, 0) : cst(b, 0), inv = saved_aux(w, op_index, IR_BUF_ROWSTATS, 1);
        if (x < 0 || gamma < 0 || mean < 0 || inv < 0)
            return false;
        int n = kn_node(&b->k, KN_COLS, -1, -1, -1, 0);
        int xh = op2(b, KN_MUL, op2(b, KN_SUB, x, mean), inv), dxh = op2(b, KN_MUL, gy, gamma);
        int s1 = op1(b, KN_ROWSUM, dxh), s2 = op1(b, KN_ROWSUM, op2(b, KN_MUL, dxh, xh));
        /* layernorm: inv/n (n dxh - s1 - xh s2); rmsnorm: inv (dxh - xh s2 / n) */
        int dx = layer ? op2(b, KN_MUL, op2(b, KN_DIV, inv, n),
                             op2(b, KN_SUB, op2(b, KN_SUB, op2(b, KN_MUL, n, dxh), s1), op2(b, KN_MUL, xh, s2)))
                       : op2(b, KN_MUL, inv, op2(b, KN_SUB, dxh, op2(b, KN_DIV, op2(b, KN_MUL, xh, s2), n)));
        bool ok = contribute(w, in0, dx) && contribute(w, in1, op2(b, KN_MUL, gy, xh));
        if (layer && o->n_in > 2 && o->in[2] >= 0)
            ok = ok && contribute(w, o->in[2], gy);
        return ok;
    }
    case IR_OP_ROTARY: /* the rotation back */
        return contribute(w, in0, rotate(b, gy, ir_op_float(o, IR_ATTR_BASE), KN_SUB));
    case IR_OP_EMBEDDING: { /* gy's rows added into the rows of the table's gradient their ids name */
        if (!w->needs[in0])
            return true;
        int ids = row_index(b, in1), slot = -1;
        if (ids < 0)
            return false;
        for (int i = 0; i < b->k.n_out; i++)
            if (b->out[i].what == IR_BUF_GRAD && b->out[i].id == in0)
                slot = i;
        if (slot < 0) {
            if (b->k.n_out == KN_MAX_SLOTS)
                return false;
            slot = kn_output(&b->k, grad_dtype(b, in0), KN_GATHER);
            b->out[slot] = (struct kn_bind){.what = IR_BUF_GRAD, .id = in0, .xfer = -1};
        }
        kn_accum_at(&b->k, slot, gy, ids);
        return !b->k.full;
    }
    case IR_OP_SOFTMAX: { /* y (gy - rowsum(gy y)) */
        int y = fwd_value(w, o->out[0]);
        if (y < 0)
            return false;
        int dot = op1(b, KN_ROWSUM, op2(b, KN_MUL, gy, y));
        return contribute(w, in0, op2(b, KN_MUL, y, op2(b, KN_SUB, gy, dot)));
    }
    default:
        return false;
    }
}

/* Whether gradient reaches a value of launch l from outside it: an op
 * outside reads it (a view of it included), or it is the model's output. */
static bool read_outside(const struct partition *P, const struct kn_set *F, int l, int t)
{
    const struct ir_graph *g = P->g;
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] == t)
            return true;
    for (int i = 0; i < g->n_ops; i++)
        for (int k = 0; k < g->ops[i].n_in; k++)
            if (g->ops[i].in[k] == t && F->op_launch[i] != l)
                return true;
    return false;
}

/* The backward of forward launch l, as one kernel: its ops in reverse.
 * False (no launch) if an op's backward does not fit the domain. */
static bool backward(const struct partition *P, struct kn_set *F, int l, const bool *needs, struct builder *b, int *grad,
                     int *fwd)
{
    const struct kn_launch *L = &F->launches[l];
    const struct ir_graph *g = P->g;
    start(b, L->chunk, F->ops[L->first_op]);
    struct bwd w = {.b = b, .F = F, .launch = l, .needs = needs, .grad = grad, .fwd = fwd};
    bool ok = true, any = false;
    for (int i = L->n_ops - 1; i >= 0 && ok; i--) {
        int op = F->ops[L->first_op + i], t = g->ops[op].out[0];
        b->op = op;
        if (!needs[t])
            continue;
        int gy = grad[t];
        if (read_outside(P, F, l, t)) { /* what later ops' backwards added to its buffer */
            if (b->k.n_in == KN_MAX_SLOTS) {
                ok = false;
                break;
            }
            int slot = kn_input(&b->k, grad_dtype(b, t), KN_FULL);
            b->in[slot] = (struct kn_bind){.what = IR_BUF_GRAD, .id = t, .xfer = -1};
            int ld = kn_load(&b->k, slot);
            gy = gy >= 0 ? op2(b, KN_ADD, gy, ld) : ld;
        }
        if (gy < 0)
            continue; /* nothing flows back through it */
        ok = lower_backward(&w, op, gy) && !b->k.full;
        any = true;
    }
    for (int t = 0; t < g->n_tensors; t++) /* reset what this launch touched */
        grad[t] = fwd[t] = -1;
    if (!ok || !any)
        return false;
    struct kn_launch *B = &F->launches[F->n_launches];
    *B = (struct kn_launch){.chunk = L->chunk, .first_op = L->first_op, .n_ops = L->n_ops, .domain = L->domain,
                           .n_in = b->k.n_in, .n_out = b->k.n_out, .when = KN_WHEN_BACKWARD};
    memcpy(B->in, b->in, sizeof B->in);
    memcpy(B->out, b->out, sizeof B->out);
    char name[96];
    snprintf(name, sizeof name, "%s_backward", strchr(F->kernels[L->kernel].name, '_'));
    B->kernel = fused_entry(F, &b->k, name);
    F->n_launches++;
    return true;
}

/* ---- the optimizer step ------------------------------------------------- */

/* AdamW on one parameter, as torch's (optim_adamw in ir/optim.c):
 *   g = grad * arg1 (the clipping coefficient)
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w = w - arg0 (wd w + (m arg2) / (sqrt(v arg3) + eps))   arg0 lr, arg2 1/(1-b1^t), arg3 1/(1-b2^t)
 * With --bf16 the fp32 master weights step and the bf16 parameter takes a
 * rounded copy; the gradient is read in its own type (partition_grad_dtype)
 * and the update computed in fp32. */
static struct kn_kernel adamw(const struct optim_config *o, bool bf16, int grad_dtype)
{
    struct kn_kernel k;
    kn_init(&k);
    int gs = kn_input(&k, grad_dtype, KN_FULL), ms = kn_input(&k, IR_DTYPE_F32, KN_FULL);
    int vs = kn_input(&k, IR_DTYPE_F32, KN_FULL), ws = kn_input(&k, IR_DTYPE_F32, KN_FULL);
    for (int a = 0; a < 4; a++)
        kn_arg(&k);
    int lr = kn_node(&k, KN_ARG, -1, -1, -1, 0), clip = kn_node(&k, KN_ARG, -1, -1, -1, 0);
    int c1 = kn_node(&k, KN_ARG, -1, -1, -1, 0), c2 = kn_node(&k, KN_ARG, -1, -1, -1, 0);
    k.nodes[lr].slot = 0, k.nodes[clip].slot = 1, k.nodes[c1].slot = 2, k.nodes[c2].slot = 3;
    int g = kn_node(&k, KN_MUL, kn_load(&k, gs), clip, -1, 0);
    int m = kn_node(&k, KN_ADD, kn_node(&k, KN_MUL, kn_const(&k, o->beta1), kn_load(&k, ms), -1, 0),
                    kn_node(&k, KN_MUL, kn_const(&k, 1 - o->beta1), g, -1, 0), -1, 0);
    int v = kn_node(&k, KN_ADD, kn_node(&k, KN_MUL, kn_const(&k, o->beta2), kn_load(&k, vs), -1, 0),
                    kn_node(&k, KN_MUL, kn_const(&k, 1 - o->beta2), kn_node(&k, KN_MUL, g, g, -1, 0), -1, 0), -1, 0);
    int w = kn_load(&k, ws);
    int den = kn_node(&k, KN_ADD, kn_node(&k, KN_SQRT, kn_node(&k, KN_MUL, v, c2, -1, 0), -1, -1, 0), kn_const(&k, o->eps), -1, 0);
    int step = kn_node(&k, KN_ADD, kn_node(&k, KN_MUL, kn_const(&k, o->weight_decay), w, -1, 0),
                       kn_node(&k, KN_DIV, kn_node(&k, KN_MUL, m, c1, -1, 0), den, -1, 0), -1, 0);
    int nw = kn_node(&k, KN_SUB, w, kn_node(&k, KN_MUL, lr, step, -1, 0), -1, 0);
    kn_store(&k, kn_output(&k, IR_DTYPE_F32, KN_FULL), m);
    kn_store(&k, kn_output(&k, IR_DTYPE_F32, KN_FULL), v);
    kn_store(&k, kn_output(&k, IR_DTYPE_F32, KN_FULL), nw);
    if (bf16)
        kn_store(&k, kn_output(&k, IR_DTYPE_BF16, KN_FULL), nw);
    return k;
}

/* Per row, the sum of squares of a parameter's gradient: the global
 * norm's first step (the rows' sums then add up, over the ranks too). */
static struct kn_kernel sum_of_squares(int grad_dtype)
{
    struct kn_kernel k;
    kn_init(&k);
    int g = kn_load(&k, kn_input(&k, grad_dtype, KN_FULL));
    kn_store(&k, kn_output(&k, IR_DTYPE_F32, KN_ROW), kn_node(&k, KN_ROWSUM, kn_node(&k, KN_MUL, g, g, -1, 0), -1, -1, 0));
    return k;
}

/* Each stage's parameters: a gradient-norm launch and an AdamW launch each,
 * the state bound by the parameter (the runtime finds it in OPTIMIZER). */
static void optimizer(const struct partition *P, const struct optim_config *o, struct kn_set *F)
{
    const struct ir_graph *g = P->g;
    bool bf16 = P->L->pc.bf16;
    /* Megatron's default: no weight decay on biases and 1-D parameters (norms) */
    struct optim_config flat = *o;
    flat.weight_decay = 0;
    int gd = partition_grad_dtype(P);
    struct kn_kernel step = adamw(o, bf16, gd), step_flat = adamw(&flat, bf16, gd), norm = sum_of_squares(gd);
    int *params = wf_calloc((size_t)g->n_tensors + 1, sizeof *params), *owner = wf_calloc((size_t)g->n_tensors + 1, sizeof *owner);
    int stages = 0;
    for (int c = 0; c < P->n_chunks; c++)
        stages = P->chunks[c].stage + 1 > stages ? P->chunks[c].stage + 1 : stages;
    for (int st = 0; st < stages; st++) {
        int np = partition_stage_params(P, st, params, owner);
        for (int i = 0; i < np; i++) {
            int p = params[i];
            struct kn_launch *N = &F->launches[F->n_launches++];
            *N = (struct kn_launch){.chunk = owner[i], .first_op = F->n_ops, .domain = p, .n_in = 1, .n_out = 1,
                                    .when = KN_WHEN_NORM};
            N->in[0] = (struct kn_bind){.what = IR_BUF_GRAD, .id = p, .xfer = -1};
            N->out[0] = (struct kn_bind){.what = IR_BUF_SUMSQ, .id = p, .xfer = -1};
            N->kernel = fused_entry(F, &norm, "_sum_of_squares");
            struct kn_launch *A = &F->launches[F->n_launches++];
            *A = (struct kn_launch){.chunk = owner[i], .first_op = F->n_ops, .domain = p, .n_in = 4, .n_out = bf16 ? 4 : 3,
                                    .when = KN_WHEN_OPTIMIZER};
            enum ir_buf_what weights = bf16 ? IR_BUF_MASTER : IR_BUF_VALUE;
            enum ir_buf_what state[4] = {IR_BUF_GRAD, IR_BUF_EXP_AVG, IR_BUF_EXP_AVG_SQ, weights};
            for (int k = 0; k < 4; k++)
                A->in[k] = (struct kn_bind){.what = (uint8_t)state[k], .id = p, .xfer = -1};
            for (int k = 0; k < 3; k++) /* in place: the moments and the weights */
                A->out[k] = A->in[k + 1];
            if (bf16)
                A->out[3] = (struct kn_bind){.what = IR_BUF_VALUE, .id = p, .xfer = -1};
            bool decays = g->tensors[p].shape.rank > 1;
            A->kernel = fused_entry(F, decays ? &step : &step_flat, decays ? "_adamw" : "_adamw_no_decay");
        }
    }
    free(params);
    free(owner);
}

void fuse(const struct partition *P, const struct optim_config *opt, struct kn_set *F)
{
    bool forward_only = opt == NULL;
    const struct ir_graph *g = P->g;
    memset(F, 0, sizeof *F);
    /* forward and backward launches (at most four an op, the vocab-parallel
     * loss's, or two per input, a concat's), two per parameter for the step */
    size_t most = 2;
    for (int i = 0; i < g->n_ops; i++)
        most += (size_t)(g->ops[i].n_in > 2 ? 2 * g->ops[i].n_in : 4);
    F->launches = wf_calloc(most + (size_t)g->n_tensors * 2, sizeof *F->launches);
    F->kernels = wf_calloc(most + 4, sizeof *F->kernels);
    F->ops = wf_calloc((size_t)g->n_ops + 1, sizeof *F->ops);
    F->op_launch = wf_calloc((size_t)g->n_ops + 1, sizeof *F->op_launch);
    F->n_graph_ops = g->n_ops;
    struct builder b = {.P = P, .train = !forward_only};
    b.value = wf_calloc((size_t)g->n_tensors + 1, sizeof *b.value);
    b.touched = wf_calloc((size_t)g->n_tensors + 1, sizeof *b.touched);
    for (int t = 0; t < g->n_tensors; t++)
        b.value[t] = -1;
    for (int i = 0; i < g->n_ops; i++)
        F->op_launch[i] = -1;
    bool *needs = wf_calloc((size_t)g->n_tensors + 1, sizeof *needs); /* which tensors get a gradient */
    if (!forward_only && ir_graph_loss(g) >= 0)
        autodiff_needs_grad(g, ir_graph_loss(g), needs);
    for (int c = 0; c < P->n_chunks; c++) {
        int open = -1; /* the group being grown */
        for (int i = 0; i < g->n_ops; i++) {
            if (P->op_chunk[i] != c)
                continue;
            const struct ir_op *o = &g->ops[i];
            bool fusible = fuse_op_fusible(o->kind), joins = false;
            if (open >= 0 && fusible) {
                /* it continues the chain: reads a value of the group, none through a transfer */
                bool chained = false, crossing = false;
                for (int k = 0; k < o->n_in; k++)
                    if (o->in[k] >= 0) {
                        chained |= b.value[o->in[k]] >= 0 && b.k.nodes[b.value[o->in[k]]].op != KN_LOAD;
                        crossing |= transfer_of(P, i, o->in[k]) >= 0;
                    }
                if (chained && !crossing) {
                    struct kn_kernel keep = b.k;
                    struct kn_bind keep_in[KN_MAX_SLOTS], keep_out[KN_MAX_SLOTS];
                    memcpy(keep_in, b.in, sizeof keep_in);
                    memcpy(keep_out, b.out, sizeof keep_out);
                    int keep_streams = b.n_streams, keep_touched = b.n_touched;
                    joins = lower(&b, i);
                    if (!joins) { /* undo: the op starts a group of its own */
                        b.k = keep;
                        memcpy(b.in, keep_in, sizeof keep_in);
                        memcpy(b.out, keep_out, sizeof keep_out);
                        b.n_streams = keep_streams;
                        while (b.n_touched > keep_touched)
                            b.value[b.touched[--b.n_touched]] = -1;
                    }
                }
            }
            if (joins) {
                F->ops[F->n_ops++] = i;
                F->launches[open].n_ops++;
                F->op_launch[i] = open;
                continue;
            }
            if (open >= 0) {
                finish(&b, F, open, F->op_launch);
                open = -1;
            }
            if (o->kind == IR_OP_ATTENTION)
                attention(P, i, !forward_only, needs, F);
            if (o->kind == IR_OP_CROSS_ENTROPY)
                cross_entropy(P, i, F);
            if (o->kind == IR_OP_ROUTER)
                router(P, i, F);
            if (o->kind == IR_OP_CONCAT)
                concat(P, i, false, needs, F);
            if (o->kind == IR_OP_DISPATCH)
                dispatch(P, i, false, needs, F);
            if (o->kind == IR_OP_COMBINE)
                combine(P, i, false, needs, F);
            if (o->kind == IR_OP_RELPOS_BIAS)
                relpos_bias(P, i, false, needs, F);
            if (!fusible)
                continue;
            start(&b, c, i);
            if (!lower(&b, i)) { /* an op the domain cannot express: left unfused */
                for (int k = 0; k < b.n_touched; k++)
                    b.value[b.touched[k]] = -1;
                b.n_touched = 0;
                continue;
            }
            open = F->n_launches++;
            F->launches[open] = (struct kn_launch){.chunk = c, .first_op = F->n_ops, .n_ops = 1, .domain = o->out[0]};
            F->ops[F->n_ops++] = i;
            F->op_launch[i] = open;
        }
        if (open >= 0)
            finish(&b, F, open, F->op_launch);
    }
    if (!forward_only) { /* each fused forward launch's backward, last launch first; then the step */
        int *grad = wf_calloc((size_t)g->n_tensors + 1, sizeof *grad), *fwd = wf_calloc((size_t)g->n_tensors + 1, sizeof *fwd);
        for (int t = 0; t < g->n_tensors; t++)
            grad[t] = fwd[t] = -1;
        for (int l = F->n_launches - 1; l >= 0; l--) {
            const struct kn_launch *L = &F->launches[l];
            int op = F->ops[L->first_op];
            if (L->when != KN_WHEN_FORWARD || F->kernels[L->kernel].kind != KN_KIND_FUSED)
                continue;
            if (g->ops[op].kind == IR_OP_CROSS_ENTROPY) {
                if (F->op_launch[op] == l && needs[g->ops[op].in[0]])
                    cross_entropy_backward(P, op, F);
            } else if (g->ops[op].kind == IR_OP_CONCAT) {
                if (F->op_launch[op] == l)
                    concat(P, op, true, needs, F);
            } else if (g->ops[op].kind == IR_OP_DISPATCH) {
                dispatch(P, op, true, needs, F);
            } else if (g->ops[op].kind == IR_OP_COMBINE) {
                combine(P, op, true, needs, F);
            } else if (g->ops[op].kind == IR_OP_RELPOS_BIAS) {
                relpos_bias(P, op, true, needs, F);
            } else if (g->ops[op].kind == IR_OP_ROUTER) {
                if (needs[g->ops[op].in[0]] && needs[g->ops[op].out[0]])
                    router_backward(P, op, F);
            } else
                backward(P, F, l, needs, &b, grad, fwd);
        }
        free(grad);
        free(fwd);
        optimizer(P, opt, F);
    }
    free(b.value);
    free(b.touched);
    free(needs);
}

/* The shard a bind's tensor has where the launch reads it (an input a
 * transfer brings: as the transfer leaves it) or writes it (an output a
 * transfer takes: as the transfer takes it). */
/* How a slot's tensor is held where the group reads or writes it: through
 * its transfer; a value the group makes, as made; a gradient, as the
 * group's reader reads the value (the readers' sum before conversion), or
 * as the tensor is made (its gradient's buffer); else as held. */
static struct ir_shard bound_shard(const struct partition *P, const struct kn_set *F, const struct kn_launch *G,
                                   const struct kn_bind *b, bool out)
{
    if (b->xfer >= 0)
        return out ? P->xfers[b->xfer].before : P->xfers[b->xfer].after;
    if (b->what == IR_BUF_GRAD) {
        for (int i = 0; i < G->n_ops; i++) {
            int via = transfer_of(P, F->ops[G->first_op + i], b->id);
            if (via >= 0)
                return P->xfers[via].after;
        }
        return partition_made_shard(P, b->id);
    }
    return out ? partition_made_shard(P, b->id) : P->shard[b->id];
}

/* The shape a slot's tensor has where the group reads or writes it. */
static struct ir_shape bound_shape(const struct partition *P, const struct kn_set *F, const struct kn_launch *G,
                                   const struct kn_bind *b, bool out)
{
    const struct ir_tensor *x = &P->g->tensors[b->id];
    struct ir_shard sh = bound_shard(P, F, G, b, out);
    return partition_local_shape(P, P->chunks[G->chunk].part, &x->shape, &sh);
}

/* A concat launch's ROWMAP view (kernel.h): where the rows of the input it
 * moves (sizes[0]) lie in the output, on one rank.  The joined axis is held
 * whole; the axes between it and the last make M rows per step along it. */
static void concat_view(const struct partition *P, const struct kn_set *F, const struct kn_launch *G, int op, int64_t *v)
{
    const struct ir_graph *g = P->g;
    const struct ir_op *o = &g->ops[op];
    enum ir_part part = P->chunks[G->chunk].part;
    struct ir_shape out = partition_local_shape(P, part, &g->tensors[o->out[0]].shape, &P->shard[o->out[0]]);
    int ax = (int)ir_op_int(o, IR_ATTR_AXIS), r = out.rank;
    ax = ax < 0 ? ax + r : ax;
    int64_t at = 0, len = 0, M = 1, cols = r ? out.ax[r - 1].size : 1;
    for (int i = 0; i <= G->sizes[0] && i < o->n_in; i++) {
        struct kn_bind b = {.what = IR_BUF_VALUE, .id = o->in[i], .xfer = transfer_of(P, op, o->in[i])};
        struct ir_shape in = bound_shape(P, F, G, &b, false);
        len = in.ax[ax].size;
        at += i < G->sizes[0] ? len : 0;
    }
    for (int k = ax + 1; k < r - 1; k++)
        M *= out.ax[k].size;
    if (ax == r - 1) { /* side by side in each row */
        v[0] = 1, v[1] = 1, v[2] = 0, v[3] = cols, v[4] = at;
    } else {
        v[0] = len * M, v[1] = out.ax[ax].size * M, v[2] = at * M, v[3] = cols, v[4] = 0;
    }
}

void fuse_launch_args(const struct partition *P, const struct kn_set *F, int g, int rank, struct kn_args *a)
{
    struct ir_launch t;
    fuse_launch_template(P, F, g, &t);
    ir_action_launch_args(&t, &P->L->pc, &P->L->ranks[rank], a);
}

void fuse_launch_template(const struct partition *P, const struct kn_set *F, int g, struct ir_launch *tmpl)
{
    const struct kn_launch *G = &F->launches[g];
    memset(tmpl, 0, sizeof *tmpl);
    tmpl->launch = g;
    struct kn_args *a = &tmpl->args;
    if (F->kernels[G->kernel].kind != KN_KIND_FUSED)
        return; /* a template kernel's sizes are the launch's own (kn_launch.sizes) */
    const struct kn_kernel *k = &F->kernels[G->kernel].k;
    const struct ir_tensor *d = &P->g->tensors[G->domain];
    struct ir_shard dshard = partition_made_shard(P, G->domain); /* as made, or as the launch reads it after a transfer, or
                                                                     * writes it before one */
    const struct ir_shard *ds = &dshard;
    for (int io = 0; io < 2; io++)
        for (int i = 0; i < (io ? G->n_out : G->n_in); i++) {
            const struct kn_bind *b = io ? &G->out[i] : &G->in[i];
            if (b->id == G->domain && ((b->what == IR_BUF_VALUE && b->xfer >= 0) || b->what == IR_BUF_GRAD) &&
                (io ? k->out[i] : k->in[i]).access == KN_FULL)
                dshard = bound_shard(P, F, G, b, io);
        }
    enum ir_part part = P->chunks[G->chunk].part;
    struct ir_shape s = partition_local_shape(P, part, &d->shape, ds), whole = d->shape;
    for (int i = 0; i < whole.rank; i++) /* an axis stacked from a group's ranks: the group's rows, one rank's after another */
        whole.ax[i].size *= partition_degrees(P, part, ds->stack[i]);
    const struct ir_shard none = {0};
    if (G->sizes[1] > 0) { /* a domain that is no tensor's: rows x cols, whole on every rank */
        s = (struct ir_shape){.rank = 2, .ax = {{.size = G->sizes[1]}, {.size = G->sizes[2]}}};
        whole = s, ds = &none;
    }
    memset(a, 0, sizeof *a);
    a->cols = s.rank ? s.ax[s.rank - 1].size : 1;
    a->rows = a->cols ? ir_shape_numel(&s) / a->cols : 0;
    for (int i = 0; i < G->n_in; i++) {
        if (G->in[i].what != IR_BUF_VALUE && G->in[i].what != IR_BUF_GRAD)
            continue;
        struct ir_shape t = bound_shape(P, F, G, &G->in[i], false);
        int64_t n = ir_shape_numel(&t);
        if (k->in[i].access == KN_FULL && n != a->rows * a->cols)
            a->mod[i] = a->cols ? n / a->cols : 0;
        else if (k->in[i].access == KN_ROW_DIV)
            a->mod[i] = n ? a->rows * a->cols / n : 0;
    }
    for (int i = 0; i < G->n_out; i++) { /* a broadcast input's gradient sums the rows that share an element */
        if ((G->out[i].what != IR_BUF_VALUE && G->out[i].what != IR_BUF_GRAD) || k->out[i].access != KN_FULL)
            continue;
        struct ir_shape t = bound_shape(P, F, G, &G->out[i], true);
        int64_t n = ir_shape_numel(&t);
        if (n != a->rows * a->cols)
            a->omod[i] = a->cols ? n / a->cols : 0;
    }
    /* the element's place in the whole tensor: a rank's offset along each split axis (ir_action_launch_args) */
    a->rank = s.rank ? s.rank : 1;
    int64_t stride = 1;
    for (int i = s.rank - 1; i >= 0; i--) {
        tmpl->off_pdim[i] = ds->split[i];
        a->dim[i] = s.ax[i].size;
        a->stride[i] = stride;
        stride *= whole.ax[i].size;
    }
    if (!s.rank)
        a->dim[0] = a->stride[0] = 1;
    memcpy(a->stream, G->streams, sizeof a->stream);
    for (int io = 0; io < 2; io++) /* views of a fused QKV: their strides; of a table: the rows this rank holds */
        for (int i = 0; i < (io ? G->n_out : G->n_in); i++) {
            const struct kn_bind *b = io ? &G->out[i] : &G->in[i];
            int64_t *v = io ? a->vout[i] : a->vin[i];
            enum kn_access access = (enum kn_access)(io ? k->out[i] : k->in[i]).access;
            if (access == KN_HEADS)
                attention_view(P, G->chunk, b->view, -1, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]);
            if (access == KN_ROWMAP)
                concat_view(P, F, G, F->ops[G->first_op], v);
            if (access == KN_PATCHES) { /* (n, wp, p, C, H, W) of the image as this rank holds it */
                const struct ir_op *o = &P->g->ops[F->ops[G->first_op]];
                struct ir_shape img = bound_shape(P, F, G, b, io);
                int64_t p = ir_op_int(o, IR_ATTR_PATCH);
                v[2] = p, v[3] = img.ax[1].size, v[4] = img.ax[2].size, v[5] = img.ax[3].size;
                v[1] = p ? v[5] / p : 0, v[0] = p ? (v[4] / p) * v[1] : 0;
            }
            if (access == KN_ROWVEC && b->what == IR_BUF_ROUTES) { /* an entry's k choices */
                int64_t entries, experts, capacity;
                fuse_route_sizes(P, b->id, &entries, &v[0], &experts, &capacity);
            } else if (access == KN_ROWVEC) { /* the vector's length: the last axis of its tensor */
                struct ir_shape t = bound_shape(P, F, G, b, io);
                v[0] = t.rank ? t.ax[t.rank - 1].size : 1;
            }
            if (access == KN_GATHER) { /* a table's rows: all its axes but the last; a vocabulary shard's first row */
                struct ir_shape t = bound_shape(P, F, G, b, io);
                v[1] = t.rank && t.ax[t.rank - 1].size ? ir_shape_numel(&t) / t.ax[t.rank - 1].size : 0;
                tmpl->gather_pdim[io][i] = bound_shard(P, F, G, b, io).split[0]; /* v[0]: the rank's first row */
            }
            if (access == KN_PICK) { /* every element of its tensor */
                struct ir_shape t = bound_shape(P, F, G, b, io);
                v[0] = 0, v[1] = ir_shape_numel(&t);
            }
        }
}

int64_t fuse_launch_bytes(const struct partition *P, const struct kn_set *F, int l)
{
    const struct kn_launch *L = &F->launches[l];
    const struct kn_entry *e = &F->kernels[L->kernel];
    if (e->kind == KN_KIND_ATTENTION) { /* q, k, v, out, bias read or written once, the row statistics */
        struct kn_attn_args x;
        kn_launch_attn_args(L, &x);
        int size = e->attn.dtype == IR_DTYPE_BF16 ? 2 : 4;
        int64_t qo = x.B * x.Hq * x.Sq * (e->attn.D + e->attn.Dv), kv = x.B * x.Hk * x.Sk * (e->attn.D + e->attn.Dv);
        int64_t bias = e->attn.bias ? (x.bias_sb ? x.B : 1) * x.Hq * x.Sq * x.Sk : 0;
        return (qo + kv + bias) * size + x.B * x.Hq * x.Sq * 8;
    }
    if (e->kind == KN_KIND_ROUTE) { /* the choices read, the routes and the fills written */
        struct kn_route_args x;
        kn_launch_route_args(L, &x);
        return (2 * x.entries + x.experts * x.capacity) * 4;
    }
    const struct kn_kernel *k = &F->kernels[L->kernel].k;
    struct kn_args a;
    fuse_launch_args(P, F, l, 0, &a);
    int64_t bytes = 0;
    for (int io = 0; io < 2 && e->kind == KN_KIND_FUSED; io++)
        for (int i = 0; i < (io ? L->n_out : L->n_in); i++) {
            const struct kn_bind *b = io ? &L->out[i] : &L->in[i];
            const struct kn_slot *s = io ? &k->out[i] : &k->in[i];
            int size = s->dtype == KN_DTYPE_U8 ? 1 : ir_dtype_bytes((enum ir_dtype)s->dtype);
            if (b->what == IR_BUF_MASK || s->access == KN_HEADS || s->access == KN_GATHER) /* the rows read, not the whole buffer */
                bytes += a.rows * a.cols * size;
            else if (s->access == KN_ROWSTATS)
                bytes += a.rows * 2 * size;
            else if (s->access == KN_ROW)
                bytes += a.rows * size;
            else if (s->access == KN_ROWVEC)
                bytes += a.rows * (io ? a.vout[i][0] : a.vin[i][0]) * size;
            else {
                struct ir_shape t = bound_shape(P, F, L, b, io);
                bytes += ir_shape_numel(&t) * size;
            }
        }
    return bytes;
}

bool fuse_matmul_folds(const struct partition *P, int op)
{
    const struct ir_op *o = &P->g->ops[op];
    const struct ir_tensor *c = &P->g->tensors[o->out[0]];
    struct ir_shard made = partition_made_shard(P, o->out[0]);
    struct ir_shape A = partition_read_shape(P, op, 0), B = partition_read_shape(P, op, 1),
                    C = partition_local_shape(P, c->part, &c->shape, &made);
    int64_t na = 1, nb = 1, nc = 1;
    for (int i = 0; i + 2 < A.rank; i++)
        na *= A.ax[i].size;
    for (int i = 0; i + 2 < B.rank; i++)
        nb *= B.ax[i].size;
    for (int i = 0; i + 2 < C.rank; i++)
        nc *= C.ax[i].size;
    return nb == 1 && na == nc && !ir_op_int(o, IR_ATTR_TRANSPOSE_A);
}

/* The slot of L's (io: outputs, else inputs) that binds tensor t's value, or -1. */
static int bound_slot(const struct kn_launch *L, bool io, int t)
{
    for (int i = 0; i < (io ? L->n_out : L->n_in); i++) {
        const struct kn_bind *b = io ? &L->out[i] : &L->in[i];
        if (b->what == IR_BUF_VALUE && b->id == t && b->xfer < 0)
            return i;
    }
    return -1;
}

/* Whether only `reader` reads tensor t, as its producer made it, and
 * nothing keeps it for the backward, sends it or returns it. */
static bool read_once(const struct partition *P, int t, int reader)
{
    const struct ir_graph *G = P->g;
    for (int i = 0; i < G->n_outputs; i++)
        if (G->outputs[i] == t)
            return false;
    for (int x = 0; x < P->n_xfers; x++)
        if (P->xfers[x].tensor == t && !P->xfers[x].grad)
            return false;
    for (int i = 0; i < G->n_ops; i++)
        for (int k = 0; k < G->ops[i].n_in; k++)
            if (G->ops[i].in[k] == t && (i != reader || ir_op_keeps(&G->ops[i], t) || partition_reads_via(P, i, k) >= 0))
                return false;
    return !ir_op_keeps(&G->ops[G->tensors[t].producer], t);
}

int fuse_gemm_epilogue(const struct partition *P, const struct kn_set *F, int l, struct fuse_epilogue *ep)
{
    const struct kn_launch *L = &F->launches[l];
    const struct kn_entry *e = &F->kernels[L->kernel];
    const struct ir_graph *G = P->g;
    *ep = (struct fuse_epilogue){.kind = IR_EPI_NONE, .matmul = -1};
    if (L->when != KN_WHEN_FORWARD || e->kind != KN_KIND_FUSED || L->n_ops < 1 || L->n_ops > 2 || L->streams[0])
        return IR_EPI_NONE;
    const struct ir_op *add = &G->ops[F->ops[L->first_op]], *gelu = L->n_ops > 1 ? &G->ops[F->ops[L->first_op + 1]] : NULL;
    if ((getenv("EPI_ONLY_BIAS") && gelu) || add->kind != IR_OP_BIAS_ADD || (gelu && (gelu->kind != IR_OP_GELU || !ir_op_int(gelu, IR_ATTR_TANH) || gelu->in[0] != add->out[0])))
        return IR_EPI_NONE;
    int x = add->in[0], p = G->tensors[x].producer;
    if (p < 0 || G->ops[p].kind != IR_OP_MATMUL || P->op_chunk[p] != L->chunk || !fuse_matmul_folds(P, p) ||
        !read_once(P, x, F->ops[L->first_op]))
        return IR_EPI_NONE;
    /* x and the bias in, the result (and with GELU, maybe x + bias) out, all of one type: the GEMM's */
    int xs = bound_slot(L, false, x), bs = bound_slot(L, false, add->in[1]), out = gelu ? gelu->out[0] : add->out[0];
    int os = bound_slot(L, true, out), aux = gelu ? bound_slot(L, true, add->out[0]) : -1;
    if (L->n_in != 2 || xs < 0 || bs < 0 || e->k.in[bs].access != KN_COLUMN || e->k.in[xs].access != KN_FULL || os < 0 ||
        L->n_out != 1 + (aux >= 0) || e->k.out[os].access != KN_FULL || (aux >= 0 && e->k.out[aux].access != KN_FULL))
        return IR_EPI_NONE;
    for (int i = 0; i < L->n_in + L->n_out; i++)
        if ((i < L->n_in ? e->k.in[i] : e->k.out[i - L->n_in]).dtype != e->k.in[xs].dtype)
            return IR_EPI_NONE;
    *ep = (struct fuse_epilogue){.kind = !gelu ? IR_EPI_BIAS : aux >= 0 ? IR_EPI_GELU_AUX_BIAS : IR_EPI_GELU_BIAS,
                                 .matmul = p, .x_slot = xs, .bias_slot = bs, .out_slot = os, .aux_slot = aux};
    return ep->kind;
}

int fuse_gemm_epilogues(const struct partition *P, struct kn_set *F)
{
    int n = 0;
    struct fuse_epilogue ep;
    for (int l = 0; l < F->n_launches; l++)
        if (fuse_gemm_epilogue(P, F, l, &ep) != IR_EPI_NONE)
            F->launches[l].epilogue = 1, n++;
    return n;
}

void fuse_leads(const struct partition *P, const struct kn_set *K, int *lead, int *epilogue)
{
    for (int i = 0; i < P->g->n_ops; i++) {
        lead[i] = i;
        if (epilogue)
            epilogue[i] = -1;
    }
    for (int l = 0; K && l < K->n_launches; l++) {
        const struct kn_launch *L = &K->launches[l];
        int first = K->ops[L->first_op];
        for (int i = 1; i < L->n_ops; i++)
            lead[K->ops[L->first_op + i]] = first;
        if (L->epilogue && epilogue)
            epilogue[P->g->tensors[P->g->ops[first].in[0]].producer] = l;
    }
}
