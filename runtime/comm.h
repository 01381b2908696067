/* comm.h: how ranks talk: a table of functions, so the executor runs the
 * same over MPI (CPU ranks, or GPU ranks staged through the host) and NCCL
 * (GPU ranks, one GPU each).
 *
 *   struct comm *c = comm_mpi_open(&argc, &argv, timeout_s, &d);   // MPI_Init; rank and size
 *   comm_groups(c, L, &S, &d);                // one communicator per group of the layout, per tied set
 *   comm_use_device(c, be, COMM_AUTO, why, sizeof why, &d);  // a GPU backend: NCCL, or MPI staged
 *   c->ops->collective(c, IR_GROUP_DP_CP, 0, IR_COLL_ALL_REDUCE, buf, buf, n, IR_DTYPE_F32, &d);
 *   comm_leave_device(c);                     // before backend_close(be)
 *   comm_close(c);
 *
 * Every wait has a deadline (timeout_s): a collective that has not
 * finished by then fails naming the group and its members, so a rank that
 * stopped answering is named by the others instead of hanging them.  A
 * failure returns -1 with the reason in d; the caller aborts the job
 * (comm_abort), so no rank waits forever.
 *
 * Layers.  comm_mpi_open's communicator carries host memory.  Where the
 * buffers are a GPU backend's, comm_use_device puts a layer over it, in
 * place (whoever holds c, the executor, keeps it): comm_staged.c copies
 * device buffers to host scratch (backend_get), runs the MPI collective
 * and copies back (backend_put), and passes host buffers through
 * untouched; comm_nccl.c runs over NCCL, one NCCL communicator per
 * communicator of comm_splits (its unique id broadcast over the MPI one),
 * and hands host buffers and the world's sums to the staged layer under
 * it.  Each layer's ops take any buffer, host or device (backend_holds
 * tells them apart), so the executor never asks which layer it has.
 *
 * Which communicators a plan needs is computed once, in comm_splits: MPI
 * splits by it, NCCL makes one communicator for each of its MPI ones, and
 * comm_use_device checks by it that no two ranks of one communicator share
 * a GPU (NCCL refuses that, or in some versions allows it silently). */
#ifndef WEFT_COMM_H
#define WEFT_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "layout.h"
#include "program.h"

struct comm;
struct backend;

/* A collective started and not yet finished (comm_start, comm_finish). */
struct comm_pending {
    struct comm *layer; /* the layer that started it and finishes it; NULL: it finished as it started */
    void *handle;       /* that layer's */
};

/* One half of a pipeline transfer. */
struct comm_msg {
    bool send;
    int peer;       /* the other end's rank in the world */
    int tag;        /* the same at both ends */
    void *buf;
    int64_t bytes;
};

struct comm_ops {
    const char *name; /* "mpi", "mpi, staged through the host", "nccl" */
    /* over the rank's group of kind g (for TIED, tied set `set`; else ignored; IR_GROUP_COUNT: the whole world, for
     * the tools' own sums outside a plan's program), count elements of dtype from send:
     * ALL_REDUCE (sum), ALL_REDUCE_MAX: into recv (send == recv: in place); ALL_GATHER: the members' counts side
     * by side in recv, in the order of their coordinates; REDUCE_SCATTER: the sum of the members' count / size
     * elements at this member's place; ALL_TO_ALL: piece i (count / size) to member i, member i's into place i */
    int (*collective)(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count,
                      int dtype, struct diag *d);
    /* post every half, then wait for them all */
    int (*exchange)(struct comm *c, int n, const struct comm_msg *msgs, struct diag *d);
    /* the same value on every rank of the world: 0 if so */
    int (*barrier)(struct comm *c, struct diag *d);
    /* this layer's own state (comm_close, comm_leave_device free the rest) */
    void (*close)(struct comm *c);
    /* The collective as `collective` says, started and left running: *p for finish, which waits for it (the
     * same deadline, the same messages).  The buffers are the collective's until then.  NULL: the layer runs
     * its collectives to the end (comm_start does). */
    int (*start)(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count,
                 int dtype, struct comm_pending *p, struct diag *d);
    int (*finish)(struct comm *c, struct comm_pending *p, struct diag *d);
};

/* A collective started, so that work that needs neither its buffers nor
 * its result goes on meanwhile (a GPU's NCCL on a second stream, MPI's
 * non-blocking collectives), by whichever layer can; one that cannot runs
 * it to the end here.  Every comm_start is followed by comm_finish, on
 * every member in the same order as the others' starts. */
int comm_start(struct comm *c, enum ir_group g, int set, enum ir_coll op, const void *send, void *recv, int64_t count, int dtype,
               struct comm_pending *p, struct diag *d);
int comm_finish(struct comm_pending *p, struct diag *d);

/* The communicators a plan's ranks use, each a split of the world: the
 * layout's groups by enum ir_group (TIED's slot holds none), then
 * COMM_SPLIT_PIPE, the ranks pipeline transfers run between (a pipeline, or
 * the pipelines that share encoder ranks: ir_pp_components), then one per
 * tied set of the schedule (COMM_SPLIT_TIED + set: the ranks of a
 * component at the set's stages).  Ranks of one colour form one
 * communicator, ordered by key; colour -1: the rank is in none. */
enum { COMM_SPLIT_PIPE = IR_GROUP_COUNT, COMM_SPLIT_TIED };

struct comm_split {
    int color, key;
};

struct comm_splits {
    int n_splits, n_ranks;
    struct comm_split *at; /* [rank * n_splits + split] */
};

/* Every rank's splits for layout L and schedule S (S may be NULL: no tied sets). */
void comm_splits_make(struct comm_splits *T, const struct rank_layout *L, const struct ir_schedule *S);
void comm_splits_free(struct comm_splits *T);
static inline const struct comm_split *comm_split_of(const struct comm_splits *T, int rank, int split)
{
    return &T->at[(size_t)rank * (size_t)T->n_splits + (size_t)split];
}
/* The split a collective over g (tied set `set`) runs in, or -1 (the world, or no such set). */
int comm_split_index(const struct comm_splits *T, enum ir_group g, int set);
/* rank's communicator of split s: its members' world ranks in their order into members (n_ranks of room), their
 * count returned (0 where rank is in none). */
int comm_split_members(const struct comm_splits *T, int rank, int split, int *members);

struct comm {
    const struct comm_ops *ops;
    int rank, size;
    double timeout;   /* seconds any wait may last */
    char host[256];
    void *impl;
    struct comm *inner;               /* the layer this one runs over (comm_use_device), or NULL */
    const struct comm_splits *splits; /* the plan's communicators (comm_groups), or NULL before */
};

struct comm *comm_mpi_open(int *argc, char ***argv, double timeout, struct diag *d);
/* The layout's groups, one communicator each (MPI_Comm_split), one for the
 * pipeline transfers, and one per tied set of S (the ranks of a pipeline at
 * the set's stages); S may be NULL. */
int comm_groups(struct comm *c, const struct rank_layout *L, const struct ir_schedule *S, struct diag *d);
/* The status every rank of the world reaches: the largest of theirs (0
 * every rank succeeded, 1 a failure, 2 bad input); *rank0 (may be NULL):
 * rank 0's own.  A collective that fails is a failure; c NULL (one rank
 * without MPI): rc itself.  Also the barrier before what every rank may
 * do only once all could (write into a file rank 0 created). */
int comm_agree(struct comm *c, int rc, int *rank0, struct diag *d);
/* End the whole job now (every rank), with status. */
void comm_abort(struct comm *c, int status);
void comm_close(struct comm *c);

/* weft run --comm: which communicator carries a GPU run's buffers. */
enum comm_kind {
    COMM_AUTO, /* NCCL where it can (libnccl loads on every rank, no two ranks of one communicator share a GPU), else MPI;
                * one rank: MPI (nothing crosses, and NCCL's communicators would cost start-up and GPU memory) */
    COMM_MPI,  /* MPI, device buffers staged through the host */
    COMM_NCCL, /* NCCL, or a failure naming why not */
};
/* "auto", "mpi", "nccl" to *k; -1 for anything else. */
int comm_kind_parse(const char *s, enum comm_kind *k);

/* Make c (after comm_groups) carry buffers of backend be, in place, as
 * want says; every rank of the world calls it (it gathers each rank's GPU
 * and makes the NCCL communicators).  A backend on the CPU: c as it is
 * (COMM_NCCL: a failure, NCCL carries GPU memory).  0, with why (n bytes,
 * may be NULL) saying why COMM_AUTO took MPI ("" if it took NCCL, or the
 * run is on the CPU); -1 with the reason in d, the same on every rank
 * where the reason is the layout's (a shared GPU). */
int comm_use_device(struct comm *c, struct backend *be, enum comm_kind want, char *why, size_t n, struct diag *d);
/* The layers comm_use_device put over c closed (NCCL's communicators
 * finalised), c MPI's again: before the backend whose memory they carry
 * closes. */
void comm_leave_device(struct comm *c);

/* Each rank's GPU, and whether it may use NCCL (comm_use_device gathers them). */
struct comm_gpu {
    char host[256];
    char bus_id[32]; /* "" where the rank has no GPU */
    int32_t nccl;    /* libnccl opened there (a word: the struct travels as 32-bit words) */
};
/* The first two ranks of one communicator of T on one GPU (one host and bus
 * id): 1 with the split and the ranks (*a < *b), 0 if every communicator's
 * ranks have GPUs of their own. */
int comm_gpu_shared(const struct comm_splits *T, const struct comm_gpu *gpus, int *split, int *a, int *b);

/* Whether NCCL can be used here: libnccl.so.2 (or $WEFT_NCCL_LIB) opens and
 * is new enough; else false with the reason in why (n bytes). */
bool comm_nccl_available(char *why, size_t n);

#endif
