/* emulated.h: a backend (runtime/backend.h) that runs the plan's CUDA
 * source on the CPU through tests/cuda_emu.h, launched exactly as the CUDA
 * backend launches it (ir/launch.h's grids, blocks and shared memory), so
 * that a machine without a GPU checks every kernel's GPU source against
 * the CPU backend.  Each kernel's source is compiled as C++ on its first
 * launch (compile_cached); memory is the host's, filled with 0xff bytes
 * (NaN) when allocated, as a GPU's is not cleared either.
 *
 *   struct backend *emu = emulated_backend_open(&K, &d);
 *   lrun_run(&x, emu, BACKEND_CUDA, &d);   // its results stand where the GPU's would
 *   backend_close(emu);
 *
 * The tests run from the repository's root (they read tests/cuda_emu.h). */
#ifndef WEFT_TESTS_EMULATED_H
#define WEFT_TESTS_EMULATED_H

#include "testing.h"

#include "backend_impl.h"
#include "launch.h"

#include <dlfcn.h>

/* An emulated "GPU" of 2 SMs: grids that the launch may choose stay small. */
#define EMULATED_MAX_BLOCKS 1056

typedef int (*emulated_launch_fn)(int fn, const int64_t grid[3], int threads, size_t smem, const void *args, char *why, size_t n);

struct emulated {
    struct backend be;
    void **libs;                  /* per kernel, compiled on first use */
    emulated_launch_fn *launches; /* per kernel: its source's emu_launch */
    float *partial;               /* the column sums' scratch */
    char *emu;                    /* tests/cuda_emu.h's text, read once (NULL: it could not be read) */
    size_t partial_floats;
};

static inline char *emulated_read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = (char *)calloc((size_t)n + 1, 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n)
        s[0] = 0;
    fclose(f);
    return s;
}

/* Kernel e's CUDA source between the emulator and emu_launch, which runs
 * function fn of it (attention: enum kn_attn_fn; fused: 0 NAME, 1
 * NAME_colsum; route: 0) with the emulator. */
static inline char *emulated_source(const struct kn_entry *e, const char *emu)
{
    char *gpu = kernels_source(e, KN_LANG_CUDA), table[2048];
    const char *n = e->name;
    int at = 0;
    if (e->kind == KN_KIND_ATTENTION) {
        static const char *const fns[] = {"fwd", "delta", "bwd_kv", "bwd_q"};
        for (int f = 0; f < (e->attn.backward ? 4 : 1); f++)
            at += snprintf(table + at, sizeof table - (size_t)at, "KN_EMU_ENTRY(%s_%s, struct kn_attn_args)\n", n, fns[f]);
        at += snprintf(table + at, sizeof table - (size_t)at, "static void (*const kn_emu_fns[])(const void *) = {kn_emu_entry_%s_fwd", n);
        for (int f = 1; f < (e->attn.backward ? 4 : 1); f++)
            at += snprintf(table + at, sizeof table - (size_t)at, ", kn_emu_entry_%s_%s", n, fns[f]);
    } else if (e->kind == KN_KIND_ROUTE)
        at += snprintf(table + at, sizeof table - (size_t)at,
                       "KN_EMU_ENTRY(%s, struct kn_route_args)\nstatic void (*const kn_emu_fns[])(const void *) = {kn_emu_entry_%s", n, n);
    else {
        bool colsum = kn_column_sums(&e->k) > 0;
        at += snprintf(table + at, sizeof table - (size_t)at, "KN_EMU_ENTRY(%s, struct kn_args)\n", n);
        if (colsum)
            at += snprintf(table + at, sizeof table - (size_t)at, "KN_EMU_ENTRY(%s_colsum, struct kn_args)\n", n);
        at += snprintf(table + at, sizeof table - (size_t)at, "static void (*const kn_emu_fns[])(const void *) = {kn_emu_entry_%s%s%s%s", n,
                       colsum ? ", kn_emu_entry_" : "", colsum ? n : "", colsum ? "_colsum" : "");
    }
    snprintf(table + at, sizeof table - (size_t)at,
             "};\nextern \"C\" int emu_launch(int fn, const int64_t grid[3], int threads, size_t smem, const void *args, char *why, size_t n)\n"
             "{\n    return kn_emu_run(kn_emu_fns[fn], grid, threads, smem, args, why, n);\n}\n");
    size_t len = strlen(emu) + strlen(gpu) + strlen(table) + 8;
    char *src = (char *)malloc(len);
    snprintf(src, len, "%s\n%s\n%s", emu, gpu, table);
    free(gpu);
    return src;
}

static inline emulated_launch_fn emulated_kernel(struct emulated *x, int k, struct diag *d)
{
    if (x->launches[k])
        return x->launches[k];
    const struct kn_entry *e = &x->be.F->kernels[k];
    if (!x->emu) {
        diag_error(d, NULL, 0, "cannot read tests/cuda_emu.h (the tests run from the repository's root)");
        return NULL;
    }
    char *src = emulated_source(e, x->emu), so[128], log[8192];
    snprintf(so, sizeof so, "/tmp/weft-test-emu-%d-%d.so", (int)getpid(), k);
    int rc = compile_cached(src, so, log, sizeof log, true);
    free(src);
    if (rc) {
        diag_error(d, NULL, 0, "%s's CUDA source does not compile for the emulator:\n%s", e->name, log);
        return NULL;
    }
    x->libs[k] = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    unlink(so);
    if (!x->libs[k] || !(*(void **)&x->launches[k] = dlsym(x->libs[k], "emu_launch"))) {
        diag_error(d, NULL, 0, "%s: %s", e->name, dlerror());
        return NULL;
    }
    return x->launches[k];
}

static inline int emulated_run(struct emulated *x, int k, int fn, const int64_t grid[3], int threads, int64_t smem, const void *args,
                               struct diag *d)
{
    emulated_launch_fn launch = emulated_kernel(x, k, d);
    if (!launch)
        return -1;
    char why[600];
    if (launch(fn, grid, threads, (size_t)smem, args, why, sizeof why)) {
        diag_error(d, NULL, 0, "%s (function %d) on the emulated GPU: %s", x->be.F->kernels[k].name, fn, why);
        return -1;
    }
    return 0;
}

static inline void *emulated_alloc(struct backend *be, size_t bytes, struct diag *d)
{
    (void)be, (void)d;
    void *p = malloc(bytes ? bytes : 1);
    if (p)
        memset(p, 0xff, bytes);
    return p;
}
static inline void emulated_free(struct backend *be, void *p) { (void)be, free(p); }
static inline int emulated_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    (void)be, (void)d;
    memmove(dst, src, bytes);
    return 0;
}

static inline int emulated_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d)
{
    struct emulated *x = (struct emulated *)be;
    struct kn_grid g;
    kn_cuda_grid(&be->F->kernels[kernel].k, a, EMULATED_MAX_BLOCKS, &g);
    struct kn_args args = *a;
    if (g.partial) {
        if ((size_t)g.partial > x->partial_floats) {
            free(x->partial);
            x->partial = (float *)emulated_alloc(be, (size_t)g.partial * sizeof(float), d);
            x->partial_floats = (size_t)g.partial;
        }
        args.partial = x->partial;
        args.nblocks = g.blocks;
    }
    int64_t grid[3] = {g.blocks, 1, 1}, cgrid[3] = {g.colsum_blocks, 1, 1};
    if (emulated_run(x, kernel, 0, grid, KN_CUDA_THREADS, 0, &args, d))
        return -1;
    return g.colsum_blocks ? emulated_run(x, kernel, 1, cgrid, KN_CUDA_THREADS, 0, &args, d) : 0;
}

static inline int emulated_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d)
{
    const struct kn_attn *c = &be->F->kernels[kernel].attn;
    int64_t grid[3];
    kn_attn_grid(c, a, fn, grid);
    return emulated_run((struct emulated *)be, kernel, fn, grid, kn_attn_threads(c, fn), kn_attn_shared_bytes(c, fn), a, d);
}

static inline int emulated_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    int64_t grid[3] = {kn_route_grid(a, EMULATED_MAX_BLOCKS), 1, 1};
    return emulated_run((struct emulated *)be, kernel, 0, grid, KN_CUDA_THREADS, 0, a, d);
}

static inline int emulated_sync(struct backend *be, struct diag *d) { return (void)be, (void)d, 0; }

static inline void emulated_close(struct backend *be)
{
    struct emulated *x = (struct emulated *)be;
    for (int k = 0; k < be->F->n_kernels; k++)
        if (x->libs[k])
            dlclose(x->libs[k]);
    free(x->libs), free(x->launches), free(x->partial), free(x->emu), free(x);
}

/* The plan's kernels only: GEMMs and the executor's copies are the CUDA backend's own (cuBLASLt, the driver), which no
 * emulation can stand for. */
static const struct backend_ops emulated_ops = {.alloc = emulated_alloc, .free = emulated_free, .put = emulated_copy,
                                                .get = emulated_copy, .copy = emulated_copy, .fused = emulated_fused,
                                                .attention = emulated_attention, .route = emulated_route, .sync = emulated_sync,
                                                .close = emulated_close};

static inline struct backend *emulated_backend_open(const struct kn_set *F)
{
    struct emulated *x = (struct emulated *)calloc(1, sizeof *x);
    x->be.ops = &emulated_ops, x->be.F = F, x->be.kind = BACKEND_CUDA;
    snprintf(x->be.description, sizeof x->be.description, "the emulated GPU (tests/cuda_emu.h)");
    x->libs = (void **)calloc((size_t)F->n_kernels + 1, sizeof *x->libs);
    x->launches = (emulated_launch_fn *)calloc((size_t)F->n_kernels + 1, sizeof *x->launches);
    x->emu = emulated_read_text("tests/cuda_emu.h");
    return &x->be;
}

#endif
