/* cmd_simulate.c: `weft simulate MODEL.xml [layout flags] -o schedule.svg`:
 * predict a training step and draw its timeline. */
#include "cli.h"
#include "json.h"
#include "plan.h"
#include "schedule.h"
#include "simulate.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: weft simulate MODEL.xml [layout flags...] [--pipeline-schedule gpipe|1f1b|interleaved] [--mode train|infer]\n"
    "       weft simulate MODEL.plan\n"
    "                     [--gpu h100|a100|cpu | --arch sm_90|sm_80|cpu] [--calibration FILE] [-o schedule.svg] [--json]\n"
    "\n"
    "Predict one training step: every rank's instruction stream run against the\n"
    "others with each op's roofline time on the device and ring-model collectives.\n"
    "Prints the step time, the pipeline bubble (time a rank waits on other stages),\n"
    "the exposed tensor- and data-parallel communication, tokens/s and MFU; -o\n"
    "draws the first pipeline's timeline (stages as rows, forward, backward and\n"
    "transfers).  With --mode infer, it predicts a forward pass instead.\n"
    "The device: --gpu's, else a plan's own (the one it was compiled for), else\n"
    "--arch's (sm_90: h100, sm_80: a100), else h100.  --calibration FILE replaces\n"
    "its constants with a JSON object's (weft simulate --json prints the table\n"
    "used, with every key: bf16_tflops, gemm_ceiling, hbm_gbps, link_gbps, ...).\n";

int cmd_simulate(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "simulate", usage))
        return c.status;
    struct device chosen;
    const struct device *dev = cli_device(&c, &chosen);
    if (!dev)
        return c.status;
    struct diag d;
    diag_init(&d);
    struct partition *P = cli_partition(&c);
    if (!P) {
        diag_free(&d);
        return c.status;
    }
    struct ir_schedule S;
    struct sim_result r = {0};
    int rc = cli_schedule(&c, P, &S, &d);
    bool built = rc == 0;
    if (rc == 0) {
        rc = simulate(P, &S, dev, &r, &d);
        if (rc == 0 && c.output)
            rc = simulate_svg(P, &S, &r, c.output, &d);
    }
    diag_print(&d, stderr);
    if (rc == 0 && c.json) {
        struct json j;
        json_init(&j, stdout);
        json_begin_object(&j, NULL);
        json_string(&j, "model", P->g->name);
        json_string(&j, "device", dev->name);
        json_string(&j, "schedule", ir_sched_name(S.kind));
        json_string(&j, "mode", S.forward_only ? "infer" : "train");
        json_int(&j, "micro_batches", S.n_micro);
        json_double(&j, "step_time", r.step_time);
        json_double(&j, "bubble", r.bubble);
        json_double(&j, "compute_time", r.compute_time);
        json_double(&j, "tp_comm", r.tp_comm);
        json_double(&j, "dp_comm", r.dp_comm);
        json_double(&j, "optimizer_time", r.optimizer_time);
        json_double(&j, "tokens_per_s", r.tokens_per_s);
        json_double(&j, "mfu", r.mfu);
        device_json(&j, "calibration", &r.dev);
        json_end_object(&j);
        json_finish(&j);
    } else if (rc == 0) {
        printf("%s on %d ranks, %s schedule, %d micro-batch%s, on %s\n", P->g->name, P->L->n_ranks, ir_sched_name(S.kind),
               S.n_micro, S.n_micro == 1 ? "" : "es", dev->name);
        printf("  step time   %.3f ms  (the busiest rank computes %.3f ms)\n", r.step_time * 1e3, r.compute_time * 1e3);
        double step = r.step_time > 0 ? r.step_time : 1;
        printf("  bubble      %.1f%% of the step (pipeline idle: waiting on other stages)\n", 100 * r.bubble);
        printf("  exposed     tp/cp/ep communication %.3f ms (%.1f%%), gradient reduction %.3f ms (%.1f%%), optimizer %.3f ms\n",
               r.tp_comm * 1e3, 100 * r.tp_comm / step, r.dp_comm * 1e3, 100 * r.dp_comm / step, r.optimizer_time * 1e3);
        printf("  throughput  %.0f tokens/s, MFU %.1f%%\n", r.tokens_per_s, 100 * r.mfu);
        if (c.output)
            printf("  timeline    %s\n", c.output);
    }
    if (built)
        ir_schedule_free(&S);
    sim_result_free(&r);
    partition_free(P);
    diag_free(&d);
    return rc ? EXIT_BAD_INPUT : EXIT_OK;
}
