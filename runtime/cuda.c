/* cuda.c: the CUDA backend (see backend.h).  The driver library is opened
 * at run time and its few entry points are declared here by their
 * documented C signatures, so building weft needs neither a CUDA header nor
 * a driver; only running on a GPU does.  Each kernel's module is loaded on
 * its first launch, from the plan's cubin for this GPU's architecture (or
 * its PTX, which the driver compiles, for a newer GPU). */
#include "backend_impl.h"
#include "util.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int cu_result; /* CUresult: CUDA_SUCCESS is 0 */
typedef int cu_device;
typedef struct cu_ctx *cu_context;
typedef struct cu_mod *cu_module;
typedef struct cu_func *cu_function;
typedef unsigned long long cu_ptr; /* CUdeviceptr */

enum { ATTR_MULTIPROCESSORS = 16, ATTR_CC_MAJOR = 75, ATTR_CC_MINOR = 76 };

static struct {
    bool tried;
    void *lib;
    char why[512];
    cu_result (*init)(unsigned);
    cu_result (*device_count)(int *);
    cu_result (*device_get)(cu_device *, int);
    cu_result (*device_name)(char *, int, cu_device);
    cu_result (*device_attribute)(int *, int, cu_device);
    cu_result (*ctx_retain)(cu_context *, cu_device);
    cu_result (*ctx_release)(cu_device);
    cu_result (*ctx_set_current)(cu_context);
    cu_result (*ctx_synchronize)(void);
    cu_result (*module_load)(cu_module *, const void *);
    cu_result (*module_unload)(cu_module);
    cu_result (*module_function)(cu_function *, cu_module, const char *);
    cu_result (*launch)(cu_function, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                        void **);
    cu_result (*mem_alloc)(cu_ptr *, size_t);
    cu_result (*mem_free)(cu_ptr);
    cu_result (*htod)(cu_ptr, const void *, size_t);
    cu_result (*dtoh)(void *, cu_ptr, size_t);
    cu_result (*dtod)(cu_ptr, cu_ptr, size_t, void *);
    cu_result (*error_name)(cu_result, const char **);
    cu_result (*error_string)(cu_result, const char **);
} cu;

static bool load(void)
{
    if (cu.tried)
        return cu.lib != NULL;
    cu.tried = true;
    cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cu.lib) {
        snprintf(cu.why, sizeof cu.why, "no CUDA driver: libcuda.so.1 not found (%s)", dlerror());
        return false;
    }
#define LOAD(field, name)                                                                                                     \
    if (!(*(void **)&cu.field = dlsym(cu.lib, name)) && !cu.why[0])                                                           \
        snprintf(cu.why, sizeof cu.why, "the CUDA driver lacks %s", name);
    LOAD(init, "cuInit");
    LOAD(device_count, "cuDeviceGetCount");
    LOAD(device_get, "cuDeviceGet");
    LOAD(device_name, "cuDeviceGetName");
    LOAD(device_attribute, "cuDeviceGetAttribute");
    LOAD(ctx_retain, "cuDevicePrimaryCtxRetain");
    LOAD(ctx_release, "cuDevicePrimaryCtxRelease_v2");
    LOAD(ctx_set_current, "cuCtxSetCurrent");
    LOAD(ctx_synchronize, "cuCtxSynchronize");
    LOAD(module_load, "cuModuleLoadData");
    LOAD(module_unload, "cuModuleUnload");
    LOAD(module_function, "cuModuleGetFunction");
    LOAD(launch, "cuLaunchKernel");
    LOAD(mem_alloc, "cuMemAlloc_v2");
    LOAD(mem_free, "cuMemFree_v2");
    LOAD(htod, "cuMemcpyHtoD_v2");
    LOAD(dtoh, "cuMemcpyDtoH_v2");
    LOAD(dtod, "cuMemcpyDtoDAsync_v2");
    LOAD(error_name, "cuGetErrorName");
    LOAD(error_string, "cuGetErrorString");
#undef LOAD
    if (cu.why[0]) {
        dlclose(cu.lib);
        cu.lib = NULL;
        return false;
    }
    return true;
}

/* "CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered)" */
static const char *describe(cu_result r, char *buf, size_t n)
{
    const char *name = NULL, *text = NULL;
    if (cu.error_name(r, &name) || !name)
        name = "unknown CUDA error";
    if (cu.error_string(r, &text) || !text)
        text = "";
    snprintf(buf, n, "%s (%d%s%s)", name, r, *text ? ": " : "", text);
    return buf;
}

static int fail(struct diag *d, cu_result r, const char *fmt, const char *what)
{
    char why[256], msg[512];
    snprintf(msg, sizeof msg, fmt, what);
    diag_error(d, NULL, 0, "%s: %s", msg, describe(r, why, sizeof why));
    return -1;
}

struct cuda {
    struct backend be;
    cu_device dev;
    cu_context ctx;
    int cc, sms;
    cu_module *modules;     /* per kernel, loaded on first use */
    cu_function *functions; /* per kernel: [KN_ATTN_FNS] (fused: NAME, NAME_colsum; others: NAME) */
    cu_ptr partial;         /* the column sums' scratch */
    size_t partial_bytes;
    int last;               /* the kernel launched last: an asynchronous failure is reported against it */
};

static int64_t max_blocks(const struct cuda *c) { return (int64_t)c->sms * 8; }

static void *cuda_alloc(struct backend *be, size_t bytes, struct diag *d)
{
    (void)be;
    cu_ptr p = 0;
    cu_result r = cu.mem_alloc(&p, bytes ? bytes : 1);
    if (r) {
        char what[64];
        snprintf(what, sizeof what, "%zu bytes", bytes);
        fail(d, r, "cannot allocate %s on the GPU", what);
        return NULL;
    }
    return (void *)(uintptr_t)p;
}

static void cuda_free(struct backend *be, void *p)
{
    (void)be;
    cu.mem_free((cu_ptr)(uintptr_t)p);
}

static int cuda_put(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    (void)be;
    cu_result r = cu.htod((cu_ptr)(uintptr_t)dst, src, bytes);
    return r ? fail(d, r, "%s", "copy to the GPU") : 0;
}

static int cuda_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    (void)be;
    cu_result r = cu.dtod((cu_ptr)(uintptr_t)dst, (cu_ptr)(uintptr_t)src, bytes, NULL);
    return r ? fail(d, r, "%s", "copy on the GPU") : 0;
}

static int cuda_sync(struct backend *be, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.ctx_synchronize();
    if (!r)
        return 0;
    return fail(d, r, "a kernel failed on the GPU (the last launched: %s)", c->last >= 0 ? be->F->kernels[c->last].name : "none");
}

static int cuda_get(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    if (cuda_sync(be, d))
        return -1;
    cu_result r = cu.dtoh(dst, (cu_ptr)(uintptr_t)src, bytes);
    return r ? fail(d, r, "%s", "copy from the GPU") : 0;
}

/* The binary for this GPU: a cubin of its major architecture no newer than
 * it (the newest such), else PTX no newer than it. */
static const struct kn_binary *pick(const struct kn_entry *K, int cc)
{
    const struct kn_binary *best = NULL;
    for (int b = 0; b < K->n_bins; b++) {
        const struct kn_binary *x = &K->bins[b];
        if (!x->ptx && x->arch / 10 == cc / 10 && x->arch <= cc && (!best || best->ptx || x->arch > best->arch))
            best = x;
    }
    for (int b = 0; b < K->n_bins && !best; b++)
        if (K->bins[b].ptx && K->bins[b].arch <= cc)
            best = &K->bins[b];
    return best;
}

/* Kernel k's function fn (attention: enum kn_attn_fn; fused: 0 NAME, 1 NAME_colsum), its module loaded on first use. */
static cu_function function(struct cuda *c, int k, int fn, struct diag *d)
{
    const struct kn_entry *K = &c->be.F->kernels[k];
    cu_function *slot = &c->functions[(size_t)k * KN_ATTN_FNS + (size_t)fn];
    if (*slot)
        return *slot;
    if (!c->modules[k]) {
        const struct kn_binary *bin = pick(K, c->cc);
        if (!bin) {
            char have[160] = "";
            size_t n = 0;
            for (int b = 0; b < K->n_bins && n < sizeof have - 16; b++)
                n += (size_t)snprintf(have + n, sizeof have - n, "%s%s_%d", b ? ", " : "", K->bins[b].ptx ? "compute" : "sm",
                                      K->bins[b].arch);
            diag_error(d, NULL, 0, "%s has no binary for this GPU (sm_%d); the plan has %s: compile with --arch sm_%d", K->name, c->cc,
                       n ? have : "none", c->cc);
            return NULL;
        }
        cu_result r = cu.module_load(&c->modules[k], bin->bytes);
        if (r) {
            fail(d, r, "cannot load %s's binary", K->name);
            return NULL;
        }
    }
    char name[160];
    snprintf(name, sizeof name, "%s%s", K->name,
             K->kind == KN_KIND_ATTENTION ? kn_attn_fn_suffix[fn] : fn == 1 ? "_colsum" : "");
    cu_result r = cu.module_function(slot, c->modules[k], name);
    if (r) {
        fail(d, r, "the plan's binary has no function %s", name);
        return NULL;
    }
    return *slot;
}

static int launch(struct cuda *c, int k, cu_function f, const int64_t grid[3], int threads, void *args, struct diag *d)
{
    for (int i = 0; i < 3; i++)
        if (grid[i] < 1 || grid[i] > (i ? 65535 : INT32_MAX)) {
            diag_error(d, NULL, 0, "%s: a grid of %lld x %lld x %lld blocks is beyond the GPU's limits", c->be.F->kernels[k].name,
                       (long long)grid[0], (long long)grid[1], (long long)grid[2]);
            return -1;
        }
    void *params[] = {args};
    c->last = k;
    cu_result r = cu.launch(f, (unsigned)grid[0], (unsigned)grid[1], (unsigned)grid[2], (unsigned)threads, 1, 1, 0, NULL, params, NULL);
    return r ? fail(d, r, "cannot launch %s", c->be.F->kernels[k].name) : 0;
}

static int cuda_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    const struct kn_kernel *k = &be->F->kernels[kernel].k;
    struct kn_grid g;
    kn_cuda_grid(k, a, max_blocks(c), &g);
    struct kn_args x = *a;
    if (g.partial) {
        size_t need = (size_t)g.partial * sizeof(float);
        if (need > c->partial_bytes) { /* grow: after what may still read the old one */
            if (cuda_sync(be, d))
                return -1;
            if (c->partial)
                cu.mem_free(c->partial);
            c->partial = 0, c->partial_bytes = 0;
            cu_result r = cu.mem_alloc(&c->partial, need);
            if (r)
                return fail(d, r, "cannot allocate %s's column sums", be->F->kernels[kernel].name);
            c->partial_bytes = need;
        }
        x.partial = (float *)(uintptr_t)c->partial;
        x.nblocks = g.blocks;
    }
    cu_function f = function(c, kernel, 0, d), fc = g.colsum_blocks ? function(c, kernel, 1, d) : NULL;
    if (!f || (g.colsum_blocks && !fc))
        return -1;
    int64_t grid[3] = {g.blocks, 1, 1}, cgrid[3] = {g.colsum_blocks, 1, 1};
    if (launch(c, kernel, f, grid, KN_CUDA_THREADS, &x, d))
        return -1;
    return g.colsum_blocks ? launch(c, kernel, fc, cgrid, KN_CUDA_THREADS, &x, d) : 0;
}

static int cuda_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_function f = function(c, kernel, fn, d);
    if (!f)
        return -1;
    int64_t grid[3];
    const struct kn_attn *cfg = &be->F->kernels[kernel].attn;
    kn_attn_grid(cfg, a, fn, grid);
    struct kn_attn_args x = *a;
    return launch(c, kernel, f, grid, kn_attn_threads(cfg, fn), &x, d);
}

static int cuda_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_function f = function(c, kernel, 0, d);
    if (!f)
        return -1;
    int64_t grid[3] = {kn_route_grid(a, max_blocks(c)), 1, 1};
    struct kn_route_args x = *a;
    return launch(c, kernel, f, grid, KN_CUDA_THREADS, &x, d);
}

static void cuda_close(struct backend *be)
{
    struct cuda *c = (struct cuda *)be;
    cu.ctx_synchronize();
    if (c->partial)
        cu.mem_free(c->partial);
    for (int k = 0; k < be->F->n_kernels; k++)
        if (c->modules[k])
            cu.module_unload(c->modules[k]);
    cu.ctx_release(c->dev);
    free(c->modules);
    free(c->functions);
    free(c);
}

static bool cuda_holds(struct backend *be, const void *p);
static int cuda_gpu(struct backend *be, struct backend_gpu *g, struct diag *d);
static int cuda_poll(struct backend *be, struct diag *d);

static const struct backend_ops cuda_ops = {cuda_alloc, cuda_free, cuda_put, cuda_get, cuda_copy, cuda_fused, cuda_attention, cuda_route,
                                            cuda_sync, cuda_close, cuda_holds, cuda_gpu, cuda_poll};

struct backend *backend_cuda_open(const struct kn_set *F, struct diag *d)
{
    if (!load()) {
        diag_error(d, NULL, 0, "%s", cu.why);
        return NULL;
    }
    cu_result r = cu.init(0);
    int count = 0;
    if (r || (r = cu.device_count(&count)) || count < 1) {
        char why[256];
        diag_error(d, NULL, 0, "no CUDA GPU: %s", r ? describe(r, why, sizeof why) : "the driver sees none");
        return NULL;
    }
    const char *env = getenv("WEFT_CUDA_DEVICE");
    int ordinal = env && *env ? atoi(env) : 0;
    if (ordinal < 0 || ordinal >= count) {
        diag_error(d, NULL, 0, "WEFT_CUDA_DEVICE=%s: there are %d GPUs (0 to %d)", env, count, count - 1);
        return NULL;
    }
    struct cuda *c = wf_calloc(1, sizeof *c);
    c->be = (struct backend){.ops = &cuda_ops, .F = F, .kind = BACKEND_CUDA};
    c->last = -1;
    int major = 0, minor = 0;
    char name[100] = "";
    if ((r = cu.device_get(&c->dev, ordinal)) || (r = cu.device_attribute(&major, ATTR_CC_MAJOR, c->dev)) ||
        (r = cu.device_attribute(&minor, ATTR_CC_MINOR, c->dev)) || (r = cu.device_attribute(&c->sms, ATTR_MULTIPROCESSORS, c->dev)) ||
        (r = cu.device_name(name, sizeof name, c->dev)) || (r = cu.ctx_retain(&c->ctx, c->dev))) {
        fail(d, r, "cannot open GPU %s", env && *env ? env : "0");
        free(c);
        return NULL;
    }
    if ((r = cu.ctx_set_current(c->ctx))) {
        fail(d, r, "cannot use GPU %s", env && *env ? env : "0");
        cu.ctx_release(c->dev);
        free(c);
        return NULL;
    }
    c->cc = major * 10 + minor;
    snprintf(c->be.description, sizeof c->be.description, "%s (sm_%d, %d SMs)", name, c->cc, c->sms);
    c->modules = wf_calloc((size_t)F->n_kernels + 1, sizeof *c->modules);
    c->functions = wf_calloc((size_t)F->n_kernels * KN_ATTN_FNS + 1, sizeof *c->functions);
    return &c->be;
}

/* What the communicators need of the GPU (backend.h: backend_holds,
 * backend_gpu, backend_poll).  Their driver entry points are looked up on
 * first use, beside the backend's own. */
enum { ATTR_POINTER_MEMORY_TYPE = 2, MEMORY_TYPE_DEVICE = 2, CU_NOT_READY = 600 };

static struct {
    bool tried;
    cu_result (*pointer_attribute)(void *, int, cu_ptr);
    cu_result (*stream_query)(void *);
    cu_result (*bus_id)(char *, int, cu_device);
} cu_comm;

static bool comm_entry_points(struct diag *d)
{
    if (!cu_comm.tried) {
        cu_comm.tried = true;
        *(void **)&cu_comm.pointer_attribute = dlsym(cu.lib, "cuPointerGetAttribute");
        *(void **)&cu_comm.stream_query = dlsym(cu.lib, "cuStreamQuery");
        *(void **)&cu_comm.bus_id = dlsym(cu.lib, "cuDeviceGetPCIBusId");
    }
    if (cu_comm.pointer_attribute && cu_comm.stream_query && cu_comm.bus_id)
        return true;
    if (d)
        diag_error(d, NULL, 0, "the CUDA driver lacks cuPointerGetAttribute, cuStreamQuery or cuDeviceGetPCIBusId");
    return false;
}

static bool cuda_holds(struct backend *be, const void *p)
{
    (void)be;
    unsigned type = 0;
    return comm_entry_points(NULL) && !cu_comm.pointer_attribute(&type, ATTR_POINTER_MEMORY_TYPE, (cu_ptr)(uintptr_t)p) &&
           type == MEMORY_TYPE_DEVICE;
}

static int cuda_gpu(struct backend *be, struct backend_gpu *g, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    if (!comm_entry_points(d))
        return -1;
    memset(g, 0, sizeof *g);
    g->ordinal = c->dev, g->stream = NULL; /* the launches' stream: the legacy default */
    cu_result r = cu_comm.bus_id(g->bus_id, (int)sizeof g->bus_id, c->dev);
    return r ? fail(d, r, "%s", "the GPU's PCI bus id") : 1;
}

static int cuda_poll(struct backend *be, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    if (!comm_entry_points(d))
        return -1;
    cu_result r = cu_comm.stream_query(NULL);
    if (r == CU_NOT_READY)
        return 0;
    return r ? fail(d, r, "a kernel failed on the GPU (the last launched: %s)", c->last >= 0 ? be->F->kernels[c->last].name : "none")
             : 1;
}
