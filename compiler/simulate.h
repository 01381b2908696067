/* simulate.h: predict a training step: the schedule run with the cost model.
 *
 *   struct sim_result r;
 *   simulate(P, &S, device_find("h100"), &r, &diag);   // r.step_time, r.bubble, r.dp_comm ...
 *   simulate_svg(P, &S, &r, "schedule.svg", &diag);     // the first pipeline's timeline
 *   sim_result_free(&r);
 *
 * Forward time per chunk is the sum of its ops' times (cost.h), backward is
 * twice forward, the optimizer reads and writes 28 bytes per parameter
 * (AdamW: fp32 weight, gradient and two moments) at the kernels' share of
 * the memory bandwidth.  Transfers: a pipeline send takes the device's
 * latency and its bytes over the link within a node, the network between
 * nodes; a collective the latency and its ring's bytes: all-reduce 2(n-1)/n
 * of the buffer, all-gather n-1 shards, reduce-scatter and all-to-all
 * (n-1)/n.  Every rank waits in order: a collective or a send holds up what
 * follows it in the rank's program (weft run --overlap off runs them so;
 * with --overlap on, the default, a chunk's gradient buckets start within
 * its last backward and collectives run beside the actions that do not
 * touch their bytes, so a data-parallel step can take up to dp_comm less
 * than predicted: not modelled yet).
 *
 * Where the time goes, each rank's, averaged over the ranks:
 *   bubble    the pipeline's idle time, as Megatron counts its bubble: a rank
 *             waiting on another stage, in its pipeline transfers (posted
 *             until done), for the members of a collective to arrive, and
 *             from its finish to the step's end; over the step time.  One
 *             rank, or one stage of identical ranks, has none; ideal 1F1B
 *             (equal stages, free transfers) has (p-1)/(m+p-1).
 *   tp_comm   collectives of the tensor, context and expert parallel groups
 *   dp_comm   the gradients' reductions: data parallel, tied parameters,
 *             the norm's sums
 * each from the moment the whole group is there, so what overlaps nothing. */
#ifndef WEFT_SIMULATE_H
#define WEFT_SIMULATE_H

#include "cost.h"
#include "program.h"

struct sim_result {
    struct device dev;         /* the device it was costed on */
    double step_time, bubble;
    double compute_time;       /* of the busiest rank: forward and backward */
    double tp_comm, dp_comm;   /* seconds a step, the ranks' mean */
    double optimizer_time;     /* seconds a step, the ranks' mean */
    double tokens_per_step, tokens_per_s;
    double model_flops;        /* per step, whole model (3 x forward) */
    double mfu;                /* model FLOPs / (step time x ranks x bf16 peak) */
    struct ir_timeline tl;
};

int simulate(const struct partition *P, const struct ir_schedule *S, const struct device *dev, struct sim_result *r,
             struct diag *d);

/* What a run measured, seconds a step summed over every rank: its GEMMs,
 * and its other kernels (launches, copies, zeroing, the loss's and norm's
 * sums; the optimizer's among them).  Collectives and transfers are not
 * fitted: they are what the schedule and the device predict. */
struct sim_measured {
    double gemm, kernels;
};
/* dev with its GEMM efficiency (ceiling and launch) and its kernels' (memory
 * and attention efficiency) scaled so that the model's GEMM and kernel
 * seconds of a step, summed over the ranks, are those measured; a CPU's
 * rates are its BLAS's and its kernels', which no datasheet gives. */
void simulate_fit(const struct partition *P, const struct ir_schedule *S, const struct device *dev,
                  const struct sim_measured *m, struct device *fitted);
/* weft simulate PLAN: the plan's own partition and schedule on dev (fitted
 * to m first unless m is NULL; r->dev says what it was costed on).  r's
 * timeline keeps the ranks' figures, not its spans. */
int simulate_plan(const char *path, const struct device *dev, const struct sim_measured *m, struct sim_result *r,
                  struct diag *d);
int simulate_svg(const struct partition *P, const struct ir_schedule *S, const struct sim_result *r, const char *path,
                 struct diag *d);
void sim_result_free(struct sim_result *r);

#endif
