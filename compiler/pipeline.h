/* pipeline.h: a plan's whole compile, as one table of passes run in order by
 * one function (QBE's main.c).  `weft compile`, the tests and the benchmarks
 * all call it; none assembles the passes by hand.
 *
 *   struct compile_request q = compile_request_default();
 *   q.model = "models/gpt2.xml";  q.pc.world_size = 8;  q.pc.tp = 2;  q.pc.pp = 2;
 *   struct compiled C;
 *   if (compile_plan(&q, &C, &diag) == 0)            // d says which pass refused, and why
 *       emit_plan(&C, "gpt2.plan", &diag);           // (emit_plan.h)
 *   compiled_free(&C);
 *
 * The passes, each followed by its check:
 *   partition   model file -> typed graph -> stages, shards, transfers   ir_verify
 *   schedule    every stage's instruction stream                          the no-hang proof
 *   fuse        kernels and launches                                      kn_valid on every kernel
 *   memory      every role's arena                                        ir_memory_check, --memory-limit
 *   lower       every step as actions (ir/actions.h)                      every action's buffer in the arena
 *   kernels     CUDA binaries (NVRTC) and the CPU object
 *   simulate    the step's predicted time
 * A pass that refuses (a user error) stops the compile with status 2's
 * meaning; a check that fails is weft's bug, reported as such. */
#ifndef WEFT_PIPELINE_H
#define WEFT_PIPELINE_H

#include "cost.h"
#include "fuse.h"
#include "kernels.h"
#include "lower.h"
#include "memory.h"
#include "optim.h"
#include "partition.h"
#include "simulate.h"

struct compile_request {
    const char *model;           /* the model file */
    struct fe_options fe;        /* variant, dimension overrides */
    struct par_config pc;
    int schedule;                /* enum ir_sched_kind, or -1: schedule_default */
    bool forward_only;           /* --mode infer */
    struct optim_config opt;     /* training's optimizer */
    const int *archs;            /* GPU architectures for NVRTC; n_archs 0: no GPU binaries */
    int n_archs;
    bool no_binaries;            /* skip the kernels pass (no NVRTC, no CPU object): a plan to look at, not run */
    bool no_gemm_epilogues;      /* --gemm-epilogues off: every bias after a GEMM a launch of its own */
    const struct device *dev;    /* simulate's device; NULL: the default */
    int64_t memory_limit;        /* 0: none */
};

struct compile_request compile_request_default(void);

struct compiled {
    char *model;                 /* the model file's path (a copy) */
    struct partition *P;
    struct ir_schedule S;
    struct kn_set K;
    struct ir_memory M;
    struct ir_actions A;
    struct kernel_stats ks;
    struct sim_result sim;
    struct optim_config opt;     /* training's optimizer (unused forward only) */
    bool train;                  /* the schedule has backward steps and an update */
};

/* Run every pass.  0: C holds the whole compile; 2: the input was refused
 * (d says why); 1: a check failed (weft's bug).  C is freed by
 * compiled_free whatever the result. */
int compile_plan(const struct compile_request *q, struct compiled *C, struct diag *d);
void compiled_free(struct compiled *C);
/* The passes' names in order, for messages and `weft compile --help`. */
int compile_pass_count(void);
const char *compile_pass_name(int i);

#endif
