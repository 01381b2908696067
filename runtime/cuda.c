/* cuda.c: the CUDA backend (see backend.h).  The driver library is opened
 * at run time and its few entry points are declared here by their
 * documented C signatures, so building weft needs neither a CUDA header nor
 * a driver; only running on a GPU does.  Each kernel's module is loaded on
 * its first launch, from the plan's cubin for this GPU's architecture (or
 * its PTX, which the driver compiles, for a newer GPU).  Every launch, copy
 * and GEMM goes on the backend's one stream, in order; backend.h's
 * segments are captured from it into graphs (segments.c decides when). */
#include "backend_impl.h"
#include "actions.h"
#include "cuda_abi.h"
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
typedef struct cu_stream_s *cu_stream;
typedef struct cu_graph_s *cu_graph;
typedef struct cu_graph_exec_s *cu_graph_exec;
typedef struct cu_graph_node_s *cu_graph_node;
typedef struct cu_event_s *cu_event;

enum { ATTR_MULTIPROCESSORS = 16, ATTR_CC_MAJOR = 75, ATTR_CC_MINOR = 76, ATTR_SHARED_OPTIN = 97 };
enum { FUNC_MAX_DYNAMIC_SHARED = 8 }; /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */
enum { CU_NOT_READY = ABI_CUDA_ERROR_NOT_READY }; /* a query's "not yet" */
#define STATIC_SHARED_LIMIT (48 * 1024) /* what a block gets without opting in */
/* CUDA_MEMCPY2D (cuda.h), field for field. */
struct cu_memcpy_2d {
    size_t src_x_bytes, src_y;
    int src_memory_type;
    const void *src_host;
    cu_ptr src_device;
    void *src_array;
    size_t src_pitch;
    size_t dst_x_bytes, dst_y;
    int dst_memory_type;
    void *dst_host;
    cu_ptr dst_device;
    void *dst_array;
    size_t dst_pitch;
    size_t width_bytes, height;
};
/* CUDA_KERNEL_NODE_PARAMS_v1 (cuda.h), field for field. */
struct cu_kernel_node {
    cu_function func;
    unsigned grid_x, grid_y, grid_z, block_x, block_y, block_z, shared_bytes;
    void **params, **extra;
};

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
    cu_result (*func_set_attribute)(cu_function, int, int);
    cu_result (*pointer_attribute)(void *, int, cu_ptr); /* the communicators' (backend_holds, _gpu, _poll) */
    cu_result (*stream_query)(void *);
    cu_result (*bus_id)(char *, int, cu_device);
    cu_result (*launch)(cu_function, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                        void **);
    cu_result (*mem_alloc)(cu_ptr *, size_t);
    cu_result (*mem_free)(cu_ptr);
    cu_result (*dtoh)(void *, cu_ptr, size_t);
    cu_result (*dtod)(cu_ptr, cu_ptr, size_t, void *);
    cu_result (*error_name)(cu_result, const char **);
    cu_result (*error_string)(cu_result, const char **);
    cu_result (*memset_async)(cu_ptr, unsigned char, size_t, void *);
    cu_result (*copy_2d_async)(const struct cu_memcpy_2d *, void *);
    cu_result (*mem_info)(size_t *, size_t *);
    cu_result (*stream_create)(cu_stream *, unsigned);
    cu_result (*stream_destroy)(cu_stream);
    cu_result (*stream_synchronize)(cu_stream);
    cu_result (*htod_async)(cu_ptr, const void *, size_t, cu_stream);
    cu_result (*begin_capture)(cu_stream, int mode);
    cu_result (*end_capture)(cu_stream, cu_graph *);
    cu_result (*capture_info)(cu_stream, int *status, unsigned long long *id, cu_graph *, const cu_graph_node **deps, size_t *n_deps);
    cu_result (*graph_instantiate)(cu_graph_exec *, cu_graph, unsigned long long flags);
    cu_result (*graph_launch)(cu_graph_exec, cu_stream);
    cu_result (*graph_exec_destroy)(cu_graph_exec);
    cu_result (*graph_destroy)(cu_graph);
    cu_result (*graph_set_kernel)(cu_graph_exec, cu_graph_node, const struct cu_kernel_node *);
    cu_result (*event_create)(cu_event *, unsigned flags);
    cu_result (*event_destroy)(cu_event);
    cu_result (*event_record)(cu_event, cu_stream);
    cu_result (*event_query)(cu_event);
    cu_result (*stream_wait_event)(cu_stream, cu_event, unsigned flags);
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
    static const struct wf_dlsym syms[] = {
        WF_DLSYM(cu, init, "cuInit"), WF_DLSYM(cu, device_count, "cuDeviceGetCount"), WF_DLSYM(cu, device_get, "cuDeviceGet"),
        WF_DLSYM(cu, device_name, "cuDeviceGetName"), WF_DLSYM(cu, device_attribute, "cuDeviceGetAttribute"),
        WF_DLSYM(cu, ctx_retain, "cuDevicePrimaryCtxRetain"), WF_DLSYM(cu, ctx_release, "cuDevicePrimaryCtxRelease_v2"),
        WF_DLSYM(cu, ctx_set_current, "cuCtxSetCurrent"), WF_DLSYM(cu, ctx_synchronize, "cuCtxSynchronize"),
        WF_DLSYM(cu, module_load, "cuModuleLoadData"), WF_DLSYM(cu, module_unload, "cuModuleUnload"),
        WF_DLSYM(cu, module_function, "cuModuleGetFunction"), WF_DLSYM(cu, func_set_attribute, "cuFuncSetAttribute"),
        WF_DLSYM(cu, pointer_attribute, "cuPointerGetAttribute"), WF_DLSYM(cu, stream_query, "cuStreamQuery"),
        WF_DLSYM(cu, bus_id, "cuDeviceGetPCIBusId"), WF_DLSYM(cu, launch, "cuLaunchKernel"),
        WF_DLSYM(cu, mem_alloc, "cuMemAlloc_v2"), WF_DLSYM(cu, mem_free, "cuMemFree_v2"), WF_DLSYM(cu, dtoh, "cuMemcpyDtoH_v2"),
        WF_DLSYM(cu, dtod, "cuMemcpyDtoDAsync_v2"), WF_DLSYM(cu, error_name, "cuGetErrorName"),
        WF_DLSYM(cu, error_string, "cuGetErrorString"), WF_DLSYM(cu, memset_async, "cuMemsetD8Async"),
        WF_DLSYM(cu, copy_2d_async, "cuMemcpy2DAsync_v2"), WF_DLSYM(cu, mem_info, "cuMemGetInfo_v2"),
        WF_DLSYM(cu, stream_create, "cuStreamCreate"), WF_DLSYM(cu, stream_destroy, "cuStreamDestroy_v2"),
        WF_DLSYM(cu, stream_synchronize, "cuStreamSynchronize"), WF_DLSYM(cu, htod_async, "cuMemcpyHtoDAsync_v2"),
        WF_DLSYM(cu, begin_capture, "cuStreamBeginCapture_v2"), WF_DLSYM(cu, end_capture, "cuStreamEndCapture"),
        WF_DLSYM(cu, capture_info, "cuStreamGetCaptureInfo_v2"), WF_DLSYM(cu, graph_instantiate, "cuGraphInstantiateWithFlags"),
        WF_DLSYM(cu, graph_launch, "cuGraphLaunch"), WF_DLSYM(cu, graph_exec_destroy, "cuGraphExecDestroy"),
        WF_DLSYM(cu, graph_destroy, "cuGraphDestroy"), WF_DLSYM(cu, graph_set_kernel, "cuGraphExecKernelNodeSetParams"),
        WF_DLSYM(cu, event_create, "cuEventCreate"), WF_DLSYM(cu, event_destroy, "cuEventDestroy_v2"),
        WF_DLSYM(cu, event_record, "cuEventRecord"), WF_DLSYM(cu, event_query, "cuEventQuery"),
        WF_DLSYM(cu, stream_wait_event, "cuStreamWaitEvent")};
    if (wf_dlsyms(cu.lib, syms, WF_COUNT(syms), "the CUDA driver", "", cu.why, sizeof cu.why)) {
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

struct lt_gemms;

/* A segment's graph (backend.h): its kernel nodes in the order of their launches. */
struct cuda_graph {
    cu_graph graph;  /* what was captured: the nodes belong to it */
    cu_graph_exec exec;
    cu_graph_node *nodes;
    int n, cap;
};

/* Where a kernel launch goes: the stream, a graph being captured (its node
 * noted), or a node of a graph (its parameters set). */
enum launch_mode { LAUNCH_RUN, LAUNCH_CAPTURE, LAUNCH_UPDATE };

struct cuda {
    struct backend be;
    cu_device dev;
    cu_context ctx;
    cu_stream stream;       /* every launch, copy and GEMM, in order (non-blocking: captured into graphs) */
    cu_stream side;         /* the communicators' second stream (backend_side_begin), made on first use */
    enum launch_mode mode;
    struct cuda_graph *graph; /* the one being captured or updated */
    int cursor;               /* updating: its next kernel node */
    int cc, sms;
    int shared_optin;       /* the most shared memory a block may opt into, bytes */
    cu_module *modules;     /* per kernel, loaded on first use */
    cu_function *functions; /* per kernel: [KN_ATTN_FNS] (fused: NAME, NAME_colsum; others: NAME) */
    cu_ptr partial;         /* the column sums' scratch */
    size_t partial_bytes;
    int last;               /* the kernel launched last: an asynchronous failure is reported against it */
    struct lt_gemms *gemms; /* cuBLASLt's handle, workspace and plans (lt_open) */
    int64_t mem_at_open, mem_peak; /* the device's memory in use (backend_memory) */
};

/* ---- cuBLASLt: the GEMMs and the adding copies ------------------------------
 * Opened at run time as the driver is, its entry points declared by their
 * documented signatures (cublasLt.h; enums passed as int, as C passes them)
 * and its constants in cuda_abi.h. */

typedef int lt_status;
typedef struct lt_handle_s *lt_handle;
typedef struct lt_desc_s *lt_desc;
typedef struct lt_layout_s *lt_layout;
typedef struct lt_pref_s *lt_pref;
typedef struct lt_transform_s *lt_transform;

static struct {
    bool tried;
    void *lib;
    char why[512];
    lt_status (*create)(lt_handle *);
    lt_status (*destroy)(lt_handle);
    const char *(*status_string)(lt_status);
    lt_status (*desc_create)(lt_desc *, int compute_type, int scale_type);
    lt_status (*desc_destroy)(lt_desc);
    lt_status (*desc_set)(lt_desc, int attr, const void *buf, size_t bytes);
    lt_status (*layout_create)(lt_layout *, int type, uint64_t rows, uint64_t cols, int64_t ld);
    lt_status (*layout_destroy)(lt_layout);
    lt_status (*layout_set)(lt_layout, int attr, const void *buf, size_t bytes);
    lt_status (*pref_create)(lt_pref *);
    lt_status (*pref_destroy)(lt_pref);
    lt_status (*pref_set)(lt_pref, int attr, const void *buf, size_t bytes);
    lt_status (*heuristic)(lt_handle, lt_desc, lt_layout a, lt_layout b, lt_layout c, lt_layout d, lt_pref, int requested,
                           struct lt_heuristic *results, int *returned);
    lt_status (*matmul)(lt_handle, lt_desc, const void *alpha, const void *a, lt_layout, const void *b, lt_layout, const void *beta,
                        const void *c, lt_layout, void *d, lt_layout, const struct lt_algo *, void *workspace, size_t workspace_bytes,
                        void *stream);
    lt_status (*transform_create)(lt_transform *, int scale_type);
    lt_status (*transform_destroy)(lt_transform);
    lt_status (*transform)(lt_handle, lt_transform, const void *alpha, const void *a, lt_layout, const void *beta, const void *b,
                           lt_layout, void *c, lt_layout, void *stream);
} lt;

/* The sonames cuBLASLt has had: CUDA 13's first. */
static const char *const lt_sonames[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"};

static bool lt_load(void)
{
    if (lt.tried)
        return lt.lib != NULL;
    lt.tried = true;
    lt.lib = wf_dlopen_first(lt_sonames, WF_COUNT(lt_sonames));
    if (!lt.lib) {
        snprintf(lt.why, sizeof lt.why, "no cuBLASLt: libcublasLt.so.13 (or .12, .11) not found (%s)", dlerror());
        return false;
    }
    static const struct wf_dlsym syms[] = {
        WF_DLSYM(lt, create, "cublasLtCreate"), WF_DLSYM(lt, destroy, "cublasLtDestroy"),
        WF_DLSYM(lt, status_string, "cublasLtGetStatusString"), WF_DLSYM(lt, desc_create, "cublasLtMatmulDescCreate"),
        WF_DLSYM(lt, desc_destroy, "cublasLtMatmulDescDestroy"), WF_DLSYM(lt, desc_set, "cublasLtMatmulDescSetAttribute"),
        WF_DLSYM(lt, layout_create, "cublasLtMatrixLayoutCreate"), WF_DLSYM(lt, layout_destroy, "cublasLtMatrixLayoutDestroy"),
        WF_DLSYM(lt, layout_set, "cublasLtMatrixLayoutSetAttribute"), WF_DLSYM(lt, pref_create, "cublasLtMatmulPreferenceCreate"),
        WF_DLSYM(lt, pref_destroy, "cublasLtMatmulPreferenceDestroy"),
        WF_DLSYM(lt, pref_set, "cublasLtMatmulPreferenceSetAttribute"), WF_DLSYM(lt, heuristic, "cublasLtMatmulAlgoGetHeuristic"),
        WF_DLSYM(lt, matmul, "cublasLtMatmul"), WF_DLSYM(lt, transform_create, "cublasLtMatrixTransformDescCreate"),
        WF_DLSYM(lt, transform_destroy, "cublasLtMatrixTransformDescDestroy"), WF_DLSYM(lt, transform, "cublasLtMatrixTransform")};
    if (wf_dlsyms(lt.lib, syms, WF_COUNT(syms), "cuBLASLt", "", lt.why, sizeof lt.why)) {
        dlclose(lt.lib);
        lt.lib = NULL;
        return false;
    }
    return true;
}

static int lt_fail(struct diag *d, lt_status st, const char *what)
{
    const char *text = lt.status_string ? lt.status_string(st) : NULL;
    diag_error(d, NULL, 0, "cuBLASLt: %s: %s (%d)", what, text ? text : "unknown status", st);
    return -1;
}

/* Hopper's recommended workspace (cuBLAS's documentation: 32 MiB on sm_90). */
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)

/* What decides a GEMM's descriptors and algorithm: its shape, strides,
 * types and its operands' alignment (the heuristic's preferences). */
struct lt_key {
    int64_t batch, m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c;
    int32_t ta, tb, dtype, c_dtype, accumulate, epilogue;
    uint32_t align_a, align_b, align_c, align_bias, align_aux;
};

/* A GEMM's descriptors and the heuristic's algorithm, made once per key. */
struct lt_gemm {
    struct lt_key key;
    lt_desc desc;
    lt_layout a, b, c; /* cuBLAS's column-major A, B, C (= D): the plan's b, a, c (lt_gemm_make) */
    struct lt_algo algo;
    bool none;         /* the heuristic found no algorithm (an epilogue's GEMM runs without it) */
};

struct lt_gemms {
    lt_handle handle;
    cu_ptr workspace;
    lt_transform add; /* the adding copies: C = A + B */
    struct lt_gemm *v;
    int n, cap;
};

static void lt_gemm_release(struct lt_gemm *p)
{
    if (p->desc)
        lt.desc_destroy(p->desc);
    if (p->a)
        lt.layout_destroy(p->a);
    if (p->b)
        lt.layout_destroy(p->b);
    if (p->c)
        lt.layout_destroy(p->c);
}

static void lt_close(struct lt_gemms *G)
{
    if (!G)
        return;
    for (int i = 0; i < G->n; i++)
        lt_gemm_release(&G->v[i]);
    free(G->v);
    if (G->add)
        lt.transform_destroy(G->add);
    if (G->workspace)
        cu.mem_free(G->workspace);
    if (G->handle)
        lt.destroy(G->handle);
    free(G);
}

static struct lt_gemms *lt_open(struct diag *d)
{
    if (!lt_load()) {
        diag_error(d, NULL, 0, "%s", lt.why);
        return NULL;
    }
    struct lt_gemms *G = wf_calloc(1, sizeof *G);
    lt_status st;
    cu_result r;
    if ((st = lt.create(&G->handle)) || (st = lt.transform_create(&G->add, ABI_CUDA_R_32F))) {
        lt_fail(d, st, "cannot open it");
        lt_close(G);
        return NULL;
    }
    if ((r = cu.mem_alloc(&G->workspace, LT_WORKSPACE_BYTES))) {
        fail(d, r, "cannot allocate %s on the GPU", "cuBLASLt's 32 MiB workspace");
        lt_close(G);
        return NULL;
    }
    return G;
}

static int lt_type(int dtype) { return dtype == IR_DTYPE_BF16 ? ABI_CUDA_R_16BF : ABI_CUDA_R_32F; }

/* The largest power of two (at most 256) dividing the address and, in a
 * batch, every matrix's: what cuBLASLt may assume of an operand. */
static uint32_t lt_alignment(const void *p, int64_t stride_bytes, int64_t batch)
{
    uint64_t bits = (uint64_t)(uintptr_t)p | 256u | (batch > 1 ? (uint64_t)stride_bytes : 0);
    return (uint32_t)(bits & -bits);
}

static lt_status lt_layout_make(lt_layout *l, int type, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride)
{
    int32_t count = (int32_t)batch;
    lt_status st = lt.layout_create(l, type, (uint64_t)rows, (uint64_t)cols, ld);
    if (!st && batch > 1)
        st = lt.layout_set(*l, ABI_CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count);
    if (!st && batch > 1)
        st = lt.layout_set(*l, ABI_CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
    return st;
}

/* The plan's row-major c (m x n) = op(a) @ op(b) is cuBLAS's column-major
 * c^T (n x m) = op(b)^T @ op(a)^T: a row-major matrix read column-major is
 * its transpose, so cuBLAS's A is the plan's b (stored n x k when tb, read
 * transposed; else k x n), its B the plan's a, and m and n swap.  The
 * descriptors and the heuristic's preferences (host work: no GPU needed). */
/* cuBLAS's epilogue for the plan's: its bias is a row of n, D's rows (the
 * plan's columns), and the GELU's input is kept with D's leading dimension. */
static uint32_t lt_epilogue(int epilogue)
{
    switch (epilogue) {
    case IR_EPI_BIAS: return ABI_CUBLASLT_EPILOGUE_BIAS;
    case IR_EPI_GELU_BIAS: return ABI_CUBLASLT_EPILOGUE_GELU_BIAS;
    case IR_EPI_GELU_AUX_BIAS: return ABI_CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    default: return ABI_CUBLASLT_EPILOGUE_DEFAULT;
    }
}

/* The epilogue's pointers: set on the descriptor before each call (and
 * before the heuristic, which reads their alignment from them). */
static lt_status lt_point(const struct lt_gemm *p, const void *bias, void *aux)
{
    lt_status st = 0;
    if (p->key.epilogue)
        st = lt.desc_set(p->desc, ABI_CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (!st && p->key.epilogue == IR_EPI_GELU_AUX_BIAS)
        st = lt.desc_set(p->desc, ABI_CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
    return st;
}

static lt_status lt_describe(const struct lt_key *K, struct lt_gemm *p, lt_pref *pref)
{
    int32_t op_a = K->tb ? ABI_CUBLAS_OP_T : ABI_CUBLAS_OP_N, op_b = K->ta ? ABI_CUBLAS_OP_T : ABI_CUBLAS_OP_N;
    uint64_t workspace = LT_WORKSPACE_BYTES;
    uint32_t epilogue = lt_epilogue(K->epilogue);
    int64_t aux_ld = K->ldc;
    lt_status st;
    if ((st = lt.desc_create(&p->desc, ABI_CUBLAS_COMPUTE_32F, ABI_CUDA_R_32F)) ||
        (K->epilogue && (st = lt.desc_set(p->desc, ABI_CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue))) ||
        (K->epilogue == IR_EPI_GELU_AUX_BIAS && (st = lt.desc_set(p->desc, ABI_CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld))))
        return st;
    if ((st = lt.desc_set(p->desc, ABI_CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a)) ||
        (st = lt.desc_set(p->desc, ABI_CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b)) ||
        (st = lt_layout_make(&p->a, lt_type(K->dtype), K->tb ? K->k : K->n, K->tb ? K->n : K->k, K->ldb, K->batch, K->stride_b)) ||
        (st = lt_layout_make(&p->b, lt_type(K->dtype), K->ta ? K->m : K->k, K->ta ? K->k : K->m, K->lda, K->batch, K->stride_a)) ||
        (st = lt_layout_make(&p->c, lt_type(K->c_dtype), K->n, K->m, K->ldc, K->batch, K->stride_c)) || (st = lt.pref_create(pref)) ||
        (st = lt.pref_set(*pref, ABI_CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace)) ||
        (st = lt.pref_set(*pref, ABI_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &K->align_b, sizeof K->align_b)) ||
        (st = lt.pref_set(*pref, ABI_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &K->align_a, sizeof K->align_a)) ||
        (st = lt.pref_set(*pref, ABI_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &K->align_c, sizeof K->align_c)) ||
        (st = lt.pref_set(*pref, ABI_CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &K->align_c, sizeof K->align_c)))
        return st;
    return 0;
}

/* "a GEMM of 64 x 48 x 32 (batch 1, a, b transposed, bf16 into f32)" */
static const char *lt_key_str(const struct lt_key *K, char *buf, size_t n)
{
    snprintf(buf, n, "a GEMM of %lld x %lld x %lld (batch %lld, %s%s, %s into %s%s%s)", (long long)K->m, (long long)K->n,
             (long long)K->k, (long long)K->batch, K->ta ? "a transposed" : "a", K->tb ? ", b transposed" : "",
             ir_dtype_name((enum ir_dtype)K->dtype), ir_dtype_name((enum ir_dtype)K->c_dtype), K->epilogue ? ", epilogue " : "",
             K->epilogue ? ir_epilogue_name((enum ir_epilogue)K->epilogue) : "");
    return buf;
}

/* g's key, for its call z of calls (products added into one c are calls
 * of one matrix each, one after another; else one call of the batch),
 * and where that call's a and b start. */
static void lt_key_make(const struct backend_gemm *g, int64_t calls, int64_t z, struct lt_key *K, const void **a, const void **b)
{
    int64_t e = g->dtype == IR_DTYPE_BF16 ? 2 : 4, ec = g->c_dtype == IR_DTYPE_BF16 ? 2 : 4;
    memset(K, 0, sizeof *K); /* the padding too: keys are compared as bytes */
    K->batch = g->batch / calls, K->m = g->m, K->n = g->n, K->k = g->k, K->lda = g->lda, K->ldb = g->ldb, K->ldc = g->ldc;
    K->stride_a = g->stride_a, K->stride_b = g->stride_b, K->stride_c = g->stride_c;
    K->ta = g->ta, K->tb = g->tb, K->dtype = g->dtype, K->c_dtype = g->c_dtype, K->accumulate = g->beta != 0;
    *a = (const char *)g->a + z * g->stride_a * e, *b = (const char *)g->b + z * g->stride_b * e;
    K->align_a = lt_alignment(*a, g->stride_a * e, K->batch), K->align_b = lt_alignment(*b, g->stride_b * e, K->batch);
    K->align_c = lt_alignment(g->c, g->stride_c * ec, K->batch);
    K->epilogue = g->epilogue;
    K->align_bias = g->epilogue ? lt_alignment(g->bias, 0, 1) : 0;
    K->align_aux = g->epilogue == IR_EPI_GELU_AUX_BIAS ? lt_alignment(g->aux, 0, 1) : 0;
}

static int64_t lt_calls(const struct backend_gemm *g) { return g->stride_c == 0 && g->batch > 1 ? g->batch : 1; }

/* The GEMM's descriptors and algorithm: made on its key's first call, kept
 * (with none where the heuristic has none: asked again, the answer is the
 * same).  NULL where cuBLASLt refused the descriptors (d says why). */
static struct lt_gemm *lt_gemm_make(struct lt_gemms *G, const struct lt_key *K, const struct backend_gemm *g, struct diag *d)
{
    for (int i = 0; i < G->n; i++)
        if (!memcmp(&G->v[i].key, K, sizeof *K))
            return &G->v[i];
    struct lt_gemm p = {.key = *K};
    lt_pref pref = NULL;
    struct lt_heuristic found;
    int returned = 0;
    lt_status st = lt_describe(K, &p, &pref);
    if (!st)
        st = lt_point(&p, g->bias, g->aux);
    if (!st)
        st = lt.heuristic(G->handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &found, &returned);
    if (pref)
        lt.pref_destroy(pref);
    if (st) {
        char what[200];
        lt_fail(d, st, lt_key_str(K, what, sizeof what));
        lt_gemm_release(&p);
        return NULL;
    }
    p.none = returned < 1;
    p.algo = found.algo;
    WF_GROW(G->v, G->n, G->cap);
    G->v[G->n] = p;
    return &G->v[G->n++];
}

int backend_cuda_gemm_check(const struct backend_gemm *g, struct diag *d)
{
    if (!lt_load()) {
        diag_error(d, NULL, 0, "%s", lt.why);
        return -1;
    }
    int rc = 0;
    for (int64_t z = 0, calls = lt_calls(g); z < calls && !rc; z++) {
        struct lt_key K;
        const void *a, *b;
        lt_key_make(g, calls, z, &K, &a, &b);
        struct lt_gemm p = {.key = K};
        lt_pref pref = NULL;
        lt_status st = lt_describe(&K, &p, &pref);
        if (!st)
            st = lt_point(&p, g->bias, g->aux);
        if (pref)
            lt.pref_destroy(pref);
        lt_gemm_release(&p);
        char what[200];
        rc = st ? lt_fail(d, st, lt_key_str(&K, what, sizeof what)) : 0;
    }
    return rc;
}

/* Whether cuBLASLt has an algorithm for g with its epilogue (the GELU's
 * kept input needs a leading dimension that is a multiple of 8). */
static bool cuda_gemm_epilogue(struct backend *be, const struct backend_gemm *g)
{
    struct cuda *c = (struct cuda *)be;
    if (!g->epilogue || lt_calls(g) != 1 || (g->epilogue == IR_EPI_GELU_AUX_BIAS && g->ldc % 8))
        return false;
    struct lt_key K;
    const void *a, *b;
    lt_key_make(g, 1, 0, &K, &a, &b);
    struct diag quiet;
    diag_init(&quiet);
    const struct lt_gemm *p = lt_gemm_make(c->gemms, &K, g, &quiet);
    diag_free(&quiet);
    return p && !p->none;
}

static int cuda_gemm(struct backend *be, const struct backend_gemm *g, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    struct lt_gemms *G = c->gemms;
    float one = 1.0f, beta = g->beta;
    for (int64_t z = 0, calls = lt_calls(g); z < calls; z++) {
        struct lt_key K;
        const void *a, *b;
        lt_key_make(g, calls, z, &K, &a, &b);
        const struct lt_gemm *p = lt_gemm_make(G, &K, g, d);
        if (!p)
            return -1;
        if (p->none) {
            char what[200];
            diag_error(d, NULL, 0, "cuBLASLt has no algorithm for %s", lt_key_str(&K, what, sizeof what));
            return -1;
        }
        lt_status st = lt_point(p, g->bias, g->aux);
        if (st)
            return lt_fail(d, st, "the epilogue's pointers");
        st = lt.matmul(G->handle, p->desc, &one, b, p->a, a, p->b, &beta, g->c, p->c, g->c, p->c, &p->algo,
                                 (void *)(uintptr_t)G->workspace, LT_WORKSPACE_BYTES, c->stream);
        if (st)
            return lt_fail(d, st, "cublasLtMatmul");
    }
    return 0;
}

static int cuda_copy_rows(struct backend *be, const struct backend_rows *x, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_ptr src = (cu_ptr)(uintptr_t)x->src, dst = (cu_ptr)(uintptr_t)x->dst;
    if (x->add) { /* dst = src + dst, each plane a column-major matrix of a row's elements by rows, planes its batch */
        int64_t e = x->dtype == IR_DTYPE_BF16 ? 2 : 4, w = x->width / e;
        int64_t lds = x->rows > 1 ? x->src_pitch / e : w, ldd = x->rows > 1 ? x->dst_pitch / e : w;
        lt_layout ls = NULL, ld = NULL;
        float one = 1.0f;
        lt_status st;
        if (!(st = lt_layout_make(&ls, lt_type(x->dtype), w, x->rows, lds, x->planes, x->src_plane / e)) &&
            !(st = lt_layout_make(&ld, lt_type(x->dtype), w, x->rows, ldd, x->planes, x->dst_plane / e)))
            st = lt.transform(c->gemms->handle, c->gemms->add, &one, x->src, ls, &one, x->dst, ld, x->dst, ld, c->stream);
        if (ls)
            lt.layout_destroy(ls);
        if (ld)
            lt.layout_destroy(ld);
        return st ? lt_fail(d, st, "cublasLtMatrixTransform (a copy that adds)") : 0;
    }
    /* As few copies as the strides allow: one block, one 2-D copy (of planes, or of every plane's rows), or one a plane. */
    int64_t w = x->width;
    bool plane_dense = x->rows == 1 || (x->src_pitch == w && x->dst_pitch == w);
    bool rows_follow = x->planes == 1 || (x->src_plane == x->rows * x->src_pitch && x->dst_plane == x->rows * x->dst_pitch);
    struct cu_memcpy_2d m = {.src_memory_type = ABI_CU_MEMORYTYPE_DEVICE, .src_device = src, .src_pitch = (size_t)x->src_pitch,
                             .dst_memory_type = ABI_CU_MEMORYTYPE_DEVICE, .dst_device = dst, .dst_pitch = (size_t)x->dst_pitch,
                             .width_bytes = (size_t)w, .height = (size_t)x->rows};
    cu_result r = 0;
    if (plane_dense && (x->planes == 1 || (x->src_plane == x->rows * w && x->dst_plane == x->rows * w)))
        r = cu.dtod(dst, src, (size_t)(x->planes * x->rows * w), c->stream);
    else if (plane_dense) {
        m.width_bytes = (size_t)(x->rows * w), m.height = (size_t)x->planes;
        m.src_pitch = (size_t)x->src_plane, m.dst_pitch = (size_t)x->dst_plane;
        r = cu.copy_2d_async(&m, c->stream);
    } else if (rows_follow) {
        m.height = (size_t)(x->planes * x->rows);
        r = cu.copy_2d_async(&m, c->stream);
    } else
        for (int64_t p = 0; p < x->planes && !r; p++) {
            m.src_device = src + (cu_ptr)(p * x->src_plane), m.dst_device = dst + (cu_ptr)(p * x->dst_plane);
            r = cu.copy_2d_async(&m, c->stream);
        }
    return r ? fail(d, r, "%s", "a copy of rows on the GPU") : 0;
}

static int cuda_zero(struct backend *be, void *p, size_t bytes, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.memset_async((cu_ptr)(uintptr_t)p, 0, bytes, c->stream);
    return r ? fail(d, r, "%s", "zeroing memory on the GPU") : 0;
}

/* The device's memory in use now (every process's): total less free. */
static int64_t device_used(void)
{
    size_t free_bytes = 0, total = 0;
    return cu.mem_info(&free_bytes, &total) ? -1 : (int64_t)(total - free_bytes);
}

static void cuda_memory(struct backend *be, struct backend_memory *m)
{
    struct cuda *c = (struct cuda *)be;
    m->at_open = c->mem_at_open, m->now = device_used();
    c->mem_peak = m->now > c->mem_peak ? m->now : c->mem_peak;
    m->peak = c->mem_peak;
}

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

/* In order with the stream's work, and done when it returns (src may be reused). */
static int cuda_put(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.htod_async((cu_ptr)(uintptr_t)dst, src, bytes, c->stream);
    if (!r)
        r = cu.stream_synchronize(c->stream);
    return r ? fail(d, r, "%s", "copy to the GPU") : 0;
}

static int cuda_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.dtod((cu_ptr)(uintptr_t)dst, (cu_ptr)(uintptr_t)src, bytes, c->stream);
    return r ? fail(d, r, "%s", "copy on the GPU") : 0;
}

static int cuda_sync(struct backend *be, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.ctx_synchronize();
    int64_t used = r ? -1 : device_used();
    c->mem_peak = used > c->mem_peak ? used : c->mem_peak;
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
    int64_t shared = K->kind == KN_KIND_ATTENTION ? kn_attn_shared_bytes(&K->attn, (enum kn_attn_fn)fn) : 0;
    if (shared > c->shared_optin) {
        diag_error(d, NULL, 0, "%s needs %lld bytes of shared memory a block; this GPU allows %d", name, (long long)shared, c->shared_optin);
        *slot = NULL;
        return NULL;
    }
    if (shared > STATIC_SHARED_LIMIT && (r = cu.func_set_attribute(*slot, FUNC_MAX_DYNAMIC_SHARED, (int)shared))) {
        fail(d, r, "cannot give %s its shared memory", name);
        *slot = NULL;
        return NULL;
    }
    return *slot;
}

static int launch(struct cuda *c, int k, cu_function f, const int64_t grid[3], int threads, int64_t shared, void *args, struct diag *d)
{
    for (int i = 0; i < 3; i++)
        if (grid[i] < 1 || grid[i] > (i ? 65535 : INT32_MAX)) {
            diag_error(d, NULL, 0, "%s: a grid of %lld x %lld x %lld blocks is beyond the GPU's limits", c->be.F->kernels[k].name,
                       (long long)grid[0], (long long)grid[1], (long long)grid[2]);
            return -1;
        }
    void *params[] = {args};
    c->last = k;
    if (c->mode == LAUNCH_UPDATE) { /* the arguments (copied by the driver, as a launch copies them) into the next node */
        struct cuda_graph *G = c->graph;
        struct cu_kernel_node p = {.func = f, .grid_x = (unsigned)grid[0], .grid_y = (unsigned)grid[1], .grid_z = (unsigned)grid[2],
                                   .block_x = (unsigned)threads, .block_y = 1, .block_z = 1, .shared_bytes = (unsigned)shared,
                                   .params = params};
        if (c->cursor >= G->n) {
            diag_error(d, NULL, 0, "%s: the graph has no kernel node left to set", c->be.F->kernels[k].name);
            return -1;
        }
        cu_result r = cu.graph_set_kernel(G->exec, G->nodes[c->cursor++], &p);
        return r ? fail(d, r, "cannot set %s's node in a graph", c->be.F->kernels[k].name) : 0;
    }
    cu_result r = cu.launch(f, (unsigned)grid[0], (unsigned)grid[1], (unsigned)grid[2], (unsigned)threads, 1, 1, (unsigned)shared,
                            c->stream, params, NULL);
    if (r)
        return fail(d, r, "cannot launch %s", c->be.F->kernels[k].name);
    if (c->mode == LAUNCH_CAPTURE) { /* the node the launch made: the capture's one dependency now */
        struct cuda_graph *G = c->graph;
        const cu_graph_node *deps = NULL;
        size_t n_deps = 0;
        int status = 0;
        unsigned long long id = 0;
        cu_graph graph = NULL;
        if ((r = cu.capture_info(c->stream, &status, &id, &graph, &deps, &n_deps)))
            return fail(d, r, "cannot find %s's node in the graph being captured", c->be.F->kernels[k].name);
        if (n_deps != 1) {
            diag_error(d, NULL, 0, "%s: the capture ends in %zu nodes, not its one", c->be.F->kernels[k].name, n_deps);
            return -1;
        }
        WF_GROW(G->nodes, G->n, G->cap);
        G->nodes[G->n++] = deps[0];
    }
    return 0;
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
        if (need > c->partial_bytes && c->mode != LAUNCH_RUN) {
            diag_error(d, NULL, 0, "%s: the column sums' scratch would grow inside a graph", be->F->kernels[kernel].name);
            return -1;
        }
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
            be->moves++;
            be->scratch_bytes = (int64_t)(LT_WORKSPACE_BYTES + need);
        }
        x.partial = (float *)(uintptr_t)c->partial;
        x.nblocks = g.blocks;
    }
    cu_function f = function(c, kernel, 0, d), fc = g.colsum_blocks ? function(c, kernel, 1, d) : NULL;
    if (!f || (g.colsum_blocks && !fc))
        return -1;
    int64_t grid[3] = {g.blocks, 1, 1}, cgrid[3] = {g.colsum_blocks, 1, 1};
    if (launch(c, kernel, f, grid, KN_CUDA_THREADS, 0, &x, d))
        return -1;
    return g.colsum_blocks ? launch(c, kernel, fc, cgrid, KN_CUDA_THREADS, 0, &x, d) : 0;
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
    return launch(c, kernel, f, grid, kn_attn_threads(cfg, fn), kn_attn_shared_bytes(cfg, fn), &x, d);
}

static int cuda_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_function f = function(c, kernel, 0, d);
    if (!f)
        return -1;
    int64_t grid[3] = {kn_route_grid(a, max_blocks(c)), 1, 1};
    struct kn_route_args x = *a;
    return launch(c, kernel, f, grid, KN_CUDA_THREADS, 0, &x, d);
}

static void cuda_close(struct backend *be)
{
    struct cuda *c = (struct cuda *)be;
    cu.ctx_synchronize();
    lt_close(c->gemms);
    if (c->stream)
        cu.stream_destroy(c->stream);
    if (c->side)
        cu.stream_destroy(c->side);
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

/* ---- Graphs: backend.h's segments, captured from the stream ----------------
 * Captured in thread-local mode: this thread may not synchronise or
 * allocate meanwhile (the column sums' scratch refuses to grow), and a call
 * that does fails the capture, which segments.c answers by running the
 * calls one by one. */
enum { STREAM_NON_BLOCKING = ABI_CU_STREAM_NON_BLOCKING, CAPTURE_THREAD_LOCAL = ABI_CU_STREAM_CAPTURE_MODE_THREAD_LOCAL };

static void cuda_graph_free(struct backend *be, void *graph)
{
    (void)be;
    struct cuda_graph *G = graph;
    if (G->exec)
        cu.graph_exec_destroy(G->exec);
    if (G->graph)
        cu.graph_destroy(G->graph);
    free(G->nodes);
    free(G);
}

static int cuda_capture_begin(struct backend *be, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.begin_capture(c->stream, CAPTURE_THREAD_LOCAL);
    if (r)
        return fail(d, r, "%s", "cannot begin capturing a graph");
    c->mode = LAUNCH_CAPTURE;
    c->graph = wf_calloc(1, sizeof *c->graph);
    return 0;
}

static int cuda_capture_end(struct backend *be, void **graph, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    struct cuda_graph *G = c->graph;
    c->mode = LAUNCH_RUN, c->graph = NULL, *graph = NULL;
    if (!G) { /* capture_begin failed: nothing to end */
        diag_error(d, NULL, 0, "no graph is being captured");
        return -1;
    }
    cu_result r = cu.end_capture(c->stream, &G->graph); /* the capture is over, even where it failed */
    if (!r)
        r = cu.graph_instantiate(&G->exec, G->graph, 0);
    if (r) {
        cuda_graph_free(be, G);
        return fail(d, r, "%s", "cannot make a graph of the captured launches");
    }
    *graph = G;
    return 0;
}

static int cuda_graph_nodes(struct backend *be)
{
    struct cuda *c = (struct cuda *)be;
    return c->mode == LAUNCH_UPDATE ? c->cursor : c->graph ? c->graph->n : 0;
}

static void cuda_graph_update(struct backend *be, void *graph, int node)
{
    struct cuda *c = (struct cuda *)be;
    c->mode = graph ? LAUNCH_UPDATE : LAUNCH_RUN, c->graph = graph, c->cursor = node;
}

static int cuda_graph_launch(struct backend *be, void *graph, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.graph_launch(((struct cuda_graph *)graph)->exec, c->stream);
    return r ? fail(d, r, "%s", "cannot launch a graph") : 0;
}

/* ---- The second stream: the communicators' work beside the launches ------- */
enum { EVENT_DISABLE_TIMING = ABI_CU_EVENT_DISABLE_TIMING };

static int cuda_side_begin(struct backend *be, void **stream, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_event ev = NULL;
    cu_result r = c->side ? 0 : cu.stream_create(&c->side, STREAM_NON_BLOCKING);
    if (!r)
        r = cu.event_create(&ev, EVENT_DISABLE_TIMING);
    if (!r)
        r = cu.event_record(ev, c->stream);
    if (!r)
        r = cu.stream_wait_event(c->side, ev, 0);
    if (ev)
        cu.event_destroy(ev); /* its resources go once the wait has seen it */
    *stream = c->side;
    return r ? fail(d, r, "%s", "cannot order the second stream after the launches") : 0;
}

static int cuda_side_end(struct backend *be, struct backend_mark **mark, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_event ev = NULL;
    cu_result r = cu.event_create(&ev, EVENT_DISABLE_TIMING);
    if (!r && (r = cu.event_record(ev, c->side)))
        cu.event_destroy(ev);
    *mark = r ? NULL : (struct backend_mark *)ev;
    return r ? fail(d, r, "%s", "cannot mark the second stream") : 0;
}

static int cuda_side_done(struct backend *be, struct backend_mark *mark, struct diag *d)
{
    (void)be;
    cu_result r = cu.event_query((cu_event)mark);
    return r == CU_NOT_READY ? 0 : r ? fail(d, r, "%s", "the second stream's work failed") : 1;
}

static void cuda_mark_free(struct backend *be, struct backend_mark *mark)
{
    (void)be;
    cu.event_destroy((cu_event)mark);
}

static bool cuda_holds(struct backend *be, const void *p);
static int cuda_gpu(struct backend *be, struct backend_gpu *g, struct diag *d);
static int cuda_poll(struct backend *be, struct diag *d);

static const struct backend_ops cuda_ops = {
    .alloc = cuda_alloc, .free = cuda_free, .put = cuda_put, .get = cuda_get, .copy = cuda_copy, .fused = cuda_fused,
    .attention = cuda_attention, .route = cuda_route, .sync = cuda_sync, .gemm = cuda_gemm, .gemm_epilogue = cuda_gemm_epilogue,
    .zero = cuda_zero,
    .copy_rows = cuda_copy_rows, .memory = cuda_memory, .close = cuda_close,
    .holds = cuda_holds, .gpu = cuda_gpu, .poll = cuda_poll, .capture_begin = cuda_capture_begin, .capture_end = cuda_capture_end,
    .graph_nodes = cuda_graph_nodes, .graph_update = cuda_graph_update, .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free, .side_begin = cuda_side_begin, .side_end = cuda_side_end, .side_done = cuda_side_done,
    .mark_free = cuda_mark_free};

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
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    int ordinal = backend_cuda_ordinal(count, getenv("WEFT_CUDA_DEVICE"), local ? local : getenv("SLURM_LOCALID"), d);
    if (ordinal < 0)
        return NULL;
    char which[16];
    snprintf(which, sizeof which, "%d", ordinal);
    struct cuda *c = wf_calloc(1, sizeof *c);
    c->be = (struct backend){.ops = &cuda_ops, .F = F, .kind = BACKEND_CUDA};
    c->last = -1;
    int major = 0, minor = 0;
    char name[100] = "";
    if ((r = cu.device_get(&c->dev, ordinal)) || (r = cu.device_attribute(&major, ATTR_CC_MAJOR, c->dev)) ||
        (r = cu.device_attribute(&minor, ATTR_CC_MINOR, c->dev)) || (r = cu.device_attribute(&c->sms, ATTR_MULTIPROCESSORS, c->dev)) ||
        (r = cu.device_attribute(&c->shared_optin, ATTR_SHARED_OPTIN, c->dev)) ||
        (r = cu.device_name(name, sizeof name, c->dev)) || (r = cu.ctx_retain(&c->ctx, c->dev))) {
        fail(d, r, "cannot open GPU %s", which);
        free(c);
        return NULL;
    }
    if ((r = cu.ctx_set_current(c->ctx))) {
        fail(d, r, "cannot use GPU %s", which);
        cu.ctx_release(c->dev);
        free(c);
        return NULL;
    }
    c->cc = major * 10 + minor;
    snprintf(c->be.description, sizeof c->be.description, "%s (sm_%d, %d SMs)", name, c->cc, c->sms);
    c->modules = wf_calloc((size_t)F->n_kernels + 1, sizeof *c->modules);
    c->functions = wf_calloc((size_t)F->n_kernels * KN_ATTN_FNS + 1, sizeof *c->functions);
    c->mem_at_open = c->mem_peak = device_used();
    if ((r = cu.stream_create(&c->stream, STREAM_NON_BLOCKING))) {
        fail(d, r, "cannot make a stream on GPU %s", which);
        cuda_close(&c->be);
        return NULL;
    }
    if (!(c->gemms = lt_open(d))) {
        cuda_close(&c->be);
        return NULL;
    }
    c->be.scratch_bytes = (int64_t)LT_WORKSPACE_BYTES;
    backend_use_graphs(&c->be, true);
    return &c->be;
}

/* What the communicators need of the GPU (backend.h: backend_holds,
 * backend_gpu, backend_poll). */
enum { ATTR_POINTER_MEMORY_TYPE = 2, MEMORY_TYPE_DEVICE = 2 };

static bool cuda_holds(struct backend *be, const void *p)
{
    (void)be;
    unsigned type = 0;
    return !cu.pointer_attribute(&type, ATTR_POINTER_MEMORY_TYPE, (cu_ptr)(uintptr_t)p) && type == MEMORY_TYPE_DEVICE;
}

static int cuda_gpu(struct backend *be, struct backend_gpu *g, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    memset(g, 0, sizeof *g);
    g->ordinal = c->dev, g->stream = c->stream;
    cu_result r = cu.bus_id(g->bus_id, (int)sizeof g->bus_id, c->dev);
    return r ? fail(d, r, "%s", "the GPU's PCI bus id") : 1;
}

static int cuda_poll(struct backend *be, struct diag *d)
{
    struct cuda *c = (struct cuda *)be;
    cu_result r = cu.stream_query(c->stream);
    if (r == CU_NOT_READY)
        return 0;
    return r ? fail(d, r, "a kernel failed on the GPU (the last launched: %s)", c->last >= 0 ? be->F->kernels[c->last].name : "none")
             : 1;
}
