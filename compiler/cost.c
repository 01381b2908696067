/* cost.c: an op's time on a device, by the model of ir/device.h. */
#include "cost.h"

/* Adds the bytes a rank holds of tensor t to *bytes; returns the fraction it holds. */
static double held(const struct partition *P, enum ir_part part, int t, int64_t *bytes)
{
    const struct ir_tensor *x = &P->g->tensors[t];
    struct ir_shape l = partition_local_shape(P, part, &x->shape, &P->shard[t]);
    int64_t n = ir_shape_numel(&l), all = ir_shape_numel(&x->shape);
    *bytes += n * partition_elem_bytes(P, x);
    return all ? (double)n / (double)all : 1;
}

static double rank_fraction(const struct partition *P, int op, int64_t *bytes)
{
    const struct ir_op *o = &P->g->ops[op];
    enum ir_part part = P->chunks[P->op_chunk[op]].part;
    double f = 1;
    /* A lookup reads only the rows it returns, not its whole table. */
    bool gather = o->kind == IR_OP_EMBEDDING || o->kind == IR_OP_POSITION_EMBEDDING;
    for (int k = 0; k < o->n_in; k++)
        if (o->in[k] >= 0 && !(gather && k == 0)) {
            double h = held(P, part, o->in[k], bytes);
            if (P->g->tensors[o->in[k]].kind == IR_TENSOR_ACT && h < f)
                f = h;
        }
    for (int k = 0; k < o->n_out; k++) {
        if (gather)
            held(P, part, o->out[k], bytes); /* the rows read */
        double h = held(P, part, o->out[k], bytes);
        if (h < f)
            f = h;
    }
    return f;
}

double cost_op_flops(const struct partition *P, int op)
{
    int64_t bytes = 0;
    return ir_op_flops(P->g, &P->g->ops[op]) * rank_fraction(P, op, &bytes);
}

bool cost_op_is_gemm(const struct partition *P, int op) { return P->g->ops[op].kind == IR_OP_MATMUL; }

/* A matmul's local m x n x k: n the output's last axis, m its other rows,
 * k the contracted axis of the left operand. */
static void gemm_dims(const struct partition *P, int op, double *m, double *n, double *k)
{
    const struct ir_op *o = &P->g->ops[op];
    enum ir_part part = P->chunks[P->op_chunk[op]].part;
    const struct ir_tensor *a = &P->g->tensors[o->in[0]], *c = &P->g->tensors[o->out[0]];
    struct ir_shape la = partition_local_shape(P, part, &a->shape, &P->shard[o->in[0]]);
    struct ir_shape lc = partition_local_shape(P, part, &c->shape, &P->shard[o->out[0]]);
    *n = lc.rank ? (double)lc.ax[lc.rank - 1].size : 1;
    *m = *n > 0 ? (double)ir_shape_numel(&lc) / *n : 0;
    int ka = ir_op_int(o, IR_ATTR_TRANSPOSE_A) ? la.rank - 2 : la.rank - 1;
    *k = ka >= 0 ? (double)la.ax[ka].size : 1;
}

double cost_op_seconds(const struct partition *P, int op, const struct device *dev)
{
    int64_t bytes = 0;
    double flops = ir_op_flops(P->g, &P->g->ops[op]) * rank_fraction(P, op, &bytes);
    bool bf16 = P->L->pc.bf16;
    double peak = bf16 ? dev->bf16_flops : dev->fp32_flops;
    double memory = (double)bytes / (dev->hbm_bytes * dev->hbm_efficiency);
    if (cost_op_is_gemm(P, op)) {
        double m, n, k;
        gemm_dims(P, op, &m, &n, &k);
        double eff = device_gemm_efficiency(dev, m, n, k);
        double compute = flops > 0 && eff > 0 ? dev->gemm_launch + flops / (peak * eff) : 0;
        return compute > memory ? compute : memory;
    }
    double compute = P->g->ops[op].kind == IR_OP_ATTENTION ? flops / (peak * dev->attention_efficiency) : flops / dev->fp32_flops;
    return compute > memory ? compute : memory;
}
