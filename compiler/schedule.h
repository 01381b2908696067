/* schedule.h: each pipeline rank's instruction stream for one training step.
 *
 *   struct ir_schedule S;
 *   if (schedule_build(P, IR_SCHED_1F1B, false, &S, &diag) == 0 && ir_schedule_verify(&S, P->L, &diag) == 0)
 *       ...;                              // every rank finishes: the schedule cannot hang
 *   ir_schedule_free(&S);
 *
 * The order of forward and backward steps is Megatron-Core's
 * (pipeline_parallel/schedules.py): GPipe runs every forward, then every
 * backward; 1F1B warms up with min(stages - rank - 1, m) forwards, then
 * alternates; interleaved 1F1B warms up with (pp - rank - 1) * 2 +
 * (v - 1) * pp steps over virtual stages.  Between two steps a rank posts one
 * group: the sends of what it just produced and the receives its next step
 * needs, as Megatron's send_forward_recv_backward does.  A step runs its
 * chunk's collectives: a forward step the forward's, a backward step their
 * adjoints (shard.c, grad_xfers); the step ends with the data-parallel gradient
 * reductions, the sum of tied parameters' gradients, the global gradient
 * norm and the optimizer.  A step can be forward only (inference). */
#ifndef WEFT_SCHEDULE_H
#define WEFT_SCHEDULE_H

#include "partition.h"
#include "program.h"

/* forward_only (--mode infer): the forward steps of every micro-batch in the
 * schedule's order, and nothing after them. */
int schedule_build(const struct partition *P, enum ir_sched_kind kind, bool forward_only, struct ir_schedule *S,
                   struct diag *d);
/* The schedule a partition runs unless told otherwise: interleaved with
 * virtual stages, else 1F1B. */
enum ir_sched_kind schedule_default(const struct partition *P);

/* A COLLECTIVE instruction's tag, the same on every member: a transfer's
 * index (below SCHED_TAG_GRADS), a data-parallel gradient bucket (chunk c's
 * bucket b: SCHED_TAG_GRADS + c * SCHED_MAX_BUCKETS + b), the gradient
 * norm, a chunk's parameter gradients partial over a group
 * (SCHED_TAG_PARAM_GRADS + c * IR_GROUP_COUNT + group), a tied set (TIED: its index). */
enum {
    SCHED_TAG_GRADS = 1 << 20,        /* + chunk * SCHED_MAX_BUCKETS + bucket: dense parameters over dp x cp */
    SCHED_TAG_NORM = 2 << 20,
    SCHED_TAG_PARAM_GRADS = 3 << 20,  /* + chunk * IR_GROUP_COUNT + group */
    SCHED_TAG_EXPERT_GRADS = 4 << 20, /* + chunk * SCHED_MAX_BUCKETS + bucket: experts' parameters over expert dp */
    SCHED_MAX_BUCKETS = 1 << 10
};

/* Whether a parameter is an expert's (split over expert parallel ranks):
 * its gradient is reduced over the expert data-parallel group, not dp x cp. */
bool schedule_is_expert_param(const struct partition *P, int t);

/* The stages that read parameter t (on[stage] = 1; on has n_stages
 * entries) and how many; whether every holder holds the same part of it
 * (alike), and the elements a tied set's all-reduce moves for it (held):
 * the shard when alike (the embedding group reduces shard by shard), the
 * whole tensor when not (T5's table at etp < tp: each contributes its
 * shard and takes back its own). */
int schedule_param_holders(const struct partition *P, int n_stages, int t, uint8_t *on, int64_t *held, bool *alike);

/* Megatron's gradient buckets of a chunk's dense parameters (experts: its
 * experts' parameters): their fp32 bytes, and (first, last: may be NULL)
 * each one's first and last parameter in the order the backward finishes
 * them, the order GRADS lays them out.  Returns the count. */
int schedule_grad_buckets(const struct partition *P, int chunk, bool experts, int64_t *bytes, int *first, int *last);

/* Whether the gradient norm is summed over data and context parallel ranks
 * too, not only over the model-parallel group: experts differ across
 * data-parallel ranks (ep > 1), and context-parallel ranks count one copy
 * of the parameters they share between them (cp > 1). */
bool schedule_norm_over_dp(const struct partition *P);

#endif
