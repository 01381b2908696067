/* cost.h: how long things take on a device: a roofline per op.
 *
 *   const struct device *dev = device_find("h100");
 *   double t = cost_op_seconds(P, op, dev);   // one rank's time for one micro-batch
 *
 * An op costs the larger of its FLOPs over the device's bf16 peak and its
 * bytes (inputs and outputs as one rank holds them: fp32, or bf16 with
 * --bf16) over memory
 * bandwidth.  A first model, good enough to balance pipeline stages and to
 * predict a step; its numbers are the vendors' dense peaks. */
#ifndef WEFT_COST_H
#define WEFT_COST_H

#include "partition.h"

struct device {
    const char *name;
    double bf16_flops;   /* dense, per second */
    double hbm_bytes;    /* per second */
    double nvlink_bytes; /* per second, per direction, within a node */
    double net_bytes;    /* per second, per GPU, between nodes */
    int64_t memory;      /* bytes */
    int gpus_per_node;
};

const struct device *device_find(const char *name); /* NULL if unknown */
/* Read a device description: "key = value" lines (name, bf16_tflops,
 * hbm_gbps, nvlink_gbps, network_gbps, memory_gib, gpus_per_node; # comments).
 * Errors name the file and line. */
int device_read(const char *path, struct device *dev, struct diag *d);
extern const struct device device_default;          /* the H100 */

/* A rank's FLOPs for one op: the op's FLOPs scaled by the smallest fraction
 * of any activation it touches that the rank holds. */
double cost_op_flops(const struct partition *P, int op);
double cost_op_seconds(const struct partition *P, int op, const struct device *dev);

#endif
