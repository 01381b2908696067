/* cost.c: device descriptions and the roofline cost of an op. */
#include "cost.h"

#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct device devices[] = {
    /* H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 4 450 GB/s each way, 400 Gb/s InfiniBand. */
    {"h100", 989e12, 3.35e12, 450e9, 50e9, 80LL << 30, 8},
    /* A100 SXM 80 GB: 312 TFLOP/s dense bf16, 2.04 TB/s HBM2e, NVLink 3 300 GB/s each way, 200 Gb/s InfiniBand. */
    {"a100", 312e12, 2.04e12, 300e9, 25e9, 80LL << 30, 8},
};

const struct device device_default = {"h100", 989e12, 3.35e12, 450e9, 50e9, 80LL << 30, 8};

const struct device *device_find(const char *name)
{
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++)
        if (!strcmp(devices[i].name, name))
            return &devices[i];
    return NULL;
}

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

double cost_op_seconds(const struct partition *P, int op, const struct device *dev)
{
    int64_t bytes = 0;
    double flops = ir_op_flops(P->g, &P->g->ops[op]) * rank_fraction(P, op, &bytes);
    double compute = flops / dev->bf16_flops, memory = (double)bytes / dev->hbm_bytes;
    return compute > memory ? compute : memory;
}

int device_read(const char *path, struct device *dev, struct diag *d)
{
    size_t len;
    char *text = wf_read_file(path, 1 << 20, &len);
    if (!text) {
        diag_error(d, path, 0, "cannot read: %s", strerror(errno));
        return -1;
    }
    static char name[64];
    *dev = device_default;
    snprintf(name, sizeof name, "%s", path);
    dev->name = name;
    static const struct {
        const char *key;
        double scale;
    } keys[] = {{"bf16_tflops", 1e12}, {"hbm_gbps", 1e9}, {"nvlink_gbps", 1e9}, {"network_gbps", 1e9},
                {"memory_gib", 1073741824.0}, {"gpus_per_node", 1}};
    int line = 0, errors = d->n_errors;
    for (char *p = text, *next; p && *p; p = next) {
        next = strchr(p, '\n');
        if (next)
            *next++ = 0;
        line++;
        char *hash = strchr(p, '#');
        if (hash)
            *hash = 0;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            continue;
        char *eq = strchr(p, '=');
        if (!eq) {
            diag_error(d, path, line, "expected KEY = VALUE");
            continue;
        }
        char *end = eq;
        while (end > p && isspace((unsigned char)end[-1]))
            end--;
        *end = 0;
        char *val = eq + 1;
        while (isspace((unsigned char)*val))
            val++;
        for (char *t = val + strlen(val); t > val && isspace((unsigned char)t[-1]);)
            *--t = 0;
        if (!strcmp(p, "name")) {
            snprintf(name, sizeof name, "%s", val);
            continue;
        }
        int k = -1;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (!strcmp(keys[i].key, p))
                k = (int)i;
        char *stop;
        double x = strtod(val, &stop);
        if (k < 0) {
            diag_error(d, path, line, "unknown key '%s' (keys: name, bf16_tflops, hbm_gbps, nvlink_gbps, network_gbps, memory_gib, gpus_per_node)", p);
        } else if (!*val || *stop || !(x > 0)) {
            diag_error(d, path, line, "%s: '%s' is not a positive number", p, val);
        } else {
            x *= keys[k].scale;
            switch (k) {
            case 0: dev->bf16_flops = x; break;
            case 1: dev->hbm_bytes = x; break;
            case 2: dev->nvlink_bytes = x; break;
            case 3: dev->net_bytes = x; break;
            case 4: dev->memory = (int64_t)x; break;
            default: dev->gpus_per_node = (int)x; break;
            }
        }
    }
    free(text);
    return d->n_errors == errors ? 0 : -1;
}
