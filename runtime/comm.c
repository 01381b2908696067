/* comm.c: what every communicator shares (comm.h): the plan's
 * communicators as splits of the world, the status every rank agrees on,
 * the layers' order, and the choice of communicator for a GPU run. */
#include "backend.h"
#include "comm_impl.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void comm_splits_make(struct comm_splits *T, const struct rank_layout *L, const struct ir_schedule *S)
{
    int n_tied = S ? S->n_tied : 0;
    T->n_splits = COMM_SPLIT_TIED + n_tied, T->n_ranks = L->n_ranks;
    T->at = wf_calloc((size_t)T->n_ranks * (size_t)T->n_splits + 1, sizeof *T->at);
    int *component = ir_pp_components(L);
    for (int r = 0; r < L->n_ranks; r++) {
        struct comm_split *row = &T->at[(size_t)r * (size_t)T->n_splits];
        for (int s = 0; s < T->n_splits; s++)
            row[s] = (struct comm_split){-1, r};
        for (int g = 0; g < IR_GROUP_COUNT; g++) {
            int k = ir_group_layout_kind((enum ir_group)g);
            if (k < 0)
                continue;
            int color = rank_layout_group_of(L, (enum par_group_kind)k, r);
            const struct rank_groups *rg = rank_layout_groups(L, (enum par_group_kind)k);
            row[g].color = color;
            for (int i = 0; color >= 0 && i < rg->sizes[color]; i++) /* members in the layout's order: a gather's pieces */
                if (rg->ranks[color][i] == r)
                    row[g].key = i;
        }
        /* the ranks of one pipeline (or of pipelines sharing an encoder rank: the proof's component); a tied set's
         * are those of them at the set's stages */
        int pipe = component[rank_layout_group_of(L, PAR_GROUP_PP, r)], stage = L->ranks[r].stage;
        row[COMM_SPLIT_PIPE].color = pipe;
        for (int t = 0; t < n_tied; t++)
            row[COMM_SPLIT_TIED + t].color = stage < S->n_stages && S->tied_stages[t][stage] ? pipe : -1;
    }
    free(component);
}

void comm_splits_free(struct comm_splits *T)
{
    free(T->at);
    T->at = NULL;
}

int comm_split_index(const struct comm_splits *T, enum ir_group g, int set)
{
    if (g == IR_GROUP_TIED)
        return set >= 0 && COMM_SPLIT_TIED + set < T->n_splits ? COMM_SPLIT_TIED + set : -1;
    return g < IR_GROUP_COUNT ? (int)g : -1;
}

int comm_split_members(const struct comm_splits *T, int rank, int split, int *members)
{
    int color = comm_split_of(T, rank, split)->color, n = 0;
    if (color < 0)
        return 0;
    for (int r = 0; r < T->n_ranks; r++) /* by key: an insertion, as the keys are few to a colour */
        if (comm_split_of(T, r, split)->color == color) {
            int key = comm_split_of(T, r, split)->key, i = n++;
            for (; i > 0 && comm_split_of(T, members[i - 1], split)->key > key; i--)
                members[i] = members[i - 1];
            members[i] = r;
        }
    return n;
}

const char *comm_split_name(int split, char *buf, size_t n)
{
    if (split < IR_GROUP_COUNT)
        snprintf(buf, n, "the %s group", ir_group_name((enum ir_group)split));
    else if (split == COMM_SPLIT_PIPE)
        snprintf(buf, n, "the pipeline transfers' group");
    else
        snprintf(buf, n, "tied set %d's group", split - COMM_SPLIT_TIED);
    return buf;
}

const char *comm_members_str(const struct comm *c, int s, char *buf, size_t n)
{
    buf[0] = 0;
    if (s < 0 || !c->splits)
        return buf;
    int *m = wf_calloc((size_t)c->splits->n_ranks + 1, sizeof *m), k = comm_split_members(c->splits, c->rank, s, m);
    size_t at = 0;
    for (int i = 0; i < k && at + 16 < n; i++)
        at += (size_t)snprintf(buf + at, n - at, "%s%d", i ? ", " : "", m[i]);
    free(m);
    return buf;
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

void comm_leave_device(struct comm *c)
{
    while (c && c->inner) {
        struct comm *inner = c->inner;
        c->ops->close(c);
        *c = *inner;
        free(inner);
    }
}

void comm_close(struct comm *c)
{
    if (!c)
        return;
    comm_leave_device(c);
    c->ops->close(c);
    free(c);
}

void comm_push(struct comm *c, const struct comm_ops *ops, void *impl)
{
    struct comm *inner = wf_calloc(1, sizeof *inner);
    *inner = *c;
    c->ops = ops, c->impl = impl, c->inner = inner;
}

struct comm *comm_mpi_of(struct comm *c)
{
    while (c->inner)
        c = c->inner;
    return c;
}

int comm_kind_parse(const char *s, enum comm_kind *k)
{
    static const char *const names[] = {"auto", "mpi", "nccl"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, names[i])) {
            *k = (enum comm_kind)i;
            return 0;
        }
    return -1;
}

/* Sorting ranks by GPU, then by the communicator they are in. */
struct gpu_at {
    int color, gpu, rank;
};

static int gpu_at_cmp(const void *a, const void *b)
{
    const struct gpu_at *x = a, *y = b;
    return x->color != y->color ? (x->color > y->color) - (x->color < y->color)
         : x->gpu != y->gpu     ? (x->gpu > y->gpu) - (x->gpu < y->gpu)
                                : (x->rank > y->rank) - (x->rank < y->rank);
}

static const struct comm_gpu *sort_gpus;

static int rank_gpu_cmp(const void *a, const void *b)
{
    const struct comm_gpu *x = &sort_gpus[*(const int *)a], *y = &sort_gpus[*(const int *)b];
    int h = strcmp(x->host, y->host);
    return h ? h : strcmp(x->bus_id, y->bus_id);
}

int comm_gpu_shared(const struct comm_splits *T, const struct comm_gpu *gpus, int *split, int *a, int *b)
{
    int n = T->n_ranks, *order = wf_calloc((size_t)n + 1, sizeof *order), *id = wf_calloc((size_t)n + 1, sizeof *id);
    for (int r = 0; r < n; r++)
        order[r] = r;
    sort_gpus = gpus; /* one GPU, one number: ranks sorted by (host, bus id) */
    qsort(order, (size_t)n, sizeof *order, rank_gpu_cmp);
    for (int i = 0, next = 0; i < n; i++) {
        bool same = i > 0 && !rank_gpu_cmp(&order[i - 1], &order[i]) && gpus[order[i]].bus_id[0];
        id[order[i]] = same ? id[order[i - 1]] : next++;
    }
    struct gpu_at *v = wf_calloc((size_t)n + 1, sizeof *v);
    int found = 0;
    for (int s = 0; s < T->n_splits && !found; s++) {
        int m = 0;
        for (int r = 0; r < n; r++)
            if (comm_split_of(T, r, s)->color >= 0)
                v[m++] = (struct gpu_at){comm_split_of(T, r, s)->color, id[r], r};
        qsort(v, (size_t)m, sizeof *v, gpu_at_cmp);
        int best = -1; /* the clash with the smallest first rank, then second */
        for (int i = 1; i < m; i++)
            if (v[i].color == v[i - 1].color && v[i].gpu == v[i - 1].gpu) {
                int lo = i - 1;
                while (lo > 0 && v[lo - 1].color == v[i].color && v[lo - 1].gpu == v[i].gpu)
                    lo--;
                if (best < 0 || v[lo].rank < v[best].rank || (v[lo].rank == v[best].rank && v[lo + 1].rank < v[best + 1].rank))
                    best = lo;
            }
        if (best >= 0)
            *split = s, *a = v[best].rank, *b = v[best + 1].rank, found = 1;
    }
    free(v), free(order), free(id);
    return found;
}

int comm_use_device(struct comm *c, struct backend *be, enum comm_kind want, char *why, size_t n, struct diag *d)
{
    char reason[768] = "";
    if (why && n)
        why[0] = 0;
    struct comm_gpu mine = {0}, *all = NULL;
    struct backend_gpu gpu;
    int on_gpu = backend_gpu(be, &gpu, d);
    if (on_gpu < 0)
        return -1;
    if (!on_gpu) {
        if (want != COMM_NCCL)
            return 0;
        diag_error(d, NULL, 0, "NCCL carries GPU memory, and this run's buffers are on the CPU: run on a GPU, or over MPI");
        return -1;
    }
    WF_ASSERT(c->splits); /* after comm_groups */
    if (want == COMM_MPI || (want == COMM_AUTO && c->size == 1)) { /* every rank asked the same: no census; or one rank, where
                                                                      * nothing crosses: no NCCL communicators (their start-up
                                                                      * and their memory on the GPU) */
        comm_staged_push(c, be);
        return 0;
    }
    snprintf(mine.host, sizeof mine.host, "%s", c->host);
    snprintf(mine.bus_id, sizeof mine.bus_id, "%s", gpu.bus_id);
    char no_nccl[512] = "";
    mine.nccl = comm_nccl_available(no_nccl, sizeof no_nccl);
    /* every rank's GPU, so that every rank decides alike */
    _Static_assert(sizeof mine % 4 == 0, "struct comm_gpu travels as 32-bit words");
    all = wf_calloc((size_t)c->size + 1, sizeof *all);
    if (c->size == 1)
        all[0] = mine;
    else if (c->ops->collective(c, IR_GROUP_COUNT, 0, IR_COLL_ALL_GATHER, &mine, all, (int64_t)(sizeof mine / 4), IR_DTYPE_I32, d)) {
        free(all);
        return -1;
    }
    int split, a, b, lacking = -1;
    for (int r = 0; r < c->size && lacking < 0; r++)
        if (!all[r].nccl)
            lacking = r;
    if (lacking == c->rank)
        snprintf(reason, sizeof reason, "%s", no_nccl);
    else if (lacking >= 0)
        snprintf(reason, sizeof reason, "rank %d (%.128s) cannot open NCCL", lacking, all[lacking].host);
    else if (comm_gpu_shared(c->splits, all, &split, &a, &b)) {
        char name[64], who[160] = ""; /* the group's members, as many as fit */
        int *m = wf_calloc((size_t)c->size + 1, sizeof *m), k = comm_split_members(c->splits, a, split, m);
        size_t at = 0;
        for (int i = 0; i < k && at + 16 < sizeof who; i++)
            at += (size_t)snprintf(who + at, sizeof who - at, "%s%d", i ? ", " : "", m[i]);
        free(m);
        snprintf(reason, sizeof reason, "ranks %d and %d of %s (ranks %s) share GPU %s on %.128s, and NCCL takes one GPU a rank", a, b,
                 comm_split_name(split, name, sizeof name), who, all[a].bus_id, all[a].host);
    }
    free(all);
    if (want == COMM_NCCL && reason[0]) {
        diag_error(d, NULL, 0, "%s", reason);
        return -1;
    }
    comm_staged_push(c, be); /* under NCCL too: the host's buffers and the world's sums go over MPI */
    if (!reason[0])
        return comm_nccl_push(c, be, d);
    if (why && n)
        snprintf(why, n, "%s", reason);
    return 0;
}

int comm_start(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count, int dtype,
               struct comm_pending *p, struct diag *d)
{
    p->layer = NULL, p->handle = NULL;
    if (c->ops->start)
        return c->ops->start(c, g, set, op, send, recv, count, dtype, p, d);
    return c->ops->collective(c, g, set, op, send, recv, count, dtype, d);
}

int comm_finish(struct comm_pending *p, struct diag *d)
{
    struct comm *layer = p->layer;
    p->layer = NULL;
    return layer ? layer->ops->finish(layer, p, d) : 0;
}
