/* fake_nccl.c: NCCL as runtime/comm_nccl.c calls it, over the MPI the
 * process already runs (Open MPI's entry points found with dlsym, so this
 * builds without MPI's headers), for tests/test_fake_cuda.c: each rank its
 * own fake GPU (tests/fake_cuda.c), the NCCL path of `weft run --comm nccl`
 * runs on CPU ranks: the communicators' bootstrap from a unique id, the
 * collectives (on whichever stream: the fake GPU's streams run at once),
 * the grouped sends and receives.
 *
 * A unique id names its maker's world rank and a count; a communicator's
 * members tell that rank their world ranks, which it sends back to all.
 * Collectives gather to the first member, which combines in member order
 * and sends the result back: slow and exact.  Every message of a
 * communicator goes under its own tag on MPI_COMM_WORLD, so communicators
 * never mix, and MPI keeps each pair's messages in order. */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int res;
enum { OK = 0, ERR_INTERNAL = 3, ERR_INVALID = 4 };
enum { T_INT8 = 0, T_INT32 = 2, T_FLOAT32 = 7, T_BFLOAT16 = 9 };
enum { OP_SUM = 0, OP_MAX = 2 };

/* Open MPI's C interface, as mpi.h declares it (handles are pointers). */
typedef void *mpi_comm, *mpi_type, *mpi_request;
static struct {
    int (*send)(const void *, int, mpi_type, int, int, mpi_comm);
    int (*recv)(void *, int, mpi_type, int, int, mpi_comm, void *);
    int (*isend)(const void *, int, mpi_type, int, int, mpi_comm, mpi_request *);
    int (*irecv)(void *, int, mpi_type, int, int, mpi_comm, mpi_request *);
    int (*waitall)(int, mpi_request *, void *);
    int (*comm_rank)(mpi_comm, int *);
    mpi_comm world;
    mpi_type byte;
} mpi;

static res load(void)
{
    if (mpi.world)
        return OK;
    *(void **)&mpi.send = dlsym(RTLD_DEFAULT, "MPI_Send");
    *(void **)&mpi.recv = dlsym(RTLD_DEFAULT, "MPI_Recv");
    *(void **)&mpi.isend = dlsym(RTLD_DEFAULT, "MPI_Isend");
    *(void **)&mpi.irecv = dlsym(RTLD_DEFAULT, "MPI_Irecv");
    *(void **)&mpi.waitall = dlsym(RTLD_DEFAULT, "MPI_Waitall");
    *(void **)&mpi.comm_rank = dlsym(RTLD_DEFAULT, "MPI_Comm_rank");
    mpi.world = dlsym(RTLD_DEFAULT, "ompi_mpi_comm_world");
    mpi.byte = dlsym(RTLD_DEFAULT, "ompi_mpi_byte");
    if (!mpi.send || !mpi.recv || !mpi.isend || !mpi.irecv || !mpi.waitall || !mpi.comm_rank || !mpi.world || !mpi.byte) {
        fprintf(stderr, "fake_nccl: Open MPI's entry points are not in this process\n");
        mpi.world = NULL;
        return ERR_INTERNAL;
    }
    return OK;
}

static int world_rank(void)
{
    int r = -1;
    mpi.comm_rank(mpi.world, &r);
    return r;
}

struct comm {
    int n, me, tag;
    int *world; /* members' world ranks */
};

struct id {
    uint32_t magic;
    int32_t root, count;
};

res ncclGetVersion(int *v) { return *v = 22809, OK; }
const char *ncclGetErrorString(res r) { return r ? "an error of the fake NCCL" : "no error"; }
const char *ncclGetLastError(struct comm *c) { return (void)c, ""; }

res ncclGetUniqueId(char *id)
{
    static int count;
    if (load())
        return ERR_INTERNAL;
    memset(id, 0, 128);
    struct id x = {0xfa4e, world_rank(), count++};
    memcpy(id, &x, sizeof x);
    return OK;
}

/* The id is passed by value (ncclUniqueId: 128 bytes). */
struct unique_id {
    char bytes[128];
};

res ncclCommInitRankConfig(struct comm **out, int n, struct unique_id uid, int me, void *config)
{
    (void)config;
    struct id x;
    memcpy(&x, uid.bytes, sizeof x);
    if (load() || x.magic != 0xfa4e || n < 1 || me < 0 || me >= n)
        return ERR_INVALID;
    struct comm *c = calloc(1, sizeof *c);
    c->n = n, c->me = me, c->tag = 20000 + (x.root * 131 + x.count) % 10000;
    c->world = calloc((size_t)n, sizeof *c->world);
    int mine = world_rank();
    if (me == 0) {
        c->world[0] = mine;
        for (int i = 1; i < n; i++) {
            int got[2];
            mpi.recv(got, (int)sizeof got, mpi.byte, -1 /* MPI_ANY_SOURCE */, c->tag, mpi.world, NULL);
            c->world[got[0]] = got[1];
        }
        for (int i = 1; i < n; i++)
            mpi.send(c->world, n * (int)sizeof *c->world, mpi.byte, c->world[i], c->tag, mpi.world);
    } else {
        int mine_pair[2] = {me, mine};
        mpi.send(mine_pair, (int)sizeof mine_pair, mpi.byte, x.root, c->tag, mpi.world);
        mpi.recv(c->world, n * (int)sizeof *c->world, mpi.byte, x.root, c->tag, mpi.world, NULL);
    }
    *out = c;
    return OK;
}

res ncclCommGetAsyncError(struct comm *c, res *state) { return (void)c, *state = OK, OK; }
res ncclCommFinalize(struct comm *c) { return (void)c, OK; }
res ncclCommAbort(struct comm *c) { return ncclCommFinalize(c); }
res ncclCommDestroy(struct comm *c)
{
    free(c->world);
    free(c);
    return OK;
}

static size_t bytes_of(int type) { return type == T_INT8 ? 1 : type == T_BFLOAT16 ? 2 : 4; }

static float widen(const void *p, int type, size_t i)
{
    if (type == T_FLOAT32)
        return ((const float *)p)[i];
    if (type == T_INT32)
        return (float)((const int32_t *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void combine(void *acc, const void *in, size_t n, int type, int op)
{
    for (size_t i = 0; i < n; i++) {
        if (type == T_INT32) {
            int32_t *a = acc, b = ((const int32_t *)in)[i];
            a[i] = op == OP_MAX ? (a[i] > b ? a[i] : b) : a[i] + b;
            continue;
        }
        float a = widen(acc, type, i), b = widen(in, type, i), v = op == OP_MAX ? (a > b ? a : b) : a + b;
        if (type == T_FLOAT32)
            ((float *)acc)[i] = v;
        else {
            uint32_t u;
            memcpy(&u, &v, 4);
            ((uint16_t *)acc)[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
        }
    }
}

/* Member i's n bytes at send, side by side at the first member (gathered, n * members bytes), sent back whole to all. */
static void gather_all(struct comm *c, const void *send, size_t n, char *all)
{
    if (c->me == 0) {
        memcpy(all, send, n);
        for (int i = 1; i < c->n; i++)
            mpi.recv(all + (size_t)i * n, (int)n, mpi.byte, c->world[i], c->tag, mpi.world, NULL);
    } else
        mpi.send(send, (int)n, mpi.byte, c->world[0], c->tag, mpi.world);
}

static void broadcast(struct comm *c, void *buf, size_t n)
{
    if (c->me == 0)
        for (int i = 1; i < c->n; i++)
            mpi.send(buf, (int)n, mpi.byte, c->world[i], c->tag, mpi.world);
    else
        mpi.recv(buf, (int)n, mpi.byte, c->world[0], c->tag, mpi.world, NULL);
}

/* The members' sums (or maxima) of count elements, into out at the first member and then at all. */
static void reduce_all(struct comm *c, const void *send, size_t count, int type, int op, void *out)
{
    size_t n = count * bytes_of(type);
    char *all = malloc(n * (size_t)c->n + 1);
    gather_all(c, send, n, all);
    if (c->me == 0) {
        memcpy(out, all, n);
        for (int i = 1; i < c->n; i++)
            combine(out, all + (size_t)i * n, count, type, op);
    }
    broadcast(c, out, n);
    free(all);
}

res ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, struct comm *c, void *stream)
{
    (void)stream;
    char *tmp = malloc(count * bytes_of(type) + 1);
    reduce_all(c, send, count, type, op, tmp);
    memcpy(recv, tmp, count * bytes_of(type));
    free(tmp);
    return OK;
}

res ncclAllGather(const void *send, void *recv, size_t count, int type, struct comm *c, void *stream)
{
    (void)stream;
    size_t n = count * bytes_of(type);
    char *all = malloc(n * (size_t)c->n + 1);
    gather_all(c, send, n, all);
    broadcast(c, all, n * (size_t)c->n);
    memcpy(recv, all, n * (size_t)c->n);
    free(all);
    return OK;
}

res ncclReduceScatter(const void *send, void *recv, size_t count, int type, int op, struct comm *c, void *stream)
{
    (void)stream;
    size_t n = count * bytes_of(type);
    char *sum = malloc(n * (size_t)c->n + 1);
    reduce_all(c, send, count * (size_t)c->n, type, op, sum);
    memcpy(recv, sum + (size_t)c->me * n, n);
    free(sum);
    return OK;
}

/* Sends and receives between ncclGroupStart and ncclGroupEnd, posted together at the end. */
struct p2p {
    bool send;
    void *buf;
    size_t bytes;
    int peer;
    struct comm *c;
};
static struct p2p *group;
static int n_group, depth;
res ncclGroupEnd(void);

static res post(bool send, const void *buf, size_t count, int type, int peer, struct comm *c)
{
    group = realloc(group, (size_t)(n_group + 1) * sizeof *group);
    group[n_group++] = (struct p2p){send, (void *)buf, count * bytes_of(type), peer, c};
    return depth ? OK : ncclGroupEnd();
}

res ncclSend(const void *buf, size_t count, int type, int peer, struct comm *c, void *stream)
{
    return (void)stream, post(true, buf, count, type, peer, c);
}
res ncclRecv(void *buf, size_t count, int type, int peer, struct comm *c, void *stream)
{
    return (void)stream, post(false, buf, count, type, peer, c);
}
res ncclGroupStart(void) { return depth++, OK; }
res ncclGroupEnd(void)
{
    if (depth > 0 && --depth > 0)
        return OK;
    mpi_request *req = calloc((size_t)n_group + 1, sizeof *req);
    for (int i = 0; i < n_group; i++) {
        struct p2p *x = &group[i];
        if (x->send)
            mpi.isend(x->buf, (int)x->bytes, mpi.byte, x->c->world[x->peer], x->c->tag, mpi.world, &req[i]);
        else
            mpi.irecv(x->buf, (int)x->bytes, mpi.byte, x->c->world[x->peer], x->c->tag, mpi.world, &req[i]);
    }
    mpi.waitall(n_group, req, NULL);
    free(req);
    n_group = 0;
    return OK;
}
