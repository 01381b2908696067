/* memory.h: where every buffer of every role lives, and what that costs,
 * before anything runs.
 *
 *   struct ir_memory M;
 *   memory_plan(P, &S, &K, &M);      // every role's arena (ir/memplan.h); K: the fused kernels, or NULL
 *   M.roles[s].total                 // bytes a rank of stage s allocates
 *   memory_check(P, &M, limit, &diag);   // a rank over the limit: an error naming its largest items
 *   ir_memory_free(&M);
 *
 * Sizes (Megatron's mixed-precision accounting with --bf16):
 *   parameters   4 bytes each (2 with --bf16)
 *   gradients    4 bytes each (fp32 main gradients)
 *   optimizer    AdamW's two moments, 8 bytes (12 with --bf16: + fp32 master)
 *   activations  a block per micro-batch in flight, from its forward to its
 *                backward: what each op's backward reads (ops.def's saves
 *                column) and the stage's received inputs it keeps; plus the
 *                buffers pipeline transfers fill and drain, alive from
 *                their transfer to the step that uses them
 *   working set  one step's transients, packed by liveness: the forward's
 *                values nobody keeps, the backward's activation gradients
 *                (one buffer per tensor, contributions accumulate)
 *   comm         packing scratch for the largest collective along an inner
 *                axis (its pieces side by side)
 *   workspace    32 MiB for cuBLAS(Lt)'s workspace
 * Views (split/merge heads, reshape) share their input's bytes.  Each
 * tensor counts as one rank holds it (its shard); an op's own temporaries
 * (attention's tiles) are its kernel's.  Forward only (--mode infer) there
 * are no gradients, optimizer state or blocks. */
#ifndef WEFT_MEMORY_H
#define WEFT_MEMORY_H

#include "actions.h"
#include "kernel.h"
#include "memplan.h"
#include "partition.h"
#include "program.h"

/* With the fused kernels K, a value a kernel makes and keeps to itself
 * (stores nowhere) has no buffer, nor has the gradient of one that its
 * backward kernel keeps in registers. */
/* The tensor that owns t's bytes within a step (pos: per op, its place in
 * the step counted from 1, 0 outside it): views share their input's. */
int memory_root(const struct partition *P, const int *pos, int t);
/* Where transfer x (not a send) reads and leaves its data, in the step
 * that runs it (pos: that step's op places).  Forward: partial sums reduced
 * in place, or reduce-scattered from the producer's XFER_IN into the
 * tensor's buffer; a reader's chain from the tensor's buffer (or the
 * previous transfer's result) into STAGED (RESTAGED when the backward
 * brings it again: restaged).  Backward: a gradient's chain from its
 * readers' XFER_IN (or in place in the tensor's gradient, an all-reduce
 * where all its readers give it alike) into STAGED; *adds: the last
 * result is then added into the tensor's gradient.  False where it cannot
 * be placed (a transfer of a view that is not its root's whole bytes). */
bool memory_xfer_place(const struct partition *P, const int *pos, int x, bool restaged, struct ir_ref *in, struct ir_ref *out,
                       bool *adds);
/* What transfer x moves: its tensor, or for a view whose bytes lie strided
 * in its root (attention's keys and values, heads of a fused QKV) the
 * root, gathered along the axis the group splits (its gradient
 * reduce-scattered back); its shards before and after, the axis; and
 * first, the first transfer at the same op moving the same bytes (the
 * keys' and the values' gather are one).  False if it cannot be moved so. */
struct memory_moved {
    int tensor, axis, first;
    struct ir_shard before, after;
};
bool memory_xfer_moved(const struct partition *P, int x, struct memory_moved *m);
/* Bytes of an element transfer x moves (f32 for the loss's statistics and
 * a parameter's gradients), and of its input and result on a rank. */
int memory_xfer_elem_bytes(const struct partition *P, int x);
int64_t memory_xfer_in_bytes(const struct partition *P, int x);
int64_t memory_xfer_out_bytes(const struct partition *P, int x);
/* The next transfer of x's chain, or -1. */
int memory_xfer_next(const struct partition *P, int x);
/* Whether an op's own exchange of its input (the experts' outputs coming
 * back) is read again by its backward (brought again, RESTAGED). */
bool memory_backward_rereads(const struct partition *P, const struct kn_set *K, int x);
/* Whether op's backward reads input k as its forward read it: a matmul's
 * operand for the other's gradient; a value a backward kernel loads, or
 * attention's inputs (its backward runs the forward's launch again). */
bool memory_backward_reads(const struct partition *P, const struct kn_set *K, const bool *needs, int op, int k);
/* Whether transfer x is the vocab-parallel loss's own (its row maxima, its
 * sums): written by one of its launches and read by the next. */
bool memory_xfer_loss_stats(const struct partition *P, int x);
/* Whether transfer x moves what its op makes (an op's own exchange of its
 * output, or of its output's gradient: run after the op's forward, before
 * its backward). */
bool memory_xfer_of_output(const struct partition *P, int x);
/* An all-to-all's axes: the one each member's data is cut along to send
 * (send), the one the pieces it receives are joined along (else): split
 * after and not before, or stacked before and not after; and the reverse. */
int memory_a2a_axis(const struct part_xfer *px, bool send);
/* The rows a collective's pieces are cut into along `axis` of local shape
 * s: the product of the axes before it (1: each piece is contiguous). */
int64_t memory_outer(const struct ir_shape *s, int axis);
void memory_plan(const struct partition *P, const struct ir_schedule *S, const struct kn_set *K, struct ir_memory *M);
/* The stage whose ranks need the most. */
int memory_largest(const struct ir_memory *M);
/* Bytes one micro-batch's blocks hold on stage s, over its virtual stages. */
int64_t memory_block_bytes(const struct ir_role_memory *m);
int memory_check(const struct partition *P, const struct ir_memory *M, int64_t limit, struct diag *d);
/* "80GiB", "80G", "512MiB", "1.5TB", "1000000": bytes; -1 if not a size. */
int64_t memory_parse_size(const char *s);

#endif
