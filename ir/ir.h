/* ir.h: the graph IR, the contract between compiler and runtime.
 *
 * A model is a graph of tensors and ops, unrolled (every layer is present) and
 * kept in topological order.  Every node carries the file and line it came
 * from.  Strings and shapes live in the graph's arena; tensors and ops live in
 * arrays owned by the graph and are named by index.
 *
 *   struct ir_graph *g = ir_graph_new("gpt2", "models/gpt2.xml");
 *   int x  = ir_graph_add_tensor(g, "x", IR_TENSOR_INPUT, IR_DTYPE_F32, &shape, loc);
 *   int w  = ir_graph_add_tensor(g, "w", IR_TENSOR_PARAM, IR_DTYPE_F32, &wshape, loc);
 *   int mm = ir_graph_add_op(g, IR_OP_MATMUL, loc);
 *   ir_op_add_input(g, mm, x);  ir_op_add_input(g, mm, w);
 *   int y  = ir_graph_add_tensor(g, "y", IR_TENSOR_ACT, IR_DTYPE_F32, NULL, loc);
 *   ir_op_add_output(g, mm, y);
 *   ir_infer_shapes(g, &diag);         // y's shape from matmul's rule
 *   ir_graph_free(g);
 *
 * This header includes no libxml2, CUDA or MPI: a runtime built without them
 * links ir/ alone. */
#ifndef WEFT_IR_H
#define WEFT_IR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "diag.h"

#define IR_MAX_RANK 6
#define IR_MAX_IN 8
#define IR_MAX_OUT 3
#define IR_MAX_ATTRS 6

/* ---- dtypes ------------------------------------------------------------ */
#define IR_DTYPES(X)                                                           \
    X(F32, "f32", 4)                                                           \
    X(BF16, "bf16", 2)                                                         \
    X(F16, "f16", 2)                                                           \
    X(I32, "i32", 4)

enum ir_dtype {
#define X(id, name, bytes) IR_DTYPE_##id,
    IR_DTYPES(X)
#undef X
    IR_DTYPE_COUNT
};

const char *ir_dtype_name(enum ir_dtype t);
int ir_dtype_bytes(enum ir_dtype t);
bool ir_dtype_is_float(enum ir_dtype t);
/* -1 if unknown. */
int ir_dtype_parse(const char *s);

/* ---- how a parameter is split across ranks ---------------------------- */
/* col: the last axis over tensor-parallel ranks; row: the first axis (of a
 * matrix) over tensor-parallel ranks; vocab: the vocabulary (first) axis of an
 * embedding table; expert: the expert (first) axis over expert-parallel ranks. */
#define IR_SPLITS(X)                                                           \
    X(NONE, "none")                                                            \
    X(COL, "col")                                                              \
    X(ROW, "row")                                                              \
    X(VOCAB, "vocab")                                                          \
    X(EXPERT, "expert")

enum ir_split {
#define X(id, name) IR_SPLIT_##id,
    IR_SPLITS(X)
#undef X
    IR_SPLIT_COUNT
};

const char *ir_split_name(enum ir_split s);
int ir_split_parse(const char *s);

/* ---- shapes -------------------------------------------------------------- */
struct ir_axis {
    int64_t size;
    const char *label; /* the expression it came from ("3*hidden"), or NULL */
};

struct ir_shape {
    int rank; /* 0: a scalar */
    struct ir_axis ax[IR_MAX_RANK];
};

/* Number of elements; -1 if the product overflows 64 bits. */
int64_t ir_shape_numel(const struct ir_shape *s);
/* "(batch=4, seq=1024, hidden=768)" into buf. */
char *ir_shape_str(const struct ir_shape *s, char *buf, size_t n);
/* "hidden=768", "768" (no label), into buf. */
char *ir_axis_str(const struct ir_axis *a, char *buf, size_t n);

/* ---- where a node came from --------------------------------------------- */
struct ir_loc {
    const char *file;
    int line;
};

/* ---- shards: how a tensor is held across ranks ------------------------------ */
/* The parallel dimensions a tensor can be split over, or hold partial sums
 * over: tensor parallel (the rank's part's tp: etp on encoder ranks),
 * context parallel, expert parallel, tensor parallel within an expert. */
#define IR_PDIMS(X)                                                            \
    X(NONE, "-")                                                               \
    X(TP, "tp")                                                                \
    X(CP, "cp")                                                                \
    X(EP, "ep")                                                                \
    X(XTP, "expert_tp")

enum ir_pdim {
#define X(id, name) IR_PDIM_##id,
    IR_PDIMS(X)
#undef X
    IR_PDIM_COUNT
};

const char *ir_pdim_name(enum ir_pdim p);

/* A set of pdims: a bit per pdim, IR_PDIM_BIT(p); 0 for none. */
#define IR_PDIM_BIT(p) ((uint8_t)(1u << (p)))

/* One rank's view of a tensor; each field a set of pdims (IR_PDIM_BIT):
 *   split[k]  axis k is split over these groups (0: whole).  Groups on one
 *             axis nest, the higher-numbered outside: cp outside tp, as
 *             sequence parallelism splits each context-parallel rank's
 *             share of the sequence over its tensor-parallel ranks.
 *   stack[k]  axis k holds the rows of every rank of these groups, one
 *             rank's after another: the local axis is the degree times
 *             longer.  An expert-parallel all-to-all leaves each rank its
 *             experts' rows from every rank of its group (Megatron's MoE),
 *             (experts/ep, ep x capacity, hidden).
 *   partial   the values are partial sums over these groups, still to be
 *             added across them. */
struct ir_shard {
    uint8_t split[IR_MAX_RANK];
    uint8_t stack[IR_MAX_RANK];
    uint8_t partial;
};

bool ir_shard_equal(const struct ir_shard *a, const struct ir_shard *b);
/* "(tp, -, -) partial tp", "(-, cp+tp, -)" (cp outside tp), "(ep, all ep, -)"
 * (axis 1 stacks every ep rank's rows): for messages and dumps. */
char *ir_shard_str(const struct ir_shard *s, int rank, char *buf, size_t n);
/* "cp+tp", outermost first; "-" for none: a set of pdims, into buf. */
char *ir_pdims_str(uint8_t set, char *buf, size_t n);

/* ---- model parts --------------------------------------------------------- */
#define IR_PARTS(X)                                                            \
    X(SHARED, "shared")                                                        \
    X(ENCODER, "encoder")                                                      \
    X(DECODER, "decoder")

enum ir_part {
#define X(id, name) IR_PART_##id,
    IR_PARTS(X)
#undef X
    IR_PART_COUNT
};

const char *ir_part_name(enum ir_part p);

/* ---- tensors ------------------------------------------------------------- */
enum ir_tensor_kind { IR_TENSOR_PARAM, IR_TENSOR_INPUT, IR_TENSOR_ACT };

enum ir_init { IR_INIT_NORMAL, IR_INIT_ZEROS, IR_INIT_ONES };

struct ir_tensor {
    const char *name;       /* unique: "decoder.layer.3.qkv.w" */
    const char *local_name; /* as written: "qkv.w" */
    enum ir_tensor_kind kind;
    enum ir_dtype dtype;
    struct ir_shape shape;  /* ACT: set by ir_infer_shapes */
    bool has_shape;
    int n_splits;           /* PARAM: split annotations, in the order written */
    enum ir_split splits[2];
    enum ir_init init;      /* PARAM */
    double init_std;        /* PARAM, IR_INIT_NORMAL */
    int producer;           /* ACT: op index; -1 for PARAM and INPUT */
    int n_uses;
    enum ir_part part;
    int block, iter;        /* innermost repeat block and its iteration, -1 outside any */
    int layer;              /* iteration of the outermost repeat (the layer), -1 outside any */
    struct ir_loc loc;
};

/* ---- attributes ---------------------------------------------------------- */
/* BOOL: true/false; FLOAT: a number, "auto", or sqrt/rsqrt of a dimension
 * expression; INT: a literal integer, may be negative; DIM: a dimension
 * expression, at least 1; SHAPE: axes as in a tensor's shape. */
#define IR_ATTRS(X)                                                            \
    X(TRANSPOSE_A, "transpose_a", BOOL)                                        \
    X(TRANSPOSE_B, "transpose_b", BOOL)                                        \
    X(CAUSAL, "causal", BOOL)                                                  \
    X(BIDIRECTIONAL, "bidirectional", BOOL)                                    \
    X(TANH, "tanh", BOOL)                                                      \
    X(SCALE, "scale", FLOAT)                                                   \
    X(BY, "by", FLOAT)                                                         \
    X(EPS, "eps", FLOAT)                                                       \
    X(P, "p", FLOAT)                                                           \
    X(BASE, "base", FLOAT)                                                     \
    X(AXIS, "axis", INT)                                                       \
    X(IGNORE_INDEX, "ignore_index", INT)                                       \
    X(LENGTH, "length", DIM)                                                   \
    X(HEADS, "heads", DIM)                                                     \
    X(GROUPS, "groups", DIM)                                                   \
    X(TOPK, "topk", DIM)                                                       \
    X(EXPERTS, "experts", DIM)                                                 \
    X(CAPACITY, "capacity", DIM)                                               \
    X(PATCH, "patch", DIM)                                                     \
    X(Q_LEN, "q_len", DIM)                                                     \
    X(K_LEN, "k_len", DIM)                                                     \
    X(MAX_DISTANCE, "max_distance", DIM)                                       \
    X(SHAPE, "shape", SHAPE)

enum ir_attr_id {
#define X(id, name, type) IR_ATTR_##id,
    IR_ATTRS(X)
#undef X
    IR_ATTR_COUNT
};

enum ir_attr_type {
    IR_ATTR_TYPE_BOOL, IR_ATTR_TYPE_FLOAT, IR_ATTR_TYPE_INT, IR_ATTR_TYPE_DIM, IR_ATTR_TYPE_SHAPE
};

const char *ir_attr_name(enum ir_attr_id a);
enum ir_attr_type ir_attr_type(enum ir_attr_id a);
int ir_attr_parse_name(const char *s); /* -1 if unknown */

struct ir_attr {
    enum ir_attr_id id;
    int64_t i;            /* BOOL, INT, DIM */
    double f;             /* FLOAT; NaN for "auto" */
    const char *label;    /* DIM: the expression as written */
    struct ir_shape *shape; /* SHAPE */
};

/* ---- ops ----------------------------------------------------------------- */
enum ir_op_kind {
#define OP(id, name, in, out, attrs, summary, saves) IR_OP_##id,
#include "ops.def"
#undef OP
    IR_OP_COUNT
};

struct ir_op {
    enum ir_op_kind kind;
    int n_in, n_out;
    int in[IR_MAX_IN];   /* tensor indices; -1 for an absent optional input */
    int out[IR_MAX_IN];  /* IR_MAX_IN: a backward op has one per forward input */
    int n_attrs;
    struct ir_attr attrs[IR_MAX_ATTRS];
    const char *flag;     /* the Megatron flag its probability p follows ("hidden-dropout"), or NULL */
    enum ir_part part;
    int block, iter, layer; /* as for tensors */
    struct ir_loc loc;
    /* A backward op (autodiff.c): the vector-Jacobian product of op grad_of,
     * the same kind.  in[k]: the gradient of that op's output k (-1: none
     * flows back); out[k]: the gradient of its input k (-1: not needed). */
    int grad_of;
};

/* What an op kind takes, from its row in ops.def. */
struct ir_op_info {
    const char *name, *summary;
    const char *saves; /* what the backward reads from the forward (ops.def) */
    int n_saves;
    const char *saves_words[IR_MAX_IN + IR_MAX_OUT + 2]; /* the same, word by word */
    int n_in_names, n_out_names;
    const char *in_names[IR_MAX_IN], *out_names[IR_MAX_OUT];
    int in_min, in_max, out_min, out_max;
    int n_attrs;
    struct {
        enum ir_attr_id id;
        const char *def; /* NULL: required */
    } attrs[IR_MAX_ATTRS];
};

const struct ir_op_info *ir_op_info(enum ir_op_kind k);
/* The tensor an op's saves word names (one of its inputs or outputs), or -1
 * ("mask", "rowstats", an absent optional input). */
int ir_op_saved_tensor(const struct ir_op *o, const char *word);
/* Whether the op's backward reads tensor t, kept from its forward. */
bool ir_op_keeps(const struct ir_op *o, int t);
int ir_op_parse_kind(const char *s); /* -1 if unknown */
/* The attribute if set; defaults are filled in by the front end, so after it
 * every attribute of the op's row is present. */
const struct ir_attr *ir_op_attr(const struct ir_op *op, enum ir_attr_id id);
int64_t ir_op_int(const struct ir_op *op, enum ir_attr_id id);
/* T5's relative position bucket of key position minus query position
 * (_relative_position_bucket), in double: the reference computes it so,
 * and the compiler turns it into exact thresholds for the kernels. */
int64_t ir_relpos_bucket(int64_t rel, bool bidirectional, int64_t buckets, int64_t max_distance);
double ir_op_float(const struct ir_op *op, enum ir_attr_id id);

/* ---- the graph ----------------------------------------------------------- */
struct ir_dim {
    const char *name;
    const char *expr;   /* as written in the file */
    const char *flag;   /* Megatron flag bound to it ("num-layers"), or NULL */
    const char *set_by; /* "--num-layers", "--set", "variant tiny", or NULL (file) */
    int64_t value;
    struct ir_loc loc;
};

/* A <repeat>: count iterations of a body; its ops carry (block, iter). */
struct ir_block {
    const char *name;   /* "decoder.layer" */
    enum ir_part part;
    int parent;         /* enclosing block, -1 if none */
    int64_t count;
    const char *count_expr;
    struct ir_loc loc;
};

/* Hugging Face's names for a model's parameters (a model file's
 * <huggingface> and its params' <hf>): how a parameter's whole tensor is
 * made of Hugging Face tensors.  Along the weft tensor's last axis, blocks
 * (hf_blocks) repeat; each block holds, in order, one equal piece of every
 * source chunk (a source's last axis, in weft's orientation, cut into
 * `chunks` equal chunks, each cut into `blocks` equal pieces).  A source
 * with transpose holds the weft matrix transposed (torch's Linear stores
 * (out, in)).  A source axis shorter than weft's (a padded vocabulary):
 * weft's extra entries are zeros on load and dropped on save. */
struct ir_hf_source {
    const char *name;  /* resolved: "transformer.h.3.attn.c_attn.weight" */
    const char *shape; /* as written, in Hugging Face's orientation: "hidden 3*hidden" */
    bool transpose;
    int64_t chunks;
    struct ir_loc loc;
};

struct ir_hf_map {
    int tensor;          /* the PARAM */
    const char *blocks;  /* an expression, "1" where not written */
    int n_sources;
    struct ir_hf_source *sources;
};

/* One key of config.json: value is an integer expression of the model's
 * dimensions (INT), a number, a string or true/false as written. */
enum ir_hf_value { IR_HF_INT, IR_HF_NUMBER, IR_HF_STRING, IR_HF_BOOL };
struct ir_hf_config {
    const char *key, *value;
    enum ir_hf_value kind;
    struct ir_loc loc;
};

struct ir_hf {
    const char *model_type, *architecture;
    const char *optional_prefix; /* a prefix of names that files may leave out ("transformer."), or NULL */
    int n_config, cap_config;
    struct ir_hf_config *config;
    int n_maps, cap_maps;
    struct ir_hf_map *maps;
    struct ir_loc loc;
};

struct ir_graph {
    struct arena *arena;
    const char *name, *file, *variant;
    struct ir_dim *dims;
    int n_dims, cap_dims;
    struct ir_tensor *tensors;
    int n_tensors, cap_tensors;
    struct ir_op *ops;
    int n_ops, cap_ops;
    struct ir_block *blocks;
    int n_blocks, cap_blocks;
    int *outputs;
    int n_outputs, cap_outputs;
    bool has_part[IR_PART_COUNT];
    const char **variants; /* the variants the file offers */
    struct ir_hf *hf;      /* Hugging Face's names (<huggingface>), or NULL */
    int n_variants, cap_variants;
};

struct ir_graph *ir_graph_new(const char *name, const char *file);
void ir_graph_free(struct ir_graph *g);
int ir_graph_add_dim(struct ir_graph *g, const char *name, const char *expr, const char *flag,
                     struct ir_loc loc);
const struct ir_dim *ir_graph_dim(const struct ir_graph *g, const char *name);
int ir_graph_add_tensor(struct ir_graph *g, const char *name, enum ir_tensor_kind kind,
                        enum ir_dtype dtype, const struct ir_shape *shape, struct ir_loc loc);
int ir_graph_add_op(struct ir_graph *g, enum ir_op_kind kind, struct ir_loc loc);
void ir_op_add_input(struct ir_graph *g, int op, int tensor); /* tensor -1: absent optional */
void ir_op_add_output(struct ir_graph *g, int op, int tensor); /* tensor -1: a backward op's unneeded gradient */
int ir_graph_add_block(struct ir_graph *g, const char *name, enum ir_part part, int parent,
                       int64_t count, const char *count_expr, struct ir_loc loc);
void ir_graph_add_output(struct ir_graph *g, int tensor);
/* The loss a training step differentiates: the first output, when it is a
 * float scalar; -1 when the model has none (it can only run forward). */
int ir_graph_loss(const struct ir_graph *g);

/* Give every ACT tensor its shape and dtype from its producer's rule.
 * requires: ops in topological order, PARAM and INPUT shapes set.
 * Reports a mismatch at the op's line, naming the inputs and the axis. */
int ir_infer_shapes(struct ir_graph *g, struct diag *d);

/* The IR's invariants (QBE's ssacheck): indices in range, each ACT produced
 * once by an earlier op, arity within the op's row, shapes set and positive
 * once inferred.  Failures are bugs in a pass, reported as such. */
int ir_verify(const struct ir_graph *g, bool shapes_inferred, struct diag *d);

/* Forward FLOPs of one op (multiply-add = 2), from its inferred shapes. */
double ir_op_flops(const struct ir_graph *g, const struct ir_op *op);

#endif
