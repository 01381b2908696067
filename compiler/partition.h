/* partition.h: put a typed model on ranks: which pipeline stage holds each
 * layer and op (and, in later steps, each tensor's shard and the transfers).
 *
 *   struct par_config pc = par_config_default();  pc.world_size = 16; pc.tp = 2; pc.pp = 4;
 *   struct partition *P = partition_model("models/gpt2.xml", &fe_opt, &pc, &diag);
 *   P->chunks[c]        // stage, virtual stage, layers [first, first+n), cost
 *   P->op_chunk[op]     // the chunk that runs each op
 *   partition_free(P);
 *
 * Megatron's start-up rules that need the model are checked here, found
 * through the flags a model binds (heads by --num-attention-heads, ...), so no
 * model needs a rule of its own; each error names the flag, the value and the
 * model file's line.  The vocabulary is padded as Megatron pads it. */
#ifndef WEFT_PARTITION_H
#define WEFT_PARTITION_H

#include "compiler.h"
#include "layout.h"
#include "program.h"

/* A pipeline chunk: the layers one pipeline rank runs as one (virtual) stage. */
struct part_chunk {
    enum ir_part part;
    int stage;            /* pipeline stage across the whole pipeline (encoder first) */
    int vstage;           /* virtual stage index on that rank (interleaved 1F1B), 0 if none */
    int first_layer, n_layers; /* of the part's layers */
    bool has_embedding, has_head; /* runs ops before the first / after the last layer */
    double flops;         /* forward FLOPs per micro-batch, whole (before sharding) */
    double seconds;       /* one rank's forward time per micro-batch on the default device (cost.h) */
    int64_t param_bytes;  /* fp32 */
};

/* How data moves: between pipeline stages (send), within a group (the
 * collectives), or not at all (slice: a rank keeps its part of a whole tensor). */
#define PART_XFERS(X)                                                          \
    X(SEND, "send")                                                            \
    X(ALL_REDUCE, "all-reduce")                                                \
    X(ALL_GATHER, "all-gather")                                                \
    X(REDUCE_SCATTER, "reduce-scatter")                                        \
    X(ALL_TO_ALL, "all-to-all")                                                \
    X(SLICE, "slice")                                                          \
    X(ALL_REDUCE_MAX, "all-reduce-max") /* the elementwise largest: a vocab-parallel loss's row maxima */

enum part_xfer_kind {
#define X(id, name) PART_XFER_##id,
    PART_XFERS(X)
#undef X
    PART_XFER_COUNT
};

const char *part_xfer_name(enum part_xfer_kind k);
/* The collective a transfer is (a send or a slice is none: a bug to ask). */
enum ir_coll part_xfer_coll(enum part_xfer_kind k);

struct part_xfer {
    enum part_xfer_kind kind;
    enum ir_pdim over;           /* the group, by the pdim it spans; NONE for a send */
    int tensor;                  /* what moves */
    int op;                      /* the op that needs it, or whose inside communicates */
    int from_chunk, to_chunk;    /* the same chunk except for a send */
    int axis;                    /* gathered or scattered axis; -1 */
    struct ir_shard before, after;
    struct ir_shape shape;       /* each rank's shard going in */
    int64_t bytes;               /* of that shard */
    bool grad;                   /* on the tensor's gradient: run by to_chunk's backward, after op's */
    bool inner;                  /* the op's own (its kernels write or read it: the vocab-parallel loss's
                                  * statistics, the experts' exchanges and their adjoints), not its input's */
    int prev;                    /* the transfer whose result this one takes further, -1: it takes the tensor's
                                  * buffer (forward), or the readers' gradients (backward) */
    const char *why;
};

struct partition {
    struct ir_graph *g;   /* the typed graph the partition is of (vocab padded) */
    struct rank_layout *L;
    int n_chunks;
    struct part_chunk *chunks; /* ordered by part, then by the order data flows */
    int *op_chunk;        /* per op */
    int virtual_stages;   /* per decoder pipeline rank; 1 without interleaving */
    int n_micro;          /* micro-batches per step */
    int64_t padded_vocab, vocab; /* 0 when the model binds no --vocab-size */
    int balanced_first, balanced_last; /* stage sizes --balance-pipeline chose; 0 if it did not run */
    struct ir_shard *shard;  /* per tensor: how its producer's ranks hold it */
    struct part_xfer *xfers; /* every transfer, in op order */
    int n_xfers;
    /* Per (op, input k), at op * IR_MAX_IN + k (compiled partitions only,
     * not those read from a plan): */
    int *reads_via; /* the last transfer of the chain that brings the input as op reads it, or -1: as held */
    int *grad_via;  /* the first transfer of the chain that takes op's gradient of the input (with those of the
                     * chunk's readers that give it alike) to how the tensor's gradient is held, or -1: none */
};

/* How tensor t's producer makes it: its shard before its partial sums are
 * reduced (by its first reader's transfers), which is also how its gradient
 * is held (without partial sums): a sequence-parallel row-parallel matmul
 * makes the whole sequence, reduce-scattered to its readers' split. */
struct ir_shard partition_made_shard(const struct partition *P, int t);
/* The first transfer that reduces t's partial sums where they leave t held
 * smaller than made (a reduce-scatter among them), or -1: the producer
 * writes t's own buffer. */
int partition_made_xfer(const struct partition *P, int t);
/* The transfers that bring op's input k (partition.reads_via, grad_via):
 * -1 for none, and for a partition read from a plan. */
int partition_reads_via(const struct partition *P, int op, int k);
int partition_grad_via(const struct partition *P, int op, int k);
/* How op reads its input k: after the transfers that bring it, else as
 * held; and that shard's shape on a rank of op's part. */
const struct ir_shard *partition_read_shard(const struct partition *P, int op, int k);
struct ir_shape partition_read_shape(const struct partition *P, int op, int k);

/* The number of ranks a pdim spans for a part (tp, or etp for the encoder). */
int partition_degree(const struct partition *P, enum ir_part part, enum ir_pdim p);
/* The ranks a set of pdims spans (IR_PDIM_BIT): the product of their degrees. */
int partition_degrees(const struct partition *P, enum ir_part part, uint8_t set);
/* A rank's piece of an axis split over a set of pdims, 0 .. degrees - 1:
 * the groups nest, the higher-numbered outside (ir.h, struct ir_shard). */
int partition_axis_coord(const struct partition *P, enum ir_part part, uint8_t set, const struct rank_coords *rc);
/* A tensor's shape on one rank, given its shard: each axis divided by the
 * degrees that split it, times those that stack it. */
struct ir_shape partition_local_shape(const struct partition *P, enum ir_part part, const struct ir_shape *s,
                                      const struct ir_shard *sh);
/* Bytes of one element of a tensor as ranks hold and move it: 2 for a
 * floating-point tensor under --bf16, else its dtype's size. */
int partition_elem_bytes(const struct partition *P, const struct ir_tensor *t);
/* The type of a parameter's main gradient, where the backward accumulates
 * it over micro-batches and the data-parallel ranks reduce it: fp32, or
 * bf16 under --grad-reduce-in-bf16 (Megatron-Core's main_grad buffer with
 * grad_reduce_in_fp32 off).  The optimizer reads it and updates fp32. */
int partition_grad_dtype(const struct partition *P);
int partition_grad_bytes(const struct partition *P); /* its size: 4 or 2 */
/* The shard pass: run by partition_model after placing ops.
 *   requires: chunks and op_chunk
 *   produces: shard (per tensor), xfers (the collectives and sends; the
 *             forward's in op order, then the backward's, grad set, in
 *             reverse op order) */
int partition_shard(struct partition *P, struct diag *d);

struct partition *partition_model(const char *path, const struct fe_options *opt, const struct par_config *pc,
                                  struct diag *d);
/* The typed model as the layout sizes it (the micro-batch sets the batch
 * dimension a model binds to --micro-batch-size), without placing it. */
struct ir_graph *partition_load_model(const char *path, const struct fe_options *opt, const struct par_config *pc,
                                      struct diag *d);
void partition_free(struct partition *P);
/* The partition a plan file holds (plan_partition.c), for drawing or timing a
 * compiled plan; errors name the section at fault. */
struct partition *partition_from_plan(const char *path, struct diag *d);
struct plan;
struct partition *partition_read_plan(struct plan *p, struct diag *d);
/* The layers a part has: iterations of its top-level repeats, in order. */
int partition_part_layers(const struct ir_graph *g, enum ir_part part);
/* The layer an op belongs to across its part's top-level repeats, or -1. */
int partition_op_layer(const struct ir_graph *g, const struct ir_op *op);
/* Whether rank r runs chunk c (an encoder without stages of its own runs on
 * the decoder's first stage). */
bool partition_rank_runs(const struct partition *P, int r, int c);
/* The parameters a stage's chunks read, each once, in the order its
 * backward finishes their gradients: chunk by chunk, each chunk's in
 * reverse op order (a parameter read by several chunks is the first
 * reader's).  params, chunks (the owner): n_tensors entries.  Returns n. */
int partition_stage_params(const struct partition *P, int stage, int *params, int *chunks);
/* Parameter elements one rank of a stage holds: its shards, a tied parameter
 * at each stage that holds it. */
int64_t partition_stage_param_elems(const struct partition *P, int stage);
/* Which parameters a rank counts in the global gradient norm, so that over
 * the ranks of one model replica each parameter element counts once
 * (Megatron's param_is_not_shared and param_is_not_tensor_parallel_duplicate,
 * derived from shards): the first stage that holds a parameter counts it,
 * and of ranks holding identical copies over a group (tp, or expert tp for
 * an expert's weights; cp) only the group's rank 0.  counts: per tensor.
 * A replica: the ranks at data-parallel rank 0, of the expert grid for
 * experts' weights. */
void partition_norm_counts(const struct partition *P, int rank, bool *counts);

#endif
