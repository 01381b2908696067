/* actions.h: a role's steps lowered to what an executor does, in order, with
 * nothing left to decide: the plan's "actions.N" sections (one per stage),
 * written by the compiler (compiler/lower.c) and read here.
 *
 *   struct ir_actions A;
 *   ir_actions_read(plan, stage, &A, &diag);      // this stage's lists
 *   const struct ir_action_list *fw = ir_actions_step(&A, vstage, false);
 *   for (int i = 0; i < fw->n; i++)  run(&fw->v[i]);  // GEMM, LAUNCH, ZERO, COLL, LOSS, SQSUM
 *   A.stages[s].ins[i]                             // program instruction i's, when it is no step
 *   ir_actions_free(&A);
 *
 * Lists: per virtual stage a forward and a backward step, then the
 * optimizer's (the norm's sums, then the update).  An operand names a
 * buffer of the role's memory plan (what, id) and a byte offset in it; its
 * address for a micro-batch is ir_memory_offset's (memplan.h): a block item,
 * a boundary buffer, a working buffer of the virtual stage, or a parameter
 * or gradient.  A launch's arguments are the compiler's (kn_args' sizes),
 * with each split axis's offset in the whole tensor the rank's coordinate
 * along the axis's parallel dimension times the axis's local size
 * (ir_action_launch_args), so one list serves every rank of the role. */
#ifndef WEFT_ACTIONS_H
#define WEFT_ACTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"
#include "kernel.h"
#include "layout.h"
#include "memplan.h"
#include "program.h"

#define IR_ACTS(X)                                                             \
    X(GEMM, "gemm")     /* c = a @ b (+ c when beta is 1), batched */          \
    X(LAUNCH, "launch") /* a kernel of the plan */                             \
    X(ZERO, "zero")     /* bytes of a buffer set to 0 (a gradient about to be added into) */ \
    X(COLL, "coll")     /* a collective over a group: in place (all-reduce), or from buf to out */ \
    X(COPY, "copy")     /* bytes moved (or added) between buffers: a strided block of rows (a slice, packing) */ \
    X(LOSS, "loss")     /* the loss: its row losses (ROWSTATS component 1) added into the step's sum */ \
    X(SQSUM, "sqsum")   /* a gradient's per-row sums of squares added into the norm's, where the rank counts it */ \
    X(SEND, "send")     /* a pipeline transfer's half: to the ranks that run peer_chunk */ \
    X(RECV, "recv")     /* ... and from them; a P2P instruction's halves are posted together, then waited for */ \
    X(PENDING, "pending") /* what the compiler does not lower yet (a tied table split over tp across pipelines that \
                             share an encoder rank; a gather whose pieces do not nest): an executor refuses the plan, naming it */

enum ir_act_kind {
#define X(id, name) IR_ACT_##id,
    IR_ACTS(X)
#undef X
    IR_ACT_COUNT
};

const char *ir_act_name(enum ir_act_kind k);

/* A place in the role's arena: buffer (what, id) of the step's virtual
 * stage, and a byte offset into it. */
struct ir_ref {
    uint8_t what;   /* enum ir_buf_what */
    int32_t id;     /* tensor or op */
    int64_t offset; /* bytes */
};

/* What a GEMM does to its product before writing c, where the fusion pass
 * folded the group after its matmul into it (fuse_gemm_epilogues): x is
 * op(a) @ op(b), bias a row of n broadcast over the m rows. */
#define IR_EPILOGUES(X)                                                        \
    X(NONE, "none")                                                            \
    X(BIAS, "bias")                   /* c = x + bias */                       \
    X(GELU_BIAS, "gelu-bias")         /* c = gelu(x + bias), tanh's approximation */ \
    X(GELU_AUX_BIAS, "gelu-aux-bias") /* aux = x + bias (kept for the backward), c = gelu(aux) */

enum ir_epilogue {
#define X(id, name) IR_EPI_##id,
    IR_EPILOGUES(X)
#undef X
    IR_EPI_COUNT
};

const char *ir_epilogue_name(enum ir_epilogue e);

struct ir_gemm {
    int64_t batch, m, n, k;
    bool ta, tb;
    float beta;     /* 0: overwrite c; 1: add into it */
    uint8_t dtype;  /* of a and b */
    uint8_t c_dtype; /* of c: a parameter's gradient is its main gradient's type (f32, or bf16 under
                      * --grad-reduce-in-bf16), an activation's is the activations' type */
    int64_t lda, ldb, ldc, stride_a, stride_b, stride_c; /* elements; a stride 0 broadcasts */
    struct ir_ref a, b, c;
    uint8_t epilogue;    /* enum ir_epilogue; not NONE: batch 1, beta 0, and the action's launch is the group's
                          * forward kernel, which computes the same from x read at its slot gemm_in (an executor
                          * whose backend has no such epilogue writes x there and runs it: aux, else c) */
    uint8_t gemm_in;     /* that slot */
    struct ir_ref bias;  /* n elements of c_dtype */
    struct ir_ref aux;   /* GELU_AUX_BIAS: m x n like c */
};

struct ir_launch {
    int32_t launch;        /* kernels section's launch */
    uint8_t fn_first, fn_last; /* attention: the functions to run (enum kn_attn_fn) */
    float scale;           /* attention's softmax scale */
    struct kn_args args;   /* fused: sizes; pointers, seed and float arguments are the executor's */
    int n_in, n_out;
    struct ir_ref in[KN_MAX_SLOTS], out[KN_MAX_SLOTS]; /* the slots' buffers (a view's are its input's) */
    struct ir_ref grad_in[KN_MAX_SLOTS], grad_out[KN_MAX_SLOTS]; /* attention's backward (fn_last past KN_ATTN_FWD): where
                                                                  * it adds its inputs' gradients, and reads its output's (grad_out[0]) */
    uint8_t off_pdim[KN_MAX_RANK]; /* per domain axis: the parallel dimensions it is split over (IR_PDIM_BIT) */
    uint8_t gather_pdim[2][KN_MAX_SLOTS]; /* per GATHER slot (in, out): the table rows' split */
    uint8_t q_pos_pdim, k_pos_pdim; /* attention: the parallel dimensions splitting the queries' and keys' sequence:
                                     * the rank's coordinate along them times Sq (Sk) moves q_pos0 (k_pos0) */
};

struct ir_coll_action {
    uint8_t coll;   /* enum ir_coll */
    uint8_t group;  /* enum ir_group */
    int32_t set;    /* TIED: the tied set (ir_schedule.tied_stages) */
    uint8_t dtype;  /* element type of the payload */
    struct ir_ref buf;
    int64_t bytes;  /* payload, this rank's */
    uint8_t copies;    /* TIED, over pipelines sharing an encoder rank: each stage's first rank of them adds its
                        * gradient, the others hold copies of it and add zeros (ir_tied_contributes) */
    struct ir_ref out; /* where the result goes: buf for an all-reduce; an all-gather's pieces side by side, in the
                        * order of the members' coordinates; a reduce-scatter's share; an all-to-all's pieces */
    int64_t out_bytes;
};

/* planes x rows x width bytes from src to dst, each with its own strides
 * (bytes); src moves by the rank's coordinate along src_pdim times
 * src_step (a slice: the rank's piece), dst by dst_pdim's times dst_step
 * (a piece put in its place). */
struct ir_copy {
    struct ir_ref src, dst;
    int64_t planes, rows, width;
    int64_t src_plane, src_pitch, dst_plane, dst_pitch;
    uint8_t src_pdim;   /* bits of enum ir_pdim; 0: none */
    int32_t src_coords; /* the coordinates src_pdim takes: src's widest reach is at the last */
    int64_t src_step;
    uint8_t dst_pdim;   /* the same for dst: the rank's piece put in its place */
    int32_t dst_coords;
    int64_t dst_step;
    uint8_t add;        /* dst += src, elementwise in dtype (width a whole number of them); else a copy */
    uint8_t dtype;
};

struct ir_action {
    uint8_t kind; /* enum ir_act_kind */
    bool awaits;  /* it reads or writes across a transfer the lowering cannot move (PENDING): its operands are
                   * unchecked, and a plan with one does not run */
    struct ir_gemm gemm;
    struct ir_launch launch;
    struct ir_ref zero;  /* ZERO */
    int64_t zero_bytes;
    struct ir_coll_action coll;
    struct ir_copy copy;
    struct {                  /* SEND, RECV */
        int32_t peer_chunk;   /* the other end's chunk: its ranks are ir_p2p_peers' */
        int32_t tag;          /* the same at both ends */
        int32_t vstage, micro; /* whose buffer: the virtual stage and micro-batch of this end's step */
        struct ir_ref buf;
        int64_t bytes;
    } p2p;
    struct ir_ref loss;  /* LOSS: the row statistics; SQSUM: the sums of squares */
    int64_t loss_rows;
    uint8_t sq_only_first; /* SQSUM, LOSS: counted only by ranks at coordinate 0 of these parallel dimensions (bits
                            * of enum ir_pdim): identical copies count once */
    uint8_t sq_replica;    /* SQSUM: and only by one data-parallel replica (enum ir_sq_replica), where the norm
                            * is summed over data-parallel ranks too (experts differ across them) */
};

enum ir_sq_replica { IR_SQ_ANY, IR_SQ_DP0, IR_SQ_EXPERT_DP0 };

struct ir_action_list {
    int n, cap;
    struct ir_action *v;
};

struct ir_stage_actions {
    int n_vstages;
    struct ir_action_list *forward, *backward; /* [n_vstages] */
    int n_ins;
    struct ir_action_list *ins;                /* per instruction of the stage's program that is not a step: its
                                                * actions (a bucket's all-reduce: its byte range of GRADS; the norm's
                                                * sums and all-reduce; the optimizer's updates) */
};

struct ir_actions {
    int n_stages;
    struct ir_stage_actions *stages;
};

void ir_action_push(struct ir_action_list *l, const struct ir_action *a);
void ir_actions_free(struct ir_actions *A);
const struct ir_action_list *ir_actions_step(const struct ir_stage_actions *s, int vstage, bool backward);
/* "gemm 64x96x32 a=value 5+0 ..." into buf. */
char *ir_action_str(const struct ir_action *a, char *buf, size_t n);

/* The buffers action a reads or writes (r[0..n), n at most
 * IR_ACTION_REFS), each as the action names it: a GEMM's matrices (and its
 * epilogue's bias, kept input and launch's slots), a launch's slots (and
 * attention's gradients), a zeroing's, a copy's two ends, a collective's
 * buffer and result, a pipeline half's buffer, a loss's or sum's rows. */
enum { IR_ACTION_REFS = 4 * KN_MAX_SLOTS + 8 };
int ir_action_refs(const struct ir_action *a, const struct ir_ref **r);

/* A fused launch's arguments for the rank at rc: the stored sizes, each
 * split axis's offset, a table's first row. */
void ir_action_launch_args(const struct ir_launch *l, const struct par_config *pc, const struct rank_coords *rc, struct kn_args *a);

/* Every operand of every action a buffer of its role's memory plan, and
 * every access inside that buffer: a GEMM's last element of each matrix, a
 * fused launch's every slot as far as its kernel reaches for its sizes
 * (kn_slot_extent), a collective's payload, a zeroing; every role's
 * program instruction has its actions; and two working buffers that share
 * bytes are used one after the other in their step.  K: the kernels the launches name
 * (NULL: launch extents unchecked).  0, or -1 naming the action in d. */
int ir_actions_check(const struct ir_actions *A, const struct ir_memory *M, const struct kn_set *K, const struct ir_schedule *S,
                     struct diag *d);

struct plan;
struct plan_writer;
void ir_actions_write(struct plan_writer *w, const struct ir_actions *A);
/* stage < 0: every stage's; else only that one (the others empty). */
int ir_actions_read(struct plan *p, int n_stages, int stage, struct ir_actions *A, struct diag *d);

#endif
