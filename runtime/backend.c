/* backend.c: the backends' common face, and the CPU backend: the plan's
 * shared object, written to a temporary file and dlopen'd (see backend.h).
 *
 * The CPU backend runs a launch on as many threads as the BLAS has (the
 * node's cores over its ranks: tools/cmd_run.c), the caller one of them,
 * where the object offers a launch in parts: a fused kernel whose rows are
 * independent as NAME_rows(a, r0, r1), attention as NAME_fn_heads(a, h0,
 * h1) (emit_kernel.h, emit_attention.h).  Each thread takes a contiguous
 * range; what a part computes does not depend on how many there are, so
 * the results are the same on any number of threads. */
#include "backend_impl.h"
#include "actions.h"
#include "util.h"

#include <cblas.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A launch in parts, [0, n) cut into a range a thread: a fused kernel's
 * rows or attention's heads. */
struct job {
    void (*rows)(const struct kn_args *a, int64_t r0, int64_t r1);
    const struct kn_args *fused;
    void (*heads)(const struct kn_attn_args *a, int64_t h0, int64_t h1);
    const struct kn_attn_args *attn;
    int64_t n;
};

struct pool {
    int n_threads;              /* the caller included */
    pthread_t *threads;         /* n_threads - 1 workers */
    pthread_mutex_t lock;
    pthread_cond_t go, done;
    unsigned long generation;   /* one more per job */
    int running;                /* workers not yet done with this job */
    bool stop;
    struct job job;
};

struct worker {
    struct pool *p;
    int part;
};

static void job_part(const struct job *j, int part, int parts)
{
    int64_t lo = j->n * part / parts, hi = j->n * (part + 1) / parts;
    if (lo < hi && j->rows)
        j->rows(j->fused, lo, hi);
    else if (lo < hi)
        j->heads(j->attn, lo, hi);
}

static void *pool_worker(void *arg)
{
    struct worker *w = arg;
    struct pool *p = w->p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->generation == seen && !p->stop)
            pthread_cond_wait(&p->go, &p->lock);
        if (p->stop)
            break;
        seen = p->generation;
        struct job j = p->job;
        pthread_mutex_unlock(&p->lock);
        job_part(&j, w->part, p->n_threads);
        pthread_mutex_lock(&p->lock);
        if (--p->running == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    free(w);
    return NULL;
}

/* n threads, the caller one; fewer if the system will not start them. */
static void pool_init(struct pool *p, int n)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = wf_calloc((size_t)(n > 1 ? n - 1 : 1), sizeof *p->threads);
    p->n_threads = 1;
    for (int t = 1; t < n; t++) {
        struct worker *w = wf_calloc(1, sizeof *w);
        *w = (struct worker){.p = p, .part = t};
        if (pthread_create(&p->threads[t - 1], NULL, pool_worker, w)) {
            free(w);
            break;
        }
        p->n_threads++;
    }
}

static void pool_run(struct pool *p, const struct job *j)
{
    if (p->n_threads == 1 || j->n < 2) {
        job_part(j, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->job = *j;
    p->running = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->lock);
    job_part(j, 0, p->n_threads);
    pthread_mutex_lock(&p->lock);
    while (p->running)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

static void pool_free(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->lock);
    for (int t = 0; t < p->n_threads - 1; t++)
        pthread_join(p->threads[t], NULL);
    free(p->threads);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->lock);
}

struct cpu {
    struct backend be;
    void *lib;
    void **fns;     /* per kernel: its function (fused, routing), or attention's [KN_ATTN_FNS] */
    void **parts;   /* the same in parts (NAME_rows, NAME_fn_heads), or NULL */
    struct pool pool;
    float *widened; /* bf16 GEMMs' operands and result widened to fp32 (cpu_gemm), be.scratch_bytes of them */
    float *sums;    /* a fused kernel's column sums into bf16 outputs, in fp32 until added (kn_args.partial) */
    int64_t sums_floats;
};

/* A fused launch below this many elements runs on the caller alone: waking
 * the other threads costs more than they save. */
#define CPU_SPLIT_ELEMENTS 16384

static int cpu_missing(struct diag *d, const struct kn_entry *K, const char *suffix)
{
    diag_error(d, NULL, 0, "the plan's CPU object has no function %s%s: the plan is corrupted", K->name, suffix);
    return -1;
}

static void *cpu_fn(struct cpu *c, int kernel, int fn)
{
    return c->fns[(size_t)kernel * KN_ATTN_FNS + (size_t)fn];
}

static int cpu_fused(struct backend *be, int kernel, const struct kn_args *given, struct diag *d)
{
    struct cpu *c = (struct cpu *)be;
    struct kn_args with_sums;
    const struct kn_args *a = given;
    int64_t sums = kn_column_sums(&be->F->kernels[kernel].k) * given->cols;
    if (sums) { /* a kernel with column sums runs whole, on this thread: one row of scratch a sum */
        if (sums > c->sums_floats) {
            float *s = realloc(c->sums, (size_t)sums * sizeof *s);
            if (!s) {
                diag_error(d, NULL, 0, "out of memory: the column sums' scratch (%lld floats)", (long long)sums);
                return -1;
            }
            c->sums = s, c->sums_floats = sums;
        }
        with_sums = *given;
        with_sums.partial = c->sums, with_sums.nblocks = 1;
        a = &with_sums;
    }
    struct job j = {.fused = a, .n = a->rows};
    *(void **)&j.rows = c->parts[(size_t)kernel * KN_ATTN_FNS];
    bool rows_apart = true; /* no output adds rows r = i mod m together (kn_args.omod) */
    for (int i = 0; i < KN_MAX_SLOTS; i++)
        rows_apart &= a->omod[i] == 0;
    if (j.rows && rows_apart && a->rows * a->cols >= CPU_SPLIT_ELEMENTS) {
        pool_run(&c->pool, &j);
        return 0;
    }
    void (*f)(const struct kn_args *);
    *(void **)&f = cpu_fn(c, kernel, 0);
    if (!f)
        return cpu_missing(d, &be->F->kernels[kernel], "");
    f(a);
    return 0;
}

static int cpu_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d)
{
    struct cpu *c = (struct cpu *)be;
    struct job j = {.attn = a, .n = fn == KN_ATTN_BWD_KV ? a->Hk : a->Hq};
    *(void **)&j.heads = c->parts[(size_t)kernel * KN_ATTN_FNS + (size_t)fn];
    if (j.heads && !(fn == KN_ATTN_BWD_Q && a->dbias && a->bias_sh == 0)) { /* heads that share a bias add into one gradient */
        pool_run(&c->pool, &j);
        return 0;
    }
    void (*f)(const struct kn_attn_args *);
    *(void **)&f = cpu_fn(c, kernel, fn);
    if (!f)
        return cpu_missing(d, &be->F->kernels[kernel], kn_attn_fn_suffix[fn]);
    f(a);
    return 0;
}

static int cpu_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    void (*f)(const struct kn_route_args *);
    *(void **)&f = cpu_fn((struct cpu *)be, kernel, 0);
    if (!f)
        return cpu_missing(d, &be->F->kernels[kernel], "");
    f(a);
    return 0;
}

static void *cpu_alloc(struct backend *be, size_t bytes, struct diag *d)
{
    (void)be;
    void *p = aligned_alloc(IR_ALIGN, (bytes + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN + (bytes ? 0 : IR_ALIGN)); /* as cuMemAlloc aligns */
    if (!p)
        diag_error(d, NULL, 0, "out of memory: %zu bytes", bytes);
    return p;
}

static void cpu_free(struct backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    (void)be, (void)d;
    memmove(dst, src, bytes);
    return 0;
}

static int cpu_zero(struct backend *be, void *p, size_t bytes, struct diag *d)
{
    (void)be, (void)d;
    memset(p, 0, bytes);
    return 0;
}

/* A stored matrix (rows x cols, leading dimension ld) of bf16, widened into dense fp32. */
static void widen(const uint16_t *src, int64_t rows, int64_t cols, int64_t ld, float *dst)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[r * cols + c] = wf_bf16_float(src[r * ld + c]);
}

/* Through sgemm.  bf16 operands (OpenBLAS as Debian builds it has no
 * sbgemm) are widened into the backend's scratch, grown to the largest
 * GEMM's operands and result, and a bf16 result rounded back (to nearest
 * even, as the kernels round); a fp32 result (a parameter's gradient) is
 * added into directly. */
static int cpu_gemm(struct backend *be, const struct backend_gemm *g, struct diag *d)
{
    struct cpu *cp = (struct cpu *)be;
    enum CBLAS_TRANSPOSE ta = g->ta ? CblasTrans : CblasNoTrans, tb = g->tb ? CblasTrans : CblasNoTrans;
    if (g->dtype == IR_DTYPE_F32) {
        const float *a = g->a, *b = g->b;
        float *c = g->c;
        for (int64_t z = 0; z < g->batch; z++)
            cblas_sgemm(CblasRowMajor, ta, tb, (blasint)g->m, (blasint)g->n, (blasint)g->k, 1.0f, a + z * g->stride_a, (blasint)g->lda,
                        b + z * g->stride_b, (blasint)g->ldb, g->beta, c + z * g->stride_c, (blasint)g->ldc);
        return 0;
    }
    const uint16_t *a = g->a, *b = g->b;
    int64_t ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k, br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
    int64_t need = (ar * ac + br * bc + g->m * g->n) * (int64_t)sizeof(float);
    if (need > be->scratch_bytes) {
        float *w = realloc(cp->widened, (size_t)need);
        if (!w) {
            diag_error(d, NULL, 0, "out of memory: the bf16 GEMMs' scratch (%lld bytes)", (long long)need);
            return -1;
        }
        cp->widened = w, be->scratch_bytes = need;
    }
    float *fa = cp->widened, *fb = fa + ar * ac, *fc = fb + br * bc;
    for (int64_t z = 0; z < g->batch; z++) {
        widen(a + z * g->stride_a, ar, ac, g->lda, fa);
        widen(b + z * g->stride_b, br, bc, g->ldb, fb);
        if (g->c_dtype == IR_DTYPE_F32) {
            cblas_sgemm(CblasRowMajor, ta, tb, (blasint)g->m, (blasint)g->n, (blasint)g->k, 1.0f, fa, (blasint)ac, fb, (blasint)bc,
                        g->beta, (float *)g->c + z * g->stride_c, (blasint)g->ldc);
            continue;
        }
        cblas_sgemm(CblasRowMajor, ta, tb, (blasint)g->m, (blasint)g->n, (blasint)g->k, 1.0f, fa, (blasint)ac, fb, (blasint)bc, 0.0f, fc,
                    (blasint)g->n);
        uint16_t *c = (uint16_t *)g->c + z * g->stride_c;
        for (int64_t i = 0; i < g->m; i++)
            for (int64_t k = 0; k < g->n; k++)
                c[i * g->ldc + k] = wf_bf16(fc[i * g->n + k] + (g->beta != 0 ? g->beta * wf_bf16_float(c[i * g->ldc + k]) : 0.0f));
    }
    return 0;
}

static int cpu_copy_rows(struct backend *be, const struct backend_rows *x, struct diag *d)
{
    (void)be, (void)d;
    const char *src = x->src;
    char *dst = x->dst;
    for (int64_t p = 0; p < x->planes; p++)
        for (int64_t r = 0; r < x->rows; r++) {
            const char *s = src + p * x->src_plane + r * x->src_pitch;
            char *o = dst + p * x->dst_plane + r * x->dst_pitch;
            if (!x->add)
                memcpy(o, s, (size_t)x->width);
            else if (x->dtype == IR_DTYPE_BF16)
                for (int64_t i = 0; i < x->width / 2; i++) {
                    uint16_t a, b;
                    memcpy(&a, s + 2 * i, 2), memcpy(&b, o + 2 * i, 2);
                    b = wf_bf16(wf_bf16_float(a) + wf_bf16_float(b));
                    memcpy(o + 2 * i, &b, 2);
                }
            else
                for (int64_t i = 0; i < x->width / 4; i++)
                    ((float *)(void *)o)[i] += ((const float *)(const void *)s)[i];
        }
    return 0;
}

static void cpu_memory(struct backend *be, struct backend_memory *m)
{
    (void)be;
    m->at_open = m->peak = m->now = -1;
}

static int cpu_sync(struct backend *be, struct diag *d)
{
    (void)be, (void)d;
    return 0;
}

static void cpu_close(struct backend *be)
{
    struct cpu *c = (struct cpu *)be;
    pool_free(&c->pool);
    if (c->lib)
        dlclose(c->lib);
    free(c->fns);
    free(c->parts);
    free(c->widened);
    free(c->sums);
    free(c);
}

static const struct backend_ops cpu_ops = {
    .alloc = cpu_alloc, .free = cpu_free, .put = cpu_copy, .get = cpu_copy, .copy = cpu_copy, .fused = cpu_fused,
    .attention = cpu_attention, .route = cpu_route, .sync = cpu_sync, .gemm = cpu_gemm, .zero = cpu_zero,
    .copy_rows = cpu_copy_rows, .memory = cpu_memory, .close = cpu_close}; /* CPU memory: no holds, gpu, poll */

static struct backend *cpu_open(const struct kn_set *F, struct diag *d)
{
    struct cpu *c = wf_calloc(1, sizeof *c);
    c->be = (struct backend){.ops = &cpu_ops, .F = F, .kind = BACKEND_CPU};
    snprintf(c->be.description, sizeof c->be.description, "cpu");
    c->fns = wf_calloc((size_t)F->n_kernels * KN_ATTN_FNS + 1, sizeof *c->fns);
    c->parts = wf_calloc((size_t)F->n_kernels * KN_ATTN_FNS + 1, sizeof *c->parts);
    int threads = openblas_get_num_threads();
    pool_init(&c->pool, threads < 1 ? 1 : threads > 256 ? 256 : threads);
    if (!F->n_kernels) /* GEMMs and copies alone */
        return &c->be;
    if (!F->cpu_object || !F->cpu_size) {
        diag_error(d, NULL, 0, "the plan has no CPU kernels (compiled without a C compiler?)");
        cpu_close(&c->be);
        return NULL;
    }
    const char *tmp = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/weft-kernels-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        diag_error(d, NULL, 0, "cannot write the CPU kernels to %s: %s", path, strerror(errno));
        cpu_close(&c->be);
        return NULL;
    }
    size_t done = 0;
    while (done < F->cpu_size) {
        ssize_t w = write(fd, (const char *)F->cpu_object + done, F->cpu_size - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    close(fd);
    void *lib = done == F->cpu_size ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    unlink(path); /* the mapping stays */
    if (!lib) {
        diag_error(d, NULL, 0, "cannot load the plan's CPU kernels: %s", done == F->cpu_size ? dlerror() : "short write");
        cpu_close(&c->be);
        return NULL;
    }
    c->lib = lib;
    for (int k = 0; k < F->n_kernels; k++) {
        const struct kn_entry *K = &F->kernels[k];
        for (int f = 0; f < (K->kind == KN_KIND_ATTENTION ? KN_ATTN_FNS : 1); f++) {
            char name[160], parts[180];
            snprintf(name, sizeof name, "%s%s", K->name, K->kind == KN_KIND_ATTENTION ? kn_attn_fn_suffix[f] : "");
            c->fns[(size_t)k * KN_ATTN_FNS + (size_t)f] = dlsym(lib, name);
            snprintf(parts, sizeof parts, "%s%s", name, K->kind == KN_KIND_ATTENTION ? "_heads" : K->kind == KN_KIND_FUSED ? "_rows" : "");
            c->parts[(size_t)k * KN_ATTN_FNS + (size_t)f] = K->kind != KN_KIND_ROUTE ? dlsym(lib, parts) : NULL;
        }
    }
    return &c->be;
}

struct backend *backend_open(enum backend_kind kind, const struct kn_set *F, struct diag *d)
{
    return kind == BACKEND_CUDA ? backend_cuda_open(F, d) : cpu_open(F, d);
}

void backend_close(struct backend *be)
{
    if (!be)
        return;
    backend_graphs_free(be);
    be->ops->close(be);
}

const char *backend_describe(const struct backend *be) { return be->description; }

void *backend_alloc(struct backend *be, size_t bytes, struct diag *d) { return be->ops->alloc(be, bytes, d); }
void backend_free(struct backend *be, void *p)
{
    if (p)
        be->ops->free(be, p);
}
int backend_put(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return be->ops->put(be, dst, src, bytes, d);
}
int backend_get(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return be->ops->get(be, dst, src, bytes, d);
}
int backend_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return backend_submit(be, &(struct backend_call){.kind = CALL_COPY, .u.copy = {dst, src, bytes}}, d);
}

static int bad_kernel(const struct backend *be, int kernel, enum kn_kind kind, struct diag *d)
{
    if (kernel >= 0 && kernel < be->F->n_kernels && be->F->kernels[kernel].kind == kind)
        return 0;
    diag_error(d, NULL, 0, "launch of kernel %d: the plan has no such kernel of that kind", kernel);
    return -1;
}

int backend_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d)
{
    if (bad_kernel(be, kernel, KN_KIND_FUSED, d))
        return -1;
    return backend_submit(be, &(struct backend_call){.kind = CALL_FUSED, .kernel = kernel, .u.fused = *a}, d);
}

int backend_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d)
{
    if (bad_kernel(be, kernel, KN_KIND_ATTENTION, d))
        return -1;
    if (fn != KN_ATTN_FWD && !be->F->kernels[kernel].attn.backward) {
        diag_error(d, NULL, 0, "%s has no backward (a forward-only plan)", be->F->kernels[kernel].name);
        return -1;
    }
    return backend_submit(be, &(struct backend_call){.kind = CALL_ATTENTION, .kernel = kernel, .fn = fn, .u.attn = *a}, d);
}

int backend_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    if (bad_kernel(be, kernel, KN_KIND_ROUTE, d))
        return -1;
    return backend_submit(be, &(struct backend_call){.kind = CALL_ROUTE, .kernel = kernel, .u.route = *a}, d);
}

int backend_sync(struct backend *be, struct diag *d) { return be->ops->sync(be, d); }

int backend_gemm(struct backend *be, const struct backend_gemm *g, struct diag *d)
{
    bool bf16 = g->dtype == IR_DTYPE_BF16;
    if ((g->dtype != IR_DTYPE_F32 && !bf16) || (g->c_dtype != IR_DTYPE_F32 && !(bf16 && g->c_dtype == IR_DTYPE_BF16)) ||
        (g->beta != 0 && g->beta != 1) || g->batch < 0 || g->m < 0 || g->n < 0 || g->k < 0 || g->epilogue < 0 ||
        g->epilogue >= IR_EPI_COUNT || (g->epilogue && (g->batch != 1 || g->beta != 0 || !be->ops->gemm_epilogue))) {
        diag_error(d, NULL, 0, "a GEMM of %lld x %lld x %lld (batch %lld, %s x %s into %s, beta %g%s%s): not one this backend runs",
                   (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch, ir_dtype_name((enum ir_dtype)g->dtype),
                   ir_dtype_name((enum ir_dtype)g->dtype), ir_dtype_name((enum ir_dtype)g->c_dtype), (double)g->beta,
                   g->epilogue ? ", epilogue " : "", g->epilogue ? ir_epilogue_name((enum ir_epilogue)g->epilogue) : "");
        return -1;
    }
    return g->batch && g->m && g->n ? backend_submit(be, &(struct backend_call){.kind = CALL_GEMM, .u.gemm = *g}, d) : 0;
}

bool backend_gemm_epilogue(struct backend *be, const struct backend_gemm *g)
{
    return be->ops->gemm_epilogue && be->ops->gemm_epilogue(be, g);
}

int backend_zero(struct backend *be, void *p, size_t bytes, struct diag *d)
{
    return bytes ? backend_submit(be, &(struct backend_call){.kind = CALL_ZERO, .u.copy = {.dst = p, .bytes = bytes}}, d) : 0;
}

int backend_copy_rows(struct backend *be, const struct backend_rows *r, struct diag *d)
{
    int64_t e = r->dtype == IR_DTYPE_BF16 ? 2 : 4;
    if (r->add && ((r->dtype != IR_DTYPE_F32 && r->dtype != IR_DTYPE_BF16) || r->width % e || r->src_pitch % e || r->dst_pitch % e ||
                   r->src_plane % e || r->dst_plane % e)) {
        diag_error(d, NULL, 0, "an add of rows %lld bytes wide (pitches %lld, %lld): not whole elements of %s", (long long)r->width,
                   (long long)r->src_pitch, (long long)r->dst_pitch, ir_dtype_name((enum ir_dtype)r->dtype));
        return -1;
    }
    if (r->planes <= 0 || r->rows <= 0 || r->width <= 0)
        return 0;
    return backend_submit(be, &(struct backend_call){.kind = CALL_ROWS, .u.rows = *r}, d);
}

int64_t backend_scratch_bytes(const struct backend *be) { return be->scratch_bytes; }

void backend_memory(struct backend *be, struct backend_memory *m) { be->ops->memory(be, m); }

int backend_cuda_ordinal(int count, const char *device, const char *local_rank, struct diag *d)
{
    char *end = NULL;
    if (device && *device) {
        long o = strtol(device, &end, 10);
        if (*end || o < 0 || o >= count) {
            diag_error(d, NULL, 0, "WEFT_CUDA_DEVICE=%s: there %s %d GPU%s here (0 to %d)", device, count == 1 ? "is" : "are", count,
                       count == 1 ? "" : "s", count - 1);
            return -1;
        }
        return (int)o;
    }
    long local = local_rank && *local_rank ? strtol(local_rank, &end, 10) : 0;
    return local_rank && *local_rank && !*end && local > 0 && count > 0 ? (int)(local % count) : 0;
}

bool backend_holds(struct backend *be, const void *p) { return be->ops->holds && be->ops->holds(be, p); }
int backend_gpu(struct backend *be, struct backend_gpu *g, struct diag *d) { return be->ops->gpu ? be->ops->gpu(be, g, d) : 0; }
int backend_poll(struct backend *be, struct diag *d) { return be->ops->poll ? be->ops->poll(be, d) : 1; }

static int no_side(const struct backend *be, struct diag *d)
{
    diag_error(d, NULL, 0, "%s has no second stream", be->description);
    return -1;
}
int backend_side_begin(struct backend *be, void **stream, struct diag *d)
{
    return be->ops->side_begin ? be->ops->side_begin(be, stream, d) : no_side(be, d);
}
int backend_side_end(struct backend *be, struct backend_mark **mark, struct diag *d)
{
    return be->ops->side_end ? be->ops->side_end(be, mark, d) : no_side(be, d);
}
int backend_side_done(struct backend *be, struct backend_mark *mark, struct diag *d) { return be->ops->side_done(be, mark, d); }
void backend_mark_free(struct backend *be, struct backend_mark *mark)
{
    if (mark)
        be->ops->mark_free(be, mark);
}
