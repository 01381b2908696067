/* fuse.h: the fusion pass: runs of elementwise ops, and row reductions
 * (layernorm, rmsnorm, softmax) with their elementwise neighbours, become
 * fused kernels (ir/kernel.h); GEMMs and the ops with kernels of their own
 * stay as they are.
 *
 *   struct fusion F;
 *   fuse(P, forward_only, &F);
 *   F.groups[g]          // one launch: its ops, its kernel, what its slots bind
 *   F.kernels[k]         // distinct kernels (identical ones merged)
 *   fusion_free(&F);
 *
 * Requires: a partition (ops on chunks, shards, transfers).
 * Produces: groups in op order within each chunk, kernels deduplicated by
 * structure.  A group never spans a transfer: an op whose input comes
 * through a collective or a send starts a new group.  A value made inside a
 * group is stored only if something outside it reads it: a later op, the
 * backward (ops.def's saves, when training), a transfer or the model's
 * outputs. */
#ifndef WEFT_FUSE_H
#define WEFT_FUSE_H

#include "kernel.h"
#include "partition.h"

/* What a slot binds: a tensor, or an op's saved mask or row statistics. */
struct fuse_bind {
    uint8_t what; /* enum ir_buf_what (memplan.h): VALUE, MASK, ROWSTATS */
    int id;       /* tensor, or op */
    int xfer;     /* an input that a transfer brings: the transfer (its result is read); -1 */
};

struct fuse_group {
    int kernel;
    int chunk;
    int first_op, n_ops;   /* ops[first_op .. first_op + n_ops) of fusion.ops */
    int domain;            /* the tensor whose local shape is rows x cols */
    struct fuse_bind in[KN_MAX_SLOTS], out[KN_MAX_SLOTS];
    int n_in, n_out;
    uint64_t streams[4];   /* dropout streams, by KEEP's slot */
};

struct fuse_kernel {
    struct kn_kernel k;
    uint64_t hash;
    char name[96];         /* k<index>_<its first group's ops> */
    int uses;              /* groups that launch it */
};

struct fusion {
    int n_groups, n_kernels, n_ops;
    struct fuse_group *groups;
    struct fuse_kernel *kernels;
    int *ops;              /* the ops of every group, group after group */
    int *op_group;         /* per op: its group, or -1 (not fused: a GEMM, a view, ...) */
};

/* Whether the fusion pass lowers this op kind into a kernel description. */
bool fuse_op_fusible(enum ir_op_kind k);
void fuse(const struct partition *P, bool forward_only, struct fusion *F);
void fusion_free(struct fusion *F);
/* A launch's sizes and places for rank `rank` (pointers, seed and float
 * arguments left to the caller): the domain, each input's modulus, the
 * domain's offsets in the whole tensor (dropout draws by whole-tensor
 * index), the dropout streams. */
void fuse_launch_args(const struct partition *P, const struct fusion *F, int g, int rank, struct kn_args *a);

#endif
