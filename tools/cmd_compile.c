/* cmd_compile.c: `weft compile MODEL.xml [layout flags] -o model.plan`. */
#include "cli.h"
#include "emit_plan.h"
#include "nvrtc.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: weft compile MODEL.xml [layout flags...] [--pipeline-schedule gpipe|1f1b|interleaved]\n"
    "                    [--mode train|infer] [--lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 2000\n"
    "                     --lr-decay-iters 320000 --lr-decay-style cosine --train-iters N\n"
    "                     --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --clip-grad 1.0]\n"
    "                    [--gpu h100|a100|cpu] [--calibration FILE] [--bf16 [--grad-reduce-in-bf16]]\n"
    "                    [--memory-limit 80GiB] [--arch sm_80,sm_90|cpu] [--gemm-epilogues on|off]\n"
    "                    -o MODEL.plan\n"
    "\n"
    "Partition the model for the layout, build every rank's schedule, prove it\n"
    "cannot hang, plan each rank's memory, predict the step, and write one plan\n"
    "file.  Prints each role (pipeline stage): its layers, instructions and memory\n"
    "by category.  --memory-limit turns a rank that would not fit into an error.\n"
    "--mode infer compiles a forward pass: no backward, gradients or optimizer.\n"
    "Everything between two GEMMs becomes a fused kernel (attention one of its\n"
    "own, each group's backward and the optimizer step too): CUDA C compiled by\n"
    "NVRTC to a cubin per --arch (default sm_80,sm_90) and PTX for newer GPUs,\n"
    "and C compiled by the system compiler for the CPU backend, both in the\n"
    "plan (--arch cpu: the CPU's only); a cache in $XDG_CACHE_HOME/weft keeps\n"
    "the compilers' work between compiles.  A bias after a GEMM (and a tanh GELU\n"
    "after that) runs in the GEMM's epilogue where nothing else reads the GEMM's\n"
    "product: cuBLASLt's on a GPU, the group's kernel after the GEMM on a CPU;\n"
    "--gemm-epilogues off keeps it a launch of its own.\n"
    "The optimizer is AdamW with fp32 master weights and Megatron's learning-rate\n"
    "schedule, set by Megatron's flags (defaults: lr 1e-4, linear decay, weight\n"
    "decay 0.01, betas 0.9/0.999, eps 1e-8, clip-grad 1.0); the plan records it.\n"
    "--bf16 is Megatron's mixed precision: bf16 weights and activations, fp32\n"
    "master weights, optimizer state and gradients; --grad-reduce-in-bf16 keeps\n"
    "the gradients in bf16 too (accumulated and reduced over data-parallel ranks\n"
    "in bf16, half the bytes), as Megatron-Core's grad_reduce_in_fp32=False.\n";

/* "kernels: 4 distinct for 49 launches; sm_80, sm_90 and PTX compute_90: ..." */
static void print_kernels(const struct kn_set *K, const struct kernel_stats *st, const int *archs, int n_archs)
{
    char a[32];
    char launches[96];
    printf("  kernels: %d distinct for %s; ", st->distinct, kn_set_launches(K, launches, sizeof launches));
    if (st->no_gpu[0])
        printf("no GPU binaries (%s)", st->no_gpu);
    else if (!n_archs)
        printf("no GPU binaries (--arch cpu)");
    else {
        for (int i = 0; i < n_archs; i++)
            printf("%ssm_%d", i ? ", " : "", archs[i]);
        printf(" and PTX compute_%d: %d compiled by NVRTC %s in %.2f s (%.2f s of NVRTC on threads), %d from the cache",
               st->ptx_arch, st->compiled, nvrtc_version(), st->nvrtc_wall, st->nvrtc_seconds, st->cached);
    }
    printf("; CPU object %s", wf_bytes((double)K->cpu_size, a));
    if (st->cpu_cached)
        printf(" from the cache\n");
    else
        printf(" (cc %.2f s)\n", st->cc_seconds);
}

/* The compile's summary: the layout, each role's memory by region, the kernels, the prediction. */
static void print_summary(const struct compiled *C, const char *output, const int *archs, int n_archs)
{
    const struct partition *P = C->P;
    const struct ir_schedule *S = &C->S;
    const struct par_config *pc = &P->L->pc;
    char a[32], b[32];
    char lay[128];
    printf("%s: %s on %d ranks (%s%s), %s schedule%s, %d micro-batch%s; verified\n", output,
           P->g->name, P->L->n_ranks, par_layout_str(pc, lay, sizeof lay), P->L->has_encoder && pc->epp ? ", encoder of its own" : "",
           ir_sched_name(S->kind), S->forward_only ? " forward only (--mode infer)" : "", S->n_micro, S->n_micro == 1 ? "" : "es");
    printf("  %-18s %-9s %-20s %6s %10s %10s %10s %10s %10s %10s %10s %10s\n", "role", "ranks", "layers", "instrs",
           "params", "grads", "optimizer", "activ.", "working", "comm", "workspace", "total");
    for (int s = 0; s < S->n_stages; s++) {
        int lo = -1, hi = -1;
        for (int r = 0; r < P->L->n_ranks; r++)
            if (P->L->ranks[r].stage == s) {
                lo = lo < 0 ? r : lo;
                hi = r;
            }
        char role[64], ranks[32], layers[128] = "";
        size_t n = 0;
        enum ir_part part = IR_PART_DECODER;
        for (int ch = 0; ch < P->n_chunks; ch++) {
            const struct part_chunk *k = &P->chunks[ch];
            if (k->stage != s)
                continue;
            part = k->part;
            n += (size_t)snprintf(layers + n, sizeof layers - n, "%s%s%d-%d", n ? "," : "",
                                  k->part == IR_PART_ENCODER && P->L->has_encoder ? "e" : "", k->first_layer,
                                  k->first_layer + k->n_layers - 1);
        }
        snprintf(role, sizeof role, "%s stage %d", ir_part_name(part), s);
        snprintf(ranks, sizeof ranks, lo == hi ? "%d" : "%d-%d", lo, hi);
        const struct ir_role_memory *ms = &C->M.roles[s];
        printf("  %-18s %-9s %-20s %6d", role, ranks, layers, S->programs[s].n);
        for (int k = 0; k < IR_REGION_COUNT; k++)
            printf(" %10s", wf_bytes((double)ms->size[k], a));
        printf(" %10s\n", wf_bytes((double)ms->total, b));
    }
    int largest = memory_largest(&C->M);
    const struct ir_role_memory *big = &C->M.roles[largest];
    char flight[64] = "";
    if (!S->forward_only)
        snprintf(flight, sizeof flight, "; activations of %d micro-batch%s in flight", big->in_flight,
                 big->in_flight == 1 ? "" : "es");
    printf("  largest rank: %s (stage %d%s)%s\n", wf_bytes((double)big->total, a), largest, flight,
           pc->bf16 ? "" : "; fp32 throughout (--bf16 for mixed precision)");
    print_kernels(&C->K, &C->ks, archs, n_archs);
    printf("  predicted %s %.3f ms on %s, bubble %.1f%%\n", S->forward_only ? "forward pass" : "step", C->sim.step_time * 1e3, C->sim.dev.name, 100 * C->sim.bubble);
}

int cmd_compile(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "compile", usage))
        return c.status;
    if (c.model && cli_is_plan(c.model)) { /* its graph has no backward to compile again */
        fprintf(stderr, "weft compile: %s is a plan file; weft compile takes a model file (.xml)\n", c.model);
        return EXIT_BAD_INPUT;
    }
    if (!c.output) {
        fprintf(stderr, "weft compile: -o FILE.plan is needed\n");
        return EXIT_BAD_INPUT;
    }
    struct device chosen;
    const struct device *dev = cli_device(&c, &chosen);
    if (!dev)
        return c.status;
    char err[256];
    if (optim_check(&c.opt, err, sizeof err)) {
        fprintf(stderr, "weft compile: %s\n", err);
        return EXIT_BAD_INPUT;
    }
    int archs[8];
    struct diag ad;
    diag_init(&ad);
    int n_archs = kernels_parse_archs(c.arch ? c.arch : KERNELS_DEFAULT_ARCHS, archs, 8, &ad);
    diag_print(&ad, stderr);
    diag_free(&ad);
    if (n_archs < 0)
        return EXIT_BAD_INPUT;
    struct compile_request q = compile_request_default();
    q.model = c.model;
    q.fe = c.fe;
    q.pc = c.pc;
    q.schedule = c.schedule ? ir_sched_parse(c.schedule) : -1;
    q.forward_only = c.infer;
    q.opt = c.opt;
    q.archs = archs;
    q.n_archs = n_archs;
    q.dev = dev;
    q.memory_limit = c.memory_limit;
    q.no_gemm_epilogues = c.no_gemm_epilogues;
    struct diag d;
    diag_init(&d);
    struct compiled C;
    int rc = compile_plan(&q, &C, &d);
    if (rc == 0 && emit_plan(&C, c.output, &d))
        rc = EXIT_FAILURE_RUN;
    diag_print(&d, stderr);
    if (rc == 0)
        print_summary(&C, c.output, archs, n_archs);
    compiled_free(&C);
    diag_free(&d);
    return rc ? (rc == 1 ? EXIT_FAILURE_RUN : EXIT_BAD_INPUT) : EXIT_OK;
}
