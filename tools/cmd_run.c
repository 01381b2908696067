/* cmd_run.c: `weft run PLAN [--steps N] [--data-path P] [--save DIR] [--load PATH] ...`: train. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "checkpoint.h"
#include "cli.h"
#include "comm.h"
#include "data.h"
#include "exec.h"
#include "hf.h"
#include "simulate.h"
#include "util.h"

#include <cblas.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <math.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: [mpirun -np N] weft run PLAN [--steps N] [--seed S] [--log FILE] [--log-interval N] [--skip-limit N]\n"
    "                                    [--timeout SECONDS] [--dump-params FILE] [--device cpu|cuda]\n"
    "                                    [--comm auto|mpi|nccl] [--cuda-graphs on|off] [--overlap on|off]\n"
    "                                    [--data-path PREFIX [--split 969,30,1] [--eval-interval N --eval-iters K]]\n"
    "                                    [--save DIR [--save-interval N] [--save-format weft|hf]] [--load PATH]\n"
    "\n"
    "Run a compiled plan: every rank allocates the one arena its memory plan\n"
    "sizes, draws the parameters from the seed (by their index in the whole\n"
    "tensor, so every layout starts from the same model), and walks its\n"
    "actions: on the CPU (the default) GEMMs through OpenBLAS and kernels from\n"
    "the plan's CPU object; with --device cuda, one GPU per rank, GEMMs through\n"
    "cuBLASLt and kernels from the plan's cubins (or PTX).\n"
    "The data are Megatron's: --data-path PREFIX reads PREFIX.bin and PREFIX.idx\n"
    "(weft data makes them; so does Megatron's preprocess_data.py) and makes the\n"
    "samples Megatron's GPTDataset makes (seq-length + 1 tokens each, shuffled by\n"
    "--seed, split by --split), dealt to the data-parallel ranks as Megatron's\n"
    "sampler deals them; without it, synthetic token ids from the seed.\n"
    "Rank 0 prints Megatron's training_log line every --log-interval\n"
    "iterations (and after the first), averaged over the interval as Megatron\n"
    "does, then weft's tokens/s; the throughput is the plan's model FLOPs a\n"
    "step (weft inspect shows them) per rank per second.  On a terminal a\n"
    "progress bar runs on stderr, never in a file or a pipe.  --log FILE writes\n"
    "one JSON object per iteration\n"
    "(iteration, loss, lr, grad_norm, step_time, tokens_per_s, consumed_samples;\n"
    "val_loss where it validated; null for a value that is not finite).\n"
    "An iteration whose loss or gradient norm is not finite skips its update on\n"
    "every rank (no parameter or optimizer state changes; the learning rate's\n"
    "schedule and Adam's step count only the updates taken) and is counted as\n"
    "Megatron counts it; --skip-limit iterations skipped in a row stop the run.\n"
    "One process per rank, under mpirun or srun (the plan's world size).  The\n"
    "BLAS takes the node's cores over its ranks (OPENBLAS_NUM_THREADS overrides),\n"
    "and so do the kernels between the GEMMs.  Unless the environment names them,\n"
    "weft run sets OpenBLAS's OPENBLAS_THREAD_TIMEOUT (its threads sleep after a\n"
    "GEMM, leaving the cores to the kernels) and, where OpenBLAS did not know the\n"
    "CPU and took pre-AVX2 kernels, OPENBLAS_CORETYPE (SkylakeX or Haswell, as\n"
    "the CPU allows); OpenBLAS reads both as it loads, so weft runs itself again.\n"
    "Data, tensor, sequence, context, expert and pipeline parallel plans run; a\n"
    "plan with an action this weft cannot run is refused, naming it.\n";
static const char usage_flags[] =
    "  --steps N    iterations to run (default 10)\n"
    "  --seed S     the parameters' and the data's seed (default 1234)\n"
    "  --log FILE   the per-iteration JSON lines (rank 0)\n"
    "  --log-interval N  iterations between log lines (default 1; Megatron's is 100)\n"
    "  --skip-limit N    stop (exit 1) after N iterations skipped in a row (default 5)\n"
    "  --timeout S  the longest any rank waits for another (default 300 s)\n"
    "  --device D   cpu (the default) or cuda: each rank on a GPU, $WEFT_CUDA_DEVICE or its rank on the\n"
    "               node ($OMPI_COMM_WORLD_LOCAL_RANK) mod the node's GPUs; the plan's GEMMs through\n"
    "               cuBLASLt (fp32 sums; bf16 operands under --bf16), its kernels from its cubins\n"
    "  --comm C     what carries a GPU run's collectives and transfers: nccl (one GPU a rank), mpi (device\n"
    "               buffers staged through the host: several ranks may share a GPU), or auto (the default:\n"
    "               nccl where libnccl.so.2 opens on every rank and no two ranks of one group share a GPU,\n"
    "               else mpi; one rank: mpi, nothing crosses); on the CPU, MPI carries the run (nccl: an error)\n"
    "  --cuda-graphs G  on (default) or off: a GPU replays each run of launches between host steps\n"
    "               as a CUDA graph (captured on its second step, replayed after)\n"
    "  --overlap O  on (default) or off: a collective runs beside the actions that do not touch its\n"
    "               buffers (NCCL on a second stream), until one does\n"
    "  --profile    at the end, rank 0's ten slowest kernels (graphs off)\n"
    ;
static const char usage_more_flags[] =
    "  --calibration FILE  constants of the device model the predicted step is costed on (weft simulate --help says\n"
    "                       the keys; its GEMM and kernel rates are fitted to the run, its link measured at the start)\n"
    "  --dump-params FILE  at the end, every parameter whole (rank 0 writes; exec.h says the format)\n"
    "  --data-path PREFIX   train on PREFIX.bin/.idx (a decoder's plan: its tokens and labels); every token\n"
    "                       is checked against the plan's vocabulary before the first step\n"
    "  --split A,B,C        the train, valid and test shares of the documents (default 969,30,1)\n"
    "  --eval-interval N    every N iterations, and after the last, the validation loss: the mean over\n"
    "  --eval-iters K       the tokens of K global batches of the valid split (forward only, no update;\n"
    "                       dropout off), read in order across validations\n"
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
    "  --save-format F  weft (the default), or hf: the model as Hugging Face's (model.safetensors by\n"
    "               the model file's <hf> names, and config.json: transformers' from_pretrained loads\n"
    "               DIR/iter_N), beside the optimizer's state and checkpoint.json\n"
    "  --load PATH  resume: DIR loads the checkpoint its tracker names, DIR/iter_N that one;\n"
    "               any layout loads any checkpoint of the same model (a vocabulary padded\n"
    "               otherwise: its real rows, the padding zero).  Iterations, the learning\n"
    "               rate's schedule, Adam's bias correction, the consumed samples and the\n"
    "               seed continue from it; --steps N runs N more.  With --save naming the\n"
    "               same DIR, a DIR with no checkpoint yet starts from the seed.\n"
    "               Or start from Hugging Face weights: a .safetensors file, or a directory with\n"
    "               model.safetensors or model.safetensors.index.json and its shards (the model\n"
    "               file's <hf> names say how; each rank reads its slices)\n";

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

/* A number as Python formats it in Megatron's log ("nan", never glibc's "-nan"). */
static const char *num_str(char buf[32], const char *fmt, double v)
{
    if (isnan(v))
        return "nan";
    snprintf(buf, 32, fmt, v);
    return buf;
}

/* A JSON number, or null where it is not finite (JSON has no NaN). */
static void put_json(FILE *f, const char *key, const char *fmt, double v)
{
    fprintf(f, ", \"%s\": ", key);
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fputs("null", f);
}

/* What Megatron's training_log sums between two log lines. */
struct log_interval {
    int advanced, skipped, nan; /* iterations updated, skipped, skipped with a loss not finite */
    double loss_sum, seconds;   /* the advanced iterations' losses; every iteration's seconds */
    int64_t tokens;
};

/* Megatron's training_log line (megatron/training/training.py), field by
 * field with its widths, for a log interval ending at `iteration` (1-based)
 * of `iterations`: the time and throughput per iteration of the interval,
 * the loss averaged over the updates taken in it, the learning rate and the
 * norm of its last iteration; loss scale 1.0 (bf16 and fp32 need none).
 * Throughput: the plan's model FLOPs a step (plan_meta.flops_step) over the
 * ranks and the seconds, as Megatron's throughput per GPU is
 * num_floating_point_operations / (seconds * 1e12 * world_size).  Then
 * weft's: tokens/s over all ranks. */
static void log_line(FILE *f, long iteration, long iterations, int64_t consumed, const struct log_interval *in,
                     const struct exec_stats *st, int64_t global_batch, double flops_step, int world)
{
    int n = in->advanced + in->skipped;
    double per = in->seconds / (n ? n : 1);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    fprintf(f, " [%s.%06ld] iteration %8ld/%8ld | consumed samples: %12lld | elapsed time per iteration (ms): %.1f |", when,
            (long)tv.tv_usec, iteration, iterations, (long long)consumed, per * 1e3);
    fprintf(f, " throughput per GPU (TFLOP/s/GPU): %.1f |", flops_step / (per * 1e12 * world));
    fprintf(f, " learning rate: %.6E | global batch size: %5lld |", st->lr, (long long)global_batch);
    double avg = in->loss_sum / (in->advanced > 1 ? in->advanced : 1);
    char b[32];
    if (avg >= 0.0) /* Megatron's test */
        fprintf(f, " lm loss: %s |", num_str(b, "%.6E", avg));
    fprintf(f, " loss scale: 1.0 | grad norm: %s", num_str(b, "%.3f", st->grad_norm));
    fprintf(f, " | number of skipped iterations: %3d | number of nan iterations: %3d |", in->skipped, in->nan);
    fprintf(f, " tokens/s: %.0f |\n", in->seconds > 0 ? (double)in->tokens / in->seconds : 0);
}

/* The progress bar: on stderr, only where stderr is a terminal, redrawn in
 * place (and wiped before a log line, so the two never mix). */
static void bar_draw(long done, long total, double seconds)
{
    enum { WIDTH = 30 };
    int full = total ? (int)(WIDTH * done / total) : WIDTH;
    char bar[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++)
        bar[i] = i < full ? '#' : '.';
    bar[WIDTH] = 0;
    double left = done ? seconds / (double)done * (double)(total - done) : 0;
    fprintf(stderr, "\r\033[K[%s] %ld/%ld iterations, %.0f s left", bar, done, total, left);
    fflush(stderr);
}

static void bar_wipe(void)
{
    fputs("\r\033[K", stderr);
    fflush(stderr);
}

static const char dashes[] = "--------------------------------------------------------------------------------"
                             "--------------------------------------------------------------------------------"
                             "--------------------------------------------------------------------------------";

/* The validation loss: the mean over the tokens of `iters` global batches of
 * valid's samples from *consumed (which it advances by gb a batch), printed on rank 0 as
 * Megatron prints it. */
static double validate(struct exec *x, struct comm *comm, const struct data_gpt *valid, long iters, int64_t gb, int64_t *consumed,
                       long iteration, const char *where, struct diag *d)
{
    double sum = 0, count = 0;
    for (long k = 0; k < iters; k++) {
        double s, n;
        if (exec_evaluate(x, valid, *consumed, &s, &n, d)) {
            diag_print(d, stderr); /* as a step's failure: end every rank */
            fflush(NULL);
            comm_abort(comm, EXIT_FAILURE_RUN);
        }
        sum += s, count += n;
        *consumed += gb;
    }
    double val = count > 0 ? sum / count : 0;
    if (comm->rank == 0) {
        char line[256];
        int n = snprintf(line, sizeof line, " validation loss at iteration %ld%s | lm loss value: %.6E | lm loss PPL: %.6E | ", iteration,
                         where, val, exp(val < 20 ? val : 20));
        printf("%.*s\n%s\n%.*s\n", n + 1, dashes, line, n + 1, dashes);
    }
    return val;
}

/* A checkpoint of the run as it is, iterations [0, it) done (every rank
 * calls it): *run's data and seed, the executor's position, the
 * validation's; rank 0 says where and how fast.  0, or 1 on every rank
 * where any failed (d says why). */
static int save_checkpoint(struct exec *x, const struct rank_plan *R, struct comm *comm, const char *dir,
                           const struct ckpt_model_writer *mw, long it, int64_t valid_consumed, const struct ckpt_state *run,
                           struct diag *d)
{
    struct ckpt_state cs = *run;
    cs.iteration = it, cs.consumed_samples = exec_consumed_samples(x), cs.skipped = exec_skipped_updates(x);
    cs.valid_consumed = valid_consumed;
    struct ckpt_saved sv;
    if (ckpt_save(x, R, comm, dir, &cs, mw, &sv, d))
        return EXIT_FAILURE_RUN; /* every rank: they agreed */
    if (comm->rank == 0)
        printf("saved checkpoint of iteration %ld to %s%s: %.1f MB in %.3f s (%.2f GB/s)\n", it, sv.dir,
               mw == &ckpt_weft_model ? "" : " (the model as Hugging Face's)", (double)sv.bytes / 1e6, sv.seconds,
               (double)sv.bytes / sv.seconds / 1e9);
    return 0;
}

static int by_seconds(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Every rank, before the first step: the link between this run's ranks as
 * the device model has it, measured over the world: an all-reduce of one
 * float (the latency) and of 1 MiB (the bus bandwidth: a ring moves
 * 2(n-1)/n of the buffer), each the median of a few. */
static int measure_link(struct comm *comm, struct device *dev, struct diag *d)
{
    enum { REPS = 7, BIG = 1 << 18 };
    float *buf = wf_calloc(BIG, sizeof *buf);
    double t[2][REPS];
    int rc = 0;
    for (int size = 0; size < 2 && !rc; size++)
        for (int i = 0; i < REPS && !rc; i++) {
            double t0 = wf_seconds();
            rc = comm->ops->collective(comm, IR_GROUP_COUNT, 0, IR_COLL_ALL_REDUCE, buf, buf, size ? BIG : 1, IR_DTYPE_F32, d);
            t[size][i] = wf_seconds() - t0;
        }
    free(buf);
    if (rc)
        return rc;
    qsort(t[0], REPS, sizeof t[0][0], by_seconds);
    qsort(t[1], REPS, sizeof t[1][0], by_seconds);
    double latency = t[0][REPS / 2], big = t[1][REPS / 2], n = comm->size;
    dev->link_latency = latency;
    if (big > latency)
        dev->link_bytes = dev->network_bytes = 2 * (n - 1) / n * BIG * sizeof(float) / (big - latency);
    return 0;
}

/* Every rank: the step weft simulate predicts for the plan on these ranks
 * against the one measured, on rank 0.  A CPU's GEMM and kernel rates are
 * no datasheet's: they are fitted to this run's own GEMM and kernel
 * seconds (summed over the ranks, the first step left out as a warm-up
 * where there are more), so what is predicted is the rest: the schedule,
 * the waits between stages, the collectives and transfers.  A GPU's come
 * from its device table and --calibration, nothing fitted (fit false). */
static void predict_step(struct comm *comm, const char *path, const struct device *dev, bool fit, long steps, double total,
                         const double *by_kind, double first_seconds, const double *first_kind)
{
    bool warm = steps > 1; /* leave the first out */
    double n = (double)(warm ? steps - 1 : steps), measured = (total - (warm ? first_seconds : 0)) / n;
    float sums[2] = {0, 0}; /* per step, this rank's: GEMMs, other kernels */
    for (int k = 0; k < IR_ACT_COUNT; k++) {
        double t = (by_kind[k] - (warm ? first_kind[k] : 0)) / n;
        if (k == IR_ACT_GEMM)
            sums[0] += (float)t;
        else if (k == IR_ACT_LAUNCH || k == IR_ACT_ZERO || k == IR_ACT_COPY || k == IR_ACT_LOSS || k == IR_ACT_SQSUM)
            sums[1] += (float)t;
    }
    struct diag d;
    diag_init(&d);
    if (comm->size > 1 && comm->ops->collective(comm, IR_GROUP_COUNT, 0, IR_COLL_ALL_REDUCE, sums, sums, 2, IR_DTYPE_F32, &d)) {
        diag_free(&d);
        return; /* the run is over: no prediction rather than no summary */
    }
    struct sim_measured m = {sums[0], sums[1]};
    struct sim_result r;
    if (comm->rank == 0 && simulate_plan(path, dev, fit ? &m : NULL, &r, &d) == 0) {
        printf("step time: predicted %.1f ms, measured %.1f ms (ratio %.2f)\n", r.step_time * 1e3, measured * 1e3,
               measured > 0 ? r.step_time / measured : 0);
        char link[160] = "";
        if (comm->size > 1)
            snprintf(link, sizeof link, ", collectives and transfers at the link measured before the first step (%.0f us, %.2f GB/s)",
                     r.dev.link_latency * 1e6, r.dev.link_bytes / 1e9);
        char rates[160] = ": GEMMs and kernels at its device table's rates";
        if (fit)
            snprintf(rates, sizeof rates, ": GEMMs and kernels at the rates of this run's (%.1f and %.1f ms a step, summed over the ranks)",
                     m.gemm * 1e3, m.kernels * 1e3);
        printf("  predicted on %s%s%s; bubble %.1f%%, tp communication %.1f ms, gradient reduction %.1f ms\n", r.dev.name, rates, link,
               100 * r.bubble, r.tp_comm * 1e3, r.dp_comm * 1e3);
        sim_result_free(&r);
    } else if (comm->rank == 0) {
        fprintf(stderr, "weft run: no predicted step: ");
        diag_print(&d, stderr);
    }
    diag_free(&d);
}

int cmd_run(int argc, char **argv)
{
    const char *path = NULL, *log = NULL, *dump = NULL, *calibration = NULL, *data_path = NULL, *split_arg = "969,30,1", *load = NULL, *save = NULL,
               *save_format = NULL;
    long steps = 10, log_interval = 1, skip_limit = 5, eval_interval = 0, eval_iters = 0;
    long save_interval = 0;
    bool seed_given = false;
    double timeout = 300;
    bool profile = false, graphs = true, overlap = true;
    enum backend_kind device = BACKEND_CPU;
    const char *comm_arg = "auto";
    enum comm_kind comm_kind = COMM_AUTO;
    unsigned long long seed = 1234;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout), fputs(usage_flags, stdout), fputs(usage_more_flags, stdout);
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
        } else if ((!strcmp(a, "--log-interval") || !strcmp(a, "--skip-limit")) && has) {
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || argv[i][0] == 0) {
                fprintf(stderr, "weft run: %s %s: expected a count of iterations, at least 1\n", a, argv[i]);
                return EXIT_BAD_INPUT;
            }
            *(a[2] == 'l' ? &log_interval : &skip_limit) = v;
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
        } else if ((!strcmp(a, "--eval-interval") || !strcmp(a, "--eval-iters")) && has) {
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1) {
                fprintf(stderr, "weft run: %s %s: expected a count above 0\n", a, argv[i]);
                return EXIT_BAD_INPUT;
            }
            *(!strcmp(a, "--eval-interval") ? &eval_interval : &eval_iters) = v;
        } else if (!strcmp(a, "--device") && has) {
            const char *v = argv[++i];
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
                fprintf(stderr, "weft run: --device %s: expected cpu or cuda\n", v);
                return EXIT_BAD_INPUT;
            }
            device = !strcmp(v, "cuda") ? BACKEND_CUDA : BACKEND_CPU;
        } else if ((!strcmp(a, "--cuda-graphs") || !strcmp(a, "--overlap")) && has) {
            const char *v = argv[++i];
            if (strcmp(v, "on") && strcmp(v, "off")) {
                fprintf(stderr, "weft run: %s %s: expected on or off\n", a, v);
                return EXIT_BAD_INPUT;
            }
            *(!strcmp(a, "--overlap") ? &overlap : &graphs) = !strcmp(v, "on");
        } else if (!strcmp(a, "--comm") && has) {
            comm_arg = argv[++i];
            if (comm_kind_parse(comm_arg, &comm_kind)) {
                fprintf(stderr, "weft run: --comm %s: expected auto, mpi or nccl\n", comm_arg);
                return EXIT_BAD_INPUT;
            }
        } else if (!strcmp(a, "--data-path") && has)
            data_path = argv[++i];
        else if (!strcmp(a, "--split") && has)
            split_arg = argv[++i];
        else if (!strcmp(a, "--profile"))
            profile = true;
        else if (!strcmp(a, "--log") && has)
            log = argv[++i];
        else if (!strcmp(a, "--dump-params") && has)
            dump = argv[++i];
        else if (!strcmp(a, "--calibration") && has)
            calibration = argv[++i];
        else if (!strcmp(a, "--load") && has)
            load = argv[++i];
        else if (!strcmp(a, "--save") && has)
            save = argv[++i];
        else if (!strcmp(a, "--save-format") && has)
            save_format = argv[++i];
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
            fprintf(stderr, "weft run: %s: unknown flag or missing value\n%s%s%s", a, usage, usage_flags,
                    usage_more_flags);
            return EXIT_BAD_INPUT;
        }
    }
    if (!path) {
        fprintf(stderr, "weft run: no plan file given\n%s%s%s", usage, usage_flags, usage_more_flags);
        return EXIT_BAD_INPUT;
    }
    if (save_format && strcmp(save_format, "hf") && strcmp(save_format, "weft")) {
        fprintf(stderr, "weft run: --save-format %s: expected weft or hf (Hugging Face's safetensors and config.json)\n", save_format);
        return EXIT_BAD_INPUT;
    }
    if ((save_format || save_interval) && !save) {
        fprintf(stderr, "weft run: %s needs --save DIR\n", save_format ? "--save-format" : "--save-interval");
        return EXIT_BAD_INPUT;
    }
    if ((eval_interval > 0) != (eval_iters > 0) || (eval_interval && !data_path)) {
        fprintf(stderr, "weft run: %s\n", eval_interval && eval_iters ? "--eval-interval validates on --data-path's valid split: give --data-path"
                                                                       : "--eval-interval and --eval-iters go together");
        return EXIT_BAD_INPUT;
    }
    if (data_path && seed > 0xffffffffull) {
        fprintf(stderr, "weft run: --seed %llu: with --data-path the seed shuffles as numpy's RandomState, 0 to 2^32-1\n", seed);
        return EXIT_BAD_INPUT;
    }
    struct device model = *device_find("cpu"); /* what the predicted step is costed on: these CPU ranks, or the plan's GPU */
    if (calibration) { /* read here to refuse a bad file before MPI starts; again onto the plan's GPU below */
        struct diag cd;
        diag_init(&cd);
        int bad = device_calibrate(&model, calibration, &cd);
        diag_print(&cd, stderr);
        diag_free(&cd);
        if (bad)
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
    if (!rc && device == BACKEND_CUDA) { /* the GPU the plan was compiled for, as weft simulate costs it */
        const struct device *planned = device_find(R.meta.device);
        model = *(planned ? planned : device_find(DEVICE_DEFAULT));
        if (calibration && device_calibrate(&model, calibration, &d))
            rc = EXIT_BAD_INPUT;
    }
    struct ckpt_found found;
    bool resume = false; /* a weft checkpoint found to load */
    bool hf_weights = load && !ckpt_is_checkpoint(load) && hf_is_checkpoint(load); /* Hugging Face's weights to start from */
    if (!rc && load && !hf_weights) {
        int got = ckpt_find(comm, load, save && !strcmp(save, load), &found, &d); /* 1: none yet, in --save's own DIR */
        rc = got == 2 ? EXIT_BAD_INPUT : rc;
        resume = got == 0;
    }
    if (resume && seed_given && found.state.seed != seed && lead)
        printf("note: --seed %llu: the checkpoint's seed %llu continues its randomness\n", seed, (unsigned long long)found.state.seed);
    if (resume)
        seed = found.state.seed;
    if (!rc && exec_check(&R, comm, &d))
        rc = EXIT_BAD_INPUT;
    struct exec *x = rc ? NULL : exec_new(&R, comm, seed, device, &d); /* NULL: the backend could not run it (no GPU) */
    if (!rc && !x)
        rc = EXIT_FAILURE_RUN;
    if (x && (!graphs || profile)) /* --profile times each launch */
        backend_use_graphs(exec_backend(x), false);
    if (x)
        exec_set_overlap(x, overlap);
    char comm_why[768] = ""; /* why --comm auto took MPI on a GPU */
    if (x) { /* the communicator carries the backend's memory: NCCL, MPI staged through the host, or MPI on the CPU */
        struct diag cd;
        diag_init(&cd);
        if (comm_use_device(comm, exec_backend(x), comm_kind, comm_why, sizeof comm_why, &cd)) {
            diag_error(&d, NULL, 0, "--comm %s: %s", comm_arg, diag_first_error(&cd));
            rc = EXIT_FAILURE_RUN;
            comm_leave_device(comm);
            exec_free(x), x = NULL; /* nothing to load or run */
        }
        diag_free(&cd);
    }
    double load_s = wf_seconds();
    if (x && hf_weights && (rc = hf_load(x, &R, comm, load, &d)) == EXIT_FAILURE_RUN && !lead)
        diag_print(&d, stderr); /* a read that failed on this rank: rank 0 says only its own */
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
    struct ckpt_state run = {.seed = seed}; /* what a checkpoint records of this run beside its position */
    snprintf(run.data_path, sizeof run.data_path, "%s", data_path ? data_path : "");
    snprintf(run.split, sizeof run.split, "%s", data_path ? split_arg : "");
    const struct ckpt_model_writer *model_writer = save_format && !strcmp(save_format, "hf") ? &ckpt_hf_model : &ckpt_weft_model;
    int64_t valid_from = resume ? found.state.valid_consumed : 0;
    /* The data: every rank opens and checks the files and builds the splits' indices (as each Megatron rank
     * reads the cached ones), for the samples this run asks: its steps' global batches from the samples
     * consumed, and Megatron's count for validation, (steps / interval + 1) * eval-iters batches. */
    struct data_indexed D = {0};
    struct data_gpt train = {0}, valid = {0};
    double split[3];
    int64_t seq = x && !d.n_errors && data_path ? exec_data_seq(x, &d) : -1, gb = x ? exec_global_batch(x) : 0;
    if (seq > 0 && !data_split_parse(split_arg, split, &d) && !data_indexed_open(&D, data_path, R.vocab, &d) &&
        !data_gpt_build(&train, &D, split, DATA_SPLIT_TRAIN, seq, exec_consumed_samples(x) + steps * gb, (uint32_t)seed, &d) &&
        (!eval_interval || !data_gpt_build(&valid, &D, split, DATA_SPLIT_VALID, seq, valid_from + (steps / eval_interval + 1) * eval_iters * gb,
                                           (uint32_t)seed, &d)))
        exec_set_data(x, &train);
    /* Each rank read the files itself (--data-path; rank 0 alone --log and --dump-params): where some could
     * not (a file only some nodes see), every rank stops before the first step rather than wait on them.
     * Rank 0 says why, or, where it could, that the others could not and they say why. */
    bool speak = lead;
    if (x && comm->size > 1) {
        float bad[2] = {d.n_errors ? 1.0f : 0.0f, lead && d.n_errors ? 1.0f : 0.0f};
        bool mine = d.n_errors > 0;
        if (comm->ops->collective(comm, IR_GROUP_COUNT, 0, IR_COLL_ALL_REDUCE, bad, bad, 2, IR_DTYPE_F32, &d))
            rc = EXIT_FAILURE_RUN, speak = true;
        else if (bad[0] > 0 && !mine)
            diag_error(&d, NULL, 0, "%.0f rank%s could not start (what each found is below)", bad[0], bad[0] == 1 ? "" : "s");
        else if (mine && bad[1] == 0)
            speak = true;
    }
    if (!x || rc || d.n_errors) { /* every rank finds the same: rank 0 says it */
        if (speak && !lead)
            fprintf(stderr, "rank %d: ", comm->rank);
        if (speak)
            diag_print(&d, stderr);
        rc = rc == EXIT_FAILURE_RUN ? rc : EXIT_BAD_INPUT;
        goto done;
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
    if (lead && device == BACKEND_CUDA)
        printf("rank 0's GPU: %s (GEMMs through cuBLASLt)\n", backend_describe(exec_backend(x)));
    if (lead && comm_why[0])
        printf("note: --comm auto: %s: MPI carries the run, staged through the host\n", comm_why);
    else if (lead && comm->inner) /* a GPU run: say which layer carries it */
        printf("collectives and transfers over %s\n", comm->ops->name);
    if (lead && data_path)
        printf("%s: %lld sequences; %lld training samples of %lld+1 tokens in %d epoch%s%s\n", data_path, (long long)D.n_seqs,
               (long long)train.n_samples, (long long)seq, train.num_epochs, train.num_epochs == 1 ? "" : "s",
               eval_interval ? ", validation from its own split" : "");
    if (hf_weights && lead)
        printf("%s: the weights of %s, read in %.2f s\n", load, R.hf.architecture, load_s);
    long start = resume ? found.state.iteration : 0, saved_at = -1, end = start + steps;
    if (resume && lead)
        printf("loaded %s: iteration %ld, %lld samples consumed, seed %llu (saved by %d rank%s: %s); %.1f MB in %.3f s (%.2f GB/s)\n",
               found.dir, start, (long long)found.state.consumed_samples, (unsigned long long)seed, found.world_size,
               found.world_size == 1 ? "" : "s", found.layout, (double)found.bytes / 1e6, load_s, (double)found.bytes / load_s / 1e9);
    if (comm->size > 1 && steps && measure_link(comm, &model, &d)) {
        diag_print(&d, stderr);
        rc = EXIT_FAILURE_RUN;
        goto done;
    }
    double total = 0, by_kind[IR_ACT_COUNT] = {0}, first_kind[IR_ACT_COUNT] = {0}, first_seconds = 0;
    int64_t tokens = 0, val_consumed = valid_from;
    struct log_interval in = {0};
    bool bar = lead && isatty(STDERR_FILENO);
    long in_a_row = 0; /* iterations skipped in a row */
    for (long it = start; it <= end && !rc; it++) {
        if (save && save_interval && it > start && it % save_interval == 0) /* iterations [0, it) done */
            rc = save_checkpoint(x, &R, comm, save, model_writer, it, val_consumed, &run, &d), saved_at = it;
        if (it == end || rc)
            break;
        struct exec_stats st;
        if (exec_step(x, it, &st, &d)) {
            if (bar)
                bar_wipe();
            diag_print(&d, stderr); /* this rank's failure: the others wait on it, so end them all */
            fflush(NULL);
            comm_abort(comm, EXIT_FAILURE_RUN);
        }
        if (it == start) { /* the first step warms up (pages, threads): the prediction is compared with the others */
            first_seconds = st.seconds;
            memcpy(first_kind, st.action_seconds, sizeof first_kind);
        }
        total += st.seconds;
        tokens += st.tokens;
        for (int k = 0; k < IR_ACT_COUNT; k++)
            by_kind[k] += st.action_seconds[k];
        in_a_row = st.skipped ? in_a_row + 1 : 0; /* the same on every rank: each skips by the global norm */
        if (lead) {
            in.advanced += !st.skipped, in.skipped += st.skipped, in.nan += st.skipped && !isfinite(st.loss);
            in.loss_sum += st.skipped ? 0 : st.loss;
            in.seconds += st.seconds, in.tokens += st.tokens;
            int64_t consumed = exec_consumed_samples(x);
            /* Megatron logs after the first iteration too, without starting a new interval there, unless the first
             * ends one (at --log-interval 1 Megatron's second line would average two iterations) */
            bool ends = (it + 1) % log_interval == 0;
            if (ends || it == start || in_a_row >= skip_limit) {
                if (bar)
                    bar_wipe();
                log_line(stdout, it + 1, end, consumed, &in, &st, st.samples, R.meta.flops_step, comm->size);
                fflush(stdout);
                if (ends)
                    in = (struct log_interval){0};
            }
            if (bar)
                bar_draw(it + 1 - start, steps, total);
        }
        /* Megatron's evaluate_and_print_results: every eval-interval iterations, and once more after the last */
        double val = NAN;
        if (bar && eval_interval && ((it + 1) % eval_interval == 0 || it + 1 == end))
            bar_wipe();
        if (eval_interval && (it + 1) % eval_interval == 0)
            val = validate(x, comm, &valid, eval_iters, gb, &val_consumed, it + 1, "", &d);
        if (eval_interval && it + 1 == end) { /* after training, as Megatron's; its samples are not consumed (a checkpoint
                                                * saved now resumes with the next interval's) */
            int64_t after = val_consumed;
            val = validate(x, comm, &valid, eval_iters, gb, &after, it + 1, " on validation set", &d);
        }
        if (lf) { /* after the validation, whose loss it holds */
            fprintf(lf, "{\"iteration\": %ld", it + 1);
            put_json(lf, "loss", "%.9g", st.loss);
            put_json(lf, "lr", "%.9g", st.lr);
            put_json(lf, "grad_norm", "%.9g", st.grad_norm);
            put_json(lf, "step_time", "%.6f", st.seconds);
            put_json(lf, "tokens_per_s", "%.1f", (double)st.tokens / st.seconds);
            fprintf(lf, ", \"consumed_samples\": %lld", (long long)exec_consumed_samples(x));
            if (!isnan(val))
                put_json(lf, "val_loss", "%.9g", val);
            fprintf(lf, "}\n");
        }
        if (in_a_row >= skip_limit) { /* every rank stops here: they count alike */
            char l[32], g[32];
            if (bar)
                bar_wipe();
            if (lead)
                fprintf(stderr, "weft run: iterations %ld to %ld skipped, %ld in a row (--skip-limit %ld): the loss or the gradient "
                                "norm is not finite (at iteration %ld: loss %s, grad norm %s); stopping at iteration %ld\n",
                        it + 2 - in_a_row, it + 1, in_a_row, skip_limit, it + 1, num_str(l, "%g", st.loss),
                        num_str(g, "%g", st.grad_norm), it + 1);
            rc = EXIT_FAILURE_RUN;
            break;
        }
    }
    if (bar)
        bar_wipe();
    bool stopped = rc != 0; /* --skip-limit: nothing worth saving or comparing */
    if (save && saved_at != end && !rc) /* at the end, as Megatron (with --steps 0: the loaded or initial state, as it is) */
        rc = save_checkpoint(x, &R, comm, save, model_writer, end, val_consumed, &run, &d);
    if (rc && !stopped) { /* a save failed on some rank: each says its own reason, rank 0 what is kept */
        diag_print(&d, stderr);
        goto done;
    }
    if (rc == 0 && dump) { /* (stopped: no parameters to compare) */
        int bad = exec_dump_params(x, df, &d) || (df && fclose(df));
        df = NULL;
        if (bad) {
            diag_print(&d, stderr);
            fflush(NULL);
            comm_abort(comm, EXIT_FAILURE_RUN);
        }
    }
    if (rc == 0 && steps)
        predict_step(comm, path, &model, device == BACKEND_CPU, steps, total, by_kind, first_seconds, first_kind);
    if (rc == 0 && steps && lead) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru); /* ru_maxrss: KiB on Linux */
        double peak = (double)ru.ru_maxrss * 1024, arena = (double)R.memory.roles[R.stage].total, scratch = (double)exec_scratch_bytes(x);
        printf("%ld iterations in %.2f s, %.0f tokens/s\n", steps, total, (double)tokens / total);
        struct backend_memory mem;
        backend_memory(exec_backend(x), &mem);
        char extra[96] = "";
        if (scratch > 0 && device == BACKEND_CPU)
            snprintf(extra, sizeof extra, "the bf16 GEMMs' scratch %.1f MiB, ", scratch / 1048576);
        if (device == BACKEND_CPU)
            printf("rank 0's peak resident memory %.1f MiB: the plan's arena %.1f MiB, %sthe rest %.1f MiB (the program, its "
                   "libraries, OpenBLAS's and MPI's buffers)\n", peak / 1048576, arena / 1048576, extra, (peak - arena - scratch) / 1048576);
        else if (mem.peak >= 0) { /* measured: the most in use at a wait, less what was in use before the arena */
            double staged = (double)exec_arena_bytes(x) - arena, used = (double)(mem.peak - mem.at_open);
            printf("rank 0's device memory at its peak %.1f MiB beyond the %.1f MiB in use when it opened the GPU (the CUDA context, "
                   "other processes); predicted %.1f MiB: the plan's arena %.1f MiB, the executor's staging %.2f MiB, the backend's "
                   "own %.1f MiB (cuBLASLt's workspace, the column sums); measured less predicted %+.1f MiB\n",
                   used / 1048576, (double)mem.at_open / 1048576, (arena + staged + scratch) / 1048576, arena / 1048576,
                   staged / 1048576, scratch / 1048576, (used - arena - staged - scratch) / 1048576);
        }
        struct backend_graph_stats gs;
        backend_graph_stats(exec_backend(x), &gs);
        if (gs.captured)
            printf("rank 0's CUDA graphs: %ld captured, %ld launches of them (%ld calls, %ld kernel nodes given new arguments), "
                   "%ld runs call by call\n", gs.captured, gs.replayed, gs.calls, gs.updated, gs.eager);
        long started, overlapped;
        int early;
        exec_overlap_counts(x, &started, &overlapped, &early);
        if (started)
            printf("rank 0's collectives: %ld started, %ld of them in flight while other actions ran, %d a step started within the "
                   "backward (--overlap %s)\n", started, overlapped, early, overlap ? "on" : "off");
        double rest = total;
        printf("rank 0's time:");
        for (int k = 0; k < IR_ACT_COUNT; k++)
            if (by_kind[k] > 0) {
                printf(" %s %.1f%%,", k == IR_ACT_GEMM ? "GEMMs" : k == IR_ACT_LAUNCH ? "kernels" : k == IR_ACT_COLL ? "collectives" : ir_act_name(k),
                       100 * by_kind[k] / total);
                rest -= by_kind[k];
            }
        printf(" the rest (data, waits) %.1f%%\n", 100 * rest / total);
        for (int shown = 0, *done = profile ? wf_calloc((size_t)R.kernels.n_kernels + 1, sizeof *done) : NULL; profile; shown++) {
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
done:
    comm_leave_device(comm); /* before the backend whose memory it carries */
    diag_free(&d);
    if (lf)
        fclose(lf);
    if (df)
        fclose(df);
    exec_free(x);
    data_gpt_free(&train);
    data_gpt_free(&valid);
    data_indexed_close(&D);
    rank_plan_free(&R);
    comm_close(comm);
    return rc;
}
