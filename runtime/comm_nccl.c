/* comm_nccl.c: the communicator over NCCL (comm.h), on a GPU backend's
 * memory.  libnccl.so.2 is opened at run time and its entry points are
 * declared by their documented C signatures (nccl_abi.h), so weft builds
 * without NCCL.
 *
 * One NCCL communicator per communicator of comm_splits that this rank is
 * in, made as the MPI one was split: the first member's ncclGetUniqueId,
 * broadcast over the MPI communicator, then ncclCommInitRankConfig with
 * the member's place.  Every communicator is non-blocking (blocking = 0),
 * so no call waits: each operation is enqueued on the backend's stream and
 * polled, ncclCommGetAsyncError then the stream, against the deadline
 * (comm->timeout).  Past it, the communicator is aborted (ncclCommAbort
 * stops its kernels) and the failure names the group, its members and who
 * stopped answering, as the MPI path does (comm_missed).
 *
 * Host buffers (the executor's loss sums, the tools' world sums) go to the
 * layer below, MPI staged through the host, as do the world's collectives
 * and the barrier. */
#include "backend.h"
#include "comm_impl.h"
#include "nccl_abi.h"
#include "util.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct {
    bool tried;
    void *lib;
    int version;
    char why[512];
    nc_result (*get_version)(int *);
    nc_result (*get_unique_id)(nc_unique_id *);
    nc_result (*init_rank_config)(nc_comm *, int, nc_unique_id, int, nc_config *);
    nc_result (*get_async_error)(nc_comm, nc_result *);
    nc_result (*abort)(nc_comm);
    nc_result (*finalize)(nc_comm);
    nc_result (*destroy)(nc_comm);
    const char *(*error_string)(nc_result);
    const char *(*last_error)(nc_comm); /* NCCL 2.13 on; NULL before */
    nc_result (*all_reduce)(const void *, void *, size_t, int, int, nc_comm, void *);
    nc_result (*all_gather)(const void *, void *, size_t, int, nc_comm, void *);
    nc_result (*reduce_scatter)(const void *, void *, size_t, int, int, nc_comm, void *);
    nc_result (*send)(const void *, size_t, int, int, nc_comm, void *);
    nc_result (*recv)(void *, size_t, int, int, nc_comm, void *);
    nc_result (*group_start)(void);
    nc_result (*group_end)(void);
} nc;

static bool load(void)
{
    if (nc.tried)
        return nc.lib != NULL;
    nc.tried = true;
    const char *name = getenv("WEFT_NCCL_LIB");
    name = name && *name ? name : "libnccl.so.2";
    nc.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!nc.lib) {
        snprintf(nc.why, sizeof nc.why, "no NCCL: %s not found (%s)", name, dlerror());
        return false;
    }
    static const struct wf_dlsym syms[] = {
        WF_DLSYM(nc, get_version, "ncclGetVersion"), WF_DLSYM(nc, get_unique_id, "ncclGetUniqueId"),
        WF_DLSYM(nc, init_rank_config, "ncclCommInitRankConfig"), WF_DLSYM(nc, get_async_error, "ncclCommGetAsyncError"),
        WF_DLSYM(nc, abort, "ncclCommAbort"), WF_DLSYM(nc, finalize, "ncclCommFinalize"),
        WF_DLSYM(nc, destroy, "ncclCommDestroy"), WF_DLSYM(nc, error_string, "ncclGetErrorString"),
        WF_DLSYM(nc, all_reduce, "ncclAllReduce"), WF_DLSYM(nc, all_gather, "ncclAllGather"),
        WF_DLSYM(nc, reduce_scatter, "ncclReduceScatter"), WF_DLSYM(nc, send, "ncclSend"), WF_DLSYM(nc, recv, "ncclRecv"),
        WF_DLSYM(nc, group_start, "ncclGroupStart"), WF_DLSYM(nc, group_end, "ncclGroupEnd")};
    wf_dlsyms(nc.lib, syms, WF_COUNT(syms), name, ": NCCL 2.14 or later is needed", nc.why, sizeof nc.why);
    *(void **)&nc.last_error = dlsym(nc.lib, "ncclGetLastError");
    if (!nc.why[0] && (nc.get_version(&nc.version) || nc.version < NC_VERSION_MIN))
        snprintf(nc.why, sizeof nc.why, "%s is NCCL %d.%d.%d: NCCL 2.14 or later is needed (non-blocking communicators)", name,
                 nc.version / 10000, nc.version / 100 % 100, nc.version % 100);
    if (nc.why[0]) {
        dlclose(nc.lib);
        nc.lib = NULL;
        return false;
    }
    return true;
}

bool comm_nccl_available(char *why, size_t n)
{
    bool ok = load();
    if (!ok && why && n)
        snprintf(why, n, "%s", nc.why);
    return ok;
}

struct nccl {
    struct backend *be;
    void *stream;
    int n_splits;
    nc_comm *comms;  /* per split: this rank's communicator (NULL where it is in none, or once aborted) */
    int *split_size; /* its members */
    int *pipe_index; /* per world rank: its place in this rank's pipeline transfers' communicator, -1 outside it */
};

/* "unhandled cuda error (run with NCCL_DEBUG=INFO for details): cudaMalloc failed" */
static const char *nccl_error(nc_result r, nc_comm comm, char *buf, size_t n)
{
    const char *last = comm && nc.last_error ? nc.last_error(comm) : NULL;
    snprintf(buf, n, "%s%s%s", nc.error_string(r), last && *last ? ": " : "", last && *last ? last : "");
    return buf;
}

static void abort_comm(struct nccl *x, int split)
{
    if (x->comms[split])
        nc.abort(x->comms[split]);
    x->comms[split] = NULL;
}

/* Until the work enqueued on split's communicator is done: NCCL has put it
 * on the stream (its state no longer ncclInProgress) and, with `stream`,
 * the stream has run it (with a mark, the second stream up to it).  NCCL's
 * error, or the deadline passed: the communicator aborted, and the failure
 * said.  c: the communicator whose rank and groups the messages name. */
static int nccl_wait(struct comm *c, struct nccl *x, int split, bool stream, struct backend_mark *mark, const char *what, int n_msgs,
                     const struct comm_msg *msgs, struct diag *d)
{
    double end = wf_seconds() + c->timeout;
    for (;;) {
        nc_result state = NC_SUCCESS, r = nc.get_async_error(x->comms[split], &state);
        if (r != NC_SUCCESS || (state != NC_SUCCESS && state != NC_IN_PROGRESS)) {
            char why[512], name[64];
            nccl_error(r != NC_SUCCESS ? r : state, x->comms[split], why, sizeof why);
            diag_error(d, NULL, 0, "rank %d (%s): %s over %s: NCCL failed: %s", c->rank, c->host, what,
                       comm_split_name(split, name, sizeof name), why);
            abort_comm(x, split);
            return -1;
        }
        if (state == NC_SUCCESS) {
            int done = mark ? backend_side_done(x->be, mark, d) : stream ? backend_poll(x->be, d) : 1;
            if (done)
                return done < 0 ? -1 : 0;
        }
        if (wf_seconds() > end) {
            abort_comm(x, split); /* its kernels stop; nothing else will wait on it */
            if (msgs)
                comm_missed_transfer(c, what, n_msgs, msgs, NULL, d);
            else
                comm_missed(c, what, split, d);
            return -1;
        }
        struct timespec nap = {0, 20000};
        nanosleep(&nap, NULL);
    }
}

/* A call that enqueues: ncclSuccess or ncclInProgress (a non-blocking communicator) go on to the wait. */
static int enqueued(struct comm *c, struct nccl *x, int split, nc_result r, const char *what, struct diag *d)
{
    if (r == NC_SUCCESS || r == NC_IN_PROGRESS)
        return 0;
    char why[512], name[64];
    diag_error(d, NULL, 0, "rank %d (%s): %s over %s: NCCL failed: %s", c->rank, c->host, what, comm_split_name(split, name, sizeof name),
               nccl_error(r, x->comms[split], why, sizeof why));
    abort_comm(x, split);
    return -1;
}

static int nc_dtype(int dtype)
{
    return dtype == IR_DTYPE_I32 ? NC_INT32 : dtype == IR_DTYPE_F32 ? NC_FLOAT32 : dtype == IR_DTYPE_BF16 ? NC_BFLOAT16 : -1;
}

/* Whether this layer runs the collective (device buffers, one of the plan's communicators): its split, else -1 (the
 * world's sums, or host buffers: the layer below's). */
static int own_split(struct comm *c, enum ir_group g, int set, const void *send, const void *recv)
{
    struct nccl *x = c->impl;
    int split = g < IR_GROUP_COUNT ? comm_split_index(c->splits, g, set) : -1;
    return split >= 0 && backend_holds(x->be, send) && backend_holds(x->be, recv) ? split : -1;
}

/* The collective put on stream over split's communicator (not waited for). */
static int enqueue(struct comm *c, int split, enum ir_group g, enum ir_coll op, const void *send, void *recv, int64_t count, int dtype,
                   void *stream, struct diag *d)
{
    struct nccl *x = c->impl;
    nc_comm comm = x->comms[split];
    int size = x->split_size[split], t = nc_dtype(dtype);
    if (!comm) {
        diag_error(d, NULL, 0, "rank %d: no %s communicator%s: the plan and the layout disagree", c->rank, ir_group_name(g),
                   g == IR_GROUP_TIED ? " for this tied set" : "");
        return -1;
    }
    if (t < 0 || op >= IR_COLL_COUNT || count < 0 || ((op == IR_COLL_REDUCE_SCATTER || op == IR_COLL_ALL_TO_ALL) && count % size)) {
        diag_error(d, NULL, 0, "rank %d: %s of %lld %s elements over %d ranks: not supported over NCCL", c->rank, ir_coll_name(op),
                   (long long)count, ir_dtype_name((enum ir_dtype)dtype), size);
        return -1;
    }
    size_t n = (size_t)count, piece = n / (size_t)size, el = (size_t)ir_dtype_bytes((enum ir_dtype)dtype);
    nc_result r;
    switch (op) {
    case IR_COLL_ALL_REDUCE: r = nc.all_reduce(send, recv, n, t, NC_SUM, comm, stream); break;
    case IR_COLL_ALL_REDUCE_MAX: r = nc.all_reduce(send, recv, n, t, NC_MAX, comm, stream); break;
    case IR_COLL_ALL_GATHER: r = nc.all_gather(send, recv, n, t, comm, stream); break;
    case IR_COLL_REDUCE_SCATTER: r = nc.reduce_scatter(send, recv, piece, t, NC_SUM, comm, stream); break;
    default: /* all-to-all: each piece a send and a receive, in one group (ncclAlltoAll is 2.28's alone) */
        r = nc.group_start();
        for (int i = 0; i < size && (r == NC_SUCCESS || r == NC_IN_PROGRESS); i++) {
            r = nc.send((const char *)send + (size_t)i * piece * el, piece, t, i, comm, stream);
            if (r == NC_SUCCESS || r == NC_IN_PROGRESS)
                r = nc.recv((char *)recv + (size_t)i * piece * el, piece, t, i, comm, stream);
        }
        nc_result end = nc.group_end();
        r = r == NC_SUCCESS || r == NC_IN_PROGRESS ? end : r;
    }
    return enqueued(c, x, split, r, ir_coll_name(op), d);
}

static int nccl_collective(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count,
                           int dtype, struct diag *d)
{
    struct nccl *x = c->impl;
    int split = own_split(c, g, set, send, recv);
    if (split < 0)
        return c->inner->ops->collective(c->inner, g, set, op, send, recv, count, dtype, d);
    if (enqueue(c, split, g, op, send, recv, count, dtype, x->stream, d))
        return -1;
    return nccl_wait(c, x, split, true, NULL, ir_coll_name(op), 0, NULL, d);
}

/* What nccl_start left running: the second stream's mark after it. */
struct nccl_pending {
    int split;
    enum ir_coll op;
    struct backend_mark *mark;
};

/* On the backend's second stream, after everything launched so far: the
 * launches after it run beside it until nccl_finish. */
static int nccl_start(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count, int dtype,
                      struct comm_pending *p, struct diag *d)
{
    struct nccl *x = c->impl;
    int split = own_split(c, g, set, send, recv);
    if (split < 0)
        return comm_start(c->inner, g, set, op, send, recv, count, dtype, p, d);
    void *side = NULL;
    struct nccl_pending *q = wf_calloc(1, sizeof *q);
    q->split = split, q->op = op;
    if (backend_side_begin(x->be, &side, d) || enqueue(c, split, g, op, send, recv, count, dtype, side, d) ||
        backend_side_end(x->be, &q->mark, d)) {
        free(q);
        return -1;
    }
    p->layer = c, p->handle = q;
    return 0;
}

static int nccl_finish(struct comm *c, struct comm_pending *p, struct diag *d)
{
    struct nccl *x = c->impl;
    struct nccl_pending *q = p->handle;
    int rc = nccl_wait(c, x, q->split, true, q->mark, ir_coll_name(q->op), 0, NULL, d);
    backend_mark_free(x->be, q->mark);
    free(q);
    return rc;
}

/* Pipeline transfers between two ranks pair in the order they are posted
 * (NCCL has no tags): both ends post theirs by (peer, tag). */
static int msg_order(const void *a, const void *b)
{
    const struct comm_msg *x = a, *y = b;
    return x->peer != y->peer ? (x->peer > y->peer) - (x->peer < y->peer) : (x->tag > y->tag) - (x->tag < y->tag);
}

static int nccl_exchange(struct comm *c, int n, const struct comm_msg *msgs, struct diag *d)
{
    struct nccl *x = c->impl;
    bool device = n > 0;
    for (int i = 0; i < n; i++)
        device &= backend_holds(x->be, msgs[i].buf);
    if (!device)
        return c->inner->ops->exchange(c->inner, n, msgs, d);
    nc_comm comm = x->comms[COMM_SPLIT_PIPE];
    for (int i = 0; i < n; i++)
        if (!comm || msgs[i].peer < 0 || msgs[i].peer >= c->size || x->pipe_index[msgs[i].peer] < 0) {
            diag_error(d, NULL, 0, "rank %d: a pipeline transfer %s rank %d, outside this rank's pipelines: the plan and the layout disagree",
                       c->rank, msgs[i].send ? "to" : "from", msgs[i].peer);
            return -1;
        }
    struct comm_msg *v = wf_calloc((size_t)n, sizeof *v);
    memcpy(v, msgs, (size_t)n * sizeof *v);
    qsort(v, (size_t)n, sizeof *v, msg_order);
    nc_result r = nc.group_start();
    for (int i = 0; i < n && (r == NC_SUCCESS || r == NC_IN_PROGRESS); i++)
        r = v[i].send ? nc.send(v[i].buf, (size_t)v[i].bytes, NC_INT8, x->pipe_index[v[i].peer], comm, x->stream)
                      : nc.recv(v[i].buf, (size_t)v[i].bytes, NC_INT8, x->pipe_index[v[i].peer], comm, x->stream);
    nc_result end = nc.group_end();
    r = r == NC_SUCCESS || r == NC_IN_PROGRESS ? end : r;
    int rc = enqueued(c, x, COMM_SPLIT_PIPE, r, "a pipeline transfer", d) ||
             nccl_wait(c, x, COMM_SPLIT_PIPE, true, NULL, "a pipeline transfer", n, v, d);
    free(v);
    return rc ? -1 : 0;
}

static int nccl_barrier(struct comm *c, struct diag *d) { return c->inner->ops->barrier(c->inner, d); }

/* Every communicator finalised (its work flushed, with its members), then
 * freed; one that fails or outlasts the deadline (a member gone) aborted. */
static void nccl_free(struct nccl *x, double timeout)
{
    for (int s = 0; s < x->n_splits; s++) {
        nc_result r = x->comms[s] ? nc.finalize(x->comms[s]) : NC_SUCCESS;
        if (r != NC_SUCCESS && r != NC_IN_PROGRESS)
            abort_comm(x, s);
    }
    double end = wf_seconds() + timeout;
    for (int s = 0; s < x->n_splits; s++) {
        nc_result state = NC_IN_PROGRESS;
        while (x->comms[s] && !nc.get_async_error(x->comms[s], &state) && state == NC_IN_PROGRESS && wf_seconds() < end) {
            struct timespec nap = {0, 100000};
            nanosleep(&nap, NULL);
        }
        if (x->comms[s] && state == NC_SUCCESS)
            nc.destroy(x->comms[s]);
        else
            abort_comm(x, s);
    }
    free(x->comms);
    free(x->split_size);
    free(x->pipe_index);
    free(x);
}

static void nccl_close(struct comm *c) { nccl_free(c->impl, c->timeout); }

static const struct comm_ops nccl_ops = {.name = "nccl", .collective = nccl_collective, .exchange = nccl_exchange, .barrier = nccl_barrier,
                                         .close = nccl_close, .start = nccl_start, .finish = nccl_finish};

/* What the first member broadcasts: its unique id, or that it has none. */
struct nccl_hello {
    nc_unique_id id;
    int32_t ok;
};

int comm_nccl_push(struct comm *c, struct backend *be, struct diag *d)
{
    struct backend_gpu gpu;
    if (!load()) {
        diag_error(d, NULL, 0, "%s", nc.why);
        return -1;
    }
    if (backend_gpu(be, &gpu, d) != 1) {
        if (!d->n_errors)
            diag_error(d, NULL, 0, "NCCL carries GPU memory, and this run's buffers are on the CPU");
        return -1;
    }
    struct nccl *x = wf_calloc(1, sizeof *x);
    x->be = be, x->stream = gpu.stream, x->n_splits = c->splits->n_splits;
    x->comms = wf_calloc((size_t)x->n_splits, sizeof *x->comms);
    x->split_size = wf_calloc((size_t)x->n_splits, sizeof *x->split_size);
    x->pipe_index = wf_calloc((size_t)c->size, sizeof *x->pipe_index);
    for (int r = 0; r < c->size; r++)
        x->pipe_index[r] = -1;
    int *members = wf_calloc((size_t)c->size + 1, sizeof *members), rc = 0;
    /* every rank goes through the splits in one order, as MPI split them: a communicator's members meet at its
     * broadcast and its initialisation, having finished the ones before */
    for (int s = 0; s < x->n_splits && !rc; s++) {
        int k = s == IR_GROUP_TIED ? 0 : comm_split_members(c->splits, c->rank, s, members), me = 0;
        if (!k)
            continue;
        while (members[me] != c->rank)
            me++;
        x->split_size[s] = k;
        for (int i = 0; s == COMM_SPLIT_PIPE && i < k; i++)
            x->pipe_index[members[i]] = i;
        char name[64], what[96];
        comm_split_name(s, name, sizeof name);
        struct nccl_hello hello = {.ok = 1};
        nc_result r = me == 0 ? nc.get_unique_id(&hello.id) : NC_SUCCESS;
        if (r) {
            char why[512];
            diag_error(d, NULL, 0, "rank %d (%s): ncclGetUniqueId for %s failed: %s", c->rank, c->host, name, nccl_error(r, NULL, why, sizeof why));
            hello.ok = 0; /* the others hear so, and stop too */
        }
        if (comm_mpi_bcast(c, s, &hello, (int)sizeof hello, d) || !hello.ok) {
            if (!d->n_errors)
                diag_error(d, NULL, 0, "rank %d (%s): %s: its first member, rank %d, could not make NCCL's id", c->rank, c->host, name, members[0]);
            rc = -1;
            break;
        }
        nc_config cfg = NC_CONFIG_INITIALIZER;
        cfg.blocking = 0;
        snprintf(what, sizeof what, "weft %s", name);
        cfg.commName = what;
        r = nc.init_rank_config(&x->comms[s], k, hello.id, me, &cfg);
        rc = enqueued(c, x, s, r, "ncclCommInitRankConfig", d) || nccl_wait(c, x, s, false, NULL, "ncclCommInitRankConfig", 0, NULL, d);
    }
    free(members);
    if (rc) {
        nccl_free(x, 0); /* what was made, aborted */
        return -1;
    }
    comm_push(c, &nccl_ops, x);
    return 0;
}
