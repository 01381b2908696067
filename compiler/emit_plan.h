/* emit_plan.h: write a compiled model as a plan file (ir/plan.h).
 *
 *   emit_plan(P, &S, &sim, &mem, &kernels, &opt, "models/gpt2.xml", "gpt2.plan", &diag);
 *
 * Sections: "meta" (the model: name, file, its digest, every dimension; the
 * prediction), "layout", "chunks", "tensors" (with each one's shard), "ops",
 * "xfers", "roles" (per stage: a rank's memory by category, micro-batches in flight),
 * "optimizer" (training only), "schedule" and one "program.N" per pipeline
 * stage. */
#ifndef WEFT_EMIT_PLAN_H
#define WEFT_EMIT_PLAN_H

#include "kernel.h"
#include "memory.h"
#include "optim.h"
#include "simulate.h"

/* opt: the training step's optimizer; NULL for a forward-only plan. */
int emit_plan(const struct partition *P, const struct ir_schedule *S, const struct sim_result *sim,
              const struct ir_memory *mem, const struct kn_set *kernels, const struct optim_config *opt, const char *model_path, const char *path,
              struct diag *d);

#endif
