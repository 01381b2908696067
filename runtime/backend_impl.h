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
    bool (*gemm_epilogue)(struct backend *be, const struct backend_gemm *g); /* NULL: none */
    int (*zero)(struct backend *be, void *p, size_t bytes, struct diag *d);
    int (*copy_rows)(struct backend *be, const struct backend_rows *r, struct diag *d);
    void (*memory)(struct backend *be, struct backend_memory *m);
    void (*close)(struct backend *be);
    /* backend.h's communicators' view; NULL: host memory, no GPU, always done (the CPU) */
    bool (*holds)(struct backend *be, const void *p);
    int (*gpu)(struct backend *be, struct backend_gpu *g, struct diag *d);
    int (*poll)(struct backend *be, struct diag *d);
    /* backend.h's second stream (NULL: none) */
    int (*side_begin)(struct backend *be, void **stream, struct diag *d);
    int (*side_end)(struct backend *be, struct backend_mark **mark, struct diag *d);
    int (*side_done)(struct backend *be, struct backend_mark *mark, struct diag *d);
    void (*mark_free)(struct backend *be, struct backend_mark *mark);
    /* Graphs (NULL: none; backend.h's segments run call by call).  capture_begin: the calls after it are recorded
     * into a graph, not run; capture_end: that graph made launchable (*graph), nothing run, and recording over
     * whether or not it succeeds.  graph_nodes: the kernel nodes recorded so far (capturing), or set so far
     * (updating).  graph_update: the kernel launches after it set graph's kernel nodes, from node on in order,
     * instead of running (graph NULL: they run again).  graph_launch runs the whole graph; graph_free. */
    int (*capture_begin)(struct backend *be, struct diag *d);
    int (*capture_end)(struct backend *be, void **graph, struct diag *d);
    int (*graph_nodes)(struct backend *be);
    void (*graph_update)(struct backend *be, void *graph, int node);
    int (*graph_launch)(struct backend *be, void *graph, struct diag *d);
    void (*graph_free)(struct backend *be, void *graph);
};

/* One call a segment holds (backend.h's segments): what backend_fused and
 * the others were given. */
enum backend_call_kind { CALL_FUSED, CALL_ATTENTION, CALL_ROUTE, CALL_GEMM, CALL_ZERO, CALL_COPY, CALL_ROWS };
struct backend_call {
    enum backend_call_kind kind;
    int kernel, fn;      /* a kernel's (fn: attention's enum kn_attn_fn) */
    int node0, node1;    /* the kernel nodes it made in its segment's graph: [node0, node1) */
    union {
        struct kn_args fused;
        struct kn_attn_args attn;
        struct kn_route_args route;
        struct backend_gemm gemm;
        struct backend_rows rows;
        struct {
            void *dst;
            const void *src;
            size_t bytes;
        } copy;          /* ZERO: dst and bytes */
    } u;
};
/* Whether c launches a kernel (a graph's kernel node: its arguments may be set), not a GEMM or a copy. */
static inline bool backend_call_is_kernel(const struct backend_call *c) { return c->kind <= CALL_ROUTE; }
/* c run now through be's ops (a graph's recording, where be is capturing). */
int backend_call_run(struct backend *be, const struct backend_call *c, struct diag *d);

struct graphs; /* backend.c's segments */

struct backend {
    const struct backend_ops *ops;
    const struct kn_set *F;
    enum backend_kind kind;
    char description[160];
    int64_t scratch_bytes; /* backend_scratch_bytes */
    struct graphs *graphs; /* the segments (backend_use_graphs), or NULL: calls run as they come */
    unsigned long moves;   /* one more each time the backend's own memory that kernels are given moves (scratch that
                            * grew): a graph captured before holds the old address, so segments.c captures it anew */
};

/* c, checked, from backend_fused and the others: held by the open segment,
 * or run now (segments.c). */
int backend_submit(struct backend *be, const struct backend_call *c, struct diag *d);
/* The segments' graphs freed, before be closes. */
void backend_graphs_free(struct backend *be);

struct backend *backend_cuda_open(const struct kn_set *F, struct diag *d);

#endif
