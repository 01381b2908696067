/* comm_mpi.c: the communicator over MPI (comm.h).  Collectives are
 * non-blocking and polled against the deadline. */
#include "comm.h"
#include "util.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mpi {
    MPI_Comm groups[IR_GROUP_COUNT];
    MPI_Comm *tied;                /* per tied set (MPI_COMM_NULL where this rank holds none of it) */
    int n_tied;
    MPI_Comm p2p;                  /* the world, for pipeline transfers */
    MPI_Op bf16_sum, bf16_max;
    MPI_Comm roll[IR_GROUP_COUNT]; /* the same groups, for the roll call after a deadline */
    const struct rank_layout *L;
    bool initialised_here;
};


static const char *group_str(enum ir_group g) { return g < IR_GROUP_COUNT ? ir_group_name(g) : "the world"; }

/* Who is in rank's group of kind g, as "3, 7, 11", into buf. */
static const char *members(const struct comm *c, enum ir_group g, char *buf, size_t n)
{
    const struct mpi *m = c->impl;
    int k = ir_group_layout_kind(g), gi = k < 0 ? -1 : rank_layout_group_of(m->L, (enum par_group_kind)k, c->rank);
    size_t at = 0;
    buf[0] = 0;
    if (gi < 0)
        return buf;
    const struct rank_groups *rg = rank_layout_groups(m->L, (enum par_group_kind)k);
    for (int i = 0; i < rg->sizes[gi] && at + 16 < n; i++)
        at += (size_t)snprintf(buf + at, n - at, "%s%d", i ? ", " : "", rg->ranks[gi][i]);
    return buf;
}

/* After a deadline: who else is waiting?  Each waiting member tells the
 * others so (on a communicator of its own), then listens for a grace
 * period; a member not heard from is the one that stopped answering.
 * Names them into buf ("rank 5" or "ranks 5, 7"), or "" if all answered. */
static const char *roll_call(struct comm *c, enum ir_group g, char *buf, size_t n)
{
    struct mpi *m = c->impl;
    buf[0] = 0;
    if (g >= IR_GROUP_COUNT || m->roll[g] == MPI_COMM_NULL)
        return buf;
    int size, me;
    MPI_Comm_size(m->roll[g], &size);
    MPI_Comm_rank(m->roll[g], &me);
    int *heard = wf_calloc((size_t)size, sizeof *heard), *world = wf_calloc((size_t)size, sizeof *world), mark = 1;
    MPI_Request *sends = wf_calloc((size_t)size, sizeof *sends);
    MPI_Group grp, wgrp;
    MPI_Comm_group(m->roll[g], &grp);
    MPI_Comm_group(MPI_COMM_WORLD, &wgrp);
    int *idx = wf_calloc((size_t)size, sizeof *idx);
    for (int i = 0; i < size; i++)
        idx[i] = i;
    MPI_Group_translate_ranks(grp, size, idx, wgrp, world);
    for (int i = 0; i < size; i++)
        if (i != me)
            MPI_Isend(&mark, 1, MPI_INT, i, 77, m->roll[g], &sends[i]);
        else
            sends[i] = MPI_REQUEST_NULL;
    heard[me] = 1;
    double end = wf_seconds() + (c->timeout < 5 ? c->timeout : 5);
    while (wf_seconds() < end) {
        int flag = 0;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, 77, m->roll[g], &flag, &st);
        if (flag) {
            int got;
            MPI_Recv(&got, 1, MPI_INT, st.MPI_SOURCE, 77, m->roll[g], MPI_STATUS_IGNORE);
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

static int wait_all(struct comm *c, int n, MPI_Request *req, const char *what, enum ir_group g, const struct comm_msg *msgs,
                    struct diag *d);

static int wait_for(struct comm *c, MPI_Request *req, const char *what, enum ir_group g, struct diag *d)
{
    return wait_all(c, 1, req, what, g, NULL, d);
}

/* Every request done before the deadline; else the diagnosis, naming the
 * group's silent ranks (a collective) or the peers still awaited. */
static int wait_all(struct comm *c, int n, MPI_Request *req, const char *what, enum ir_group g, const struct comm_msg *msgs,
                    struct diag *d)
{
    double end = wf_seconds() + c->timeout;
    int done = 0;
    while (!done) {
        if (MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS) {
            diag_error(d, NULL, 0, "rank %d (%s): %s over %s: MPI_Test failed", c->rank, c->host, what, group_str(g));
            return -1;
        }
        if (!done && wf_seconds() > end && msgs) { /* a pipeline transfer: name the peers not heard from */
            char who[512] = "";
            size_t at = 0;
            for (int i = 0; i < n && at + 16 < sizeof who; i++) {
                int one = 0;
                MPI_Test(&req[i], &one, MPI_STATUS_IGNORE);
                if (!one)
                    at += (size_t)snprintf(who + at, sizeof who - at, "%s%s rank %d", at ? ", " : "", msgs[i].send ? "to" : "from", msgs[i].peer);
            }
            diag_error(d, NULL, 0, "rank %d (%s): %s: nothing moved in %.0f s (--timeout): %s", c->rank, c->host, what, c->timeout, who);
            return -1;
        }
        if (!done && wf_seconds() > end) {
            char who[512], silent[512];
            roll_call(c, g, silent, sizeof silent);
            char in[600] = "";
            if (members(c, g, who, sizeof who)[0])
                snprintf(in, sizeof in, " (ranks %s)", who);
            diag_error(d, NULL, 0, "rank %d (%s): %s over %s%s: nobody answered in %.0f s (--timeout): %s%s", c->rank, c->host, what,
                       group_str(g), in, c->timeout, silent[0] ? silent : "a rank", silent[0] ? " stopped answering" : " of the group stopped");
            return -1;
        }
        if (!done) {
            struct timespec nap = {0, 20000};
            nanosleep(&nap, NULL);
        }
    }
    return 0;
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

static int mpi_collective(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv,
                          int64_t count, int dtype, struct diag *d)
{
    struct mpi *m = c->impl;
    MPI_Comm comm = g == IR_GROUP_TIED ? (set >= 0 && set < m->n_tied ? m->tied[set] : MPI_COMM_NULL)
                  : g < IR_GROUP_COUNT ? m->groups[g] : m->p2p;
    if (comm == MPI_COMM_NULL) {
        diag_error(d, NULL, 0, "rank %d: no %s communicator%s: the plan and the layout disagree", c->rank, group_str(g),
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
    MPI_Request req;
    int rc, n = (int)count;
    const void *in = send == recv ? MPI_IN_PLACE : send;
    switch (op) {
    case IR_COLL_ALL_REDUCE:
    case IR_COLL_ALL_REDUCE_MAX: rc = MPI_Iallreduce(in, recv, n, t, how, comm, &req); break;
    case IR_COLL_ALL_GATHER: rc = MPI_Iallgather(send, n, t, recv, n, t, comm, &req); break;
    case IR_COLL_REDUCE_SCATTER: rc = MPI_Ireduce_scatter_block(send, recv, n / size, t, how, comm, &req); break;
    case IR_COLL_ALL_TO_ALL: rc = MPI_Ialltoall(send, n / size, t, recv, n / size, t, comm, &req); break;
    default: rc = MPI_ERR_OP;
    }
    if (rc != MPI_SUCCESS) {
        diag_error(d, NULL, 0, "rank %d: MPI %s over %s failed", c->rank, ir_coll_name(op), group_str(g));
        return -1;
    }
    return wait_for(c, &req, ir_coll_name(op), g, d);
}

static int mpi_barrier(struct comm *c, struct diag *d)
{
    MPI_Request req;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS) {
        diag_error(d, NULL, 0, "rank %d: MPI_Ibarrier failed", c->rank);
        return -1;
    }
    return wait_for(c, &req, "barrier", IR_GROUP_COUNT, d);
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
        rc = wait_all(c, n, req, "a pipeline transfer", IR_GROUP_COUNT, msgs, d);
    free(req);
    return rc;
}

static const struct comm_ops mpi_ops = {"mpi", mpi_collective, mpi_exchange, mpi_barrier};

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
    for (int g = 0; g < IR_GROUP_COUNT; g++)
        m->groups[g] = m->roll[g] = MPI_COMM_NULL;
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

int comm_agree(struct comm *c, int rc, int *rank0, struct diag *d)
{
    float v[2] = {(float)rc, c && c->rank ? 0.0f : (float)rc};
    if (c && c->size > 1 && c->ops->collective(c, IR_GROUP_COUNT, 0, IR_COLL_ALL_REDUCE_MAX, v, v, 2, IR_DTYPE_F32, d))
        v[0] = v[1] = 1;
    if (rank0)
        *rank0 = (int)v[1];
    return (int)v[0];
}

int comm_groups(struct comm *c, const struct rank_layout *L, const struct ir_schedule *S, struct diag *d)
{
    struct mpi *m = c->impl;
    m->L = L;
    /* MPI_Comm_split has no deadline of its own: every rank answers a
     * barrier that has one first, so a rank missing at the start is named
     * before anyone blocks */
    if (mpi_barrier(c, d))
        return -1;
    m->n_tied = S ? S->n_tied : 0;
    m->tied = wf_calloc((size_t)m->n_tied + 1, sizeof *m->tied);
    int *component = ir_pp_components(L);
    for (int t = 0; t < m->n_tied; t++) { /* the ranks of one pipeline (or of pipelines sharing an encoder rank: the
                                           * proof's component) at the set's stages */
        const struct rank_coords *rc = &L->ranks[c->rank];
        int color = rc->stage < S->n_stages && S->tied_stages[t][rc->stage] ? component[rank_layout_group_of(L, PAR_GROUP_PP, c->rank)] : -1;
        if (MPI_Comm_split(MPI_COMM_WORLD, color < 0 ? MPI_UNDEFINED : color, c->rank, &m->tied[t]) != MPI_SUCCESS) {
            diag_error(d, NULL, 0, "rank %d: MPI_Comm_split for tied set %d failed", c->rank, t);
            free(component);
            return -1;
        }
    }
    free(component);
    for (int g = 0; g < IR_GROUP_COUNT; g++) {
        int k = ir_group_layout_kind((enum ir_group)g);
        if (k < 0)
            continue;
        int color = rank_layout_group_of(L, (enum par_group_kind)k, c->rank), key = c->rank;
        const struct rank_groups *rg = rank_layout_groups(L, (enum par_group_kind)k);
        for (int i = 0; color >= 0 && i < rg->sizes[color]; i++) /* members in the layout's order: a gather's pieces */
            if (rg->ranks[color][i] == c->rank)
                key = i;
        if (MPI_Comm_split(MPI_COMM_WORLD, color < 0 ? MPI_UNDEFINED : color, key, &m->groups[g]) != MPI_SUCCESS ||
            (m->groups[g] != MPI_COMM_NULL && MPI_Comm_dup(m->groups[g], &m->roll[g]) != MPI_SUCCESS)) {
            diag_error(d, NULL, 0, "rank %d: MPI_Comm_split for the %s groups failed", c->rank, ir_group_name((enum ir_group)g));
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

void comm_close(struct comm *c)
{
    if (!c)
        return;
    struct mpi *m = c->impl;
    for (int g = 0; g < IR_GROUP_COUNT; g++) {
        if (m->groups[g] != MPI_COMM_NULL)
            MPI_Comm_free(&m->groups[g]);
        if (m->roll[g] != MPI_COMM_NULL)
            MPI_Comm_free(&m->roll[g]);
    }
    for (int t = 0; t < m->n_tied; t++)
        if (m->tied[t] != MPI_COMM_NULL)
            MPI_Comm_free(&m->tied[t]);
    free(m->tied);
    if (m->p2p != MPI_COMM_NULL)
        MPI_Comm_free(&m->p2p);
    MPI_Op_free(&m->bf16_sum);
    MPI_Op_free(&m->bf16_max);
    if (m->initialised_here)
        MPI_Finalize();
    free(m);
    free(c);
}
