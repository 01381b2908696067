/* pipeline.c: the passes of a plan's compile, in order, each followed by
 * its check (pipeline.h). */
#include "pipeline.h"
#include "schedule.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

enum { REFUSED = 2, BUG = 1 };

struct compile_request compile_request_default(void)
{
    return (struct compile_request){.pc = par_config_default(), .schedule = -1, .opt = optim_config_default()};
}

/* partition: the model file into a typed graph on stages and shards.
 *   requires: the request
 *   produces: C->P (ir_verify holds) */
static int pass_partition(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    C->P = partition_model(q->model, &q->fe, &q->pc, d);
    if (!C->P)
        return REFUSED;
    return ir_verify(C->P->g, true, d) ? BUG : 0;
}

/* schedule: every stage's instruction stream, proved unable to hang.
 *   requires: C->P
 *   produces: C->S */
static int pass_schedule(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    enum ir_sched_kind kind = q->schedule >= 0 ? (enum ir_sched_kind)q->schedule : schedule_default(C->P);
    if (schedule_build(C->P, kind, q->forward_only, &C->S, d))
        return REFUSED;
    return ir_schedule_verify(&C->S, C->P->L, d) ? BUG : 0;
}

/* fuse: everything between GEMMs into kernels; a bias (and GELU) after a
 * GEMM into its epilogue, unless asked not to.
 *   requires: C->P, C->S (forward only or not)
 *   produces: C->K (every kernel one the emitters take) */
static int pass_fuse(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    fuse(C->P, C->train ? &C->opt : NULL, &C->K);
    if (!q->no_gemm_epilogues)
        fuse_gemm_epilogues(C->P, &C->K);
    for (int k = 0; k < C->K.n_kernels; k++)
        if (C->K.kernels[k].kind == KN_KIND_FUSED && !kn_valid(&C->K.kernels[k].k)) {
            diag_error(d, NULL, 0, "fuse: kernel %s breaks the kernel rules (kn_valid): weft's bug", C->K.kernels[k].name);
            return BUG;
        }
    return 0;
}

/* memory: every role's arena; before the binaries, so a rank that would not
 * fit costs no NVRTC time.
 *   requires: C->P, C->S, C->K
 *   produces: C->M (no two live buffers share a byte) */
static int pass_memory(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    memory_plan(C->P, &C->S, &C->K, &C->M);
    if (ir_memory_check(&C->M, d))
        return BUG;
    return q->memory_limit && memory_check(C->P, &C->M, q->memory_limit, d) ? REFUSED : 0;
}

/* lower: every step as actions.
 *   requires: C->P, C->S, C->K, C->M
 *   produces: C->A (every operand a buffer of its role's arena) */
static int pass_lower(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    (void)q;
    if (lower(C->P, &C->S, &C->K, &C->M, &C->A, d))
        return REFUSED;
    return ir_actions_check(&C->A, &C->M, &C->K, &C->S, d) ? BUG : 0;
}

/* kernels: the CUDA binaries and the CPU object.
 *   requires: C->K
 *   produces: C->K's binaries, C->ks */
static int pass_kernels(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    if (q->no_binaries)
        return 0;
    return kernels_build(&C->K, q->archs, q->n_archs, &C->ks, d) ? BUG : 0;
}

/* simulate: the step's predicted time.
 *   requires: C->P, C->S
 *   produces: C->sim */
static int pass_simulate(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    return simulate(C->P, &C->S, q->dev ? q->dev : device_find(DEVICE_DEFAULT), &C->sim, d) ? REFUSED : 0;
}

static const struct {
    const char *name;
    int (*run)(const struct compile_request *q, struct compiled *C, struct diag *d);
} passes[] = {
    {"partition", pass_partition}, {"schedule", pass_schedule}, {"fuse", pass_fuse},
    {"memory", pass_memory},       {"lower", pass_lower},       {"kernels", pass_kernels},
    {"simulate", pass_simulate},
};

int compile_pass_count(void) { return (int)(sizeof passes / sizeof passes[0]); }
const char *compile_pass_name(int i) { return passes[i].name; }

int compile_plan(const struct compile_request *q, struct compiled *C, struct diag *d)
{
    memset(C, 0, sizeof *C);
    C->model = strdup(q->model);
    C->train = !q->forward_only;
    C->opt = q->opt;
    for (int i = 0; i < compile_pass_count(); i++) {
        int rc = passes[i].run(q, C, d);
        if (rc == BUG && !d->n_errors)
            diag_error(d, NULL, 0, "%s: the pass's check failed: weft's bug", passes[i].name);
        if (rc)
            return rc;
    }
    return 0;
}

void compiled_free(struct compiled *C)
{
    ir_schedule_free(&C->S);
    sim_result_free(&C->sim);
    ir_actions_free(&C->A);
    ir_memory_free(&C->M);
    kn_set_free(&C->K);
    partition_free(C->P);
    free(C->model);
    memset(C, 0, sizeof *C);
}
