/* cost.c: device descriptions and the roofline cost of an op. */
#include "cost.h"

#include <string.h>

static const struct device devices[] = {
    /* H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 4 450 GB/s each way, 400 Gb/s InfiniBand. */
    {"h100", 989e12, 3.35e12, 450e9, 50e9, 80LL << 30},
    /* A100 SXM 80 GB: 312 TFLOP/s dense bf16, 2.04 TB/s HBM2e, NVLink 3 300 GB/s each way, 200 Gb/s InfiniBand. */
    {"a100", 312e12, 2.04e12, 300e9, 25e9, 80LL << 30},
};

const struct device device_default = {"h100", 989e12, 3.35e12, 450e9, 50e9, 80LL << 30};

const struct device *device_find(const char *name)
{
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++)
        if (!strcmp(devices[i].name, name))
            return &devices[i];
    return NULL;
}

static double held(const struct partition *P, enum ir_part part, int t, int64_t *elems)
{
    const struct ir_tensor *x = &P->g->tensors[t];
    struct ir_shape l = partition_local_shape(P, part, &x->shape, &P->shard[t]);
    int64_t n = ir_shape_numel(&l), all = ir_shape_numel(&x->shape);
    *elems += n;
    return all ? (double)n / (double)all : 1;
}

static double rank_fraction(const struct partition *P, int op, int64_t *elems)
{
    const struct ir_op *o = &P->g->ops[op];
    enum ir_part part = P->chunks[P->op_chunk[op]].part;
    double f = 1;
    /* A lookup reads only the rows it returns, not its whole table. */
    bool gather = o->kind == IR_OP_EMBEDDING || o->kind == IR_OP_POSITION_EMBEDDING;
    for (int k = 0; k < o->n_in; k++)
        if (o->in[k] >= 0 && !(gather && k == 0)) {
            double h = held(P, part, o->in[k], elems);
            if (P->g->tensors[o->in[k]].kind == IR_TENSOR_ACT && h < f)
                f = h;
        }
    for (int k = 0; k < o->n_out; k++) {
        if (gather)
            held(P, part, o->out[k], elems); /* the rows read */
        double h = held(P, part, o->out[k], elems);
        if (h < f)
            f = h;
    }
    return f;
}

double cost_op_flops(const struct partition *P, int op)
{
    int64_t elems = 0;
    return ir_op_flops(P->g, &P->g->ops[op]) * rank_fraction(P, op, &elems);
}

double cost_op_seconds(const struct partition *P, int op, const struct device *dev)
{
    int64_t elems = 0;
    double flops = ir_op_flops(P->g, &P->g->ops[op]) * rank_fraction(P, op, &elems);
    double compute = flops / dev->bf16_flops, memory = (double)elems * 2 / dev->hbm_bytes;
    return compute > memory ? compute : memory;
}
