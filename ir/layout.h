/* layout.h: which rank is which, laid out as Megatron-Core lays ranks out.
 *
 *   struct par_config pc = par_config_default();
 *   pc.world_size = 16; pc.tp = 2; pc.pp = 4;
 *   struct diag d;  diag_init(&d);
 *   struct rank_layout *L = rank_layout_new(&pc, false, &d);   // NULL: d says which rule
 *   L->ranks[5]               // {.part = IR_PART_DECODER, .tp = 1, .dp = 0, .pp = 2, ...}
 *   rank_layout_groups(L, PAR_GROUP_DP)  // {0,2},{1,3},{4,6},... as Megatron builds them
 *   rank_layout_free(L);
 *
 * Within one grid ranks are numbered with tp varying fastest, then cp, ep,
 * dp, and pp slowest (Megatron-Core's RankGenerator, order "tp-cp-ep-dp-pp").
 * A group of kind K is a set of ranks that differ only in K's coordinates,
 * generated as Megatron's generate_masked_orthogonal_rank_groups does, so
 * every group list here is, element for element, the one Megatron builds.
 *
 * An encoder with its own degrees (epp > 0) gets a grid of its own, first:
 * ranks 0 .. dp*etp*epp*cp-1, then the decoder's.  Pipeline groups join an
 * encoder pipeline to the decoder pipelines it feeds; with etp < tp, encoder
 * tp rank j feeds decoder tp ranks j*tp/etp .. (j+1)*tp/etp-1 of its replica
 * (Megatron-Core 0.12's pairing).  Expert groups come from a second decoder
 * grid, expert-tp x ep x expert-dp x pp ("parallel folding", Megatron-Core 0.10+). */
#ifndef WEFT_LAYOUT_H
#define WEFT_LAYOUT_H

#include <stdbool.h>

#include "diag.h"
#include "ir.h"

/* The parallel settings, by Megatron's flag names.  0 means "not given". */
struct par_config {
    int world_size;                 /* --world-size; 0: the smallest that fits (dp = 1) */
    int tp, pp, cp, ep;             /* --tp --pp --cp --ep */
    int expert_tp;                  /* --expert-tensor-parallel-size; 0: tp */
    int etp, epp;                   /* --etp --epp (encoder); etp 0: tp; epp -1: not given */
    bool sequence_parallel;         /* --sequence-parallel */
    int layers_per_virtual_stage;   /* --num-layers-per-virtual-pipeline-stage */
    int micro_batch, global_batch;  /* --micro-batch-size --global-batch-size */
    int first_stage_layers, last_stage_layers; /* --decoder-first/last-pipeline-num-layers */
    bool balance_pipeline;          /* --balance-pipeline: choose those two by the cost model */
    bool bf16;                      /* --bf16: activations and weights in bf16, fp32 master weights */
    bool grad_reduce_in_bf16;       /* --grad-reduce-in-bf16 (with --bf16): parameters' main gradients accumulated
                                     * and reduced in bf16, Megatron-Core's grad_reduce_in_fp32=False */
    int vocab_divisible_by;         /* --make-vocab-size-divisible-by; 128 */
    int ddp_bucket_size;            /* --ddp-bucket-size: the elements a data-parallel gradient bucket holds at least;
                                     * 0: Megatron's max(40M, 1M x dp) */
    /* derived by rank_layout_new: */
    int dp, expert_dp;
    int encoder_world, decoder_world;
};

struct par_config par_config_default(void);

/* One flag of the parallel config: its Megatron name, short name, and field. */
struct par_flag {
    const char *name, *short_name;
    int offset;     /* of the int (or bool) field in struct par_config */
    bool is_bool;
    int min;        /* the least value a user may give (0 in the field means "not given") */
    const char *help;
};
extern const struct par_flag par_flags[];
extern const int par_n_flags;
const struct par_flag *par_flag_find(const char *name); /* by either name; NULL if none */

#define PAR_GROUPS(X)                                                          \
    X(TP, "tp", "tensor parallel")                                             \
    X(PP, "pp", "pipeline parallel")                                           \
    X(DP, "dp", "data parallel")                                               \
    X(CP, "cp", "context parallel")                                            \
    X(DP_CP, "dp_cp", "data and context parallel (gradient reduction)")        \
    X(MP, "mp", "model parallel (tp x pp)")                                    \
    X(EP, "ep", "expert parallel")                                             \
    X(EXPERT_TP, "expert_tp", "tensor parallel within an expert")              \
    X(EXPERT_DP, "expert_dp", "data parallel of the experts")                  \
    X(EMBEDDING, "embedding", "first and last pipeline stage (tied embedding)")

enum par_group_kind {
#define X(id, name, what) PAR_GROUP_##id,
    PAR_GROUPS(X)
#undef X
    PAR_GROUP_COUNT
};

const char *par_group_name(enum par_group_kind k);
const char *par_group_what(enum par_group_kind k);

struct rank_groups {
    int n_groups, group_size; /* every group of a kind has the same size ... */
    int *sizes;               /* ... except pp and embedding with an encoder: per group */
    int **ranks;              /* ranks[g][i] */
};

struct rank_coords {
    enum ir_part part; /* IR_PART_ENCODER or IR_PART_DECODER */
    int tp, cp, dp, pp; /* pp: the stage within its part */
    int stage;          /* the stage along the whole pipeline: encoder stages first */
    int ep, expert_tp, expert_dp; /* decoder ranks: coordinates in the expert grid */
};

struct rank_layout {
    struct par_config pc;
    bool has_encoder;
    int n_ranks;
    struct rank_coords *ranks;
    struct rank_groups groups[PAR_GROUP_COUNT];
};

/* Check the config against Megatron's start-up rules that need no model,
 * derive dp, and lay out every rank.  has_encoder: the model has an encoder
 * part.  Errors name the flags and values. */
struct rank_layout *rank_layout_new(const struct par_config *pc, bool has_encoder, struct diag *d);
void rank_layout_free(struct rank_layout *L);
const struct rank_groups *rank_layout_groups(const struct rank_layout *L, enum par_group_kind k);
/* "tp 2 x pp 2 x dp 2 x cp 2, ep 2, sequence parallel": the degrees a
 * layout sets (cp and ep when above 1), into buf. */
char *par_layout_str(const struct par_config *pc, char *buf, size_t n);
/* How many ranks a parallel dimension (enum ir_pdim) spans for a part (tp,
 * or etp on an encoder of its own), a rank's coordinate along it, and its
 * place along an axis split over a set of them (IR_PDIM_BIT; the higher
 * numbered outside, so cp's shards hold tp's). */
int par_pdim_degree(const struct par_config *pc, enum ir_part part, int pdim);
int par_pdim_coord(const struct rank_coords *rc, int pdim);
int par_axis_coord(const struct par_config *pc, enum ir_part part, uint8_t set, const struct rank_coords *rc);
/* The group of kind k that holds rank r (its index), or -1. */
int rank_layout_group_of(const struct rank_layout *L, enum par_group_kind k, int r);

#endif
