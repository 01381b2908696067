/* comm.h: how ranks talk: a table of functions, so the executor runs the
 * same over MPI (CPU ranks) and, later, NCCL (GPUs).
 *
 *   struct comm *c = comm_mpi_open(&argc, &argv, timeout_s, &d);   // MPI_Init; rank and size
 *   comm_groups(c, L, &S, &d);                // one communicator per group of the layout, per tied set
 *   c->ops->collective(c, IR_GROUP_DP_CP, 0, IR_COLL_ALL_REDUCE, buf, buf, n, IR_DTYPE_F32, &d);
 *   comm_close(c);
 *
 * Every wait has a deadline (timeout_s): a collective that has not
 * finished by then fails naming the group and its members, so a rank that
 * stopped answering is named by the others instead of hanging them.  A
 * failure returns -1 with the reason in d; the caller aborts the job
 * (comm_abort), so no rank waits forever. */
#ifndef WEFT_COMM_H
#define WEFT_COMM_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"
#include "layout.h"
#include "program.h"

struct comm;

/* One half of a pipeline transfer. */
struct comm_msg {
    bool send;
    int peer;       /* the other end's rank in the world */
    int tag;        /* the same at both ends */
    void *buf;
    int64_t bytes;
};

struct comm_ops {
    const char *name;
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
};

struct comm {
    const struct comm_ops *ops;
    int rank, size;
    double timeout;   /* seconds any wait may last */
    char host[256];
    void *impl;
};

struct comm *comm_mpi_open(int *argc, char ***argv, double timeout, struct diag *d);
/* The layout's groups, one communicator each (MPI_Comm_split), and one per
 * tied set of S (the ranks of a pipeline at the set's stages); S may be NULL. */
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

#endif
