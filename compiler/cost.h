/* cost.h: how long an op takes on a device (ir/device.h's model and table).
 *
 *   const struct device *dev = device_find("h100");
 *   double t = cost_op_seconds(P, op, dev);   // one rank's time for one micro-batch's forward
 *
 * An op's FLOPs and bytes are what one rank holds of it (inputs and outputs:
 * fp32, or bf16 with --bf16).  A matmul is a GEMM of its local m x n x k at
 * the GEMM model's efficiency for that shape; fused attention runs at the
 * device's attention efficiency; every other op takes the larger of its
 * FLOPs at the fp32 peak and its bytes at the kernels' share of the memory
 * bandwidth.  The GEMM efficiency is symmetric in m, n and k, so a matmul's
 * backward (two GEMMs of the same three sizes, permuted) is twice its
 * forward, as simulate.c counts it. */
#ifndef WEFT_COST_H
#define WEFT_COST_H

#include "device.h"
#include "partition.h"

/* The device a command uses unless told otherwise (--gpu, --arch, a plan's own). */
#define DEVICE_DEFAULT "h100"

/* A rank's FLOPs for one op: the op's FLOPs scaled by the smallest fraction
 * of any activation it touches that the rank holds. */
double cost_op_flops(const struct partition *P, int op);
double cost_op_seconds(const struct partition *P, int op, const struct device *dev);
/* Whether the op runs as a GEMM (a BLAS or cuBLAS call; the rest are kernels). */
bool cost_op_is_gemm(const struct partition *P, int op);

#endif
