/* kernel_time.c: each distinct kernel of a compiled plan, timed on a
 * backend at the plan's own sizes (its first launch, as the last rank has
 * it), against the backend's copy bandwidth measured in the same run.
 *
 *   build/bench/kernel_time PLAN [--backend cuda|cpu] [--only SUBSTRING]
 *
 * A kernel is launched on random inputs (tests/launches.h) in batches,
 * each batch ended by a synchronisation and timed on the host clock; the
 * median batch, over its launches, is the time.  Bytes are each slot read
 * or written once (fuse_launch_bytes): the least a kernel must move, so
 * bytes / time over the copy's rate is the fraction of the memory
 * roofline reached.  Attention is timed as its forward and its backward
 * (delta, dK/dV, dQ), in TFLOP/s (4·B·H·Sq·Sk·D forward, 2.5 times that
 * backward, halved when causal). */
#include "launches.h"

#include "kernel.h"
#include "plan.h"

#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(struct diag *d)
{
    diag_print(d, stderr);
    exit(1);
}

/* Seconds one run of fn takes: batches of launches sized to about 5 ms, the median of 7. */
typedef int (*run_fn)(void *ctx, struct diag *d);
static double time_it(struct backend *be, run_fn fn, void *ctx, struct diag *d)
{
    for (int i = 0; i < 3; i++) /* warm: module load, caches */
        if (fn(ctx, d))
            die(d);
    if (backend_sync(be, d))
        die(d);
    double t0 = now();
    if (fn(ctx, d) || backend_sync(be, d))
        die(d);
    double one = now() - t0;
    int n = one > 5e-3 ? 1 : (int)(5e-3 / (one > 1e-7 ? one : 1e-7));
    n = n > 500 ? 500 : n;
    double v[7];
    for (int b = 0; b < 7; b++) {
        t0 = now();
        for (int i = 0; i < n; i++)
            if (fn(ctx, d))
                die(d);
        if (backend_sync(be, d))
            die(d);
        v[b] = (now() - t0) / n;
    }
    qsort(v, 7, sizeof *v, by_value);
    return v[3];
}

struct copy_ctx {
    struct backend *be;
    void *dst, *src;
    size_t bytes;
};

static int run_copy(void *ctx, struct diag *d)
{
    struct copy_ctx *c = ctx;
    return backend_copy(c->be, c->dst, c->src, c->bytes, d);
}

struct launch_ctx {
    struct backend *be;
    const struct lrun *x;
    void **dev;
    int first, last;
};

static int run_launch(void *ctx, struct diag *d)
{
    struct launch_ctx *c = ctx;
    return lrun_launch(c->x, c->be, c->dev, c->first, c->last, d);
}

int main(int argc, char **argv)
{
    const char *path = NULL, *only = NULL;
    enum backend_kind kind = BACKEND_CUDA;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            i++;
            kind = !strcmp(argv[i], "cpu") ? BACKEND_CPU : BACKEND_CUDA;
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "usage: kernel_time PLAN [--backend cuda|cpu] [--only SUBSTRING]\n");
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: kernel_time PLAN [--backend cuda|cpu] [--only SUBSTRING]\n");
        return 2;
    }
    struct diag d;
    diag_init(&d);
    struct plan *p = plan_open(path, &d);
    struct partition *P = p ? partition_read_plan(p, &d) : NULL;
    struct kn_set F;
    memset(&F, 0, sizeof F);
    if (!P || kn_set_read(p, &F, &d))
        die(&d);
    plan_close(p);
    struct backend *be = backend_open(kind, &F, &d);
    if (!be)
        die(&d);

    struct copy_ctx cc = {.be = be, .bytes = kind == BACKEND_CUDA ? (size_t)1 << 30 : (size_t)1 << 28};
    cc.src = backend_alloc(be, cc.bytes, &d), cc.dst = backend_alloc(be, cc.bytes, &d);
    if (!cc.src || !cc.dst)
        die(&d);
    double copy_s = time_it(be, run_copy, &cc, &d), copy_rate = 2.0 * (double)cc.bytes / copy_s;
    backend_free(be, cc.src), backend_free(be, cc.dst);
    printf("# %s on %s; copy: %.0f GB/s (%zu MiB, read and written)\n", path, backend_describe(be), copy_rate / 1e9, cc.bytes >> 20);
    printf("%-44s %-9s %-16s %10s %10s %8s %8s\n", "kernel", "when", "domain", "us", "MB", "GB/s", "of copy");
    static const char *const when[] = {"forward", "backward", "optimizer", "norm"};
    double total = 0;
    for (int k = 0; k < F.n_kernels; k++) {
        if (only && !strstr(F.kernels[k].name, only))
            continue;
        int l = 0;
        while (l < F.n_launches && F.launches[l].kernel != k)
            l++;
        if (l == F.n_launches)
            continue;
        struct lrun x;
        lrun_prepare(P, &F, l, P->L->n_ranks - 1, 1, &x);
        void *dev[LRUN_MAX_BUFS];
        if (lrun_upload(&x, be, dev, &d))
            die(&d);
        const struct kn_launch *L = &F.launches[l];
        if (x.kind == KN_KIND_ATTENTION) {
            const struct kn_attn *c = &F.kernels[k].attn;
            const struct kn_attn_args *a = &x.attn;
            double flops = 4.0 * (double)(a->B * a->Hq * a->Sq * a->Sk) * c->D * (c->causal ? 0.5 : 1);
            char dom[32];
            snprintf(dom, sizeof dom, "%lldx%lldx%lld", (long long)a->B, (long long)a->Hq, (long long)a->Sq);
            for (int phase = 0; phase < (c->backward ? 2 : 1); phase++) {
                struct launch_ctx lc = {be, &x, dev, phase ? KN_ATTN_DELTA : KN_ATTN_FWD, phase ? KN_ATTN_BWD_Q : KN_ATTN_FWD};
                double s = time_it(be, run_launch, &lc, &d), f = flops * (phase ? 2.5 : 1);
                total += s;
                printf("%-44s %-9s %-16s %10.1f %10s %6.1f TFLOP/s\n", F.kernels[k].name, phase ? "backward" : "forward", dom, s * 1e6,
                       "", f / s / 1e12);
            }
        } else {
            struct launch_ctx lc = {be, &x, dev, 0, 0};
            double s = time_it(be, run_launch, &lc, &d), bytes = (double)fuse_launch_bytes(P, &F, l);
            total += s;
            char dom[32];
            snprintf(dom, sizeof dom, "%lldx%lld", (long long)x.a.rows, (long long)x.a.cols);
            printf("%-44s %-9s %-16s %10.1f %10.1f %8.0f %7.0f%%\n", F.kernels[k].name, when[L->when < 4 ? L->when : 0], dom, s * 1e6,
                   bytes / 1e6, bytes / s / 1e9, 100 * bytes / s / copy_rate);
        }
        lrun_release(&x, be, dev);
        lrun_free(&x);
    }
    printf("# one launch of each: %.3f ms\n", total * 1e3);
    backend_close(be);
    kn_set_free(&F);
    partition_free(P);
    diag_free(&d);
    return 0;
}
