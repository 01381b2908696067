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

#endif
