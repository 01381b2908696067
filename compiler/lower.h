/* lower.h: every role's steps lowered to actions (ir/actions.h), so that an
 * executor walks them without deciding anything.
 *
 *   struct ir_actions A;
 *   if (lower(P, &S, &K, &M, &A, &diag) == 0)  ...   // A.stages[s]: forward, backward, optimizer
 *   ir_actions_free(&A);
 *
 * requires: a partition, its schedule, the fused kernels and the memory plan
 * produces: per stage and virtual stage, the forward step's actions (in op
 *           order: the transfers that bring a group's inputs, its GEMMs or
 *           launches, the loss's sum), the backward's (in reverse: a
 *           gradient zeroed where its buffer starts to live, the forward's
 *           gathers brought again where a backward reads them, the GEMMs of
 *           a matmul's two gradients, a group's backward launch, then the
 *           conversions of the gradients it gave), the program's
 *           collectives and pipeline transfers, and the optimizer's (each
 *           parameter's sums of squares, then its AdamW launch).  Where
 *           each transfer reads and writes is memory.c's
 *           (memory_xfer_place), so the lowering and the memory plan agree.
 *           What it cannot lower is PENDING, and the executor refuses it. */
#ifndef WEFT_LOWER_H
#define WEFT_LOWER_H

#include "actions.h"
#include "kernel.h"
#include "memplan.h"
#include "partition.h"

int lower(const struct partition *P, const struct ir_schedule *S, const struct kn_set *K, const struct ir_memory *M,
          struct ir_actions *A, struct diag *d);

#endif
