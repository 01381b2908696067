/* memory.h: what each rank will need, by category, before anything runs.
 *
 *   struct mem_report m;
 *   memory_plan(P, &S, &m);
 *   m.stages[s].total          // bytes on a rank of stage s
 *   memory_check(P, &m, limit, &diag);   // a rank over the limit: an error naming its largest items
 *   mem_report_free(&m);
 *
 * Categories (Megatron's mixed-precision accounting with --bf16):
 *   parameters   4 bytes each (2 with --bf16)
 *   gradients    4 bytes each (fp32 main gradients)
 *   optimizer    AdamW's two moments, 8 bytes (12 with --bf16: + fp32 master)
 *   activations  what each op's backward keeps (ops.def's saves column), for
 *                every micro-batch in flight at the stage's peak, found by
 *                walking its schedule; views (split/merge heads, reshape)
 *                share their input's bytes
 *   comm         the largest group of receives and sends, and the largest
 *                collective output, as staging buffers
 *   workspace    32 MiB for cuBLAS(Lt)'s workspace
 * Activations count each tensor as one rank holds it (its shard).  Forward
 * only (--mode infer) there are no gradients or optimizer state, and the
 * activations are the largest chunk's working set (memory_chunk_working_set). */
#ifndef WEFT_MEMORY_H
#define WEFT_MEMORY_H

#include "program.h"
#include "partition.h"

enum mem_cat { MEM_PARAMS, MEM_GRADS, MEM_OPTIMIZER, MEM_ACTIVATIONS, MEM_COMM, MEM_WORKSPACE, MEM_COUNT };

const char *mem_cat_name(enum mem_cat c);

struct mem_stage {
    int64_t bytes[MEM_COUNT];
    int64_t total;
    int in_flight;                /* micro-batches whose activations are held at the peak */
    int64_t activations_per_micro; /* of the stage's chunks, one micro-batch each */
};

struct mem_report {
    int n_stages;
    struct mem_stage *stages;
    int largest; /* the stage whose ranks need the most */
};

void memory_plan(const struct partition *P, const struct ir_schedule *S, struct mem_report *m);
/* Bytes a forward pass of one chunk keeps for its backward, per micro-batch. */
int64_t memory_chunk_activations(const struct partition *P, int chunk);
/* The most bytes a forward pass of one chunk holds at once, per micro-batch:
 * every tensor from its first use to its last in the chunk (to the chunk's
 * end if it leaves it).  A forward-only step's activations. */
int64_t memory_chunk_working_set(const struct partition *P, int chunk);
int memory_check(const struct partition *P, const struct mem_report *m, int64_t limit, struct diag *d);
void mem_report_free(struct mem_report *m);
/* "80GiB", "80G", "512MiB", "1.5TB", "1000000": bytes; -1 if not a size. */
int64_t memory_parse_size(const char *s);

#endif
