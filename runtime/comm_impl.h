/* comm_impl.h: what the layers of comm.h share with one another (comm.c,
 * comm_mpi.c, comm_staged.c, comm_nccl.c); nothing outside runtime/comm*
 * needs it. */
#ifndef WEFT_COMM_IMPL_H
#define WEFT_COMM_IMPL_H

#include "comm.h"

/* Move c's layer into a new communicator under it and make c the layer of
 * ops and impl; the new one (c->inner) keeps the old layer's state. */
void comm_push(struct comm *c, const struct comm_ops *ops, void *impl);
/* The MPI communicator at the bottom of c's layers. */
struct comm *comm_mpi_of(struct comm *c);
/* The members of c's communicator of split s as "3, 7, 11", into buf; ""
 * for the world (s -1) or where the rank is in none. */
const char *comm_members_str(const struct comm *c, int s, char *buf, size_t n);
/* After a deadline passed in `what` over c's communicator of split s (-1:
 * the world): d gets the message every layer gives, naming the group, its
 * members and, after a roll call among them over MPI, who stopped
 * answering. */
void comm_missed(struct comm *c, const char *what, int split, struct diag *d);
/* After a deadline passed in a pipeline transfer: the message naming the
 * peers of the halves still pending (pending NULL: every half). */
void comm_missed_transfer(struct comm *c, const char *what, int n, const struct comm_msg *msgs, const bool *pending, struct diag *d);
/* bytes at buf from the first member of c's communicator of split s to
 * the others, over MPI, within the deadline. */
int comm_mpi_bcast(struct comm *c, int split, void *buf, int bytes, struct diag *d);
/* "the tp group", "the pipeline transfers' group", "tied set 2's group" */
const char *comm_split_name(int split, char *buf, size_t n);

/* The layers comm_use_device puts over c. */
void comm_staged_push(struct comm *c, struct backend *be);
int comm_nccl_push(struct comm *c, struct backend *be, struct diag *d);

#endif
