/* fuse.h: the fusion pass: runs of elementwise ops, and row reductions
 * (layernorm, rmsnorm, softmax) with their elementwise neighbours, become
 * fused kernels (ir/kernel.h), and so do embedding lookups (a gather, its
 * backward a scatter-add) and patchify (the image read in patches; an
 * image needs no gradient, so it has no backward); attention, the
 * cross-entropy loss, the MoE router and concat get kernels of their own;
 * GEMMs stay as they are.  MoE dispatch and combine run the routing
 * kernel first (KN_KIND_ROUTE: each (token, choice)'s row of the experts'
 * buffer, a running count over the tokens, into the op's ROUTES and FILLS
 * scratch, computed again in the backward), then gathers that read
 * through it.  T5's relpos_bias picks a table element per output element;
 * its backward runs over a domain that is no tensor's (kn_launch.sizes: a
 * row per table element, a column per (query, key)).  Every op is then a
 * GEMM, a view or a launch's.
 *
 * The loss's launches (one, or three around the vocab-parallel loss's two
 * collectives, writing the transfers' buffers) leave per token its
 * log-sum-exp and its loss in the op's row statistics; the runtime adds the
 * row losses and divides by the count of labels not ignore_index (it knows
 * the batch), and passes the loss's gradient over that count as the
 * backward's float argument 0.
 *
 *   struct kn_set F;
 *   fuse(P, &opt, &F);                 // NULL: a forward-only plan
 *   F.launches[g]        // one launch: its ops, its kernel, what its slots bind
 *   F.kernels[k]         // distinct kernels (identical ones merged)
 *   kn_set_free(&F);
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

#include "actions.h"
#include "kernel.h"
#include "optim.h"
#include "partition.h"

/* Whether the fusion pass lowers this op kind into a kernel description. */
bool fuse_op_fusible(enum ir_op_kind k);
/* opt: the optimizer when training (its step and the gradient norm's sums
 * become launches); NULL forward only. */
void fuse(const struct partition *P, const struct optim_config *opt, struct kn_set *F);
/* A launch's sizes and places for rank `rank` (pointers, seed and float
 * arguments left to the caller): the domain, each input's modulus, the
 * domain's offsets in the whole tensor (dropout draws by whole-tensor
 * index), the dropout streams. */
void fuse_launch_args(const struct partition *P, const struct kn_set *F, int g, int rank, struct kn_args *a);
/* The same for every rank of the launch's role: sizes, and per split axis
 * (and table) the parallel dimension whose coordinate places a rank's
 * shard (ir_action_launch_args makes one rank's arguments of it). */
void fuse_launch_template(const struct partition *P, const struct kn_set *F, int g, struct ir_launch *t);

/* A dispatch or combine op's routing on one rank: its entries (tokens x
 * topk), and the experts' buffer it routes into (experts x capacity rows,
 * whole: dispatch writes it before its all-to-all, combine reads it after). */
void fuse_route_sizes(const struct partition *P, int op, int64_t *entries, int64_t *topk, int64_t *experts, int64_t *capacity);

/* GEMM epilogues (run after fuse): a forward group that is only a bias_add
 * on a matmul's output (BIAS), or that and a tanh GELU on its result
 * (GELU_BIAS; GELU_AUX_BIAS where x + bias is kept for the backward), runs
 * as the epilogue of the matmul's GEMM (cuBLASLt's, on a GPU): the matmul's
 * output is then never stored.  Only where nothing else reads that output
 * (no transfer, no backward, no other op), the GEMM is one of every row by
 * a weight, and every slot has the GEMM's type.  The group's launch keeps
 * its kernel and bindings (an executor whose backend has no such epilogue
 * runs it after the GEMM), marked kn_launch.epilogue.  Returns how many. */
int fuse_gemm_epilogues(const struct partition *P, struct kn_set *F);
/* The epilogue launch l would be: its kind (enum ir_epilogue, returned;
 * IR_EPI_NONE if none), its matmul, and its slots. */
struct fuse_epilogue {
    int kind, matmul;
    int x_slot, bias_slot;  /* inputs: the matmul's output, the bias */
    int out_slot, aux_slot; /* outputs: the result; x + bias before the GELU where kept (GELU_AUX_BIAS), else -1 */
};
int fuse_gemm_epilogue(const struct partition *P, const struct kn_set *F, int l, struct fuse_epilogue *ep);
/* Per op, the first op of its fused group (lead; itself if none): a
 * group's launches run at its place, forward and backward (but an
 * epilogue's forward, in its matmul's GEMM).  epilogue (or NULL): per
 * matmul, the launch its GEMM runs as its epilogue, else -1.  K NULL:
 * every op its own. */
void fuse_leads(const struct partition *P, const struct kn_set *K, int *lead, int *epilogue);
/* Whether matmul op's forward is one GEMM of every row of its activation by
 * a weight (b has no batch axes, a's batch is c's, a not transposed). */
bool fuse_matmul_folds(const struct partition *P, int op);

/* The bytes launch l reads and writes on one rank: every slot once. */
int64_t fuse_launch_bytes(const struct partition *P, const struct kn_set *F, int l);

#endif
