/* summary.c: what `weft check` reports about a typed graph: parameters (total,
 * by part, per layer), forward and training FLOPs per token, weight bytes.
 *
 * FLOPs count a multiply-add as 2 and are exact for GEMMs and attention
 * (causal attention computes only the lower triangle); elementwise ops and
 * reductions count a small constant per element (ir/ops.c).  Training is
 * counted as forward + backward = 3 x forward, the usual estimate (each GEMM's
 * backward is two GEMMs of the same size); it becomes exact once the backward
 * graph exists. */
#include "compiler.h"
#include "util.h"

#include <string.h>

static int64_t tokens_per_sample(const struct ir_graph *g)
{
    for (int i = g->n_ops - 1; i >= 0; i--)
        if (g->ops[i].kind == IR_OP_CROSS_ENTROPY)
            return ir_shape_numel(&g->tensors[g->ops[i].in[1]].shape);
    for (int i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].kind == IR_TENSOR_INPUT && g->tensors[i].part == IR_PART_DECODER)
            return ir_shape_numel(&g->tensors[i].shape);
    return 1;
}

int model_summarize(const struct ir_graph *g, struct model_summary *s, struct diag *d)
{
    memset(s, 0, sizeof *s);
    for (int b = 0; b < g->n_blocks && s->n_blocks < MODEL_MAX_BLOCKS; b++) {
        s->blocks[s->n_blocks].name = g->blocks[b].name;
        s->blocks[s->n_blocks++].count = g->blocks[b].count;
    }
    for (int i = 0; i < g->n_tensors; i++) {
        const struct ir_tensor *t = &g->tensors[i];
        if (t->kind != IR_TENSOR_PARAM)
            continue;
        int64_t n = ir_shape_numel(&t->shape), b16, b32;
        if (n < 0 || __builtin_add_overflow(s->params, n, &s->params) ||
            __builtin_mul_overflow(n, 4, &b32) || __builtin_mul_overflow(n, 2, &b16) ||
            __builtin_add_overflow(s->weight_bytes_fp32, b32, &s->weight_bytes_fp32) ||
            __builtin_add_overflow(s->weight_bytes_bf16, b16, &s->weight_bytes_bf16)) {
            diag_error(d, g->file, t->loc.line, "the parameter count overflows 64 bits at '%s'", t->local_name);
            return -1;
        }
        s->params_by_part[t->part] += n;
        if (t->block >= 0 && t->block < MODEL_MAX_BLOCKS && t->iter == 0 && t->layer == 0)
            s->blocks[t->block].params_per_iter += n;
    }
    for (int i = 0; i < g->n_ops; i++)
        s->flops_forward += ir_op_flops(g, &g->ops[i]);
    s->tokens = tokens_per_sample(g);
    s->flops_per_token_forward = s->flops_forward / (double)s->tokens;
    s->flops_per_token_train = 3 * s->flops_per_token_forward;
    return 0;
}
