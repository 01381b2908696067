/* simulate.h: predict a training step: the schedule run with the cost model.
 *
 *   struct sim_result r;
 *   simulate(P, &S, device_find("h100"), &r, &diag);   // r.step_time, r.bubble
 *   simulate_svg(P, &S, &r, "schedule.svg", &diag);     // the first pipeline's timeline
 *   sim_result_free(&r);
 *
 * Forward time per chunk comes from cost.c's roofline, backward is twice
 * forward, the optimizer reads and writes 28 bytes per parameter (AdamW:
 * fp32 weight, gradient and two moments).  Transfers: a p2p send takes its
 * bytes over NVLink within a node, the network between nodes; collectives
 * take the ring's time: all-reduce 2(n-1)/n of the bytes, all-gather n-1
 * shards, reduce-scatter and all-to-all (n-1)/n, plus 5 us each.
 * The bubble is the time the busiest rank is not computing, over its compute:
 * with equal stages and free transfers, (p-1)/m for 1F1B. */
#ifndef WEFT_SIMULATE_H
#define WEFT_SIMULATE_H

#include "cost.h"
#include "program.h"

struct sim_result {
    const struct device *dev;
    double step_time, bubble;
    double compute_time;       /* of the busiest rank */
    double tokens_per_step, tokens_per_s;
    double model_flops;        /* per step, whole model (3 x forward) */
    double mfu;                /* model FLOPs / (step time x ranks x peak) */
    struct ir_timeline tl;
};

int simulate(const struct partition *P, const struct ir_schedule *S, const struct device *dev, struct sim_result *r,
             struct diag *d);
int simulate_svg(const struct partition *P, const struct ir_schedule *S, const struct sim_result *r, const char *path,
                 struct diag *d);
void sim_result_free(struct sim_result *r);

#endif
