/* comm_staged.c: device buffers over a host communicator (comm.h): a
 * buffer the backend holds is copied to host scratch (backend_get, which
 * waits for the launches before it), the layer below runs on the copy, and
 * what it received is copied back (backend_put).  Host buffers pass
 * through untouched, so a CPU backend's never move.  This is how several
 * ranks on one GPU run (NCCL takes one GPU a rank) and how MPI carries a
 * GPU run that asked for it. */
#include "backend.h"
#include "comm_impl.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

struct staged {
    struct backend *be;
    int *split_size;   /* members of this rank's communicator of each split */
    uint8_t *scratch;  /* host copies, grown to the largest call */
    size_t scratch_bytes;
};

static uint8_t *scratch(struct staged *s, size_t bytes)
{
    if (bytes > s->scratch_bytes) {
        free(s->scratch);
        s->scratch = wf_calloc(bytes, 1);
        s->scratch_bytes = bytes;
    }
    return s->scratch;
}

static size_t round_up(size_t n) { return (n + 63) / 64 * 64; }

static int staged_collective(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count,
                             int dtype, struct diag *d)
{
    struct staged *s = c->impl;
    bool send_held = backend_holds(s->be, send), recv_held = backend_holds(s->be, recv);
    if (!send_held && !recv_held)
        return c->inner->ops->collective(c->inner, g, set, op, send, recv, count, dtype, d);
    int split = g < IR_GROUP_COUNT ? comm_split_index(c->splits, g, set) : -1;
    int64_t size = g >= IR_GROUP_COUNT ? c->size : split >= 0 ? s->split_size[split] : 1;
    size_t el = (size_t)ir_dtype_bytes((enum ir_dtype)dtype), send_bytes = (size_t)count * el,
           recv_bytes = op == IR_COLL_ALL_GATHER ? send_bytes * (size_t)size
                      : op == IR_COLL_REDUCE_SCATTER ? send_bytes / (size_t)(size > 0 ? size : 1) : send_bytes;
    bool in_place = send == recv; /* both held, then: one copy, in place below too */
    size_t send_room = send_held ? round_up(in_place && recv_bytes > send_bytes ? recv_bytes : send_bytes) : 0;
    uint8_t *host = scratch(s, send_room + (recv_held && !in_place ? recv_bytes : 0));
    uint8_t *host_send = send_held ? host : (uint8_t *)(uintptr_t)send;
    uint8_t *host_recv = in_place ? host_send : recv_held ? host + send_room : recv;
    if (send_held && backend_get(s->be, host_send, send, send_bytes, d))
        return -1;
    if (c->inner->ops->collective(c->inner, g, set, op, host_send, host_recv, count, dtype, d))
        return -1;
    return recv_held ? backend_put(s->be, recv, host_recv, recv_bytes, d) : 0;
}

static int staged_exchange(struct comm *c, int n, const struct comm_msg *msgs, struct diag *d)
{
    struct staged *s = c->impl;
    size_t bytes = 0;
    bool any = false;
    bool *held = wf_calloc((size_t)n + 1, sizeof *held);
    for (int i = 0; i < n; i++)
        if ((held[i] = backend_holds(s->be, msgs[i].buf)))
            bytes += round_up((size_t)msgs[i].bytes), any = true;
    if (!any) {
        free(held);
        return c->inner->ops->exchange(c->inner, n, msgs, d);
    }
    uint8_t *host = scratch(s, bytes);
    struct comm_msg *on_host = wf_calloc((size_t)n + 1, sizeof *on_host);
    int rc = 0;
    for (int i = 0, at = 0; i < n; i++) {
        on_host[i] = msgs[i];
        if (!held[i])
            continue;
        on_host[i].buf = host + at;
        at += (int)round_up((size_t)msgs[i].bytes);
        if (!rc && msgs[i].send)
            rc = backend_get(s->be, on_host[i].buf, msgs[i].buf, (size_t)msgs[i].bytes, d);
    }
    if (!rc)
        rc = c->inner->ops->exchange(c->inner, n, on_host, d);
    for (int i = 0; i < n && !rc; i++)
        if (held[i] && !msgs[i].send)
            rc = backend_put(s->be, msgs[i].buf, on_host[i].buf, (size_t)msgs[i].bytes, d);
    free(on_host);
    free(held);
    return rc;
}

static int staged_barrier(struct comm *c, struct diag *d) { return c->inner->ops->barrier(c->inner, d); }

static void staged_close(struct comm *c)
{
    struct staged *s = c->impl;
    free(s->split_size);
    free(s->scratch);
    free(s);
}

static const struct comm_ops staged_ops = {.name = "mpi, staged through the host", .collective = staged_collective,
                                           .exchange = staged_exchange, .barrier = staged_barrier, .close = staged_close};

void comm_staged_push(struct comm *c, struct backend *be)
{
    struct staged *s = wf_calloc(1, sizeof *s);
    s->be = be;
    int n = c->splits ? c->splits->n_splits : 0, *members = wf_calloc((size_t)c->size + 1, sizeof *members);
    s->split_size = wf_calloc((size_t)n + 1, sizeof *s->split_size);
    for (int k = 0; k < n; k++)
        s->split_size[k] = comm_split_members(c->splits, c->rank, k, members);
    free(members);
    comm_push(c, &staged_ops, s);
}
