/* test_fake_cuda.c: `weft run --device cuda` through runtime/cuda.c on a
 * machine without a GPU, the driver and cuBLASLt being tests/fake_cuda.c
 * (built here into libcuda.so.1 and libcublasLt.so.13, found first by
 * LD_LIBRARY_PATH), whose kernels are the plan's CPU functions and whose
 * graphs hold their nodes' arguments by value.  What it checks is cuda.c's
 * host side, which no other test runs: its stream, its copies and memsets,
 * the GEMMs' descriptors and their adding transforms, and the CUDA graphs
 * (capture, node discovery, argument updates, replay):
 * - five training steps of tiny GPT-2 (fp32, dropout, a warming learning
 *   rate) through graphs (and over NCCL, one rank) end with the
 *   parameters, byte for byte, of the same steps launched one by one
 *   (--cuda-graphs off), having replayed graphs and set kernel nodes'
 *   arguments;
 * - and within 1e-4 of the CPU backend's (the fake's GEMMs are loops);
 * - the device memory the run reports measured is what it predicted (the
 *   fake's memory in use being exactly weft's allocations);
 * - bf16 likewise (within 1e-2);
 * - a GPU that refuses capture runs the steps call by call, the same
 *   bytes; one too small for the arena stops the run, saying so;
 * - four ranks on one fake GPU take MPI staged through the host, and four
 *   on a fake GPU each take NCCL (tests/fake_nccl.c, over the ranks' MPI):
 *   tensor-parallel all-reduces, pipeline sends and receives, gradient
 *   buckets started within the backward on the second stream; each run
 *   within 1e-4 of four CPU ranks'.
 * The fakes' semantics are this project's reading of CUDA's and NCCL's
 * documentation, not the hardware's: they find wrong calls, wrong
 * arguments, wrong order and memory errors (under the sanitizers), not a
 * misreading of what the driver promises. */
#include "testing.h"
#include "exec.h"
#include "launch.h"

#include <dirent.h>
#include <math.h>
#include <sys/stat.h>

static char dir[64];

static void path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

/* The plan compiled by `weft compile` with args compile (skipped without NVRTC: it needs GPU binaries), the fake driver
 * built, and the plan's CPU object and each GPU function's argument bytes where it reads them. */
static void prepare(const char *const *compile, const char *plan, int world)
{
    struct run r;
    run_weftv(&r, compile);
    if (r.status) {
        if (strstr(r.err, "NVRTC"))
            SKIP_BECAUSE("the plan's GPU binaries need NVRTC: %s", r.err);
        fail_msg("weft compile: %s", r.err);
    }
    char so[600], lt[600], kernels[600], manifest[600], log[8192];
    size_t len;
    char *src = wf_read_file("tests/fake_cuda.c", 1 << 20, &len);
    assert_non_null(src);
    path(so, sizeof so, "libcuda.so.1"), path(lt, sizeof lt, "libcublasLt.so.13");
    if (cc_cached(src, so, log, sizeof log))
        fail_msg("tests/fake_cuda.c does not build:\n%s", log);
    free(src);
    char nccl[600];
    path(nccl, sizeof nccl, "libnccl.so.2");
    assert_non_null(src = wf_read_file("tests/fake_nccl.c", 1 << 20, &len));
    if (cc_cached(src, nccl, log, sizeof log))
        fail_msg("tests/fake_nccl.c does not build:\n%s", log);
    free(src);
    setenv("WEFT_NCCL_LIB", nccl, 1);
    unlink(lt);
    assert_int_equal(link(so, lt), 0);
    struct diag d;
    diag_init(&d);
    struct rank_plan R;
    if (rank_plan_load(plan, 0, world, &R, &d)) /* every rank has the kernels */
        fail_msg("%s", diag_first_error(&d));
    path(kernels, sizeof kernels, "kernels.so"), path(manifest, sizeof manifest, "manifest");
    FILE *k = fopen(kernels, "wb"), *m = fopen(manifest, "w");
    assert_true(k && m && fwrite(R.kernels.cpu_object, 1, R.kernels.cpu_size, k) == R.kernels.cpu_size);
    for (int i = 0; i < R.kernels.n_kernels; i++) {
        const struct kn_entry *e = &R.kernels.kernels[i];
        if (e->kind == KN_KIND_FUSED)
            fprintf(m, "%s %zu\n%s_colsum %zu\n", e->name, sizeof(struct kn_args), e->name, sizeof(struct kn_args));
        else if (e->kind == KN_KIND_ROUTE)
            fprintf(m, "%s %zu\n", e->name, sizeof(struct kn_route_args));
        else
            for (int f = 0; f < KN_ATTN_FNS; f++)
                fprintf(m, "%s%s %zu\n", e->name, kn_attn_fn_suffix[f], sizeof(struct kn_attn_args));
    }
    fclose(k), fclose(m);
    rank_plan_free(&R);
    diag_free(&d);
    setenv("LD_LIBRARY_PATH", dir, 1);
    setenv("WEFT_FAKE_CUDA_KERNELS", kernels, 1);
    setenv("WEFT_FAKE_CUDA_MANIFEST", manifest, 1);
}

/* dir and everything in it gone. */
static void remove_dir(void)
{
    DIR *d = opendir(dir);
    char f[600];
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            path(f, sizeof f, e->d_name), unlink(f);
    if (d)
        closedir(d);
    rmdir(dir);
}

/* The largest difference between a and c (n floats), and c's largest magnitude in *top. */
static double largest_difference(const float *a, const float *c, size_t n, double *top)
{
    double worst = 0;
    *top = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fabs(a[i] - c[i]) > worst ? fabs(a[i] - c[i]) : worst;
        *top = fabs(c[i]) > *top ? fabs(c[i]) : *top;
    }
    return worst;
}

/* The --dump-params file's floats, in order (names and counts skipped: both runs are of one plan). */
static float *params(const char *file, size_t *n)
{
    size_t len;
    char *b = wf_read_file(file, 1 << 26, &len);
    assert_non_null(b);
    float *v = malloc(len);
    size_t at = strlen("weft-params 1\n"), got = 0;
    while (at + 4 <= len) {
        uint32_t nl;
        int64_t count;
        memcpy(&nl, b + at, 4), at += 4 + nl;
        memcpy(&count, b + at, 8), at += 8;
        memcpy(v + got, b + at, (size_t)count * 4), at += (size_t)count * 4, got += (size_t)count;
    }
    free(b);
    *n = got;
    return v;
}

/* The fake driver's faults on plan: a GPU that refuses every capture runs
 * each segment call by call, the steps those launched one by one (their
 * parameters at eager); one too small for the arena stops the run with
 * status 1, naming the arena and the allocation. */
static void faults(const char *plan, const char *eager)
{
    char refused[600];
    path(refused, sizeof refused, "refused.params");
    setenv("LD_LIBRARY_PATH", dir, 1);
    setenv("WEFT_FAKE_CUDA_NO_CAPTURE", "1", 1);
    struct run r;
    const char *argv[] = {weft_bin(), "run", plan, "--steps", "5", "--device", "cuda", "--comm", "mpi", "--dump-params", refused, NULL};
    run_mpi(&r, argv);
    unsetenv("WEFT_FAKE_CUDA_NO_CAPTURE");
    if (r.status)
        fail_msg("captures refused: status %d: %s", r.status, r.err);
    assert_null(strstr(r.out, "CUDA graphs:"));
    size_t na, nb;
    float *a = params(refused, &na), *b = params(eager, &nb);
    assert_true(na == nb);
    assert_memory_equal(a, b, na * sizeof *a);
    free(a), free(b);
    setenv("WEFT_FAKE_CUDA_MEMORY", "40000000", 1); /* past cuBLASLt's workspace, short of the arena */
    const char *small[] = {weft_bin(), "run", plan, "--steps", "1", "--device", "cuda", "--comm", "mpi", NULL};
    run_mpi(&r, small);
    unsetenv("WEFT_FAKE_CUDA_MEMORY"), unsetenv("LD_LIBRARY_PATH");
    printf("    every capture refused: the steps of launch by launch, byte for byte; 40 MB of GPU memory: status %d, %.*s\n", r.status,
           (int)strcspn(r.err, "\n"), r.err);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "CUDA_ERROR_OUT_OF_MEMORY"));
    assert_non_null(strstr(r.err, "the arena"));
}

/* Five steps of tiny GPT-2 (bf16 as --bf16 says, or fp32) through graphs, launch by launch, and on the CPU backend. */
static void graphs_on_the_fake_driver(bool bf16, double tolerance)
{
    strcpy(dir, "/tmp/weft-test-fake-cuda-XXXXXX");
    if (!mkdtemp(dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    char plan[600], on[600], off[600], cpu[600], log[600];
    path(plan, sizeof plan, "gpt2.plan"), path(on, sizeof on, "on.params"), path(off, sizeof off, "off.params");
    path(cpu, sizeof cpu, "cpu.params"), path(log, sizeof log, "fake.log");
    const char *compile[] = {"compile", "models/gpt2.xml", "--variant", "tiny", "--global-batch-size", "2", "--micro-batch-size", "1",
                             "--lr", "1e-3", "--lr-warmup-iters", "4", "--arch", "sm_90", "-o", plan, bf16 ? "--bf16" : NULL, NULL};
    prepare(compile, plan, 1);
    struct run runs[3];
    const char *outs[] = {on, off, cpu};
    for (int k = 0; k < 3; k++) {
        setenv("WEFT_FAKE_CUDA_LOG", log, 1);
        const char *argv[] = {weft_bin(), "run", plan, "--steps", "5", "--device", k == 2 ? "cpu" : "cuda", "--cuda-graphs",
                              k == 1 ? "off" : "on", "--dump-params", outs[k], "--comm", k ? "auto" : "nccl", NULL};
        run_mpi(&runs[k], argv); /* weft run starts MPI, whose own allocations outlive it */
        if (runs[k].status)
            fail_msg("weft run --device %s --cuda-graphs %s: status %d: %s", argv[6], argv[8], runs[k].status, runs[k].err);
    }
    unsetenv("LD_LIBRARY_PATH");
    const char *graphs = strstr(runs[0].out, "rank 0's CUDA graphs: ");
    long captured = 0, launched = 0, calls = 0, updated = 0;
    assert_non_null(graphs);
    assert_int_equal(sscanf(graphs, "rank 0's CUDA graphs: %ld captured, %ld launches of them (%ld calls, %ld kernel nodes", &captured,
                            &launched, &calls, &updated), 4);
    assert_null(strstr(runs[1].out, "rank 0's CUDA graphs: "));
    assert_non_null(strstr(runs[0].out, "collectives and transfers over nccl")); /* a one-rank NCCL run completes */
    /* one rank, --comm auto: MPI (no NCCL communicators of one rank each), without a note */
    assert_true(strstr(runs[1].out, "collectives and transfers over mpi, staged through the host") && !strstr(runs[1].out, "note:"));
    /* the fake's memory in use is what weft allocated: its accounting (the arena, the staging, cuBLASLt's workspace, the
     * column sums) must come out exact */
    const char *mem = strstr(runs[0].out, "measured less predicted ");
    double excess = 1;
    assert_true(mem && sscanf(mem, "measured less predicted %lf MiB", &excess) == 1);
    assert_true(fabs(excess) < 0.05);
    char *fake = wf_read_file(log, 1 << 16, &(size_t){0});
    assert_non_null(fake);
    long replays = 0, node_sets = 0, epilogues = 0;
    const char *line = strstr(fake, "launches"); /* the first run's line: the graphs' */
    assert_true(line && sscanf(line, "launches %*d replays %ld node_sets %ld captures %*d gemms %*d epilogues %ld", &replays, &node_sets,
                               &epilogues) == 3);
    printf("    %ld graphs captured, %ld launched (%ld calls), %ld kernel nodes given new arguments; the fake driver ran %ld graph "
           "launches, set %ld nodes and ran %ld GEMMs with their epilogues\n", captured, launched, calls, updated, replays, node_sets,
           epilogues);
    assert_true(captured > 0 && launched >= 4 * captured && updated > 0 && epilogues > 0);
    assert_true(replays == launched && node_sets == updated);
    size_t na, nb, nc;
    float *a = params(on, &na), *b = params(off, &nb), *c = params(cpu, &nc);
    assert_true(na == nb && na == nc && na > 1000);
    assert_memory_equal(a, b, na * sizeof *a);
    double top, worst = largest_difference(a, c, na, &top);
    printf("    %s: through graphs and launch by launch the same bytes; against the CPU backend the largest difference %.2e of the "
           "largest parameter %.2e\n", bf16 ? "bf16" : "fp32", worst, top);
    assert_true(worst <= tolerance * top);
    free(a), free(b), free(c), free(fake);
    if (!bf16)
        faults(plan, off);
    remove_dir();
}

static void test_fp32_on_the_fake_driver(void **state)
{
    (void)state;
    graphs_on_the_fake_driver(false, 1e-4);
}

/* bf16 GEMM operands and results, fp32 master weights: the fake's sums in
 * another order than OpenBLAS's, rounded to bf16, drift further. */
static void test_bf16_on_the_fake_driver(void **state)
{
    (void)state;
    graphs_on_the_fake_driver(true, 1e-2);
}

/* Four ranks on fake GPUs, three steps against four CPU ranks' (within
 * 1e-4): sharing one GPU, where --comm auto finds them sharing it and
 * takes MPI, staging the device buffers through the host (tp 2, pp 2); or
 * a GPU each over NCCL (tests/fake_nccl.c: NCCL over the ranks' MPI),
 * at tp 2 and pp 2 (all-reduces, grouped sends and receives), and at dp 2
 * and pp 2 with small buckets (started within the backward on the second
 * stream, and the tied embedding's sum). */
/* Three steps of model's tiny variant on `ranks` ranks in layout (its flags, the global batch's among them) on fake GPUs
 * over comm, against as many CPU ranks (AdamW's eps 1e-4, as test_run's layouts: a gradient that is zero in exact
 * arithmetic is rounding noise, which eps 1e-8 would turn into steps of the learning rate's size); want: what the GPU
 * run says. */
static void ranks_on_fake_gpus(const char *model, int ranks, const char *layout, const char *comm, const char *want, long *epilogues)
{
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    strcpy(dir, "/tmp/weft-test-fake-cuda-XXXXXX");
    if (!mkdtemp(dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    char plan[600], gpu[600], cpu[600], flags[256], np[16], file[128];
    path(plan, sizeof plan, "layout.plan"), path(gpu, sizeof gpu, "gpu.params"), path(cpu, sizeof cpu, "cpu.params");
    snprintf(np, sizeof np, "%d", ranks), snprintf(file, sizeof file, "models/%s.xml", model);
    const char *compile[40] = {"compile", file, "--variant", "tiny", "--world-size", np, "--adam-eps", "1e-4", "--lr", "1e-3",
                               "--arch", "sm_90", "-o", plan};
    int n = 14;
    snprintf(flags, sizeof flags, "%s", layout);
    for (char *f = strtok(flags, " "); f && n < 39; f = strtok(NULL, " "))
        compile[n++] = f;
    prepare(compile, plan, ranks);
    struct run r[2];
    if (!strcmp(comm, "nccl"))
        setenv("WEFT_FAKE_CUDA_OWN_GPU", "1", 1);
    char log[600];
    path(log, sizeof log, "fake.log");
    setenv("WEFT_FAKE_CUDA_LOG", log, 1); /* each rank's counts, a line each */
    for (int k = 0; k < 2; k++) {
        const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np, weft_bin(), "run", plan, "--steps", "3",
                              "--device", k ? "cpu" : "cuda", "--dump-params", k ? cpu : gpu, "--comm", k ? "auto" : comm, NULL};
        run_mpi(&r[k], argv);
        if (r[k].status)
            fail_msg("%s on %d ranks, %s, --device %s: status %d: %s", model, ranks, layout, argv[11], r[k].status, r[k].err);
    }
    unsetenv("LD_LIBRARY_PATH"), unsetenv("WEFT_FAKE_CUDA_OWN_GPU"), unsetenv("WEFT_NCCL_LIB"), unsetenv("WEFT_FAKE_CUDA_LOG");
    char *fake = wf_read_file(log, 1 << 20, &(size_t){0});
    for (const char *at = fake; epilogues && at && (at = strstr(at, "epilogues ")); at++)
        *epilogues += strtol(at + strlen("epilogues "), NULL, 10);
    free(fake);
    const char *said = strstr(r[0].out, want);
    printf("    %s, %d ranks, %s, --comm %s: %.*s\n", model, ranks, layout, comm, said ? (int)strcspn(said, "\n") : 0, said ? said : "");
    assert_non_null(said);
    if (!strcmp(comm, "nccl"))
        assert_non_null(strstr(r[0].out, "collectives and transfers over nccl"));
    size_t na, nc;
    float *a = params(gpu, &na), *c = params(cpu, &nc);
    assert_true(na == nc && na > 1000);
    double top, worst = largest_difference(a, c, na, &top);
    printf("    against %d CPU ranks: the largest difference %.2e of %.2e\n", ranks, worst, top);
    /* bf16: cuBLASLt's epilogue rounds x + bias once, the CPU rounds the product, then the sum (as bf16 does on the
     * fake, within 1e-2; 0 with --gemm-epilogues off) */
    assert_true(worst <= (strstr(layout, "--bf16") ? 1e-2 : 1e-4) * top);
    free(a), free(c);
    remove_dir();
}

static void test_four_ranks_share_the_fake_gpu(void **state)
{
    (void)state;
    ranks_on_fake_gpus("gpt2", 4, "--tp 2 --pp 2 --global-batch-size 4", "auto",
                       "note: --comm auto: ranks 0 and 1 of the tp group (ranks 0, 1) share GPU", NULL);
}

/* An epilogue cuBLASLt does not take runs as the CPU's do: the GEMM, then
 * the group's kernel on the GPU.  At tp 2 the MLP's 200 columns are 100 a
 * rank, and GELU's kept input needs a leading dimension that is a multiple
 * of 8: the fc GEMM runs its epilogue's kernel after it, the QKV GEMM
 * (a bias only) its epilogue in cuBLASLt; against 2 CPU ranks. */
static void test_epilogue_declined_on_the_fake_gpu(void **state)
{
    (void)state;
    long epilogues = 0;
    ranks_on_fake_gpus("gpt2", 2, "--tp 2 --ffn-hidden-size 200 --global-batch-size 2", "auto",
                       "note: --comm auto: ranks 0 and 1 of the tp group (ranks 0, 1) share GPU",
                       &epilogues);
    printf("    %ld GEMMs ran their epilogue in the fake cuBLASLt: the QKV's, 2 layers x 3 steps x 2 ranks\n", epilogues);
    assert_int_equal(epilogues, 2 * 3 * 2);
}

static void test_four_fake_gpus_over_nccl(void **state)
{
    (void)state;
    ranks_on_fake_gpus("gpt2", 4, "--tp 2 --pp 2 --global-batch-size 4", "nccl", "collectives and transfers over nccl", NULL);
    ranks_on_fake_gpus("gpt2", 4, "--pp 2 --ddp-bucket-size 20000 --global-batch-size 4", "nccl", "a step started within the backward",
                       NULL);
}

/* The layouts' matrix on fake GPUs over NCCL (and a few over MPI staged),
 * each against CPU ranks: every kind of collective and transfer the plans
 * use.  About three minutes with a cold kernel cache, so on demand:
 * WEFT_FAKE_CUDA_MATRIX=1. */
static void test_layouts_on_fake_gpus(void **state)
{
    (void)state;
    if (!getenv("WEFT_FAKE_CUDA_MATRIX"))
        SKIP_BECAUSE("WEFT_FAKE_CUDA_MATRIX=1 runs it: 13 layouts on fake GPUs, about three minutes with a cold kernel cache");
    static const struct {
        const char *model;
        int ranks;
        const char *layout, *comm;
    } cases[] = {
        {"mixtral", 2, "--ep 2 --global-batch-size 4", "nccl"},                                   /* all-to-all: grouped sends */
        {"gpt2", 2, "--tp 2 --sequence-parallel --micro-batch-size 2 --global-batch-size 4", "nccl"}, /* gathers, reduce-scatters */
        {"gpt2", 2, "--cp 2 --global-batch-size 4", "nccl"},
        {"t5", 3, "--pp 2 --epp 1 --global-batch-size 4", "nccl"},                                 /* the encoder's own stage */
        {"gpt2", 4, "--tp 2 --pp 2 --num-layers-per-virtual-pipeline-stage 1 --num-layers 4 --global-batch-size 4", "nccl"},
        {"llama2", 4, "--pp 2 --ddp-bucket-size 20000 --global-batch-size 8", "nccl"},
        {"t5", 5, "--tp 2 --pp 2 --epp 1 --etp 1 --global-batch-size 4", "nccl"},                 /* an encoder rank feeds two */
        {"llava", 3, "--pp 2 --epp 1 --global-batch-size 4", "nccl"},
        {"gpt2", 4, "--tp 2 --pp 2 --bf16 --grad-reduce-in-bf16 --global-batch-size 8", "nccl"}, /* bf16 over NCCL */
        {"mixtral", 4, "--ep 2 --pp 2 --micro-batch-size 2 --global-batch-size 8", "nccl"},
        {"gpt2", 8, "--tp 2 --pp 2 --ddp-bucket-size 20000 --global-batch-size 8", "nccl"},
        {"mixtral", 4, "--ep 2 --pp 2 --micro-batch-size 2 --global-batch-size 8", "mpi"},
        {"t5", 5, "--tp 2 --pp 2 --epp 1 --etp 1 --global-batch-size 4", "mpi"},
    };
    for (size_t c = 0; c < WF_COUNT(cases); c++)
        ranks_on_fake_gpus(cases[c].model, cases[c].ranks, cases[c].layout, cases[c].comm, "collectives and transfers over", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32_on_the_fake_driver),
        cmocka_unit_test(test_bf16_on_the_fake_driver),
        cmocka_unit_test(test_four_ranks_share_the_fake_gpu),
        cmocka_unit_test(test_epilogue_declined_on_the_fake_gpu),
        cmocka_unit_test(test_four_fake_gpus_over_nccl),
        cmocka_unit_test(test_layouts_on_fake_gpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
