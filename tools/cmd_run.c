/* cmd_run.c: `weft run PLAN [--steps N] [--seed S] [--log FILE] [--save DIR] [--load PATH]`: train. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "checkpoint.h"
#include "cli.h"
#include "comm.h"
#include "exec.h"
#include "util.h"

#include <cblas.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

static const char usage[] =
    "usage: [mpirun -np N] weft run PLAN [--steps N] [--seed S] [--log FILE] [--timeout SECONDS] [--dump-params FILE]\n"
    "                                [--save DIR [--save-interval N]] [--load PATH]\n"
    "\n"
    "Run a compiled plan: every rank allocates the one arena its memory plan\n"
    "sizes, draws the parameters from the seed (by their index in the whole\n"
    "tensor, so every layout starts from the same model), and walks its\n"
    "actions: GEMMs through OpenBLAS, kernels from the plan's CPU object.\n"
    "The data are synthetic token ids from the seed.  Prints one line per\n"
    "iteration; --log FILE writes one JSON object per iteration (iteration,\n"
    "loss, lr, grad_norm, step_time, tokens_per_s).\n"
    "One process per rank, under mpirun or srun (the plan's world size).  The\n"
    "BLAS takes the node's cores over its ranks (OPENBLAS_NUM_THREADS overrides),\n"
    "and so do the kernels between the GEMMs.  Unless the environment names them,\n"
    "weft run sets OpenBLAS's OPENBLAS_THREAD_TIMEOUT (its threads sleep after a\n"
    "GEMM, leaving the cores to the kernels) and, where OpenBLAS did not know the\n"
    "CPU and took pre-AVX2 kernels, OPENBLAS_CORETYPE (SkylakeX or Haswell, as\n"
    "the CPU allows); OpenBLAS reads both as it loads, so weft runs itself again.\n"
    "Data, tensor, sequence, context, expert and pipeline parallel plans run; a\n"
    "plan with an action this weft cannot run is refused, naming it.\n"
    "  --steps N    iterations to run (default 10)\n"
    "  --seed S     the parameters' and the data's seed (default 1234)\n"
    "  --log FILE   the per-iteration JSON lines (rank 0)\n"
    "  --timeout S  the longest any rank waits for another (default 300 s)\n"
    "  --profile    at the end, rank 0's ten slowest kernels\n"
    "  --dump-params FILE  at the end, every parameter whole (rank 0 writes; exec.h says the format)\n"
    "  --save DIR   checkpoints in DIR, as Megatron lays them out: DIR/iter_0000100/\n"
    "               (model.safetensors: every parameter whole, fp32, by its plan name;\n"
    "               optimizer.safetensors: AdamW's exp_avg, exp_avg_sq; checkpoint.json:\n"
    "               iteration, consumed samples, seed, data, model) and\n"
    "               DIR/latest_checkpointed_iteration.txt, written last.  Saved at the end\n"
    "               of the run, and every --save-interval iterations.  Every rank writes its\n"
    "               own slices in place; a save is complete or absent (a temporary directory,\n"
    "               fsync, renamed): a crash or a full disk leaves the previous one (a save\n"
    "               that fails ends the run with status 1)\n"
    "  --save-interval N  a checkpoint every N iterations (with --save)\n"
    "  --load PATH  resume: DIR loads the checkpoint its tracker names, DIR/iter_N that one;\n"
    "               any layout loads any checkpoint of the same model (a vocabulary padded\n"
    "               otherwise: its real rows, the padding zero).  Iterations, the learning\n"
    "               rate's schedule, Adam's bias correction, the consumed samples and the\n"
    "               seed continue from it; --steps N runs N more.  With --save naming the\n"
    "               same DIR, a DIR with no checkpoint yet starts from the seed\n";

/* OpenBLAS's kernels where it did not know the CPU: its names for x86 cores
 * before AVX2 (dynamic.c), which a CPU with AVX2 or AVX-512 does not need. */
static bool blas_fallback(const char *core)
{
    static const char *const old[] = {"Unknown", "Katmai", "Coppermine", "Northwood", "Prescott", "Banias",
                                      "Atom",    "Core2",  "Penryn",     "Dunnington", "Nehalem", "Sandybridge"};
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++)
        if (!strcasecmp(core, old[i]))
            return true;
    return false;
}

/* OpenBLAS reads two settings from the environment once, as it loads
 * (before main), so weft run sets them where the user did not and runs
 * itself again, once (WEFT_BLAS_ENV marks the second time):
 * - OPENBLAS_THREAD_TIMEOUT 4: OpenBLAS's threads spin for 2^28 cycles
 *   (about 0.1 s) after each GEMM by default, taking the cores from the
 *   kernels' threads (runtime/backend.c) that run between GEMMs; at 2^4 they
 *   sleep at once, and waking them costs microseconds a GEMM.  On GPT-2 124M
 *   (bench/README.md) attention and AdamW took half the time with it.
 * - OPENBLAS_CORETYPE: OpenBLAS picks its kernels by the CPU's model; one it
 *   does not know (a new model, or a VM's generic "Intel(R) Xeon(R)
 *   Processor") gets Prescott's, 1.6 times slower there than SkylakeX's.
 *   Set only where OpenBLAS took a pre-AVX2 fallback on a CPU with AVX2
 *   and FMA (Haswell) or AVX-512 (SkylakeX).
 * Before MPI starts: a rank that replaces itself keeps its process. */
void cmd_run_blas_env(char **argv)
{
    if (getenv("WEFT_BLAS_ENV"))
        return;
    bool again = false;
    const char *mark = "1";
    if (!getenv("OPENBLAS_THREAD_TIMEOUT"))
        again |= !setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1);
#if defined(__x86_64__) && defined(__GNUC__)
    const char *want = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
                           ? "SkylakeX"
                       : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "Haswell"
                                                                                          : NULL;
    if (!getenv("OPENBLAS_CORETYPE") && want && blas_fallback(openblas_get_corename()) && !setenv("OPENBLAS_CORETYPE", want, 1))
        again = true, mark = openblas_get_corename(); /* what OpenBLAS took, for the banner */
#endif
    if (!again || setenv("WEFT_BLAS_ENV", mark, 1))
        return;
    execv("/proc/self/exe", argv); /* where it fails, run on as we are */
}

/* The BLAS's threads: the node's cores over its ranks, unless the user says. */
static int blas_threads(void)
{
    if (getenv("OPENBLAS_NUM_THREADS") || getenv("OMP_NUM_THREADS"))
        return 0;
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!local)
        local = getenv("SLURM_NTASKS_PER_NODE");
    long ranks = local ? strtol(local, NULL, 10) : 1, cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = (int)(cores / (ranks > 0 ? ranks : 1));
    cpu_set_t mine; /* no more than the cores this rank may run on (mpirun binds a rank to one core by default) */
    if (!sched_getaffinity(0, sizeof mine, &mine) && CPU_COUNT(&mine) < n)
        n = CPU_COUNT(&mine);
    n = n < 1 ? 1 : n;
    openblas_set_num_threads(n);
    return n;
}

/* A checkpoint of the run as it is, iterations [0, it) done (every rank
 * calls it); rank 0 says where and how fast.  0, or 1 on every rank where
 * any failed (d says why). */
static int save_checkpoint(struct exec *x, const struct rank_plan *R, struct comm *comm, const char *dir, long it, uint64_t seed,
                           struct diag *d)
{
    struct ckpt_state cs = {.iteration = it, .consumed_samples = exec_consumed_samples(x), .seed = seed};
    struct ckpt_saved sv;
    if (ckpt_save(x, R, comm, dir, &cs, &ckpt_weft_model, &sv, d))
        return EXIT_FAILURE_RUN; /* every rank: they agreed */
    if (comm->rank == 0)
        printf("saved checkpoint of iteration %ld to %s: %.1f MB in %.3f s (%.2f GB/s)\n", it, sv.dir, (double)sv.bytes / 1e6,
               sv.seconds, (double)sv.bytes / sv.seconds / 1e9);
    return 0;
}

int cmd_run(int argc, char **argv)
{
    const char *path = NULL, *log = NULL, *dump = NULL, *save = NULL, *load = NULL;
    long steps = 10, save_interval = 0;
    bool seed_given = false;
    double timeout = 300;
    bool profile = false;
    unsigned long long seed = 1234;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return EXIT_OK;
        }
        bool has = i + 1 < argc;
        char *end = NULL;
        if (!strcmp(a, "--steps") && has) {
            steps = strtol(argv[++i], &end, 10);
            if (*end || steps < 0) {
                fprintf(stderr, "weft run: --steps %s: expected a count of iterations\n", argv[i]);
                return EXIT_BAD_INPUT;
            }
        } else if (!strcmp(a, "--seed") && has) {
            seed = strtoull(argv[++i], &end, 10);
            seed_given = true;
            if (*end) {
                fprintf(stderr, "weft run: --seed %s: expected an integer\n", argv[i]);
                return EXIT_BAD_INPUT;
            }
        } else if (!strcmp(a, "--timeout") && has) {
            timeout = strtod(argv[++i], &end);
            if (*end || !(timeout > 0)) {
                fprintf(stderr, "weft run: --timeout %s: expected seconds above 0\n", argv[i]);
                return EXIT_BAD_INPUT;
            }
        } else if (!strcmp(a, "--profile"))
            profile = true;
        else if (!strcmp(a, "--log") && has)
            log = argv[++i];
        else if (!strcmp(a, "--dump-params") && has)
            dump = argv[++i];
        else if (!strcmp(a, "--save") && has)
            save = argv[++i];
        else if (!strcmp(a, "--load") && has)
            load = argv[++i];
        else if (!strcmp(a, "--save-interval") && has) {
            save_interval = strtol(argv[++i], &end, 10);
            if (*end || save_interval < 1) {
                fprintf(stderr, "weft run: --save-interval %s: expected a count of iterations above 0\n", argv[i]);
                return EXIT_BAD_INPUT;
            }
        }
        else if (a[0] != '-' && !path)
            path = a;
        else {
            fprintf(stderr, "weft run: %s: unknown flag or missing value\n%s", a, usage);
            return EXIT_BAD_INPUT;
        }
    }
    if (!path) {
        fprintf(stderr, "weft run: no plan file given\n%s", usage);
        return EXIT_BAD_INPUT;
    }
    if (save_interval && !save) {
        fprintf(stderr, "weft run: --save-interval needs --save DIR\n");
        return EXIT_BAD_INPUT;
    }
    signal(SIGXFSZ, SIG_IGN); /* a file past RLIMIT_FSIZE: the write fails (EFBIG) and the save says so */
    struct diag d;
    diag_init(&d);
    struct comm *comm = comm_mpi_open(NULL, NULL, timeout, &d);
    if (!comm) {
        diag_print(&d, stderr);
        return EXIT_FAILURE_RUN;
    }
    bool lead = comm->rank == 0;
    int threads = blas_threads();
    struct rank_plan R;
    int rc = rank_plan_load(path, comm->rank, comm->size, &R, &d);
    if (!rc && comm_groups(comm, R.L, &R.schedule, &d))
        rc = EXIT_FAILURE_RUN;
    struct ckpt_found found;
    bool resume = false; /* a checkpoint found to load */
    if (!rc && load) {
        int got = ckpt_find(comm, load, save && !strcmp(save, load), &found, &d); /* 1: none yet, in --save's own DIR */
        rc = got == 2 ? EXIT_BAD_INPUT : rc;
        resume = got == 0;
    }
    if (resume && seed_given && found.state.seed != seed && lead)
        printf("note: --seed %llu: the checkpoint's seed %llu continues its randomness\n", seed, (unsigned long long)found.state.seed);
    if (resume)
        seed = found.state.seed;
    struct exec *x = rc ? NULL : exec_new(&R, comm, seed, &d);
    double load_s = wf_seconds();
    if (x && resume && ckpt_load(x, &R, comm, &found, &d))
        rc = EXIT_BAD_INPUT;
    load_s = wf_seconds() - load_s;
    if (!rc && !R.train)
        diag_error(&d, NULL, 0, "%s is a forward-only plan (--mode infer): weft run trains; compile it for training", path);
    FILE *lf = NULL;
    if (x && !d.n_errors && log && lead && !(lf = fopen(log, "w")))
        diag_error(&d, NULL, 0, "--log %s: cannot write it", log);
    if (lf)
        setvbuf(lf, NULL, _IOLBF, 0); /* each iteration's line out at once: a run killed keeps its log */
    FILE *df = NULL;
    if (x && !d.n_errors && dump && lead && !(df = fopen(dump, "wb")))
        diag_error(&d, NULL, 0, "--dump-params %s: cannot write it", dump);
    if (!x || d.n_errors) { /* every rank finds the same: rank 0 says it (a checkpoint's reader gives another rank
                             * only what rank 0 did not find) */
        if (lead || (load && d.n_errors))
            diag_print(&d, stderr);
        diag_free(&d);
        exec_free(x);
        rank_plan_free(&R);
        if (lf)
            fclose(lf);
        if (df)
            fclose(df);
        comm_close(comm);
        return rc == EXIT_FAILURE_RUN ? rc : EXIT_BAD_INPUT;
    }
    const char *took = getenv("WEFT_BLAS_ENV"); /* the kernels OpenBLAS took before cmd_run_blas_env chose others, or "1" */
    bool chose = took && *took && strcmp(took, "1");
    char lay[128];
    if (lead)
        printf("%s: %d rank%s (%s), %d micro-batch%s a step; %d BLAS thread%s a rank%s, OpenBLAS %s kernels%s%s%s\n", path,
               comm->size, comm->size == 1 ? "" : "s", par_layout_str(&R.L->pc, lay, sizeof lay), R.schedule.n_micro,
               R.schedule.n_micro == 1 ? "" : "es", threads ? threads : openblas_get_num_threads(),
               (threads ? threads : openblas_get_num_threads()) == 1 ? "" : "s", threads ? "" : " (as the environment says)",
               openblas_get_corename(), chose ? " (weft set OPENBLAS_CORETYPE: OpenBLAS took " : "", chose ? took : "",
               chose ? "'s for this CPU)" : "");
    long start = resume ? found.state.iteration : 0, saved_at = -1, end = start + steps;
    if (resume && lead)
        printf("loaded %s: iteration %ld, %lld samples consumed, seed %llu (saved by %d rank%s: %s); %.1f MB in %.3f s (%.2f GB/s)\n",
               found.dir, start, (long long)found.state.consumed_samples, (unsigned long long)seed, found.world_size,
               found.world_size == 1 ? "" : "s", found.layout, (double)found.bytes / 1e6, load_s, (double)found.bytes / load_s / 1e9);
    double total = 0, by_kind[IR_ACT_COUNT] = {0};
    int64_t tokens = 0;
    for (long it = start; it <= end && !rc; it++) {
        if (save && save_interval && it > start && it % save_interval == 0) /* iterations [0, it) done */
            rc = save_checkpoint(x, &R, comm, save, it, seed, &d), saved_at = it;
        if (it == end || rc)
            break;
        struct exec_stats st;
        if (exec_step(x, it, &st, &d)) {
            diag_print(&d, stderr); /* this rank's failure: the others wait on it, so end them all */
            fflush(NULL);
            comm_abort(comm, EXIT_FAILURE_RUN);
        }
        total += st.seconds;
        tokens += st.tokens;
        for (int k = 0; k < IR_ACT_COUNT; k++)
            by_kind[k] += st.action_seconds[k];
        if (!lead)
            continue;
        printf("iteration %6ld/%ld | loss %.6f | lr %.3e | grad norm %.4f | %.1f ms | %.0f tokens/s\n", it + 1, end, st.loss,
               st.lr, st.grad_norm, st.seconds * 1e3, (double)st.tokens / st.seconds);
        if (lf)
            fprintf(lf, "{\"iteration\": %ld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"step_time\": %.6f, \"tokens_per_s\": %.1f}\n",
                    it + 1, st.loss, st.lr, st.grad_norm, st.seconds, (double)st.tokens / st.seconds);
    }
    if (save && saved_at != end && !rc) /* at the end, as Megatron (with --steps 0: the loaded or initial state, as it is) */
        rc = save_checkpoint(x, &R, comm, save, end, seed, &d);
    if (rc) { /* a save failed on some rank: each says its own reason, rank 0 what is kept */
        diag_print(&d, stderr);
        diag_free(&d);
        if (lf)
            fclose(lf);
        if (df)
            fclose(df);
        exec_free(x);
        rank_plan_free(&R);
        comm_close(comm);
        return rc;
    }
    if (dump && (exec_dump_params(x, df, &d) || (df && fclose(df)))) {
        diag_print(&d, stderr);
        fflush(NULL);
        comm_abort(comm, EXIT_FAILURE_RUN);
    }
    if (rc == 0 && steps && lead) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru); /* ru_maxrss: KiB on Linux */
        double peak = (double)ru.ru_maxrss * 1024, arena = (double)R.memory.roles[R.stage].total, scratch = (double)exec_scratch_bytes(x);
        printf("%ld iterations in %.2f s, %.0f tokens/s\n", steps, total, (double)tokens / total);
        char extra[96] = "";
        if (scratch > 0)
            snprintf(extra, sizeof extra, "the bf16 GEMMs' scratch %.1f MiB, ", scratch / 1048576);
        printf("rank 0's peak resident memory %.1f MiB: the plan's arena %.1f MiB, %sthe rest %.1f MiB (the program, its "
               "libraries, OpenBLAS's and MPI's buffers)\n", peak / 1048576, arena / 1048576, extra, (peak - arena - scratch) / 1048576);
        double rest = total;
        printf("rank 0's time:");
        for (int k = 0; k < IR_ACT_COUNT; k++)
            if (by_kind[k] > 0) {
                printf(" %s %.1f%%,", k == IR_ACT_GEMM ? "GEMMs" : k == IR_ACT_LAUNCH ? "kernels" : k == IR_ACT_COLL ? "collectives" : ir_act_name(k),
                       100 * by_kind[k] / total);
                rest -= by_kind[k];
            }
        printf(" the rest (data, waits) %.1f%%\n", 100 * rest / total);
        for (int shown = 0, *done = wf_calloc((size_t)R.kernels.n_kernels + 1, sizeof *done); profile; shown++) {
            int best = -1;
            for (int k = 0; k < R.kernels.n_kernels; k++)
                if (!done[k] && (best < 0 || exec_kernel_seconds(x, k) > exec_kernel_seconds(x, best)))
                    best = k;
            if (shown == 10 || best < 0 || exec_kernel_seconds(x, best) <= 0) {
                free(done);
                break;
            }
            done[best] = 1;
            printf("  %-48s %8.1f ms a step (%.1f%%)\n", R.kernels.kernels[best].name, 1e3 * exec_kernel_seconds(x, best) / (double)steps,
                   100 * exec_kernel_seconds(x, best) / total);
        }
    }
    diag_print(&d, stderr);
    diag_free(&d);
    if (lf)
        fclose(lf);
    exec_free(x);
    rank_plan_free(&R);
    comm_close(comm);
    return rc;
}
