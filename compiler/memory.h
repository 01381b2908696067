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
 *   comm         the largest collective's output, as staging
 *   workspace    32 MiB for cuBLAS(Lt)'s workspace
 * Views (split/merge heads, reshape) share their input's bytes.  Each
 * tensor counts as one rank holds it (its shard); an op's own temporaries
 * (attention's tiles) are its kernel's.  Forward only (--mode infer) there
 * are no gradients, optimizer state or blocks. */
#ifndef WEFT_MEMORY_H
#define WEFT_MEMORY_H

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
void memory_plan(const struct partition *P, const struct ir_schedule *S, const struct kn_set *K, struct ir_memory *M);
/* The stage whose ranks need the most. */
int memory_largest(const struct ir_memory *M);
/* Bytes one micro-batch's blocks hold on stage s, over its virtual stages. */
int64_t memory_block_bytes(const struct ir_role_memory *m);
int memory_check(const struct partition *P, const struct ir_memory *M, int64_t limit, struct diag *d);
/* "80GiB", "80G", "512MiB", "1.5TB", "1000000": bytes; -1 if not a size. */
int64_t memory_parse_size(const char *s);

#endif
