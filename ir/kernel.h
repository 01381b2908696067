/* kernel.h: a fused kernel, described once; the CUDA C and the C emitters
 * (compiler/emit_kernel.c) both read this description.
 *
 * A kernel runs over a domain of rows x cols (a tensor's leading axes
 * flattened, and its last axis).  Its body is a list of nodes in SSA form:
 * each node's value is either per element (it reads a per-element load, the
 * column, or another per-element value) or per row (loads of a row's
 * value, reductions, constants, and arithmetic on those).  A reduction
 * (ROWSUM, ROWMAX) turns a per-element value into a per-row one, so a
 * kernel with reductions runs in phases: each pass over a row computes what
 * the next reduction needs, the last pass stores.  Sizes are arguments, not
 * part of the kernel, so one kernel serves every layer that has the same
 * structure.
 *
 *   struct kn_kernel k;  kn_init(&k);
 *   int x = kn_load(&k, kn_input(&k, IR_DTYPE_BF16, KN_FULL));
 *   int y = kn_node(&k, KN_MUL, x, x, -1, 0);
 *   kn_store(&k, kn_output(&k, IR_DTYPE_F32, KN_FULL), y);
 *   kn_hash(&k)        // identical structure, identical hash */
#ifndef WEFT_KERNEL_H
#define WEFT_KERNEL_H

#include <stdbool.h>
#include <stdint.h>

#include "ir.h"
#include "memplan.h"

#define KN_OPS(X)                                                              \
    /* leaves */                                                               \
    X(LOAD, "load", 0)        /* slot: an input, read as its access says */    \
    X(CONST, "const", 0)      /* imm */                                        \
    X(ARG, "arg", 0)          /* slot: a float argument of the launch */       \
    X(COL, "col", 0)          /* the column, as a float */                     \
    X(GCOL, "gcol", 0)        /* the column's index along the whole tensor's last axis (a vocab shard's offset added) */ \
    X(COLS, "cols", 0)        /* the number of columns, as a float */          \
    X(ROWPOS, "rowpos", 0)    /* the row's position in its sequence (see kn_index) */ \
    X(COORD, "coord", 0)      /* the row's local coordinate along the axis imm places inward of the last row axis (0: \
                                 that axis, 1: the one before), as a float */ \
    X(KEEP, "keep", 0)        /* 1 if the element's draw (kn_uniform of its index in the whole tensor) is at least imm, else 0: dropout's keep with p = imm; slot: the stream */ \
    /* arithmetic */                                                           \
    X(NEG, "neg", 1) X(EXP, "exp", 1) X(LOG, "log", 1) X(TANH, "tanh", 1)      \
    X(ERF, "erf", 1) X(RSQRT, "rsqrt", 1) X(RECIP, "recip", 1) X(SQRT, "sqrt", 1) \
    X(COS, "cos", 1) X(SIN, "sin", 1) X(FLOOR, "floor", 1)                     \
    X(ADD, "add", 2) X(SUB, "sub", 2) X(MUL, "mul", 2) X(DIV, "div", 2)        \
    X(MAX, "max", 2) X(LT, "lt", 2) X(LE, "le", 2) X(EQ, "eq", 2)              \
    X(SELECT, "select", 3)    /* a != 0 ? b : c */                             \
    /* reductions over a row */                                                \
    X(ROWSUM, "rowsum", 1) X(ROWMAX, "rowmax", 1)                              \
    /* effects */                                                              \
    X(STORE, "store", 1)      /* slot: an output; imm: the component of a ROWSTATS output */ \
    X(ACCUM, "accum", 1)      /* adds into an output (a gradient): FULL element by element, COLUMN summed over the rows; \
                                 imm: the component of a ROWVEC output */

enum kn_op {
#define X(id, name, n) KN_##id,
    KN_OPS(X)
#undef X
    KN_OP_COUNT
};

/* How a slot is indexed, for row r and column c of a rows x cols domain. */
#define KN_ACCESSES(X)                                                         \
    X(FULL, "full")         /* (r mod rows_mod) * cols + c: rows_mod 0 is no modulus (broadcast over leading axes) */ \
    X(COLUMN, "column")     /* c: a vector along the last axis (bias, gamma) */ \
    X(ROW, "row")           /* r: one value per row (a label, a row's largest logit) */ \
    X(ROW_DIV, "row_div")   /* (r / rows_div) * cols + c: one row per batch (a padding mask) */ \
    X(ROWSTATS, "rowstats") /* r * 2 + component: two floats per row */       \
    X(ROWVEC, "rowvec")     /* r * v[0] + component: a short vector a row (a router's k choices), v the slot's view */ \
    X(ROWMAP, "rowmap")     /* ((r / v[0]) * v[1] + v[2] + r % v[0]) * v[3] + v[4] + c: row r's place in a larger \
                               tensor (a part of a concat), v the slot's view */ \
    X(HEADS, "heads")       /* a view of a fused QKV: the domain is (B, H, S) rows of D, row r's (b, h, s) at \
                               v[0] + b v[1] + (h / v[4]) v[5] + (h % v[4]) v[2] + s v[3], v the slot's view */ \
    X(GATHER, "gather")     /* (i - v[0]) * cols + c, i the row's index (an id: the per-row value that is the LOAD's \
                               operand a, the ACCUM's b); a row whose i is outside [v[0], v[0] + v[1]) reads 0 and \
                               adds nothing (a table's shard), v the slot's view */ \
    X(PICK, "pick")         /* i - v[0], i the LOAD's operand a (per row or per element): one element of a flat \
                               vector (a router's weight by (token, choice)); 0 where i is outside [v[0], v[0] + v[1]), \
                               v the slot's view; inputs only */ \
    X(PATCHES, "patches")   /* an image (B, C, H, W) read as patchify's (B, n, C p p): row r = (b, i), column c = \
                               (ch, di, dj) at ((b C + ch) H + (i / wp) p + di) W + (i % wp) p + dj, \
                               v = (n, wp, p, C, H, W) the slot's view; inputs only */ \
    X(SCALAR, "scalar")     /* 0 */

enum kn_access {
#define X(id, name) KN_##id,
    KN_ACCESSES(X)
#undef X
    KN_ACCESS_COUNT
};

/* U8: a dropout mask, one byte per element. */
#define KN_DTYPE_U8 IR_DTYPE_COUNT

#define KN_MAX_NODES 128
#define KN_MAX_SLOTS 8

struct kn_node {
    uint8_t op;      /* enum kn_op */
    uint8_t slot;    /* LOAD, STORE: the input or output; ARG, KEEP: the argument */
    int16_t a, b, c; /* operands: earlier nodes; -1 none */
    double imm;      /* CONST's value; KEEP's p; LOAD's, STORE's component of ROWSTATS; LOAD's 1:
                      * the rotate-half partner column (c + cols/2, or c - cols/2) */
};

struct kn_slot {
    uint8_t dtype;   /* enum ir_dtype, or KN_DTYPE_U8 */
    uint8_t access;  /* enum kn_access */
};

struct kn_kernel {
    int n_in, n_out, n_args;
    struct kn_slot in[KN_MAX_SLOTS], out[KN_MAX_SLOTS];
    int n_nodes;
    struct kn_node nodes[KN_MAX_NODES];
    bool full;       /* too many nodes or slots: the builder refused one */
};

const char *kn_op_name(enum kn_op op);
const char *kn_access_name(enum kn_access a);
const char *kn_dtype_name(int dtype);
int kn_op_arity(enum kn_op op);

void kn_init(struct kn_kernel *k);
int kn_input(struct kn_kernel *k, int dtype, enum kn_access access);
int kn_output(struct kn_kernel *k, int dtype, enum kn_access access);
int kn_arg(struct kn_kernel *k); /* a float argument: its slot (below KN_ARG_EVAL) */
/* The float argument every launch's arg[7] is: 1 in validation's forward
 * (weft run --eval-interval), where dropout keeps every element unscaled;
 * 0 in training.  kn_arg hands out the slots below it. */
#define KN_ARG_EVAL 7
/* A node; returns its index (-1 once full). */
int kn_node(struct kn_kernel *k, enum kn_op op, int a, int b, int c, double imm);
int kn_load(struct kn_kernel *k, int slot);
int kn_const(struct kn_kernel *k, double v);
void kn_store(struct kn_kernel *k, int slot, int value);
void kn_store_component(struct kn_kernel *k, int slot, int value, int component);
void kn_accum(struct kn_kernel *k, int slot, int value);
void kn_accum_component(struct kn_kernel *k, int slot, int value, int component); /* into a ROWVEC output's component */
/* A GATHER slot's load, and an add into one, at the row whose index is node `index`. */
int kn_load_at(struct kn_kernel *k, int slot, int index);
void kn_accum_at(struct kn_kernel *k, int slot, int value, int index);
/* The operands node i takes: its op's arity, one more for a GATHER slot's index. */
int kn_operands(const struct kn_kernel *k, int i);
/* Whether it adds into a GATHER output (an embedding table's gradient).
 * Such a kernel does nothing else (kn_valid), so on the GPU a block may
 * own the table rows equal to blockIdx.x modulo gridDim.x and add theirs
 * in row order: deterministic, no atomics. */
bool kn_has_gather_accum(const struct kn_kernel *k);
/* Whether a description (one read from a plan) is one the emitters take:
 * operands earlier nodes, slots in range, the rules above kept. */
bool kn_valid(const struct kn_kernel *k);
/* Whether the kernel adds into a COLUMN output (a sum over rows: a bias's
 * or a norm's weight gradient). */
bool kn_has_column_sum(const struct kn_kernel *k);
/* Whether it adds into a FULL output that its launch may give a modulus
 * (rows summed modulo: a position table's gradient).  On the GPU such a
 * kernel runs with gridDim.x equal to the modulus, so the rows that meet
 * in one element belong to one block: no races, a fixed order. */
bool kn_has_full_accum(const struct kn_kernel *k);

/* Per node: whether its value varies along the row (else one per row). */
void kn_per_element(const struct kn_kernel *k, bool *out);
/* Per node: the pass over a row that computes it (0 for the first); a
 * per-row node's pass is the one after which it is known.  Returns the
 * number of passes. */
int kn_phases(const struct kn_kernel *k, int *phase);
bool kn_has_reduction(const struct kn_kernel *k);
/* The structure's digest: equal kernels, equal digests, whatever their
 * sizes or the model they came from. */
uint64_t kn_hash(const struct kn_kernel *k);
bool kn_equal(const struct kn_kernel *a, const struct kn_kernel *b);

/* A kernel compiled for a GPU: a cubin for sm_<arch>, or PTX for compute_<arch>. */
struct kn_binary {
    int arch;
    bool ptx;
    size_t size;
    void *bytes;
};

#define KN_MAX_BINS 8

/* When a launch runs: in its chunk's forward step, in its backward step
 * (the backward of its ops, in reverse), at the optimizer step (one per
 * parameter: AdamW; and the sums of squares for the global gradient norm,
 * before it). */
enum kn_when { KN_WHEN_FORWARD, KN_WHEN_BACKWARD, KN_WHEN_OPTIMIZER, KN_WHEN_NORM, KN_WHEN_COUNT };

/* What kind of kernel an entry is: a fused description (struct kn_kernel),
 * attention (struct kn_attn; compiler/emit_attention.h writes it), or the
 * MoE routing (compiler/emit_route.h: a scan over tokens, which no row of
 * a fused kernel can express; it has no configuration). */
enum kn_kind { KN_KIND_FUSED, KN_KIND_ATTENTION, KN_KIND_ROUTE, KN_KIND_COUNT };

struct kn_attn {
    int dtype;       /* IR_DTYPE_F32 or IR_DTYPE_BF16: q, k, v, out, dout, and the gradients */
    int D, Dv;       /* head dims of q/k and of v */
    bool causal, bias, bias_grad, backward;
};

/* A template launch's integers (struct kn_attn_args's B .. k_pos0, or
 * struct kn_route_args' entries .. capacity, in order), the same on every
 * rank of its role. */
#define KN_SIZES 28

/* The fusion pass's result, as a plan holds it: every launch of a step's
 * forward, what each binds, and the distinct kernels they run. */
/* What a slot binds: a tensor, or an op's saved mask or row statistics. */
struct kn_bind {
    int32_t view;          /* a HEADS slot's: the view (a split_heads output) through which id's buffer is read */
    uint8_t what; /* enum ir_buf_what (memplan.h): VALUE, MASK, ROWSTATS */
    int id;       /* tensor, or op */
    int xfer;     /* an input that a transfer brings: the transfer (its result is read); -1 */
};

struct kn_launch {
    int kernel;
    int chunk;
    int first_op, n_ops;   /* ops[first_op .. first_op + n_ops) of fusion.ops */
    int domain;            /* the tensor whose local shape is rows x cols */
    struct kn_bind in[KN_MAX_SLOTS], out[KN_MAX_SLOTS];
    int n_in, n_out;
    uint64_t streams[4];   /* dropout streams, by KEEP's slot */
    int64_t sizes[KN_SIZES]; /* a template kernel's own sizes: attention's (kn_attn_args' integers: strides too, as q, k,
                              * v may be views), the routing's (kn_route_args'); a fused kernel's: concat: [0] the input
                              * it moves; [1], [2]: rows and columns of a domain that is no tensor's (0: the domain
                              * tensor's; relpos_bias's backward: a row per table element, a column per (query, key)) */
    uint8_t when;          /* enum kn_when */
    uint8_t epilogue;      /* a forward launch run as the epilogue of the GEMM that makes its first op's input 0
                            * (fuse_gemm_epilogues), not on its own */
};

struct kn_entry {
    uint8_t kind;          /* enum kn_kind */
    struct kn_kernel k;    /* KN_KIND_FUSED */
    struct kn_attn attn;   /* KN_KIND_ATTENTION */
    uint64_t hash;
    char name[96];         /* k<index>_<its first launch's ops> */
    int uses;              /* launches of it */
    int n_bins;
    struct kn_binary bins[KN_MAX_BINS]; /* cubins per architecture, and PTX */
};

struct kn_set {
    int n_launches, n_kernels, n_ops;
    struct kn_launch *launches; /* in op order within each chunk */
    struct kn_entry *kernels;   /* distinct kernels */
    int *ops;              /* the ops of every launch, launch after launch */
    int n_graph_ops;
    int *op_launch;        /* per op of the graph: its launch, or -1 (not fused: a GEMM, a view, ...) */
    void *cpu_object;      /* the CPU backend's shared object: every kernel, compiled */
    size_t cpu_size;
};

/* An entry's digest: its description's (kn_hash), or its kind's and configuration's. */
uint64_t kn_entry_hash(const struct kn_entry *e);

void kn_set_free(struct kn_set *s);
/* "52 forward, 49 backward, 150 optimizer launches" (a step's, one micro-batch, all stages), into buf; a GEMM's
 * epilogues are counted apart: "40 forward (and 4 in GEMMs' epilogues), ...". */
const char *kn_set_launches(const struct kn_set *s, char *buf, size_t n);

struct plan;
struct plan_writer;
/* The plan's "kernels" section: descriptions, binaries, launches, the CPU object. */
void kn_set_write(struct plan_writer *w, const struct kn_set *s);
int kn_set_read(struct plan *p, struct kn_set *s, struct diag *d);

/* What a launch passes: the same struct in the generated C and CUDA C (the
 * emitters print KN_ARGS_FIELDS), by pointer on the CPU and by value on
 * the GPU.  The element at row r, column c of the domain has coordinates
 * (r split over dim[0..rank-2], c) in its local tensor; its index in the
 * whole tensor is sum((coord[i] + off[i]) * stride[i]).  ROWPOS is
 * coord[rank-2] + off[rank-2] (a query's position, for causal masks). */
#define KN_MAX_RANK 6
#define KN_ARGS_FIELDS                                                         \
    int64_t rows, cols;                                                        \
    int64_t mod[KN_SLOTS_]; /* per input: FULL's rows_mod, ROW_DIV's rows_div */ \
    int64_t omod[KN_SLOTS_]; /* per output: FULL's rows_mod (an ACCUM summing rows r = i mod m) */ \
    int64_t rank, dim[KN_RANK_], off[KN_RANK_], stride[KN_RANK_];             \
    uint64_t seed, stream[4];                                                  \
    float arg[8];                                                              \
    const void *in[KN_SLOTS_];                                                 \
    void *out[KN_SLOTS_];                                                      \
    int64_t vin[KN_SLOTS_][6], vout[KN_SLOTS_][6]; /* HEADS slots' views */ \
    float *partial;  /* COLUMN accumulations: CUDA, nblocks x cols per output; C, cols per bf16 one */ \
    int64_t nblocks; /* the row kernel's gridDim.x, when partial is used */
#define KN_SLOTS_ 8
#define KN_RANK_ 6

struct kn_args {
    KN_ARGS_FIELDS
};

/* The struct's text, for the emitters. */
extern const char kn_args_source[];

/* What an attention launch passes (compiler/emit_attention.h).  Element
 * (b, h, s, d) of k is at k_off + b*k_sb + h*k_sh + s*k_ss + d, and so for
 * v, out and the gradients (which share their tensor's strides); q's head
 * h is at (h / q_hg) * q_sg + (h % q_hg) * q_sh, as Megatron's fused QKV
 * lays out a group's query heads (q_hg 1, q_sg = q_sh for plain heads).
 * So q, k and v may be views of one fused QKV buffer, and out is laid out
 * as the merge of heads expects.  bias (b, h, i, j) at b*bias_sb + h*bias_sh +
 * i*bias_si + j (bias_sb 0: one bias for the batch).  Key j is seen by
 * query i unless causal and k_pos0 + j > q_pos0 + i.  stats: per (b, h, i)
 * the row's max score and its sum of exponentials; delta: scratch of
 * B*Hq*Sq floats for the backward; dbias is added into, in the bias's layout
 * (layers that share a bias sum their gradients; the caller zeroes it first). */
#define KN_ATTN_FIELDS                                                         \
    int64_t B, Hq, Hk, Sq, Sk;                                                 \
    int64_t q_off, q_sb, q_sh, q_ss, q_hg, q_sg, k_off, k_sb, k_sh, k_ss;      \
    int64_t v_off, v_sb, v_sh, v_ss, o_off, o_sb, o_sh, o_ss;                  \
    int64_t bias_sb, bias_sh, bias_si, q_pos0, k_pos0;                         \
    float scale;                                                               \
    const void *q, *k, *v, *bias;                                              \
    void *out;                                                                 \
    float *stats, *delta;                                                      \
    const void *dout;                                                          \
    void *dq, *dk, *dv;                                                        \
    void *dbias;

struct kn_attn_args {
    KN_ATTN_FIELDS
};

extern const char kn_attn_args_source[];

/* What a routing launch passes.  Entry i (token i / topk's choice i % topk)
 * goes to expert idx[i]; its slot is the number of earlier entries that
 * chose the same expert (tokens in order, as Megatron's capacity drops the
 * latest).  routes[i] = expert * capacity + slot, the row of the experts'
 * (experts, capacity, ...) buffer it lands in, or -1 when the expert is
 * full or idx[i] names no expert.  fills (unless NULL) is that buffer's
 * inverse: per row, the entry it holds (token * topk + choice: its token
 * and, for the token's weights, its choice), or -1 for an empty one. */
#define KN_ROUTE_FIELDS                                                        \
    int64_t entries, topk, experts, capacity;                                  \
    const int32_t *idx;                                                        \
    int32_t *routes, *fills;

struct kn_route_args {
    KN_ROUTE_FIELDS
};

extern const char kn_route_args_source[];

/* The uniform random number of one element, the same on every backend and
 * layout: seed, the tensor's stream, the element's index in the whole
 * tensor.  The reference (runtime/ref.c) draws dropout and initial values
 * with it; the emitted kernels compute the same bits. */
double kn_uniform(uint64_t seed, uint64_t stream, uint64_t index);
/* A tensor's stream: its name hashed. */
uint64_t kn_stream(const char *name);

#endif
