/* backend_impl.h: what a backend implements (backend.c dispatches to it). */
#ifndef WEFT_BACKEND_IMPL_H
#define WEFT_BACKEND_IMPL_H

#include "backend.h"

struct backend_ops {
    void *(*alloc)(struct backend *be, size_t bytes, struct diag *d);
    void (*free)(struct backend *be, void *p);
    int (*put)(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d);
    int (*get)(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d);
    int (*copy)(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d);
    int (*fused)(struct backend *be, int kernel, const struct kn_args *a, struct diag *d);
    int (*attention)(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d);
    int (*route)(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d);
    int (*sync)(struct backend *be, struct diag *d);
    int (*gemm)(struct backend *be, const struct backend_gemm *g, struct diag *d);
    int (*zero)(struct backend *be, void *p, size_t bytes, struct diag *d);
    int (*copy_rows)(struct backend *be, const struct backend_rows *r, struct diag *d);
    void (*memory)(struct backend *be, struct backend_memory *m);
    void (*close)(struct backend *be);
    /* backend.h's communicators' view; NULL: host memory, no GPU, always done (the CPU) */
    bool (*holds)(struct backend *be, const void *p);
    int (*gpu)(struct backend *be, struct backend_gpu *g, struct diag *d);
    int (*poll)(struct backend *be, struct diag *d);
};

struct backend {
    const struct backend_ops *ops;
    const struct kn_set *F;
    enum backend_kind kind;
    char description[160];
    int64_t scratch_bytes; /* backend_scratch_bytes */
};

struct backend *backend_cuda_open(const struct kn_set *F, struct diag *d);

#endif
