/* schedule.c: build every stage's instruction stream from a partition. */
#include "schedule.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

enum ir_sched_kind schedule_default(const struct partition *P)
{
    return P->virtual_stages > 1 ? IR_SCHED_INTERLEAVED : IR_SCHED_1F1B;
}

struct step {
    bool backward;
    int vstage, micro;
    bool with_next; /* runs with the next step as one unit: no transfers between them */
};

/* Megatron's order of forward and backward steps on one pipeline rank.
 * Forward only, every schedule is its warm-up run to the end: all forward
 * steps, in the order the schedule would start them. */
static int order(enum ir_sched_kind kind, bool forward_only, int stages, int rank, int m, int v, struct step *out)
{
    int n = 0;
    if (forward_only && kind != IR_SCHED_INTERLEAVED) {
        for (int i = 0; i < m; i++)
            out[n++] = (struct step){.backward = false, .vstage = 0, .micro = i};
        return n;
    }
    if (kind == IR_SCHED_GPIPE) {
        for (int i = 0; i < m; i++)
            out[n++] = (struct step){.backward = false, .vstage = 0, .micro = i};
        for (int i = 0; i < m; i++)
            out[n++] = (struct step){.backward = true, .vstage = 0, .micro = i};
        return n;
    }
    if (kind == IR_SCHED_1F1B) {
        int warmup = stages - rank - 1 < m ? stages - rank - 1 : m;
        for (int i = 0; i < warmup; i++)
            out[n++] = (struct step){.backward = false, .vstage = 0, .micro = i};
        for (int i = 0; i < m - warmup; i++) {
            out[n++] = (struct step){.backward = false, .vstage = 0, .micro = warmup + i};
            out[n++] = (struct step){.backward = true, .vstage = 0, .micro = i};
        }
        for (int i = m - warmup; i < m; i++)
            out[n++] = (struct step){.backward = true, .vstage = 0, .micro = i};
        return n;
    }
    /* Interleaved: virtual micro-batch k runs model chunk (k mod pp*v) / pp of
     * micro-batch group k / (pp*v); backward walks the chunks in reverse. */
    int total = m * v, group = stages * v;
    int warmup = (stages - rank - 1) * 2 + (v - 1) * stages;
    if (warmup > total || forward_only)
        warmup = total;
#define FWD(k) ((struct step){.backward = false, .vstage = ((k) % group) / stages, .micro = ((k) / group) * stages + (k) % stages})
#define BWD(k) ((struct step){.backward = true, .vstage = v - 1 - ((k) % group) / stages, .micro = ((k) / group) * stages + (k) % stages})
    for (int k = 0; k < warmup; k++)
        out[n++] = FWD(k);
    if (forward_only)
        return n;
    /* In the steady state a forward and a backward run back to back, then one
     * group moves both directions (Megatron's
     * send_forward_backward_recv_forward_backward); a group between them
     * would wait on a neighbour that waits on us. */
    for (int k = 0; k < total - warmup; k++) {
        out[n] = FWD(warmup + k);
        out[n++].with_next = true;
        out[n++] = BWD(k);
    }
    for (int k = total - warmup; k < total; k++)
        out[n++] = BWD(k);
#undef FWD
#undef BWD
    return n;
}

static bool in_step(const struct partition *P, int stage, const struct step *s, int chunk)
{
    return P->chunks[chunk].stage == stage && P->chunks[chunk].vstage == s->vstage;
}

/* A P2P group being gathered: the transfers posted together. */
struct pending {
    int n, cap;
    struct ir_p2p *v;
};

/* Append the transfers a step receives (before) or sends (after), as p2p halves. */
static void p2p_of(const struct partition *P, int stage, const struct step *s, bool sends, struct pending *out)
{
    for (int x = 0; x < P->n_xfers; x++) {
        const struct part_xfer *px = &P->xfers[x];
        if (px->kind != PART_XFER_SEND)
            continue;
        /* forward: activations arrive at to_chunk and leave from_chunk;
         * backward: their gradients travel the other way */
        int here = s->backward == sends ? px->to_chunk : px->from_chunk;
        int there = here == px->to_chunk ? px->from_chunk : px->to_chunk;
        if (!in_step(P, stage, s, here))
            continue;
        WF_GROW(out->v, out->n, out->cap);
        out->v[out->n++] = (struct ir_p2p){.send = sends, .grad = s->backward, .tensor = px->tensor, .chunk = here,
                                           .peer_chunk = there, .micro = s->micro, .bytes = px->bytes};
    }
}

/* Post the gathered transfers as one P2P instruction, if there are any. */
static int p2p_flush(struct ir_program *prog, struct pending *pd, struct diag *d)
{
    if (pd->n > IR_MAX_P2P) {
        diag_error(d, NULL, 0,
                   "schedule: stage %d posts %d transfers between pipeline stages at once (activations and gradients "
                   "of the tensors that cross a stage boundary); a plan holds at most %d: use fewer pipeline stages "
                   "or fewer tensors carried between layers",
                   prog->stage, pd->n, IR_MAX_P2P);
        return -1;
    }
    if (pd->n)
        ir_program_push(prog, &(struct ir_ins){.kind = IR_INS_P2P, .n_p2p = pd->n, .p2p = pd->v});
    pd->n = 0;
    return 0;
}



static bool is_param(const struct partition *P, int t) { return P->g->tensors[t].kind == IR_TENSOR_PARAM; }

/* Megatron's gradient buckets (distributed/param_and_grad_buffer.py): a
 * chunk's parameters in the order the backward finishes them (reverse),
 * a bucket closed once it holds max(40M, 1M x dp) elements (or
 * --ddp-bucket-size).  A bucket is
 * reduced as soon as the last micro-batch's backward has finished it, while
 * the backward goes on.  A parameter read by several chunks of one stage is
 * the first chunk's.  Returns the buckets' sizes in bytes of main
 * gradients (partition_grad_bytes). */
bool schedule_is_expert_param(const struct partition *P, int t)
{
    for (int k = 0; k < P->g->tensors[t].shape.rank; k++)
        if (P->shard[t].split[k] & IR_PDIM_BIT(IR_PDIM_EP))
            return true;
    return false;
}

int schedule_grad_buckets(const struct partition *P, int chunk, bool experts, int64_t *out, int *first, int *last)
{
    const struct ir_graph *g = P->g;
    int n = 0;
    int64_t limit = (int64_t)P->L->pc.dp * 1000000, fill = 0;
    limit = P->L->pc.ddp_bucket_size > 0 ? P->L->pc.ddp_bucket_size : limit > 40000000 ? limit : 40000000;
    int *params = wf_calloc((size_t)g->n_tensors + 1, sizeof *params), *chunks = wf_calloc((size_t)g->n_tensors + 1, sizeof *chunks);
    for (int i = 0, np = partition_stage_params(P, P->chunks[chunk].stage, params, chunks); i < np; i++) {
        if (chunks[i] != chunk || schedule_is_expert_param(P, params[i]) != experts)
            continue;
        struct ir_shape l = partition_local_shape(P, P->chunks[chunk].part, &g->tensors[params[i]].shape, &P->shard[params[i]]);
        if (!fill && first)
            first[n] = params[i];
        if (last)
            last[n] = params[i];
        fill += ir_shape_numel(&l);
        if (fill >= limit && n + 1 < SCHED_MAX_BUCKETS) {
            out[n++] = fill * partition_grad_bytes(P);
            fill = 0;
        }
    }
    if (fill)
        out[n++] = fill * partition_grad_bytes(P);
    free(params);
    free(chunks);
    return n;
}

int schedule_param_holders(const struct partition *P, int n_stages, int t, uint8_t *on, int64_t *held, bool *alike)
{
    const struct ir_graph *g = P->g;
    memset(on, 0, (size_t)n_stages);
    int n = 0;
    int64_t local = -1, whole = ir_shape_numel(&g->tensors[t].shape);
    *alike = true;
    for (int i = 0; i < g->n_ops; i++)
        for (int k = 0; k < g->ops[i].n_in; k++) {
            if (g->ops[i].in[k] != t)
                continue;
            const struct part_chunk *c = &P->chunks[P->op_chunk[i]];
            if (!on[c->stage]) {
                on[c->stage] = 1;
                n++;
            }
            struct ir_shape l = partition_local_shape(P, c->part, &g->tensors[t].shape, &P->shard[t]);
            *alike &= local < 0 || local == ir_shape_numel(&l);
            local = ir_shape_numel(&l);
        }
    *held = *alike ? local : whole;
    return n;
}

/* Parameters read on more than one stage (a tied embedding, T5's shared
 * table) sum their gradients over the stages that hold them: the holders
 * are derived, not named per model. */
static void find_tied(const struct partition *P, struct ir_schedule *S, int64_t **bytes)
{
    const struct ir_graph *g = P->g;
    uint8_t *on = wf_calloc((size_t)S->n_stages + 1, 1);
    *bytes = NULL;
    for (int t = 0; t < g->n_tensors; t++) {
        int64_t local;
        bool alike;
        if (g->tensors[t].kind != IR_TENSOR_PARAM || schedule_param_holders(P, S->n_stages, t, on, &local, &alike) < 2)
            continue;
        int set = -1;
        for (int k = 0; k < S->n_tied && set < 0; k++)
            if (!memcmp(S->tied_stages[k], on, (size_t)S->n_stages))
                set = k;
        if (set < 0) {
            set = S->n_tied++;
            S->tied_stages = wf_realloc(S->tied_stages, (size_t)S->n_tied * sizeof *S->tied_stages);
            *bytes = wf_realloc(*bytes, (size_t)S->n_tied * sizeof **bytes);
            S->tied_stages[set] = wf_calloc((size_t)S->n_stages + 1, 1);
            memcpy(S->tied_stages[set], on, (size_t)S->n_stages);
            (*bytes)[set] = 0;
        }
        (*bytes)[set] += local * partition_grad_bytes(P); /* main gradients */
    }
    free(on);
}

int schedule_build(const struct partition *P, enum ir_sched_kind kind, bool forward_only, struct ir_schedule *S,
                   struct diag *d)
{
    memset(S, 0, sizeof *S);
    int v = P->virtual_stages, m = P->n_micro;
    if (kind == IR_SCHED_INTERLEAVED && v < 2) {
        diag_error(d, NULL, 0, "--pipeline-schedule interleaved needs virtual stages (--num-layers-per-virtual-pipeline-stage)");
        return -1;
    }
    if (kind != IR_SCHED_INTERLEAVED && v > 1) {
        diag_error(d, NULL, 0, "--pipeline-schedule %s runs one chunk per stage; virtual stages need interleaved",
                   ir_sched_name(kind));
        return -1;
    }
    if (!forward_only && ir_graph_loss(P->g) < 0) { /* nothing to differentiate: a training step would learn nothing */
        const struct ir_graph *g = P->g;
        const struct ir_tensor *t = g->n_outputs ? &g->tensors[g->outputs[0]] : NULL;
        char shape[128] = "";
        if (t)
            ir_shape_str(&t->shape, shape, sizeof shape);
        diag_error(d, t ? t->loc.file : g->file, t ? t->loc.line : 0,
                   "model '%s' has no loss to train: its first output '%s' is %s %s, not a float scalar; use --mode "
                   "infer for a forward pass, or make a loss (a float scalar) its first <output>",
                   g->name, t ? t->local_name : "(none)", t ? ir_dtype_name(t->dtype) : "", shape);
        return -1;
    }
    S->kind = kind;
    S->forward_only = forward_only;
    S->n_micro = m;
    S->virtual_stages = v;
    S->n_chunks = P->n_chunks;
    S->chunk_stage = wf_calloc((size_t)P->n_chunks, sizeof *S->chunk_stage);
    for (int c = 0; c < P->n_chunks; c++) {
        S->chunk_stage[c] = P->chunks[c].stage;
        if (P->chunks[c].stage + 1 > S->n_stages)
            S->n_stages = P->chunks[c].stage + 1;
    }
    if (kind == IR_SCHED_INTERLEAVED && P->L->pc.epp > 0) {
        diag_error(d, NULL, 0, "the interleaved schedule with encoder stages of their own is not supported: use --epp 0 or no virtual stages");
        ir_schedule_free(S);
        return -1;
    }
    int64_t *tied_bytes;
    find_tied(P, S, &tied_bytes);
    S->programs = wf_calloc((size_t)S->n_stages, sizeof *S->programs);
    struct step *steps = wf_calloc((size_t)(2 * m * v + 2), sizeof *steps);
    int64_t *buckets = wf_calloc(SCHED_MAX_BUCKETS, sizeof *buckets);
    struct pending pending = {0};
    struct ir_program reductions = {0}; /* a chunk's gradient reductions, posted after its last backward's sends */
    int rc = 0;
    for (int s = 0; s < S->n_stages; s++) {
        struct ir_program *prog = &S->programs[s];
        prog->stage = s;
        int n = order(kind, forward_only, S->n_stages, s, m, v, steps);
        for (int i = 0; i < n && rc == 0;) {
            int end = i; /* a unit: steps i..end */
            while (steps[end].with_next && end + 1 < n)
                end++;
            for (int k = i; k <= end; k++)
                p2p_of(P, s, &steps[k], false, &pending);
            if ((rc = p2p_flush(prog, &pending, d)))
                break;
            for (int k = i; k <= end; k++) {
                const struct step *st = &steps[k];
                ir_program_push(prog, &(struct ir_ins){.kind = st->backward ? IR_INS_BACKWARD : IR_INS_FORWARD,
                                                       .vstage = st->vstage, .micro = st->micro});
                for (int x = 0; x < P->n_xfers; x++) { /* the backward's in the order it runs them */
                    const struct part_xfer *px = &P->xfers[x];
                    if (px->grad != st->backward || px->kind == PART_XFER_SEND || px->kind == PART_XFER_SLICE ||
                        !in_step(P, s, st, px->to_chunk) || (px->grad && is_param(P, px->tensor)))
                        continue;
                    ir_program_push(prog, &(struct ir_ins){.kind = IR_INS_COLLECTIVE, .coll = part_xfer_coll(px->kind),
                                                           .group = (enum ir_group)ir_group_of_pdim(px->over), .tag = x, .bytes = px->bytes});
                }
                /* The last micro-batch's backward finishes the chunk's
                 * gradients.  A parameter's gradient accumulates over the
                 * micro-batches and moves once: those partial over a
                 * tensor-parallel group (weights held whole but applied to
                 * a slice of the sequence) in one all-reduce per group, as
                 * Megatron coalesces its layer-norm gradients; then the
                 * reduction over data (and context) parallel ranks, bucket
                 * by bucket.  Parameter gradients are main gradients (fp32, or
                 * bf16 under --grad-reduce-in-bf16). */
                for (int c = 0; st->backward && st->micro == m - 1 && c < P->n_chunks; c++) {
                    if (!in_step(P, s, st, c))
                        continue;
                    int64_t coalesced[IR_GROUP_COUNT] = {0};
                    for (int x = 0; x < P->n_xfers; x++) {
                        const struct part_xfer *px = &P->xfers[x];
                        if (!px->grad || px->to_chunk != c || px->kind == PART_XFER_SEND || px->kind == PART_XFER_SLICE ||
                            !is_param(P, px->tensor))
                            continue;
                        int64_t bytes = ir_shape_numel(&px->shape) * partition_grad_bytes(P);
                        if (px->kind == PART_XFER_ALL_REDUCE)
                            coalesced[(enum ir_group)ir_group_of_pdim(px->over)] += bytes;
                        else
                            ir_program_push(&reductions, &(struct ir_ins){.kind = IR_INS_COLLECTIVE, .coll = part_xfer_coll(px->kind),
                                                                   .group = (enum ir_group)ir_group_of_pdim(px->over), .tag = x, .bytes = bytes});
                    }
                    for (int g = 0; g < IR_GROUP_COUNT; g++)
                        if (coalesced[g])
                            ir_program_push(&reductions, &(struct ir_ins){.kind = IR_INS_COLLECTIVE, .coll = IR_COLL_ALL_REDUCE,
                                                                   .group = (enum ir_group)g,
                                                                   .tag = SCHED_TAG_PARAM_GRADS + c * IR_GROUP_COUNT + g,
                                                                   .bytes = coalesced[g]});
                    /* dense parameters over dp x cp; the experts' over the expert data-parallel ranks
                     * (the ranks of an expert-parallel group hold different experts) */
                    for (int experts = 0; experts < 2; experts++) {
                        bool reduced = experts ? P->L->pc.expert_dp > 1 : P->L->pc.dp * P->L->pc.cp > 1;
                        int nb = reduced ? schedule_grad_buckets(P, c, experts, buckets, NULL, NULL) : 0;
                        for (int b = 0; b < nb; b++)
                            ir_program_push(&reductions, &(struct ir_ins){
                                                      .kind = IR_INS_COLLECTIVE, .coll = IR_COLL_ALL_REDUCE,
                                                      .group = experts ? IR_GROUP_EXPERT_DP : IR_GROUP_DP_CP,
                                                      .tag = (experts ? SCHED_TAG_EXPERT_GRADS : SCHED_TAG_GRADS) + c * SCHED_MAX_BUCKETS + b,
                                                      .bytes = buckets[b]});
                    }
                }
                p2p_of(P, s, st, true, &pending);
                /* Megatron's order at the end of 1F1B: the last backward's
                 * send_backward, then finalize_model_grads (the gradients'
                 * reductions), so the stage before waits on the gradient
                 * it needs, not on this stage's reductions. */
                if (reductions.n && (rc = p2p_flush(prog, &pending, d)))
                    break;
                for (int r = 0; r < reductions.n; r++)
                    ir_program_push(prog, &reductions.ins[r]);
                reductions.n = 0;
            }
            i = end + 1;
        }
        if (rc || (rc = p2p_flush(prog, &pending, d)))
            break;
        if (forward_only)
            continue;
        /* The step's end: tied parameters summed over their holders, the
         * global norm for clipping, then the update. */
        for (int t = 0; t < S->n_tied; t++)
            if (S->tied_stages[t][s])
                ir_program_push(prog, &(struct ir_ins){.kind = IR_INS_COLLECTIVE, .coll = IR_COLL_ALL_REDUCE,
                                                       .group = IR_GROUP_TIED, .tag = t, .bytes = tied_bytes[t]});
        if (P->L->pc.tp * P->L->pc.pp > 1 || P->L->pc.epp > 0)
            ir_program_push(prog, &(struct ir_ins){.kind = IR_INS_COLLECTIVE, .coll = IR_COLL_ALL_REDUCE,
                                                   .group = IR_GROUP_MP, .tag = SCHED_TAG_NORM, .bytes = 4});
        if (schedule_norm_over_dp(P)) /* the sum over data and context parallel ranks too (each rank counting one
                                       * copy of each parameter: the lowering's SQSUM) */
            ir_program_push(prog, &(struct ir_ins){.kind = IR_INS_COLLECTIVE, .coll = IR_COLL_ALL_REDUCE,
                                                   .group = IR_GROUP_DP_CP, .tag = SCHED_TAG_NORM, .bytes = 4});
        ir_program_push(prog, &(struct ir_ins){.kind = IR_INS_OPTIMIZER});
    }
    free(steps);
    free(buckets);
    free(tied_bytes);
    free(pending.v);
    free(reductions.ins);
    if (rc)
        ir_schedule_free(S);
    return rc;
}

bool schedule_norm_over_dp(const struct partition *P) { return P->L->pc.ep > 1 || P->L->pc.cp > 1; }
