/* compiler.h: the compiler's passes, run in order from one table.
 *
 *   struct diag d;  diag_init(&d);
 *   struct ir_graph *g = compile_model("models/gpt2.xml", &opt, &d);  // NULL: see d
 *   struct model_summary s;
 *   model_summarize(g, &s, &d);        // params, FLOPs per token, weight bytes
 *
 * The model's passes: frontend (model file -> graph), shapes
 * (ir_infer_shapes), ir_verify after each.  A whole plan's compile, these
 * first, is pipeline.h's compile_plan. */
#ifndef WEFT_COMPILER_H
#define WEFT_COMPILER_H

#include "frontend.h"
#include "ir.h"

struct ir_graph *compile_model(const char *path, const struct fe_options *opt, struct diag *d);

#define MODEL_MAX_BLOCKS 16

struct model_summary {
    int64_t params;                       /* every parameter as written, counted once */
    int64_t params_by_part[IR_PART_COUNT];
    int n_blocks;
    struct {
        const char *name;       /* "decoder.layer" */
        int64_t count;          /* iterations */
        int64_t params_per_iter;
    } blocks[MODEL_MAX_BLOCKS];
    int64_t tokens;             /* per sample: the labels of the loss (else the first input) */
    double flops_forward;       /* per sample */
    double flops_per_token_forward, flops_per_token_train;
    int64_t weight_bytes_fp32, weight_bytes_bf16;
};

/* requires: a typed graph (shapes inferred). */
int model_summarize(const struct ir_graph *g, struct model_summary *s, struct diag *d);

#endif
