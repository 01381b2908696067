/* segments.c: backend.h's segments, runs of calls a backend with graphs
 * replays as one graph launch.
 *
 * A segment's calls are held while it is open and run at its end.  The
 * first run of a key runs them one by one (what must happen once happens
 * outside any capture: a module's load, a GEMM's heuristic, scratch that
 * grows); the second captures them into a graph; from then on the held
 * calls are compared with the graph's: the same kernels on the same
 * buffers, GEMMs and copies alike field for field.  A kernel whose
 * arguments differ (a dropout seed follows the step's samples, the
 * optimizer's learning rate and bias corrections its step) is run again
 * in the backend's update mode, which sets its nodes instead of
 * launching; anything else that differs makes a new graph.  Keys are the
 * caller's, so the layer needs no idea of what a step is. */
#include "backend_impl.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* Graphs that a segment may make before it runs call by call for good:
 * a run that changes every time gains nothing from capture. */
enum { CAPTURE_LIMIT = 4 };

struct segment {
    uint64_t key;
    bool seen;                  /* run once already */
    bool eager;                 /* call by call for good (CAPTURE_LIMIT) */
    int captures;
    void *graph;                /* or NULL */
    unsigned long moves;        /* the backend's moves when it was captured (backend.moves) */
    struct backend_call *calls; /* the graph's, with their nodes */
    int n, cap;
};

struct graphs {
    struct segment *v;
    int n, cap;
    int hint;                   /* where the next key was found last: segments come in the same order each step */
    int open;                   /* the open segment, or -1 */
    bool holding;               /* its calls are held (not run as they come) */
    struct backend_call *held;
    int n_held, cap_held;
    struct backend_graph_stats stats;
};

int backend_call_run(struct backend *be, const struct backend_call *c, struct diag *d)
{
    switch (c->kind) {
    case CALL_FUSED:
        return be->ops->fused(be, c->kernel, &c->u.fused, d);
    case CALL_ATTENTION:
        return be->ops->attention(be, c->kernel, (enum kn_attn_fn)c->fn, &c->u.attn, d);
    case CALL_ROUTE:
        return be->ops->route(be, c->kernel, &c->u.route, d);
    case CALL_GEMM:
        return be->ops->gemm(be, &c->u.gemm, d);
    case CALL_ZERO:
        return be->ops->zero(be, c->u.copy.dst, c->u.copy.bytes, d);
    case CALL_COPY:
        return be->ops->copy(be, c->u.copy.dst, c->u.copy.src, c->u.copy.bytes, d);
    case CALL_ROWS:
        return be->ops->copy_rows(be, &c->u.rows, d);
    }
    return -1;
}

void backend_use_graphs(struct backend *be, bool on)
{
    if (!on)
        backend_graphs_free(be);
    else if (!be->graphs && be->ops->capture_begin) {
        be->graphs = wf_calloc(1, sizeof *be->graphs);
        be->graphs->open = -1;
    }
}

void backend_graphs_free(struct backend *be)
{
    struct graphs *G = be->graphs;
    if (!G)
        return;
    for (int i = 0; i < G->n; i++) {
        if (G->v[i].graph)
            be->ops->graph_free(be, G->v[i].graph);
        free(G->v[i].calls);
    }
    free(G->v);
    free(G->held);
    free(G);
    be->graphs = NULL;
}

void backend_graph_stats(const struct backend *be, struct backend_graph_stats *s)
{
    memset(s, 0, sizeof *s);
    if (be->graphs)
        *s = be->graphs->stats;
}

/* The bytes of c's arguments (its member of the union). */
static size_t args_bytes(const struct backend_call *c)
{
    return c->kind == CALL_FUSED ? sizeof c->u.fused : c->kind == CALL_ATTENTION ? sizeof c->u.attn : sizeof c->u.route;
}

static bool same_gemm(const struct backend_gemm *a, const struct backend_gemm *b)
{
    return a->batch == b->batch && a->m == b->m && a->n == b->n && a->k == b->k && a->ta == b->ta && a->tb == b->tb &&
           a->beta == b->beta && a->dtype == b->dtype && a->c_dtype == b->c_dtype && a->lda == b->lda && a->ldb == b->ldb &&
           a->ldc == b->ldc && a->stride_a == b->stride_a && a->stride_b == b->stride_b && a->stride_c == b->stride_c &&
           a->a == b->a && a->b == b->b && a->c == b->c && a->epilogue == b->epilogue && a->bias == b->bias && a->aux == b->aux;
}

static bool same_rows(const struct backend_rows *a, const struct backend_rows *b)
{
    return a->dst == b->dst && a->src == b->src && a->planes == b->planes && a->rows == b->rows && a->width == b->width &&
           a->src_plane == b->src_plane && a->src_pitch == b->src_pitch && a->dst_plane == b->dst_plane &&
           a->dst_pitch == b->dst_pitch && a->add == b->add && a->dtype == b->dtype;
}

/* Whether held is the graph's run, up to its kernels' argument values. */
static bool same_run(const struct segment *S, const struct backend_call *held, int n)
{
    if (S->n != n)
        return false;
    for (int i = 0; i < n; i++) {
        const struct backend_call *a = &S->calls[i], *b = &held[i];
        if (a->kind != b->kind || a->kernel != b->kernel || a->fn != b->fn)
            return false;
        if ((a->kind == CALL_GEMM && !same_gemm(&a->u.gemm, &b->u.gemm)) || (a->kind == CALL_ROWS && !same_rows(&a->u.rows, &b->u.rows)) ||
            ((a->kind == CALL_ZERO || a->kind == CALL_COPY) &&
             (a->u.copy.dst != b->u.copy.dst || a->u.copy.src != b->u.copy.src || a->u.copy.bytes != b->u.copy.bytes)))
            return false;
    }
    return true;
}

static int find(struct graphs *G, uint64_t key)
{
    for (int i = 0; i < G->n; i++) {
        int s = (G->hint + i) % G->n;
        if (G->v[s].key == key)
            return G->hint = s + 1, s;
    }
    WF_GROW(G->v, G->n, G->cap);
    memset(&G->v[G->n], 0, sizeof *G->v);
    G->v[G->n].key = key;
    G->hint = G->n + 1;
    return G->n++;
}

int backend_segment_begin(struct backend *be, uint64_t key, struct diag *d)
{
    struct graphs *G = be->graphs;
    if (!G)
        return 0;
    if (G->open >= 0) {
        diag_error(d, NULL, 0, "segment %llu begun inside segment %llu (backend_segment_end first)", (unsigned long long)key,
                   (unsigned long long)G->v[G->open].key);
        return -1;
    }
    int s = find(G, key);
    struct segment *S = &G->v[s];
    G->open = s, G->n_held = 0;
    G->holding = S->seen && !S->eager;
    if (!G->holding)
        G->stats.eager++;
    S->seen = true;
    return 0;
}

int backend_submit(struct backend *be, const struct backend_call *c, struct diag *d)
{
    struct graphs *G = be->graphs;
    if (!G || G->open < 0 || !G->holding)
        return backend_call_run(be, c, d);
    WF_GROW(G->held, G->n_held, G->cap_held);
    G->held[G->n_held++] = *c;
    return 0;
}

/* The held calls' changed kernel arguments set into S's graph: 0, or -1
 * where the backend could not (the call now makes other nodes). */
static int update(struct backend *be, struct graphs *G, struct segment *S)
{
    for (int i = 0; i < S->n; i++) {
        struct backend_call *was = &S->calls[i];
        const struct backend_call *now = &G->held[i];
        if (!backend_call_is_kernel(now) || !memcmp(&was->u, &now->u, args_bytes(now)))
            continue;
        struct diag quiet;
        diag_init(&quiet);
        be->ops->graph_update(be, S->graph, was->node0);
        int rc = backend_call_run(be, now, &quiet), end = be->ops->graph_nodes(be);
        be->ops->graph_update(be, NULL, 0);
        diag_free(&quiet);
        if (rc || end != was->node1)
            return -1;
        was->u = now->u;
        G->stats.updated += was->node1 - was->node0;
    }
    return 0;
}

/* The held calls captured into a new graph for S: 0, or -1 where the
 * backend could not (a call that cannot be captured: it runs call by call
 * this time, and may be captured the next). */
static int capture(struct backend *be, struct graphs *G, struct segment *S)
{
    struct diag quiet;
    diag_init(&quiet);
    void *graph = NULL;
    int rc = be->ops->capture_begin(be, &quiet);
    for (int i = 0; i < G->n_held && !rc; i++) {
        G->held[i].node0 = be->ops->graph_nodes(be);
        rc = backend_call_run(be, &G->held[i], &quiet);
        G->held[i].node1 = be->ops->graph_nodes(be);
    }
    if (be->ops->capture_end(be, &graph, &quiet) || rc) {
        if (graph)
            be->ops->graph_free(be, graph);
        diag_free(&quiet);
        return -1;
    }
    diag_free(&quiet);
    S->graph = graph, S->n = 0, S->moves = be->moves;
    for (int i = 0; i < G->n_held; i++) {
        WF_GROW(S->calls, S->n, S->cap);
        S->calls[S->n++] = G->held[i];
    }
    G->stats.captured++;
    return 0;
}

int backend_segment_end(struct backend *be, struct diag *d)
{
    struct graphs *G = be->graphs;
    if (!G || G->open < 0)
        return 0;
    struct segment *S = &G->v[G->open];
    bool holding = G->holding;
    G->open = -1, G->holding = false;
    if (!holding || !G->n_held) /* run as they came; or none (a skipped update): the graph stays for the next */
        return 0;
    if (S->graph && S->moves != be->moves) { /* the backend's change, not the run's: a capture that does not count */
        be->ops->graph_free(be, S->graph);
        S->graph = NULL;
        S->captures--;
    }
    if (S->graph && (!same_run(S, G->held, G->n_held) || update(be, G, S))) {
        be->ops->graph_free(be, S->graph);
        S->graph = NULL;
    }
    if (!S->graph && (S->captures >= CAPTURE_LIMIT || (S->captures++, capture(be, G, S)))) {
        S->eager = S->captures >= CAPTURE_LIMIT;
        G->stats.eager++;
        for (int i = 0; i < G->n_held; i++)
            if (backend_call_run(be, &G->held[i], d))
                return -1;
        return 0;
    }
    G->stats.replayed++;
    G->stats.calls += G->n_held;
    return be->ops->graph_launch(be, S->graph, d);
}
