/* lower.h: every role's steps lowered to actions (ir/actions.h), so that an
 * executor walks them without deciding anything.
 *
 *   struct ir_actions A;
 *   if (lower(P, &S, &K, &M, &A, &diag) == 0)  ...   // A.stages[s]: forward, backward, optimizer
 *   ir_actions_free(&A);
 *
 * requires: a partition, its schedule, the fused kernels and the memory plan
 * produces: per stage and virtual stage, the forward step's actions (in op
 *           order: GEMMs, launches, the loss's sum), the backward's (in
 *           reverse: a gradient zeroed where its buffer starts to live, the
 *           GEMMs of a matmul's two gradients, a group's backward launch),
 *           and the optimizer's (each parameter's sums of squares, then its
 *           AdamW launch).  Refuses (with the reason in d) what the executor
 *           cannot run yet. */
#ifndef WEFT_LOWER_H
#define WEFT_LOWER_H

#include "actions.h"
#include "kernel.h"
#include "memplan.h"
#include "partition.h"

int lower(const struct partition *P, const struct ir_schedule *S, const struct kn_set *K, const struct ir_memory *M,
          struct ir_actions *A, struct diag *d);

#endif
