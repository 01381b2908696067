/* backend.h: what runs a plan's kernels: the CPU (the plan's shared
 * object, dlopen'd) or a CUDA GPU (the plan's cubins, through the driver
 * API, opened at run time so that weft builds and runs where there is no
 * GPU).  Both take the same argument structs (ir/kernel.h) with pointers
 * that are the backend's own, and launch as ir/launch.h says.
 *
 *   struct diag d;  diag_init(&d);
 *   struct backend *be = backend_open(BACKEND_CUDA, &F, &d);   // NULL: d says why
 *   void *x = backend_alloc(be, bytes);
 *   backend_put(be, x, host, bytes);
 *   args.in[0] = x;  ...
 *   backend_fused(be, kernel, &args, &d);        // asynchronous on CUDA
 *   backend_gemm(be, &(struct backend_gemm){.batch = 1, .m = M, .n = N, .k = K, .lda = K, .ldb = N, .ldc = N,
 *                                           .a = x, .b = w, .c = y}, &d);   // y = x @ w, fp32
 *   backend_get(be, host, y, bytes, &d);         // waits for what came before
 *   backend_close(be);
 *
 * A backend keeps its own scratch (backend_scratch_bytes): the CPU's bf16
 * GEMMs' operands widened to fp32, CUDA's cuBLASLt workspace and column
 * sums' partial sums.  Every call that can fail returns 0, or -1 with the
 * reason in d (a kernel's launch error names the kernel). */
#ifndef WEFT_BACKEND_H
#define WEFT_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "kernel.h"
#include "launch.h"

enum backend_kind { BACKEND_CPU, BACKEND_CUDA };

struct backend;

/* The kernels of F (its cpu_object, or its GPU binaries) made runnable.
 * F must outlive the backend.  CUDA takes the first GPU, or
 * $WEFT_CUDA_DEVICE; a missing driver or GPU is an error saying so. */
struct backend *backend_open(enum backend_kind kind, const struct kn_set *F, struct diag *d);
void backend_close(struct backend *be);
const char *backend_describe(const struct backend *be); /* "cpu", "NVIDIA H200 (sm_90, 132 SMs)" */

/* Memory of the backend; NULL on failure (d says why). */
void *backend_alloc(struct backend *be, size_t bytes, struct diag *d);
void backend_free(struct backend *be, void *p);
int backend_put(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d);
int backend_get(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d);
/* Within the backend's memory (asynchronous on a GPU, in order with launches). */
int backend_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d);

/* c = op(a) @ op(b), or c += op(a) @ op(b) where beta is 1, for each of
 * batch matrices: row-major, as a plan's GEMM action says (ir_gemm,
 * ir/actions.h), with its dtypes: a and b fp32 or bf16, c fp32 or (with
 * bf16 a and b) bf16.  The sums are fp32 (bf16 operands widened, a bf16
 * result rounded to nearest even).  A batch stride of 0 reads (a, b) the
 * same matrix for each, or (c) adds every product into one. */
struct backend_gemm {
    int64_t batch, m, n, k;
    bool ta, tb;                 /* a is stored k x m (b: n x k) */
    float beta;                  /* 0 or 1 */
    int dtype, c_dtype;          /* enum ir_dtype: of a and b; of c */
    int64_t lda, ldb, ldc;       /* elements between rows */
    int64_t stride_a, stride_b, stride_c; /* elements between a batch's matrices */
    const void *a, *b;
    void *c;
    int epilogue;                /* enum ir_epilogue (batch 1, beta 0): what is done to the product before c */
    const void *bias;            /* its n elements, of c_dtype */
    void *aux;                   /* GELU_AUX_BIAS: the product plus the bias, m x n like c */
};
int backend_gemm(struct backend *be, const struct backend_gemm *g, struct diag *d);
/* Whether the backend runs g's epilogue within the GEMM (cuBLASLt, where
 * it has an algorithm for it); if not, the caller runs the GEMM without it
 * and the epilogue's kernel after (the CPU always).  Asked before
 * backend_gemm: a backend with no epilogues refuses a GEMM with one, and
 * CUDA's fails where cuBLASLt has no algorithm for it. */
bool backend_gemm_epilogue(struct backend *be, const struct backend_gemm *g);
/* Whether cuBLASLt takes the descriptors cuda.c makes for g (its
 * layouts, transposes, batch and strides, the heuristic's preferences):
 * host work, so it needs cuBLASLt's library and no GPU.  0, or -1 saying
 * why (no library, or the value it refused). */
int backend_cuda_gemm_check(const struct backend_gemm *g, struct diag *d);
/* bytes at p set to 0 (asynchronous on a GPU, in order with launches). */
int backend_zero(struct backend *be, void *p, size_t bytes, struct diag *d);
/* planes x rows of width bytes from src to dst, each with its own strides
 * (bytes), or with add their elementwise sum into dst in dtype
 * (IR_DTYPE_F32, or IR_DTYPE_BF16 summed in fp32 and rounded to nearest
 * even; width and strides whole elements).  A plan's COPY action. */
struct backend_rows {
    void *dst;
    const void *src;
    int64_t planes, rows, width;
    int64_t src_plane, src_pitch, dst_plane, dst_pitch;
    bool add;
    int dtype;
};
int backend_copy_rows(struct backend *be, const struct backend_rows *r, struct diag *d);
/* What the backend allocated for itself (its scratch, its libraries'
 * workspaces), beside what was allocated through it. */
int64_t backend_scratch_bytes(const struct backend *be);
/* The device's memory in use (all processes', total less free), in bytes:
 * when the backend opened (the context, other processes), the most seen
 * at any wait since (backend_sync, backend_get), and now.  All -1 on the
 * CPU, where the process's resident set says it. */
struct backend_memory {
    int64_t at_open, peak, now;
};
void backend_memory(struct backend *be, struct backend_memory *m);
/* Which of count GPUs a rank takes: $WEFT_CUDA_DEVICE (device), else its
 * rank on the node (local_rank: $OMPI_COMM_WORLD_LOCAL_RANK or
 * $SLURM_LOCALID) mod count, else 0; -1 with the reason in d where device
 * names no GPU there is.  Either string may be NULL. */
int backend_cuda_ordinal(int count, const char *device, const char *local_rank, struct diag *d);

/* Launch kernel F->kernels[kernel] (of its kind) with args a. */
int backend_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d);
int backend_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d);
int backend_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d);
/* Waits for every launch; reports the first failure among them. */
int backend_sync(struct backend *be, struct diag *d);

/* Segments: a run of calls (kernels, GEMMs, zeroing and copies within the
 * backend's memory, nothing else) that the caller repeats step after step
 * on the same buffers, marked by backend_segment_begin and _end under a key
 * of the caller's: the same key, the same run up to the kernels' argument
 * values.  On a backend with graphs (CUDA) a segment runs call by call the
 * first time (modules load, GEMMs find their algorithms, scratch grows), is
 * captured into a graph the second time and launched as one, and is one
 * graph launch from then on: kernels whose arguments changed (a dropout seed, a learning rate)
 * have them set into their nodes first, and a run that changed otherwise
 * (another kernel, a GEMM's shape or buffers) is captured anew; one that
 * keeps changing runs call by call from then on.  Inside a segment the
 * calls are held and run at its end (a call's error is backend_segment_end's).
 * A backend without graphs (the CPU), or with them off, runs each call as it
 * comes, and a call outside any segment always runs at once. */
int backend_segment_begin(struct backend *be, uint64_t key, struct diag *d);
int backend_segment_end(struct backend *be, struct diag *d);
/* Graphs on or off (on by default where the backend has them). */
void backend_use_graphs(struct backend *be, bool on);
struct backend_graph_stats {
    long eager;     /* segments run call by call (first runs, and runs that could not be graphs) */
    long captured;  /* graphs made: second runs, and runs that changed */
    long replayed;  /* graph launches */
    long updated;   /* kernel nodes given new arguments before a launch */
    long calls;     /* calls run by graph launches */
};
void backend_graph_stats(const struct backend *be, struct backend_graph_stats *s);

/* What a communicator needs of a GPU backend (comm_staged.c, comm_nccl.c).
 * The CPU backend's memory is the host's: it holds nothing, has no GPU, and
 * its work is always done. */
struct backend_gpu {
    int ordinal;      /* the CUDA device */
    void *stream;     /* the CUstream NCCL's work joins, in order with the launches (NULL: the legacy default stream) */
    char bus_id[32];  /* its PCI bus id, "0000:1B:00.0": one GPU of a node */
};
/* A second stream, for the communicators' work beside the launches
 * (comm_nccl.c's collectives): what is put on *stream after
 * backend_side_begin waits for everything launched before it;
 * backend_side_end marks the end of what was put there, and
 * backend_side_done says without waiting whether the work up to a mark has
 * run (1; 0 not yet; -1 a failure, d says which).  Begin and end return
 * -1 where the backend has none (the CPU: the caller runs to the end
 * instead) or on failure. */
struct backend_mark;
int backend_side_begin(struct backend *be, void **stream, struct diag *d);
int backend_side_end(struct backend *be, struct backend_mark **mark, struct diag *d);
int backend_side_done(struct backend *be, struct backend_mark *mark, struct diag *d);
void backend_mark_free(struct backend *be, struct backend_mark *mark);
/* Whether p is memory of be that the host cannot read (the GPU's). */
bool backend_holds(struct backend *be, const void *p);
/* be's GPU into *g: 1, or 0 where be runs on the CPU, -1 on failure (d says why). */
int backend_gpu(struct backend *be, struct backend_gpu *g, struct diag *d);
/* Whether everything launched and copied so far has finished, without
 * waiting: 1 yes, 0 not yet, -1 a failure (d says which). */
int backend_poll(struct backend *be, struct diag *d);

#endif
