/* emit_plan.h: write a compiled model as a plan file (ir/plan.h).
 *
 *   emit_plan(&C, "gpt2.plan", &diag);      // C: a whole compile (pipeline.h)
 *
 * Sections: "meta" (the model: name, file, its digest, every dimension; the
 * prediction; the dropout probabilities used, by flag; the model FLOPs of a
 * step, which weft run's throughput divides), "layout", "chunks", "tensors" (with each one's shard), "ops",
 * "xfers", "roles" (per stage: a rank's memory by category, micro-batches in flight),
 * "optimizer" (training only), "schedule", one "program.N" per pipeline
 * stage, and "hf" where the model file names its Hugging Face tensors. */
#ifndef WEFT_EMIT_PLAN_H
#define WEFT_EMIT_PLAN_H

#include "pipeline.h"

int emit_plan(const struct compiled *C, const char *path, struct diag *d);

#endif
