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
 *   backend_get(be, host, y, bytes, &d);         // waits for what came before
 *   backend_close(be);
 *
 * A backend keeps its own scratch: the CUDA column sums' partial sums.
 * Every call that can fail returns 0, or -1 with the reason in d (a
 * kernel's launch error names the kernel). */
#ifndef WEFT_BACKEND_H
#define WEFT_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

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

/* Launch kernel F->kernels[kernel] (of its kind) with args a. */
int backend_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d);
int backend_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d);
int backend_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d);
/* Waits for every launch; reports the first failure among them. */
int backend_sync(struct backend *be, struct diag *d);

/* What a communicator needs of a GPU backend (comm_staged.c, comm_nccl.c).
 * The CPU backend's memory is the host's: it holds nothing, has no GPU, and
 * its work is always done. */
struct backend_gpu {
    int ordinal;      /* the CUDA device */
    void *stream;     /* the CUstream NCCL's work joins, in order with the launches (NULL: the legacy default stream) */
    char bus_id[32];  /* its PCI bus id, "0000:1B:00.0": one GPU of a node */
};
/* Whether p is memory of be that the host cannot read (the GPU's). */
bool backend_holds(struct backend *be, const void *p);
/* be's GPU into *g: 1, or 0 where be runs on the CPU, -1 on failure (d says why). */
int backend_gpu(struct backend *be, struct backend_gpu *g, struct diag *d);
/* Whether everything launched and copied so far has finished, without
 * waiting: 1 yes, 0 not yet, -1 a failure (d says which). */
int backend_poll(struct backend *be, struct diag *d);

#endif
