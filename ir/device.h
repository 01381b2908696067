/* device.h: what a device can do, as one calibration table per device: the
 * numbers `weft simulate` costs a step with and `weft run` compares with.
 *
 *   struct device dev = *device_find("h100");          // or device_for_archs("sm_80,sm_90", &diag)
 *   device_calibrate(&dev, "h100-measured.json", &d);   // a file's measured values replace the defaults
 *   double t = device_gemm_seconds(&dev, true, 16384, 2304, 768);  // bf16 GEMM, m n k
 *
 * Every constant lives in the table (device.c says where each default
 * comes from); nothing in the cost model is a number of its own.  A
 * calibration file is one JSON object whose keys are the table's (in the
 * units the key names: "bf16_tflops": 989, "hbm_gbps": 3350, ...), each
 * replacing that constant; an unknown key, a value that is not a positive
 * number, or a file that is not JSON is an error naming the file.
 *
 * The model (compiler/cost.c applies it per op):
 *   GEMM       flops / (peak x ceiling x s(m) x s(n) x s(k)) + launch, where
 *              s(x) = x / (x + gemm_half_dim): a dimension of gemm_half_dim
 *              runs at half the rate, large ones approach the ceiling
 *   attention  flops / (peak x attention_efficiency)
 *   other      max(flops / fp32 peak, bytes / (hbm x hbm_efficiency))
 *   transfer   latency + bytes / bandwidth (a collective's bytes by its
 *              ring algorithm: all-reduce 2(n-1)/n of the buffer) */
#ifndef WEFT_DEVICE_H
#define WEFT_DEVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"

struct device {
    char name[64];
    int arch;                    /* the sm_XX it is (90, 80); 0: a CPU */
    double bf16_flops;           /* dense peak of a bf16 plan's GEMMs, FLOP/s */
    double fp32_flops;           /* peak of an fp32 plan's GEMMs and of every elementwise op, FLOP/s */
    double gemm_ceiling;         /* the fraction of peak the largest GEMMs reach */
    double gemm_half_dim;        /* the m, n or k at which that dimension halves the rate */
    double gemm_launch;          /* seconds a GEMM costs whatever its size */
    double attention_efficiency; /* fused attention's fraction of the GEMM peak */
    double hbm_bytes;            /* memory bandwidth, bytes/s */
    double hbm_efficiency;       /* the fraction of it memory-bound kernels reach */
    double link_bytes;           /* collective bus bandwidth within a node (NCCL's busbw), bytes/s */
    double network_bytes;        /* ... between nodes, per device */
    double link_latency;         /* seconds a collective or a pipeline transfer costs whatever its size */
    double memory;               /* bytes */
    double gpus_per_node;        /* ranks that share the fast link */
};

/* A built-in device by name ("h100", "a100", "cpu"); NULL if unknown. */
const struct device *device_find(const char *name);
/* The names of the built-in devices, "h100, a100, cpu", for messages. */
const char *device_names(void);
/* The device a plan compiled for these architectures runs on: "sm_80,sm_90"
 * (the newest of them that has a built-in device: h100 for sm_90, a100 for
 * sm_80) or "cpu".  NULL, with an error naming the list, when none has one. */
const struct device *device_for_archs(const char *archs, struct diag *d);
/* Replace dev's constants by those a calibration file names. */
int device_calibrate(struct device *dev, const char *path, struct diag *d);
/* Write dev as a calibration file's object would be (every key). */
struct json;
void device_json(struct json *j, const char *key, const struct device *dev);

/* The GEMM model's efficiency (its fraction of peak) for an m x n x k GEMM. */
double device_gemm_efficiency(const struct device *dev, double m, double n, double k);
/* Seconds an m x n x k GEMM takes: bf16 on the bf16 peak, else fp32's. */
double device_gemm_seconds(const struct device *dev, bool bf16, double m, double n, double k);

#endif
