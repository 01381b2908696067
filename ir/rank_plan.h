/* rank_plan.h: one rank's view of a plan: what `weft run` (and inspect,
 * verify, the tests) need of it, read from the plan's sections alone.
 *
 *   struct rank_plan R;
 *   if (rank_plan_load("gpt2.plan", rank, world_size, &R, &diag))  // 2: bad input, d names the section
 *       ...
 *   R.actions.stages[R.stage]   R.memory.roles[R.stage]   R.schedule.programs[R.stage]
 *   rank_plan_free(&R);
 *
 * Only the rank's own stage's program, memory and actions are read; a
 * world size other than the plan's is an error naming both. */
#ifndef WEFT_RANK_PLAN_H
#define WEFT_RANK_PLAN_H

#include "actions.h"
#include "kernel.h"
#include "layout.h"
#include "memplan.h"
#include "optim.h"
#include "program.h"

/* The plan's "meta" section: the model, its dimensions, the prediction,
 * the dropout probabilities used and the model FLOPs of a step. */
struct plan_dropout {
    char flag[32];         /* the Megatron flag its ops follow ("hidden-dropout"), "" for none */
    double p;
    int ops;               /* the forward ops that drop with p */
};

struct plan_meta {
    char model[256], file[1024], variant[64], device[64];
    uint64_t digest;
    int n_dims;
    char (*dim_name)[64];
    int64_t *dim_value;
    double step, bubble;   /* the predicted step (seconds) and bubble on device */
    int n_dropout;
    struct plan_dropout *dropout; /* each distinct (flag, p) once */
    double flops_step;     /* model FLOPs of one step, all ranks together: 3x the forward's when training */
};

int plan_meta_read(struct plan *p, struct plan_meta *m, struct diag *d);
void plan_meta_free(struct plan_meta *m);
/* A dimension's value by name, or 0. */
int64_t plan_meta_dim(const struct plan_meta *m, const char *name);

/* A tensor as the plan records it: its whole shape and how ranks split it. */
struct rank_tensor {
    char name[128];
    uint8_t kind, dtype, init, rank;
    int64_t shape[IR_MAX_RANK];
    uint8_t split[IR_MAX_RANK];  /* per axis, the parallel dimensions splitting it (IR_PDIM_BIT) */
    uint8_t stack[IR_MAX_RANK];  /* per axis, those whose ranks' rows it stacks (an experts' buffer) */
    int32_t producer;
    double init_std;
};

/* The plan's "hf" section: the model in Hugging Face's layout (ir.h's
 * struct ir_hf says the mapping; runtime/hf.h uses it).  Shapes are in
 * Hugging Face's orientation, with the vocabulary as written (unpadded). */
struct rank_hf_source {
    char name[256];
    bool transpose;
    int64_t chunks;
    int rank;
    int64_t shape[IR_MAX_RANK];
};

struct rank_hf_map {
    int32_t tensor;
    int64_t blocks;
    int n_sources;
    struct rank_hf_source *sources;
};

struct rank_hf_config {
    char key[128], value[256];
    uint8_t kind; /* enum ir_hf_value */
};

struct rank_hf {
    bool present;
    char model_type[64], architecture[128], optional_prefix[64];
    int n_config;
    struct rank_hf_config *config;
    int n_maps;
    struct rank_hf_map *maps;
};

/* The "hf" section (hf->present false where the plan has none); a map
 * naming a tensor at or past n_tensors is corruption.  0, or -1 with d. */
int rank_hf_read(struct plan *p, int n_tensors, struct rank_hf *hf, struct diag *d);
void rank_hf_free(struct rank_hf *hf);

struct rank_plan {
    int rank, stage;
    struct rank_layout *L;
    struct rank_coords coords;
    int n_tensors;
    struct rank_tensor *tensors;
    int n_outputs;
    int32_t *outputs;          /* outputs[0]: the loss when training */
    int32_t labels;            /* the input the loss reads its labels from, or -1 */
    struct ir_schedule schedule; /* this stage's program only */
    struct ir_memory memory;   /* this stage's role only */
    struct ir_actions actions; /* this stage's only */
    struct kn_set kernels;
    bool train;
    struct optim_config opt;
    struct plan_meta meta;
    int64_t vocab;             /* the dimension "vocab" as written (token ids are below it; 0: none) */
    struct rank_hf hf;         /* absent (present false) where the model file names no Hugging Face tensors */
};

int rank_plan_load(const char *path, int rank, int world_size, struct rank_plan *R, struct diag *d);
void rank_plan_free(struct rank_plan *R);

#endif
