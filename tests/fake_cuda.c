/* fake_cuda.c: the CUDA driver and cuBLASLt as runtime/cuda.c calls them,
 * on the CPU, built by tests/test_fake_cuda.c into libcuda.so.1 and
 * libcublasLt.so.13, so that a machine without a GPU runs `weft run
 * --device cuda` through cuda.c: its stream, copies, GEMM descriptors, graph
 * capture, node updates and second stream.
 *
 * Memory is the host's.  Every stream runs its work at once, in order,
 * unless it is capturing: then each launch, copy, memset, GEMM and
 * transform becomes a node, its arguments copied by value as a real graph
 * holds them; a graph launch runs its nodes in order.  A kernel is the
 * plan's CPU function of the same name ($WEFT_FAKE_CUDA_KERNELS, the plan's
 * CPU object), called with the launch's one parameter; a column-sum
 * kernel does nothing, as the CPU function sums its columns itself.
 * $WEFT_FAKE_CUDA_MANIFEST lists each function's argument bytes ("name
 * bytes" a line): a driver learns them from the binary.  GEMMs are plain
 * loops with fp32 sums.  Counters go to $WEFT_FAKE_CUDA_LOG at exit.
 * Faults on demand: $WEFT_FAKE_CUDA_MEMORY, the bytes the GPU has (an
 * allocation past them fails as out of memory); $WEFT_FAKE_CUDA_NO_CAPTURE,
 * every capture refused. */
#include <dlfcn.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int res;
enum { OK = 0, ERR_INVALID = 1, ERR_NOT_FOUND = 500, ERR_CAPTURE = 900 };

/* ---- kernels --------------------------------------------------------------- */

struct fn {
    char name[160];
    void (*run)(const void *args); /* NULL: a column sum (the CPU function did it) */
    size_t bytes;                  /* its argument's */
};

static void *kernels;
static struct fn *fns;
static int n_fns;
static long launches, replays, node_sets, captures, gemms, epilogues;

static void finish_log(void)
{
    const char *path = getenv("WEFT_FAKE_CUDA_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "launches %ld replays %ld node_sets %ld captures %ld gemms %ld epilogues %ld\n", launches, replays, node_sets, captures,
                gemms, epilogues);
        fclose(f);
    }
}

static res load_manifest(void)
{
    if (fns)
        return OK;
    const char *so = getenv("WEFT_FAKE_CUDA_KERNELS"), *manifest = getenv("WEFT_FAKE_CUDA_MANIFEST");
    FILE *f = manifest ? fopen(manifest, "r") : NULL;
    if (!so || !f || !(kernels = dlopen(so, RTLD_NOW | RTLD_LOCAL))) {
        if (f)
            fclose(f);
        fprintf(stderr, "fake_cuda: set WEFT_FAKE_CUDA_KERNELS and WEFT_FAKE_CUDA_MANIFEST (%s)\n", dlerror());
        return ERR_INVALID;
    }
    char name[160];
    size_t bytes;
    while (fscanf(f, "%159s %zu", name, &bytes) == 2) {
        fns = realloc(fns, (size_t)(n_fns + 1) * sizeof *fns);
        struct fn *x = &fns[n_fns++];
        snprintf(x->name, sizeof x->name, "%s", name);
        x->bytes = bytes;
        *(void **)&x->run = dlsym(kernels, name);
    }
    fclose(f);
    atexit(finish_log);
    return OK;
}

/* ---- memory: the host's, each allocation remembered (cuPointerGetAttribute) - */

struct alloc {
    uintptr_t at;
    size_t bytes;
};
static struct alloc *allocs;
static int n_allocs;

static size_t in_use(void);
res cuMemAlloc_v2(unsigned long long *p, size_t bytes)
{
    const char *limit = getenv("WEFT_FAKE_CUDA_MEMORY");
    if (limit && in_use() + bytes > strtoull(limit, NULL, 10))
        return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
    void *m = calloc(1, bytes ? bytes : 1);
    if (!m)
        return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
    allocs = realloc(allocs, (size_t)(n_allocs + 1) * sizeof *allocs);
    allocs[n_allocs++] = (struct alloc){(uintptr_t)m, bytes};
    *p = (uintptr_t)m;
    return OK;
}

res cuMemFree_v2(unsigned long long p)
{
    for (int i = 0; i < n_allocs; i++)
        if (allocs[i].at == p) {
            free((void *)(uintptr_t)p);
            allocs[i] = allocs[--n_allocs];
            return OK;
        }
    return ERR_INVALID;
}

res cuPointerGetAttribute(void *out, int attr, unsigned long long p)
{
    (void)attr;
    for (int i = 0; i < n_allocs; i++)
        if (p >= allocs[i].at && p < allocs[i].at + allocs[i].bytes) {
            *(unsigned *)out = 2; /* CU_MEMORYTYPE_DEVICE */
            return OK;
        }
    return ERR_INVALID;
}

static size_t in_use(void)
{
    size_t used = 0;
    for (int i = 0; i < n_allocs; i++)
        used += allocs[i].bytes;
    return used;
}

res cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    const char *limit = getenv("WEFT_FAKE_CUDA_MEMORY");
    *total = limit ? (size_t)strtoull(limit, NULL, 10) : (size_t)80 << 30, *free_bytes = *total - in_use();
    return OK;
}

/* ---- work: run now, or a node of the graph a stream captures ---------------- */

enum kind { KERNEL, MEMSET, COPY, COPY_2D, GEMM, TRANSFORM };

struct copy_2d { /* CUDA_MEMCPY2D */
    size_t src_x, src_y;
    int src_type;
    const void *src_host;
    unsigned long long src_dev;
    void *src_array;
    size_t src_pitch, dst_x, dst_y;
    int dst_type;
    void *dst_host;
    unsigned long long dst_dev;
    void *dst_array;
    size_t dst_pitch, width, height;
};

struct layout {
    int type;
    uint64_t rows, cols;
    int64_t ld, stride;
    int32_t batch;
};

struct desc {
    int32_t ta, tb;
    uint32_t epilogue;      /* cublasLtEpilogue_t: 1 none, bit 4 bias, bit 32 GELU, bit 128 the GELU's input kept in aux */
    const void *bias;       /* D's rows of D's type */
    void *aux;
    int64_t aux_ld;
};

struct node {
    enum kind kind;
    const struct fn *fn;
    unsigned char args[4096];
    uintptr_t dst, src;
    size_t bytes;
    struct copy_2d m;
    struct desc desc;
    struct layout la, lb, lc, ld;
    float alpha, beta;
    const void *a, *b, *c;
    void *d;
};

struct graph { /* each node on its own: a node's handle stays valid as the capture grows */
    struct node **v;
    int n;
};

/* The graphs captured and not destroyed, so that a node handle finds its place. */
static struct graph **graphs;
static int n_graphs;

struct stream {
    struct graph *capturing;
};

static float widen(const void *p, int type, int64_t i)
{
    if (type == 0)
        return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void narrow(void *p, int type, int64_t i, float v)
{
    if (type == 0) {
        ((float *)p)[i] = v;
        return;
    }
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) /* NaN stays NaN */
        ((uint16_t *)p)[i] = (uint16_t)((u >> 16) | 0x40);
    else
        ((uint16_t *)p)[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* D = alpha op(A) op(B) + beta C, column-major, per batch. */
static void run_gemm(const struct node *x)
{
    gemms++;
    epilogues += x->desc.epilogue > 1;
    uint64_t m = x->ld.rows, n = x->ld.cols, k = x->desc.ta ? x->la.rows : x->la.cols;
    for (int32_t z = 0; z < (x->ld.batch > 1 ? x->ld.batch : 1); z++)
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t i = 0; i < m; i++) {
                float s = 0;
                for (uint64_t p = 0; p < k; p++) {
                    int64_t ai = x->desc.ta ? (int64_t)(i * (uint64_t)x->la.ld + p) : (int64_t)(p * (uint64_t)x->la.ld + i);
                    int64_t bi = x->desc.tb ? (int64_t)(p * (uint64_t)x->lb.ld + j) : (int64_t)(j * (uint64_t)x->lb.ld + p);
                    s += widen(x->a, x->la.type, z * x->la.stride + ai) * widen(x->b, x->lb.type, z * x->lb.stride + bi);
                }
                int64_t ci = z * x->lc.stride + (int64_t)(j * (uint64_t)x->lc.ld + i), di = z * x->ld.stride + (int64_t)(j * (uint64_t)x->ld.ld + i);
                float v = x->alpha * s + (x->beta != 0 ? x->beta * widen(x->c, x->lc.type, ci) : 0);
                if (x->desc.epilogue & 4) /* bias, by D's row */
                    v += widen(x->desc.bias, x->ld.type, (int64_t)i);
                if (x->desc.epilogue & 128) /* the GELU's input, rounded to D's type */
                    narrow(x->desc.aux, x->ld.type, (int64_t)(j * (uint64_t)x->desc.aux_ld + i), v);
                if (x->desc.epilogue & 32) { /* tanh's GELU */
                    float half = 0.5f * v;
                    v = half * (1.f + tanhf(0.797884561f * (v + 0.044715f * (v * v * v))));
                }
                narrow(x->d, x->ld.type, di, v);
            }
}

/* C = alpha A + beta B, elementwise, column-major, per batch. */
static void run_transform(const struct node *x)
{
    for (int32_t z = 0; z < (x->ld.batch > 1 ? x->ld.batch : 1); z++)
        for (uint64_t j = 0; j < x->ld.cols; j++)
            for (uint64_t i = 0; i < x->ld.rows; i++) {
                int64_t ai = z * x->la.stride + (int64_t)(j * (uint64_t)x->la.ld + i), bi = z * x->lb.stride + (int64_t)(j * (uint64_t)x->lb.ld + i);
                int64_t ci = z * x->ld.stride + (int64_t)(j * (uint64_t)x->ld.ld + i);
                narrow(x->d, x->ld.type, ci, x->alpha * widen(x->a, x->la.type, ai) + x->beta * widen(x->b, x->lb.type, bi));
            }
}

static void run(const struct node *x)
{
    switch (x->kind) {
    case KERNEL:
        launches++;
        if (x->fn->run)
            x->fn->run(x->args);
        break;
    case MEMSET: memset((void *)x->dst, 0, x->bytes); break;
    case COPY: memmove((void *)x->dst, (const void *)x->src, x->bytes); break;
    case COPY_2D:
        for (size_t r = 0; r < x->m.height; r++)
            memmove((char *)(uintptr_t)x->m.dst_dev + r * x->m.dst_pitch, (const char *)(uintptr_t)x->m.src_dev + r * x->m.src_pitch, x->m.width);
        break;
    case GEMM: run_gemm(x); break;
    case TRANSFORM: run_transform(x); break;
    }
}

static struct node *last_node; /* the capture's newest node: its one dependency */

static res submit(void *stream, const struct node *x)
{
    struct stream *s = stream;
    if (!s || !s->capturing) {
        run(x);
        return OK;
    }
    struct graph *g = s->capturing;
    g->v = realloc(g->v, (size_t)(g->n + 1) * sizeof *g->v);
    g->v[g->n] = malloc(sizeof *x);
    *g->v[g->n] = *x;
    last_node = g->v[g->n++];
    return OK;
}

/* ---- the driver ------------------------------------------------------------ */

res cuInit(unsigned flags) { return (void)flags, load_manifest(); }
res cuDeviceGetCount(int *n) { return *n = 1, OK; }
res cuDeviceGet(int *d, int ordinal) { return *d = ordinal, OK; }
res cuDeviceGetName(char *name, int n, int dev)
{
    (void)dev;
    snprintf(name, (size_t)n, "fake GPU (tests/fake_cuda.c)");
    return OK;
}
res cuDeviceGetAttribute(int *v, int attr, int dev)
{
    (void)dev;
    *v = attr == 75 ? 9 : attr == 76 ? 0 : attr == 16 ? 4 : attr == 97 ? 232448 : 0;
    return OK;
}
/* One GPU shared by the node's ranks, or ($WEFT_FAKE_CUDA_OWN_GPU) one of its own a rank, as NCCL wants. */
res cuDeviceGetPCIBusId(char *id, int n, int dev)
{
    (void)dev;
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    snprintf(id, (size_t)n, "0000:%02x:00.0", getenv("WEFT_FAKE_CUDA_OWN_GPU") && rank ? atoi(rank) : 0);
    return OK;
}
res cuDevicePrimaryCtxRetain(void **ctx, int dev) { return (void)dev, *ctx = (void *)1, OK; }
res cuDevicePrimaryCtxRelease_v2(int dev) { return (void)dev, OK; }
res cuCtxSetCurrent(void *ctx) { return (void)ctx, OK; }
res cuCtxSynchronize(void) { return OK; }
res cuGetErrorName(res r, const char **s)
{
    *s = r == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : r == ERR_CAPTURE ? "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED" : "CUDA_ERROR_FAKE";
    return OK;
}
res cuGetErrorString(res r, const char **s) { return (void)r, *s = "an error of the fake driver", OK; }

res cuModuleLoadData(void **mod, const void *image) { return (void)image, *mod = (void *)1, OK; }
res cuModuleUnload(void *mod) { return (void)mod, OK; }
res cuModuleGetFunction(const struct fn **f, void *mod, const char *name)
{
    (void)mod;
    for (int i = 0; i < n_fns; i++)
        if (!strcmp(fns[i].name, name)) {
            size_t len = strlen(name);
            if (!fns[i].run && (len < 7 || strcmp(name + len - 7, "_colsum"))) {
                fprintf(stderr, "fake_cuda: the plan's CPU object has no %s\n", name);
                return ERR_NOT_FOUND;
            }
            *f = &fns[i];
            return OK;
        }
    fprintf(stderr, "fake_cuda: %s is not in the manifest\n", name);
    return ERR_NOT_FOUND;
}
res cuFuncSetAttribute(const struct fn *f, int attr, int v) { return (void)f, (void)attr, (void)v, OK; }

res cuLaunchKernel(const struct fn *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared,
                   void *stream, void **params, void **extra)
{
    (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shared, (void)extra;
    struct node x = {.kind = KERNEL, .fn = f};
    if (f->bytes > sizeof x.args)
        return ERR_INVALID;
    memcpy(x.args, params[0], f->bytes);
    return submit(stream, &x);
}

res cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t n, void *stream)
{
    struct stream *s = stream;
    if (s && s->capturing)
        return ERR_CAPTURE; /* pageable host memory: not in a graph */
    memcpy((void *)(uintptr_t)dst, src, n);
    return OK;
}
res cuMemcpyDtoH_v2(void *dst, unsigned long long src, size_t n) { return memcpy(dst, (const void *)(uintptr_t)src, n), OK; }
res cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n, void *stream)
{
    return submit(stream, &(struct node){.kind = COPY, .dst = (uintptr_t)dst, .src = (uintptr_t)src, .bytes = n});
}
res cuMemsetD8Async(unsigned long long dst, unsigned char v, size_t n, void *stream)
{
    return v ? ERR_INVALID : submit(stream, &(struct node){.kind = MEMSET, .dst = (uintptr_t)dst, .bytes = n});
}
res cuMemcpy2DAsync_v2(const struct copy_2d *m, void *stream) { return submit(stream, &(struct node){.kind = COPY_2D, .m = *m}); }

res cuStreamCreate(struct stream **s, unsigned flags) { return (void)flags, *s = calloc(1, sizeof **s), OK; }
res cuStreamDestroy_v2(struct stream *s) { return free(s), OK; }
res cuStreamSynchronize(struct stream *s) { return s && s->capturing ? ERR_CAPTURE : OK; }
res cuStreamQuery(struct stream *s) { return (void)s, OK; }
res cuEventCreate(void **e, unsigned flags) { return (void)flags, *e = malloc(1), OK; }
res cuEventDestroy_v2(void *e) { return free(e), OK; }
res cuEventRecord(void *e, struct stream *s) { return (void)e, s && s->capturing ? ERR_CAPTURE : OK; }
res cuEventQuery(void *e) { return (void)e, OK; }
res cuStreamWaitEvent(struct stream *s, void *e, unsigned flags) { return (void)s, (void)e, (void)flags, OK; }

res cuStreamBeginCapture_v2(struct stream *s, int mode)
{
    (void)mode;
    if (!s || s->capturing)
        return ERR_INVALID;
    if (getenv("WEFT_FAKE_CUDA_NO_CAPTURE"))
        return 801; /* CUDA_ERROR_NOT_SUPPORTED */
    s->capturing = calloc(1, sizeof *s->capturing);
    last_node = NULL;
    return OK;
}
res cuStreamEndCapture(struct stream *s, struct graph **g)
{
    *g = s->capturing;
    s->capturing = NULL;
    if (!*g)
        return ERR_INVALID;
    captures++;
    graphs = realloc(graphs, (size_t)(n_graphs + 1) * sizeof *graphs);
    graphs[n_graphs++] = *g;
    return OK;
}
res cuStreamGetCaptureInfo_v2(struct stream *s, int *status, unsigned long long *id, struct graph **g, struct node *const **deps,
                              size_t *n)
{
    static struct node *one[1];
    *status = s && s->capturing ? 1 : 0, *id = 1, *g = s ? s->capturing : NULL;
    one[0] = last_node;
    *deps = one, *n = last_node ? 1 : 0;
    return OK;
}
res cuGraphInstantiateWithFlags(struct graph **exec, struct graph *g, unsigned long long flags)
{
    (void)flags;
    *exec = calloc(1, sizeof **exec);
    (*exec)->v = calloc((size_t)g->n + 1, sizeof *g->v);
    for (int i = 0; i < g->n; i++) {
        (*exec)->v[i] = malloc(sizeof *g->v[i]);
        *(*exec)->v[i] = *g->v[i];
    }
    (*exec)->n = g->n;
    return OK;
}
static void graph_free(struct graph *g)
{
    for (int i = 0; i < g->n; i++)
        free(g->v[i]);
    free(g->v);
    free(g);
}
res cuGraphDestroy(struct graph *g)
{
    for (int i = 0; i < n_graphs; i++)
        if (graphs[i] == g)
            graphs[i] = graphs[--n_graphs];
    graph_free(g);
    return OK;
}
res cuGraphExecDestroy(struct graph *g) { return graph_free(g), OK; }
res cuGraphLaunch(struct graph *exec, struct stream *s)
{
    (void)s;
    replays++;
    for (int i = 0; i < exec->n; i++)
        run(exec->v[i]);
    return OK;
}

/* CUDA_KERNEL_NODE_PARAMS_v1: the node is one of the graph's (by its place there), set in exec's copy. */
struct kernel_params {
    const struct fn *func;
    unsigned gx, gy, gz, bx, by, bz, shared;
    void **params, **extra;
};
static int node_index(const struct node *n)
{
    for (int g = 0; g < n_graphs; g++)
        for (int i = 0; i < graphs[g]->n; i++)
            if (graphs[g]->v[i] == n)
                return i;
    return -1;
}
res cuGraphExecKernelNodeSetParams(struct graph *exec, const struct node *n, const struct kernel_params *p)
{
    int i = node_index(n);
    if (i < 0 || i >= exec->n || exec->v[i]->kind != KERNEL || p->func->bytes > sizeof exec->v[i]->args)
        return ERR_INVALID;
    exec->v[i]->fn = p->func;
    memcpy(exec->v[i]->args, p->params[0], p->func->bytes);
    node_sets++;
    return OK;
}

/* ---- cuBLASLt ------------------------------------------------------------------ */

res cublasLtCreate(void **h) { return *h = (void *)1, OK; }
res cublasLtDestroy(void *h) { return (void)h, OK; }
const char *cublasLtGetStatusString(res r) { return (void)r, "a cuBLASLt error of the fake"; }
res cublasLtMatmulDescCreate(struct desc **d, int compute, int scale)
{
    (void)compute, (void)scale;
    *d = calloc(1, sizeof **d);
    (*d)->epilogue = 1; /* CUBLASLT_EPILOGUE_DEFAULT */
    return OK;
}
res cublasLtMatmulDescDestroy(struct desc *d) { return free(d), OK; }
res cublasLtMatmulDescSetAttribute(struct desc *d, int attr, const void *buf, size_t n)
{
    (void)n;
    if (attr == 3)
        d->ta = *(const int32_t *)buf;
    else if (attr == 4)
        d->tb = *(const int32_t *)buf;
    else if (attr == 7 && n == 4)
        d->epilogue = *(const uint32_t *)buf;
    else if (attr == 8 && n == sizeof(void *))
        d->bias = *(const void *const *)buf;
    else if (attr == 11 && n == sizeof(void *))
        d->aux = *(void *const *)buf;
    else if (attr == 12 && n == 8)
        d->aux_ld = *(const int64_t *)buf;
    else
        return ERR_INVALID; /* an attribute the fake does not know: weft sets no other */
    return OK;
}
res cublasLtMatrixLayoutCreate(struct layout **l, int type, uint64_t rows, uint64_t cols, int64_t ld)
{
    *l = calloc(1, sizeof **l);
    **l = (struct layout){.type = type, .rows = rows, .cols = cols, .ld = ld, .batch = 1};
    return OK;
}
res cublasLtMatrixLayoutDestroy(struct layout *l) { return free(l), OK; }
res cublasLtMatrixLayoutSetAttribute(struct layout *l, int attr, const void *buf, size_t n)
{
    (void)n;
    if (attr == 5)
        l->batch = *(const int32_t *)buf;
    else if (attr == 6)
        l->stride = *(const int64_t *)buf;
    return OK;
}
res cublasLtMatmulPreferenceCreate(void **p) { return *p = malloc(1), OK; }
res cublasLtMatmulPreferenceDestroy(void *p) { return free(p), OK; }
res cublasLtMatmulPreferenceSetAttribute(void *p, int attr, const void *buf, size_t n) { return (void)p, (void)attr, (void)buf, (void)n, OK; }
res cublasLtMatmulAlgoGetHeuristic(void *h, struct desc *d, struct layout *a, struct layout *b, struct layout *c, struct layout *dd,
                                   void *pref, int requested, void *results, int *returned)
{
    (void)h, (void)a, (void)b, (void)c, (void)pref, (void)requested;
    memset(results, 0, 96);
    /* the documented needs: the bias's and the kept input's pointers, that input's leading dimension a multiple of 8
     * and at least D's rows; only those epilogues */
    bool known = d->epilogue == 1 || d->epilogue == 4 || d->epilogue == 36 || d->epilogue == 164;
    bool aux_ok = !(d->epilogue & 128) || (d->aux && d->aux_ld % 8 == 0 && (uint64_t)d->aux_ld >= dd->rows);
    if (!known || !aux_ok || ((d->epilogue & 4) && !d->bias))
        return *returned = 0, OK;
    *returned = 1;
    return OK;
}
res cublasLtMatmul(void *h, const struct desc *desc, const float *alpha, const void *a, const struct layout *la, const void *b,
                   const struct layout *lb, const float *beta, const void *c, const struct layout *lc, void *d, const struct layout *ld,
                   const void *algo, void *ws, size_t ws_bytes, void *stream)
{
    (void)h, (void)algo, (void)ws, (void)ws_bytes;
    return submit(stream, &(struct node){.kind = GEMM, .desc = *desc, .la = *la, .lb = *lb, .lc = *lc, .ld = *ld, .alpha = *alpha,
                                         .beta = *beta, .a = a, .b = b, .c = c, .d = d});
}
res cublasLtMatrixTransformDescCreate(void **t, int scale) { return (void)scale, *t = malloc(1), OK; }
res cublasLtMatrixTransformDescDestroy(void *t) { return free(t), OK; }
res cublasLtMatrixTransform(void *h, void *t, const float *alpha, const void *a, const struct layout *la, const float *beta, const void *b,
                            const struct layout *lb, void *c, const struct layout *lc, void *stream)
{
    (void)h, (void)t;
    return submit(stream, &(struct node){.kind = TRANSFORM, .la = *la, .lb = *lb, .ld = *lc, .alpha = *alpha, .beta = *beta, .a = a,
                                         .b = b, .d = c});
}
