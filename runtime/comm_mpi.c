/* comm_mpi.c: the communicator over MPI (comm.h), on host memory.
 * Collectives are non-blocking and polled against the deadline; a deadline
 * passed is diagnosed here for every layer (comm_missed,
 * comm_missed_transfer), with a roll call over MPI naming who stopped. */
#include "comm_impl.h"
#include "util.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mpi {
    MPI_Comm *splits;              /* per split of comm_splits (MPI_COMM_NULL where this rank is in none) */
    MPI_Comm *roll;                /* the same communicators, for the roll call after a deadline */
    int n_splits;
    struct comm_splits table;      /* the plan's communicators (comm->splits) */
    MPI_Comm p2p;                  /* the world, for pipeline transfers and the world's sums */
    MPI_Op bf16_sum, bf16_max;
    bool initialised_here;
};


/* The name of a split in messages: "dp_cp", "tied", "pipeline", or "the world" (split -1). */
static const char *split_str(int split)
{
    return split < 0 ? "the world" : split < IR_GROUP_COUNT ? ir_group_name((enum ir_group)split) : split == COMM_SPLIT_PIPE ? "pipeline" : "tied";
}

/* The split of a collective over g (tied set `set`), -1 for the world. */
static int split_of(const struct comm *c, enum ir_group g, int set)
{
    return c->splits && g < IR_GROUP_COUNT ? comm_split_index(c->splits, g, set) : -1;
}

/* After a deadline: who else is waiting?  Each waiting member tells the
 * others so (on a communicator of its own), then listens for a grace
 * period; a member not heard from is the one that stopped answering.
 * Names them into buf ("rank 5" or "ranks 5, 7"), or "" if all answered. */
static const char *roll_call(struct comm *c, int split, char *buf, size_t n)
{
    struct mpi *m = c->impl;
    buf[0] = 0;
    MPI_Comm roll = split >= 0 && split < m->n_splits ? m->roll[split] : MPI_COMM_NULL;
    if (roll == MPI_COMM_NULL)
        return buf;
    int size, me;
    MPI_Comm_size(roll, &size);
    MPI_Comm_rank(roll, &me);
    int *heard = wf_calloc((size_t)size, sizeof *heard), *world = wf_calloc((size_t)size, sizeof *world), mark = 1;
    MPI_Request *sends = wf_calloc((size_t)size, sizeof *sends);
    MPI_Group grp, wgrp;
    MPI_Comm_group(roll, &grp);
    MPI_Comm_group(MPI_COMM_WORLD, &wgrp);
    int *idx = wf_calloc((size_t)size, sizeof *idx);
    for (int i = 0; i < size; i++)
        idx[i] = i;
    MPI_Group_translate_ranks(grp, size, idx, wgrp, world);
    for (int i = 0; i < size; i++)
        if (i != me)
            MPI_Isend(&mark, 1, MPI_INT, i, 77, roll, &sends[i]);
        else
            sends[i] = MPI_REQUEST_NULL;
    heard[me] = 1;
    double end = wf_seconds() + (c->timeout < 5 ? c->timeout : 5);
    while (wf_seconds() < end) {
        int flag = 0;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, 77, roll, &flag, &st);
        if (flag) {
            int got;
            MPI_Recv(&got, 1, MPI_INT, st.MPI_SOURCE, 77, roll, MPI_STATUS_IGNORE);
            heard[st.MPI_SOURCE] = 1;
        } else {
            struct timespec nap = {0, 1000000};
            nanosleep(&nap, NULL);
        }
    }
    size_t at = 0;
    int silent = 0;
    for (int i = 0; i < size; i++)
        silent += !heard[i];
    for (int i = 0; i < size && at + 16 < n; i++)
        if (!heard[i])
            at += (size_t)snprintf(buf + at, n - at, "%s%d", at ? ", " : silent == 1 ? "rank " : "ranks ", world[i]);
    /* the sends to the silent may never complete: leave them */
    MPI_Group_free(&grp);
    MPI_Group_free(&wgrp);
    free(heard), free(world), free(sends), free(idx);
    return buf;
}

void comm_missed(struct comm *c, const char *what, int split, struct diag *d)
{
    char who[512], silent[512], in[600] = "";
    roll_call(comm_mpi_of(c), split, silent, sizeof silent);
    if (comm_members_str(c, split, who, sizeof who)[0])
        snprintf(in, sizeof in, " (ranks %s)", who);
    diag_error(d, NULL, 0, "rank %d (%s): %s over %s%s: nobody answered in %.0f s (--timeout): %s%s", c->rank, c->host, what,
               split_str(split), in, c->timeout, silent[0] ? silent : "a rank", silent[0] ? " stopped answering" : " of the group stopped");
}

void comm_missed_transfer(struct comm *c, const char *what, int n, const struct comm_msg *msgs, const bool *pending, struct diag *d)
{
    char who[512] = "";
    size_t at = 0;
    for (int i = 0; i < n && at + 16 < sizeof who; i++)
        if (!pending || pending[i])
            at += (size_t)snprintf(who + at, sizeof who - at, "%s%s rank %d", at ? ", " : "", msgs[i].send ? "to" : "from", msgs[i].peer);
    diag_error(d, NULL, 0, "rank %d (%s): %s: nothing moved in %.0f s (--timeout): %s", c->rank, c->host, what, c->timeout, who);
}

/* Every request done before the deadline; else the diagnosis, naming the
 * group's silent ranks (a collective) or the peers still awaited (msgs). */
static int wait_all(struct comm *c, int n, MPI_Request *req, const char *what, int split, const struct comm_msg *msgs, struct diag *d)
{
    double end = wf_seconds() + c->timeout;
    int done = 0;
    while (!done) {
        if (MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS) {
            diag_error(d, NULL, 0, "rank %d (%s): %s over %s: MPI_Test failed", c->rank, c->host, what, split_str(split));
            return -1;
        }
        if (!done && wf_seconds() > end && msgs) { /* a pipeline transfer: name the peers not heard from */
            bool *pending = wf_calloc((size_t)n + 1, sizeof *pending);
            for (int i = 0; i < n; i++) {
                int one = 0;
                MPI_Test(&req[i], &one, MPI_STATUS_IGNORE);
                pending[i] = !one;
            }
            comm_missed_transfer(c, what, n, msgs, pending, d);
            free(pending);
            return -1;
        }
        if (!done && wf_seconds() > end) {
            comm_missed(c, what, split, d);
            return -1;
        }
        if (!done) {
            struct timespec nap = {0, 20000};
            nanosleep(&nap, NULL);
        }
    }
    return 0;
}

static int wait_for(struct comm *c, MPI_Request *req, const char *what, int split, struct diag *d)
{
    return wait_all(c, 1, req, what, split, NULL, d);
}

/* bf16 sums and maxima, as MPI has no bf16: each element widened to fp32,
 * combined, rounded back to nearest even. */
static void bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type)
{
    (void)type;
    uint16_t *a = in, *b = inout;
    for (int i = 0; i < *len; i++)
        b[i] = wf_bf16(wf_bf16_float(a[i]) + wf_bf16_float(b[i]));
}

static void bf16_max(void *in, void *inout, int *len, MPI_Datatype *type)
{
    (void)type;
    uint16_t *a = in, *b = inout;
    for (int i = 0; i < *len; i++)
        b[i] = wf_bf16_float(a[i]) > wf_bf16_float(b[i]) ? a[i] : b[i];
}

/* What mpi_start left running: its request, and what a missed deadline names. */
struct mpi_pending {
    MPI_Request req;
    enum ir_coll op;
    int split;
};

/* The collective posted (MPI's non-blocking one) into *req, its split into *split. */
static int post(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count, int dtype,
                MPI_Request *req, int *split_out, struct diag *d)
{
    struct mpi *m = c->impl;
    int split = split_of(c, g, set);
    MPI_Comm comm = g >= IR_GROUP_COUNT ? m->p2p : split >= 0 ? m->splits[split] : MPI_COMM_NULL;
    if (comm == MPI_COMM_NULL) {
        diag_error(d, NULL, 0, "rank %d: no %s communicator%s: the plan and the layout disagree", c->rank, ir_group_name(g),
                   g == IR_GROUP_TIED ? " for this tied set" : "");
        return -1;
    }
    int size;
    MPI_Comm_size(comm, &size);
    MPI_Datatype t = dtype == IR_DTYPE_I32 ? MPI_INT : dtype == IR_DTYPE_F32 ? MPI_FLOAT : dtype == IR_DTYPE_BF16 ? MPI_UINT16_T
                                                                                                       : MPI_DATATYPE_NULL;
    bool sums = op == IR_COLL_ALL_REDUCE || op == IR_COLL_REDUCE_SCATTER;
    if (t == MPI_DATATYPE_NULL || op >= IR_COLL_COUNT || count > 0x7fffffff || (int64_t)count * size > 0x7fffffff ||
        ((op == IR_COLL_REDUCE_SCATTER || op == IR_COLL_ALL_TO_ALL) && count % size)) {
        diag_error(d, NULL, 0, "rank %d: %s of %lld %s elements over %d ranks: not supported over MPI", c->rank, ir_coll_name(op),
                   (long long)count, ir_dtype_name((enum ir_dtype)dtype), size);
        return -1;
    }
    MPI_Op how = dtype == IR_DTYPE_BF16 ? (sums ? m->bf16_sum : m->bf16_max) : sums ? MPI_SUM : MPI_MAX;
    int rc, n = (int)count;
    const void *in = send == recv ? MPI_IN_PLACE : send;
    switch (op) {
    case IR_COLL_ALL_REDUCE:
    case IR_COLL_ALL_REDUCE_MAX: rc = MPI_Iallreduce(in, recv, n, t, how, comm, req); break;
    case IR_COLL_ALL_GATHER: rc = MPI_Iallgather(send, n, t, recv, n, t, comm, req); break;
    case IR_COLL_REDUCE_SCATTER: rc = MPI_Ireduce_scatter_block(send, recv, n / size, t, how, comm, req); break;
    case IR_COLL_ALL_TO_ALL: rc = MPI_Ialltoall(send, n / size, t, recv, n / size, t, comm, req); break;
    default: rc = MPI_ERR_OP;
    }
    if (rc != MPI_SUCCESS) {
        diag_error(d, NULL, 0, "rank %d: MPI %s over %s failed", c->rank, ir_coll_name(op), split_str(split));
        return -1;
    }
    *split_out = split;
    return 0;
}

static int mpi_collective(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv,
                          int64_t count, int dtype, struct diag *d)
{
    MPI_Request req;
    int split;
    return post(c, g, set, op, send, recv, count, dtype, &req, &split, d) ? -1 : wait_for(c, &req, ir_coll_name(op), split, d);
}

static int mpi_start(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count,
                     int dtype, struct comm_pending *p, struct diag *d)
{
    struct mpi_pending *q = wf_calloc(1, sizeof *q);
    q->op = op;
    if (post(c, g, set, op, send, recv, count, dtype, &q->req, &q->split, d)) {
        free(q);
        return -1;
    }
    p->layer = c, p->handle = q;
    return 0;
}

static int mpi_finish(struct comm *c, struct comm_pending *p, struct diag *d)
{
    struct mpi_pending *q = p->handle;
    int rc = wait_for(c, &q->req, ir_coll_name(q->op), q->split, d);
    free(q);
    return rc;
}

static int mpi_barrier(struct comm *c, struct diag *d)
{
    MPI_Request req;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS) {
        diag_error(d, NULL, 0, "rank %d: MPI_Ibarrier failed", c->rank);
        return -1;
    }
    return wait_for(c, &req, "barrier", -1, d);
}

static int mpi_exchange(struct comm *c, int n, const struct comm_msg *msgs, struct diag *d)
{
    struct mpi *m = c->impl;
    MPI_Request *req = wf_calloc((size_t)n + 1, sizeof *req);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (msgs[i].bytes > 0x7fffffff) {
            diag_error(d, NULL, 0, "rank %d: a pipeline transfer of %lld bytes: more than MPI counts in one message", c->rank,
                       (long long)msgs[i].bytes);
            rc = -1;
        } else if ((msgs[i].send ? MPI_Isend(msgs[i].buf, (int)msgs[i].bytes, MPI_BYTE, msgs[i].peer, msgs[i].tag, m->p2p, &req[i])
                                 : MPI_Irecv(msgs[i].buf, (int)msgs[i].bytes, MPI_BYTE, msgs[i].peer, msgs[i].tag, m->p2p, &req[i])) !=
                   MPI_SUCCESS) {
            diag_error(d, NULL, 0, "rank %d: posting a pipeline transfer %s rank %d failed", c->rank, msgs[i].send ? "to" : "from",
                       msgs[i].peer);
            rc = -1;
        }
    }
    if (!rc)
        rc = wait_all(c, n, req, "a pipeline transfer", -1, msgs, d);
    free(req);
    return rc;
}

int comm_mpi_bcast(struct comm *c, int split, void *buf, int bytes, struct diag *d)
{
    c = comm_mpi_of(c);
    struct mpi *m = c->impl;
    MPI_Request req;
    if (split < 0 || split >= m->n_splits || m->splits[split] == MPI_COMM_NULL ||
        MPI_Ibcast(buf, bytes, MPI_BYTE, 0, m->splits[split], &req) != MPI_SUCCESS) {
        char name[64];
        diag_error(d, NULL, 0, "rank %d: a broadcast over %s failed", c->rank, comm_split_name(split, name, sizeof name));
        return -1;
    }
    return wait_for(c, &req, "a broadcast", split, d);
}

static void mpi_close(struct comm *c)
{
    struct mpi *m = c->impl;
    for (int s = 0; s < m->n_splits; s++) {
        if (m->splits[s] != MPI_COMM_NULL)
            MPI_Comm_free(&m->splits[s]);
        if (m->roll[s] != MPI_COMM_NULL)
            MPI_Comm_free(&m->roll[s]);
    }
    free(m->splits);
    free(m->roll);
    comm_splits_free(&m->table);
    if (m->p2p != MPI_COMM_NULL)
        MPI_Comm_free(&m->p2p);
    MPI_Op_free(&m->bf16_sum);
    MPI_Op_free(&m->bf16_max);
    if (m->initialised_here)
        MPI_Finalize();
    free(m);
}

static const struct comm_ops mpi_ops = {.name = "mpi", .collective = mpi_collective, .exchange = mpi_exchange, .barrier = mpi_barrier,
                                        .close = mpi_close, .start = mpi_start, .finish = mpi_finish};

struct comm *comm_mpi_open(int *argc, char ***argv, double timeout, struct diag *d)
{
    struct comm *c = wf_calloc(1, sizeof *c);
    struct mpi *m = wf_calloc(1, sizeof *m);
    c->ops = &mpi_ops, c->impl = m, c->timeout = timeout;
    int init = 0;
    MPI_Initialized(&init);
    if (!init) {
        if (MPI_Init(argc, argv) != MPI_SUCCESS) {
            diag_error(d, NULL, 0, "MPI_Init failed");
            free(m), free(c);
            return NULL;
        }
        m->initialised_here = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    int len = 0;
    char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Get_processor_name(host, &len);
    snprintf(c->host, sizeof c->host, "%s", host);
    m->p2p = MPI_COMM_NULL;
    MPI_Op_create(bf16_sum, 1, &m->bf16_sum);
    MPI_Op_create(bf16_max, 1, &m->bf16_max);
    if (MPI_Comm_dup(MPI_COMM_WORLD, &m->p2p) != MPI_SUCCESS) {
        diag_error(d, NULL, 0, "rank %d: MPI_Comm_dup failed", c->rank);
        comm_close(c);
        return NULL;
    }
    return c;
}

int comm_groups(struct comm *c, const struct rank_layout *L, const struct ir_schedule *S, struct diag *d)
{
    struct mpi *m = c->impl;
    WF_ASSERT(!c->inner && !m->splits); /* once, on MPI itself */
    /* MPI_Comm_split has no deadline of its own: every rank answers a
     * barrier that has one first, so a rank missing at the start is named
     * before anyone blocks */
    if (mpi_barrier(c, d))
        return -1;
    comm_splits_make(&m->table, L, S);
    c->splits = &m->table;
    m->n_splits = m->table.n_splits;
    m->splits = wf_calloc((size_t)m->n_splits, sizeof *m->splits);
    m->roll = wf_calloc((size_t)m->n_splits, sizeof *m->roll);
    for (int s = 0; s < m->n_splits; s++)
        m->splits[s] = m->roll[s] = MPI_COMM_NULL;
    for (int s = 0; s < m->n_splits; s++) {
        const struct comm_split *sp = comm_split_of(&m->table, c->rank, s);
        if (s == IR_GROUP_TIED)
            continue; /* the tied sets have splits of their own */
        if (MPI_Comm_split(MPI_COMM_WORLD, sp->color < 0 ? MPI_UNDEFINED : sp->color, sp->key, &m->splits[s]) != MPI_SUCCESS ||
            (m->splits[s] != MPI_COMM_NULL && MPI_Comm_dup(m->splits[s], &m->roll[s]) != MPI_SUCCESS)) {
            char name[64];
            diag_error(d, NULL, 0, "rank %d: MPI_Comm_split for %s failed", c->rank, comm_split_name(s, name, sizeof name));
            return -1;
        }
    }
    return 0;
}

void comm_abort(struct comm *c, int status)
{
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, status);
}
