/* comm.h: how ranks talk: a table of functions, so the executor runs the
 * same over MPI (CPU ranks) and, later, NCCL (GPUs).
 *
 *   struct comm *c = comm_mpi_open(&argc, &argv, timeout_s, &d);   // MPI_Init; rank and size
 *   comm_groups(c, L, &d);                    // one communicator per group of the layout
 *   c->ops->all_reduce(c, IR_GROUP_DP_CP, buf, n, IR_DTYPE_F32, IR_COLL_ALL_REDUCE, &d);
 *   comm_close(c);
 *
 * Every wait has a deadline (timeout_s): a collective that has not
 * finished by then fails naming the group and its members, so a rank that
 * stopped answering is named by the others instead of hanging them.  A
 * failure returns -1 with the reason in d; the caller aborts the job
 * (comm_abort), so no rank waits forever. */
#ifndef WEFT_COMM_H
#define WEFT_COMM_H

#include <stdint.h>

#include "diag.h"
#include "layout.h"
#include "program.h"

struct comm;

struct comm_ops {
    const char *name;
    /* in place over the rank's group of kind g: IR_COLL_ALL_REDUCE (sum) or IR_COLL_ALL_REDUCE_MAX */
    int (*all_reduce)(struct comm *c, enum ir_group g, void *buf, int64_t count, int dtype, enum ir_coll op, struct diag *d);
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
/* The layout's groups, one communicator each (MPI_Comm_split). */
int comm_groups(struct comm *c, const struct rank_layout *L, struct diag *d);
/* End the whole job now (every rank), with status. */
void comm_abort(struct comm *c, int status);
void comm_close(struct comm *c);

#endif
