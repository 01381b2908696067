/* graphed.h: a backend with graphs as CUDA has them, over another backend
 * (the CPU), so that a machine without a GPU checks runtime/segments.c
 * and the executor's segments.  Its graph records each call with its
 * arguments by value, as a CUDA graph's nodes hold them: a replay runs the
 * arguments of the capture unless they were set since (graph_update), so
 * a kernel whose changed arguments were not set runs with stale ones, and
 * a step replayed differs from the step run call by call.
 *
 *   struct backend *g = graphed_open(backend_open(BACKEND_CPU, F, &d));
 *   struct exec *x = exec_new_on(&R, NULL, seed, g, &d);   // closes both
 *
 * graphed_set_faults: capture refused (every segment runs call by call),
 * or updates dropped (what a backend that ignored them would run). */
#ifndef WEFT_TESTS_GRAPHED_H
#define WEFT_TESTS_GRAPHED_H

#include "backend_impl.h"

#include <stdlib.h>
#include <string.h>

struct graphed_graph {
    struct backend_call *calls;
    int n, cap;
    int *node_call; /* kernel node i: its call */
    int nodes, node_cap;
};

struct graphed {
    struct backend be;
    struct backend *inner;
    enum { GRAPHED_RUN, GRAPHED_CAPTURE, GRAPHED_UPDATE } mode;
    struct graphed_graph *g; /* capturing or updating */
    int cursor;
    bool refuse_capture, drop_updates;
    long captures, launches, updates;
};

static inline struct backend *graphed_inner(struct backend *be) { return ((struct graphed *)be)->inner; }

static inline int graphed_call(struct backend *be, const struct backend_call *c, struct diag *d)
{
    struct graphed *x = (struct graphed *)be;
    struct graphed_graph *g = x->g;
    if (x->mode == GRAPHED_RUN)
        return backend_call_run(x->inner, c, d);
    if (x->mode == GRAPHED_UPDATE) {
        if (!backend_call_is_kernel(c) || x->cursor >= g->nodes) {
            diag_error(d, NULL, 0, "the graph has no kernel node %d to set", x->cursor);
            return -1;
        }
        struct backend_call *node = &g->calls[g->node_call[x->cursor++]];
        if (node->kind != c->kind || node->kernel != c->kernel || node->fn != c->fn) {
            diag_error(d, NULL, 0, "kernel node %d holds another kernel", x->cursor - 1);
            return -1;
        }
        x->updates++;
        if (!x->drop_updates)
            node->u = c->u;
        return 0;
    }
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 16;
        g->calls = (struct backend_call *)realloc(g->calls, (size_t)g->cap * sizeof *g->calls);
    }
    g->calls[g->n] = *c;
    if (backend_call_is_kernel(c)) {
        if (g->nodes == g->node_cap) {
            g->node_cap = g->node_cap ? 2 * g->node_cap : 16;
            g->node_call = (int *)realloc(g->node_call, (size_t)g->node_cap * sizeof *g->node_call);
        }
        g->node_call[g->nodes++] = g->n;
    }
    g->n++;
    return 0;
}

static inline int graphed_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d)
{
    return graphed_call(be, &(struct backend_call){.kind = CALL_FUSED, .kernel = kernel, .u.fused = *a}, d);
}
static inline int graphed_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d)
{
    return graphed_call(be, &(struct backend_call){.kind = CALL_ATTENTION, .kernel = kernel, .fn = fn, .u.attn = *a}, d);
}
static inline int graphed_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    return graphed_call(be, &(struct backend_call){.kind = CALL_ROUTE, .kernel = kernel, .u.route = *a}, d);
}
static inline int graphed_gemm(struct backend *be, const struct backend_gemm *g, struct diag *d)
{
    return graphed_call(be, &(struct backend_call){.kind = CALL_GEMM, .u.gemm = *g}, d);
}
static inline int graphed_zero(struct backend *be, void *p, size_t bytes, struct diag *d)
{
    return graphed_call(be, &(struct backend_call){.kind = CALL_ZERO, .u.copy = {.dst = p, .bytes = bytes}}, d);
}
static inline int graphed_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return graphed_call(be, &(struct backend_call){.kind = CALL_COPY, .u.copy = {dst, src, bytes}}, d);
}
static inline int graphed_copy_rows(struct backend *be, const struct backend_rows *r, struct diag *d)
{
    return graphed_call(be, &(struct backend_call){.kind = CALL_ROWS, .u.rows = *r}, d);
}

static inline void *graphed_alloc(struct backend *be, size_t bytes, struct diag *d) { return backend_alloc(graphed_inner(be), bytes, d); }
static inline void graphed_free(struct backend *be, void *p) { backend_free(graphed_inner(be), p); }
static inline int graphed_put(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return backend_put(graphed_inner(be), dst, src, bytes, d);
}
static inline int graphed_get(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return backend_get(graphed_inner(be), dst, src, bytes, d);
}
static inline int graphed_sync(struct backend *be, struct diag *d) { return backend_sync(graphed_inner(be), d); }
static inline void graphed_memory(struct backend *be, struct backend_memory *m) { backend_memory(graphed_inner(be), m); }

static inline void graphed_graph_free(struct backend *be, void *graph)
{
    (void)be;
    struct graphed_graph *g = (struct graphed_graph *)graph;
    free(g->calls), free(g->node_call), free(g);
}

static inline int graphed_capture_begin(struct backend *be, struct diag *d)
{
    struct graphed *x = (struct graphed *)be;
    if (x->refuse_capture) {
        diag_error(d, NULL, 0, "capture refused (graphed_set_faults)");
        return -1;
    }
    x->mode = GRAPHED_CAPTURE;
    x->g = (struct graphed_graph *)calloc(1, sizeof *x->g);
    return 0;
}

static inline int graphed_capture_end(struct backend *be, void **graph, struct diag *d)
{
    (void)d;
    struct graphed *x = (struct graphed *)be;
    *graph = x->mode == GRAPHED_CAPTURE ? x->g : NULL;
    x->mode = GRAPHED_RUN, x->g = NULL;
    x->captures += *graph != NULL;
    return *graph ? 0 : -1;
}

static inline int graphed_graph_nodes(struct backend *be)
{
    struct graphed *x = (struct graphed *)be;
    return x->mode == GRAPHED_UPDATE ? x->cursor : x->g ? x->g->nodes : 0;
}

static inline void graphed_graph_update(struct backend *be, void *graph, int node)
{
    struct graphed *x = (struct graphed *)be;
    x->mode = graph ? GRAPHED_UPDATE : GRAPHED_RUN, x->g = (struct graphed_graph *)graph, x->cursor = node;
}

static inline int graphed_graph_launch(struct backend *be, void *graph, struct diag *d)
{
    struct graphed *x = (struct graphed *)be;
    const struct graphed_graph *g = (const struct graphed_graph *)graph;
    x->launches++;
    for (int i = 0; i < g->n; i++)
        if (backend_call_run(x->inner, &g->calls[i], d))
            return -1;
    return 0;
}

static inline void graphed_close(struct backend *be)
{
    backend_close(graphed_inner(be));
    free(be);
}

static const struct backend_ops graphed_ops = {
    .alloc = graphed_alloc, .free = graphed_free, .put = graphed_put, .get = graphed_get, .copy = graphed_copy,
    .fused = graphed_fused, .attention = graphed_attention, .route = graphed_route, .sync = graphed_sync,
    .gemm = graphed_gemm, .zero = graphed_zero, .copy_rows = graphed_copy_rows, .memory = graphed_memory,
    .close = graphed_close, .capture_begin = graphed_capture_begin, .capture_end = graphed_capture_end,
    .graph_nodes = graphed_graph_nodes, .graph_update = graphed_graph_update, .graph_launch = graphed_graph_launch,
    .graph_free = graphed_graph_free};

/* inner wrapped (NULL: NULL), graphs on; closing it closes inner. */
static inline struct backend *graphed_open(struct backend *inner)
{
    if (!inner)
        return NULL;
    struct graphed *x = (struct graphed *)calloc(1, sizeof *x);
    x->be = (struct backend){.ops = &graphed_ops, .F = inner->F, .kind = inner->kind, .scratch_bytes = inner->scratch_bytes};
    snprintf(x->be.description, sizeof x->be.description, "%.100s, with recorded graphs", inner->description);
    x->inner = inner;
    backend_use_graphs(&x->be, true);
    return &x->be;
}

static inline void graphed_set_faults(struct backend *be, bool refuse_capture, bool drop_updates)
{
    struct graphed *x = (struct graphed *)be;
    x->refuse_capture = refuse_capture, x->drop_updates = drop_updates;
}

#endif
