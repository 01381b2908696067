/* memplan.h: where every buffer of a role lives: one arena per rank, cut
 * into regions, every buffer at an offset.  The compiler packs it
 * (compiler/memory.c); the runtime allocates the arena once and never
 * allocates again.
 *
 *   struct ir_memory M;                       // from memory_plan, or:
 *   ir_memory_read(plan, stage, &M, &diag);   // one stage's (stage < 0: all)
 *   M.roles[s].size[IR_REGION_ACTIVATIONS]
 *   ir_memory_check(&M, &diag);               // no two live buffers share a byte
 *   ir_memory_free(&M);
 *
 * Regions, in the arena's order (each starts 256-byte aligned):
 *   PARAMS       every parameter the stage's chunks read, once
 *   GRADS        their main gradients (grad_bytes an element: fp32, or bf16
 *                under --grad-reduce-in-bf16), in the order the backward
 *                finishes them, so a data-parallel bucket is a contiguous range
 *   OPTIMIZER    AdamW's moments (and fp32 master weights with --bf16), fp32,
 *                laid out like GRADS scaled to 4 bytes an element
 *                (ir_memory_state_bytes): exp_avg at GRADS' offsets times
 *                4 / grad_bytes, exp_avg_sq one state size further, master
 *                weights one further
 *   ACTIVATIONS  per micro-batch in flight: a block per (virtual stage,
 *                micro-batch) holding what the backward reads (items at
 *                offsets inside the block), and the boundary buffers that
 *                pipeline transfers fill or drain
 *   WORKING      one forward or backward step's transients (the backward's
 *                activation gradients included); steps run one at a time
 *   COMM         packing scratch for collectives along an inner axis (a
 *                sequence-parallel all-gather of (batch, sequence, hidden)
 *                gathers pieces side by side, then unpacks them)
 *   WORKSPACE    the GEMM library's workspace
 * A view (split_heads, merge_heads, reshape, position_embedding's first rows
 * of its table) has no buffer: its bytes, and its gradient's, are its
 * input's.  Lifetimes: ACTIVATIONS buffers by instruction in the stage's program,
 * counted from 1; WORKING buffers by position in their virtual stage's step,
 * forward ops at 1..n, the backward of forward op k at 2n+1-k. */
#ifndef WEFT_MEMPLAN_H
#define WEFT_MEMPLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"

#define IR_REGIONS(X)                                                          \
    X(PARAMS, "parameters")                                                    \
    X(GRADS, "gradients")                                                      \
    X(OPTIMIZER, "optimizer state")                                            \
    X(ACTIVATIONS, "activations")                                              \
    X(WORKING, "working set")                                                  \
    X(COMM, "communication buffers")                                           \
    X(WORKSPACE, "workspace")

enum ir_region {
#define X(id, name) IR_REGION_##id,
    IR_REGIONS(X)
#undef X
    IR_REGION_COUNT
};

const char *ir_region_name(enum ir_region r);
/* "gradient", "exp_avg", "mask": what a buffer of that kind holds. */
const char *ir_buf_what_name(int what);
/* Whether a buffer of that kind is an op's (its id names the op: a mask,
 * row statistics, a routing's scratch), not a tensor's. */
bool ir_buf_of_op(int what);

/* What a buffer holds. */
enum ir_buf_what {
    IR_BUF_VALUE,    /* tensor id's value */
    IR_BUF_GRAD,     /* the gradient of tensor id */
    IR_BUF_MASK,     /* op id's dropout mask: a byte per output element */
    IR_BUF_ROWSTATS, /* op id's per-row statistics: two floats per row */
    IR_BUF_BLOCK,    /* a (virtual stage, micro-batch)'s block of items */
    /* a parameter's optimizer state (in OPTIMIZER, laid out like GRADS) */
    IR_BUF_EXP_AVG,  /* AdamW's first moment of parameter id */
    IR_BUF_EXP_AVG_SQ, /* its second moment */
    IR_BUF_MASTER,   /* its fp32 master weights (--bf16) */
    IR_BUF_SUMSQ,    /* scratch: per-row sums of squares of parameter id's gradient (the global norm's) */
    IR_BUF_ROUTES,   /* scratch: MoE op id's routing, per (token, choice) its row of the experts' buffer, or -1 */
    IR_BUF_FILLS,    /* scratch: and per row of that buffer the (token, choice) it holds, or -1 */
    IR_BUF_NORM,     /* the step's sum of squared gradients (an f32, at the workspace's start; SUMSQ follows it) */
    IR_BUF_STAGED,   /* transfer id's result where it is no tensor's buffer (an all-gather's whole, an all-to-all's
                      * exchange, a slice, a gradient's reduce-scatter; the loss's row maxima, its sums), in the
                      * step that runs the transfer */
    IR_BUF_XFER_IN,  /* transfer id's input where it is no tensor's buffer: the partial sums a producer makes for a
                      * reduce-scatter, or the gradients a chunk's readers give alike, before their conversion */
    IR_BUF_RESTAGED, /* a forward transfer's result brought again by the backward that reads it (an all-gathered
                      * sequence for a weight's gradient), rather than kept from the forward */
    IR_BUF_PACK,     /* scratch in COMM: a collective's pieces side by side, packed from or unpacked to a tensor
                      * split along an inner axis */
    IR_BUF_COUNT
};

#define IR_ALIGN 256

struct ir_buf {
    uint8_t what;        /* enum ir_buf_what */
    uint8_t region;      /* enum ir_region */
    int32_t id;          /* tensor or op; -1 for a block */
    int32_t vstage;      /* -1 for PARAMS, GRADS */
    int32_t micro;       /* ACTIVATIONS: the micro-batch; else -1 */
    int32_t first, last; /* its lifetime (see above), inclusive; 0, 0 where it lives throughout */
    int64_t offset;      /* from its region's start; a block item's, from its block's */
    int64_t bytes;
};

struct ir_role_memory {
    int64_t base[IR_REGION_COUNT], size[IR_REGION_COUNT];
    int64_t total;          /* the arena: what the runtime allocates */
    int in_flight;          /* most blocks alive at once */
    int n_bufs;
    struct ir_buf *bufs;    /* params, grads, blocks, boundary buffers, working buffers */
    int n_items;
    struct ir_buf *items;   /* what a block holds, offsets within it; vstage says whose block */
    int n_vstages;
    int64_t *block_bytes;   /* [n_vstages] */
    int grad_bytes;         /* of a main gradient's element: 4, or 2 under --grad-reduce-in-bf16 (plans before 5.2: 4) */
};

/* One of the optimizer's fp32 arrays: GRADS' size at 4 bytes an element. */
int64_t ir_memory_state_bytes(const struct ir_role_memory *m);

struct ir_memory {
    int n_roles;
    struct ir_role_memory *roles; /* one per pipeline stage */
};

/* Where buffer (what, id) is in the arena, as virtual stage vstage's step
 * for micro-batch `micro` sees it: an item of the (vstage, micro) block, a
 * boundary buffer of that micro-batch, a working buffer of the virtual
 * stage, or a parameter, gradient or optimizer state.  -1 if the role has
 * no such buffer. */
int64_t ir_memory_offset(const struct ir_role_memory *m, int what, int id, int vstage, int micro);
/* The same, and the buffer's bytes (the workspace's for SUMSQ scratch). */
int64_t ir_memory_find(const struct ir_role_memory *m, int what, int id, int vstage, int micro, int64_t *bytes);
/* Whether two buffers of one space can be alive at the same moment. */
bool ir_buf_meet(const struct ir_buf *a, const struct ir_buf *b);
/* Bases from sizes: regions in order, each aligned; sets total. */
void ir_role_memory_layout(struct ir_role_memory *m);
/* Every buffer inside its region (a block item inside its block), and no
 * two buffers of a region whose lifetimes meet share a byte.  0 if so; else
 * the pair and where, in d. */
int ir_memory_check(const struct ir_memory *M, struct diag *d);
void ir_memory_free(struct ir_memory *M);

struct plan;
struct plan_writer;
/* The plan's "memory.N" sections, one per stage. */
void ir_memory_write(struct plan_writer *w, const struct ir_memory *M);
/* stage < 0: every stage's; else only that one (the others empty). */
int ir_memory_read(struct plan *p, int n_stages, int stage, struct ir_memory *M, struct diag *d);

#endif
