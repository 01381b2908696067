/* program.h: what each pipeline rank does in one training step, and the
 * proof that all of them together cannot hang.
 *
 *   struct ir_schedule S;                       // built by schedule_build (compiler/)
 *   struct diag d;  diag_init(&d);
 *   if (ir_schedule_verify(&S, layout, &d))     // deadlock or mismatch: d says who waits for what
 *       diag_print(&d, stderr);
 *
 * One program per pipeline stage: every rank of a stage runs the same
 * instructions, its peers and groups found from its coordinates, so a plan's
 * size does not grow with tp or dp.  Instructions:
 *   FORWARD / BACKWARD   a stage's chunks (of one virtual stage) on one micro-batch
 *   P2P                  sends and receives posted together and done together
 *                        (an NCCL group); peers are the neighbouring stages
 *   COLLECTIVE           entered by every rank of a group, in the same order
 *   OPTIMIZER            the parameter update, after every gradient is reduced */
#ifndef WEFT_PROGRAM_H
#define WEFT_PROGRAM_H

#include <stdbool.h>
#include <stdint.h>

#include "diag.h"
#include "layout.h"

enum ir_ins_kind { IR_INS_FORWARD, IR_INS_BACKWARD, IR_INS_P2P, IR_INS_COLLECTIVE, IR_INS_OPTIMIZER };

#define IR_COLLS(X)                                                            \
    X(ALL_REDUCE, "all-reduce")                                                \
    X(ALL_GATHER, "all-gather")                                                \
    X(REDUCE_SCATTER, "reduce-scatter")                                        \
    X(ALL_TO_ALL, "all-to-all")                                                \
    X(ALL_REDUCE_MAX, "all-reduce-max")

enum ir_coll {
#define X(id, name) IR_COLL_##id,
    IR_COLLS(X)
#undef X
    IR_COLL_COUNT
};

/* The group a collective runs over, found per rank from the layout (the
 * kind of group of layout.h each is); TIED is the ranks of the rank's
 * pipeline that hold one tied parameter set, no kind of the layout's. */
#define IR_GROUPS(X)                                                           \
    X(TP, "tp", PAR_GROUP_TP)                                                  \
    X(CP, "cp", PAR_GROUP_CP)                                                  \
    X(EP, "ep", PAR_GROUP_EP)                                                  \
    X(EXPERT_TP, "expert_tp", PAR_GROUP_EXPERT_TP)                             \
    X(DP_CP, "dp_cp", PAR_GROUP_DP_CP)                                         \
    X(MP, "mp", PAR_GROUP_MP)                                                  \
    X(TIED, "tied", -1)                                                        \
    X(EXPERT_DP, "expert_dp", PAR_GROUP_EXPERT_DP)

enum ir_group {
#define X(id, name, kind) IR_GROUP_##id,
    IR_GROUPS(X)
#undef X
    IR_GROUP_COUNT
};

const char *ir_coll_name(enum ir_coll c);
const char *ir_group_name(enum ir_group g);
/* The layout's kind of group (enum par_group_kind) a program's group is; -1 for TIED. */
int ir_group_layout_kind(enum ir_group g);
/* The group a collective over a parallel dimension (enum ir_pdim) runs in:
 * tp's, cp's, ep's or expert tp's; -1 for none (a pipeline send). */
int ir_group_of_pdim(int pdim);

/* The most transfers one P2P group may hold: the plan file counts them in
 * a byte.  The schedule refuses a model that would need more. */
#define IR_MAX_P2P 255

/* One side of a point-to-point transfer: a tensor (activation, or its
 * gradient going back) crossing from one chunk to a neighbouring one. */
struct ir_p2p {
    bool send, grad;
    int tensor;           /* the activation (its gradient when grad) */
    int chunk, peer_chunk; /* this rank's chunk and the other end's */
    int micro;
    int64_t bytes;
};

struct ir_ins {
    enum ir_ins_kind kind;
    int vstage, micro;     /* FORWARD, BACKWARD: the virtual stage (its chunks) and micro-batch */
    int n_p2p;             /* P2P */
    struct ir_p2p *p2p;    /* [n_p2p]: the program's own copy (ir_program_push makes it) */
    enum ir_coll coll;     /* COLLECTIVE */
    enum ir_group group;
    int tag;               /* which collective: the same on every member */
    int64_t bytes;
};

struct ir_program {
    int stage;
    int n, cap;
    struct ir_ins *ins;
};

#define IR_SCHEDULES(X)                                                        \
    X(GPIPE, "gpipe")                                                          \
    X(1F1B, "1f1b")                                                            \
    X(INTERLEAVED, "interleaved")

enum ir_sched_kind {
#define X(id, name) IR_SCHED_##id,
    IR_SCHEDULES(X)
#undef X
    IR_SCHED_COUNT
};

const char *ir_sched_name(enum ir_sched_kind k);
int ir_sched_parse(const char *s); /* -1 if unknown */

struct ir_schedule {
    enum ir_sched_kind kind;
    bool forward_only;           /* --mode infer: forward steps only, no gradients, no update */
    int n_stages, n_micro, virtual_stages;
    struct ir_program *programs; /* [n_stages] */
    int n_chunks;
    int *chunk_stage;            /* [n_chunks]: the stage that runs each chunk */
    int n_tied;
    uint8_t **tied_stages;       /* [n_tied][n_stages]: 1 where a stage holds the tied set */
};

/* Append a copy of ins, its transfers included. */
void ir_program_push(struct ir_program *p, const struct ir_ins *ins);
void ir_schedule_free(struct ir_schedule *S);
/* "send activation 3 of chunk 1 micro-batch 2 to chunk 2", into buf. */
char *ir_ins_str(const struct ir_ins *ins, char *buf, size_t n);

/* How long instructions take, for a timed run (weft simulate). */
struct ir_costs {
    /* FORWARD, BACKWARD, OPTIMIZER on a stage */
    double (*compute)(void *ctx, int stage, const struct ir_ins *ins);
    /* a collective over n ranks, or one transfer of a P2P group; inter_node:
     * the ranks do not share a node */
    double (*comm)(void *ctx, const struct ir_ins *ins, int k, int n, bool inter_node);
    void *ctx;
    int ranks_per_node;
};

/* What a timed run records: each rank's clock, and the spans of the ranks of
 * one pipeline (rows of a timeline picture). */
struct ir_span {
    int row;           /* the rank's stage */
    double start, end;
    const struct ir_ins *ins;
};

struct ir_timeline {
    double step_time;  /* the last rank's finish */
    double *busy;      /* [ranks]: seconds of compute (forward and backward steps) */
    double *optimizer; /* [ranks]: seconds of the update */
    double *waiting;   /* [ranks]: seconds in pipeline transfers (from posting them until they are done)
                        * and waiting for the other members of a collective to arrive */
    double *coll;      /* [ranks * IR_GROUP_COUNT]: seconds in each group's collectives, from the moment
                        * the whole group is there */
    double *finish;    /* [ranks] */
    int n_spans, cap_spans;
    struct ir_span *spans;
};

void ir_timeline_free(struct ir_timeline *t);
/* Rank r's pipeline idle time: waiting on other ranks (in its transfers, for
 * a collective's group) and from its finish to the step's end. */
double ir_timeline_idle(const struct ir_timeline *t, int r);

/* Run every rank's program against the others (sends meet receives of the
 * same tensor, micro-batch and size; collectives are entered by their whole
 * group in one order).  0 if every rank finishes; otherwise the diagnosis:
 * which ranks, at which instructions, wait for what.  With costs, the run
 * also keeps each rank's clock and fills the timeline. */
int ir_schedule_run(const struct ir_schedule *S, const struct rank_layout *L, const struct ir_costs *costs,
                    struct ir_timeline *tl, struct diag *d);
int ir_schedule_verify(const struct ir_schedule *S, const struct rank_layout *L, struct diag *d);

/* The ranks at the stage of `chunk` in rank r's pipelines: one, or several
 * where an encoder rank feeds several decoder ranks. */
int ir_p2p_peers(const struct ir_schedule *S, const struct rank_layout *L, int r, int chunk, int *out, int max);
/* Per pipeline-parallel group, its component: pipelines that share a rank
 * (an encoder rank under several decoder tensor-parallel ranks, --etp
 * below --tp) are one, named by its smallest group.  A tied set's group
 * spans a component's ranks at the set's stages.  Freed by the caller. */
int *ir_pp_components(const struct rank_layout *L);
/* Whether rank r is the first of its component's ranks at its stage: the
 * one whose copy of a tied parameter a component of several pipelines
 * counts (the others hold copies of it). */
bool ir_tied_contributes(const struct rank_layout *L, const int *component, int r);

/* The plan file's "layout", "meta" (part of it), "tied" and "program.N"
 * sections: what a rank needs to know whom it talks to and what it runs. */
struct plan;
struct plan_writer;
void ir_layout_write(struct plan_writer *w, const struct par_config *pc, bool has_encoder);
int ir_layout_read(struct plan *p, struct par_config *pc, bool *has_encoder, struct diag *d);
void ir_schedule_write(struct plan_writer *w, const struct ir_schedule *S);
/* stage < 0: every stage's program; else only that stage's (the others empty). */
int ir_schedule_read(struct plan *p, int stage, struct ir_schedule *S, struct diag *d);

#endif
