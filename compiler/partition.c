/* partition.c: place a typed model on the ranks of a layout.
 *   requires:  a model file and fe options, a parallel config
 *   produces:  the typed graph (vocab padded), the rank layout, pipeline
 *              chunks, and the chunk of every op
 *   reports:   Megatron's model-dependent start-up rules, each at the line of
 *              the dimension at fault and naming the flags involved
 *
 * Stages follow Megatron: layers split evenly over pipeline stages (an error
 * when they do not divide) unless the first and last stage sizes are given;
 * with virtual stages rank p runs chunks p, p+pp, p+2pp, ...  Ops outside the
 * layers go to the first chunk of their part if a layer needs them (the
 * embedding), to the last one otherwise (the head and the loss). */
#include "partition.h"
#include "cost.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct ir_dim *dim_by_flag(const struct ir_graph *g, const char *flag)
{
    for (int i = 0; i < g->n_dims; i++)
        if (g->dims[i].flag && !strcmp(g->dims[i].flag, flag))
            return &g->dims[i];
    return NULL;
}

static void divisors(int64_t v, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (int64_t k = 1; k <= v && len < n; k++)
        if (v % k == 0) {
            if (len > 60) {
                snprintf(buf + len, n - len, ", ...");
                return;
            }
            len += (size_t)snprintf(buf + len, n - len, "%s%" PRId64, len ? ", " : "", k);
        }
}

/* "<dim name="heads">: --tp 5 does not divide --num-attention-heads 12 (...)" */
static void check_divides(const struct ir_graph *g, struct diag *d, const char *flag, int degree,
                          const char *degree_flag, const char *why)
{
    const struct ir_dim *dm = dim_by_flag(g, flag);
    if (!dm || degree <= 1 || dm->value % degree == 0)
        return;
    char list[128];
    divisors(dm->value, list, sizeof list);
    diag_error(d, dm->loc.file, dm->loc.line, "<dim name=\"%s\">: %s does not divide --%s %" PRId64 " (%s: %s)",
               dm->name, degree_flag, flag, dm->value, why, list);
}

static bool any_causal(const struct ir_graph *g)
{
    for (int i = 0; i < g->n_ops; i++)
        if (g->ops[i].kind == IR_OP_ATTENTION && ir_op_int(&g->ops[i], IR_ATTR_CAUSAL))
            return true;
    return false;
}

/* Whether the model has experts for --ep to spread: a parameter split by
 * expert, or tokens dispatched to experts. */
static bool has_experts(const struct ir_graph *g)
{
    for (int i = 0; i < g->n_ops; i++)
        if (g->ops[i].kind == IR_OP_DISPATCH)
            return true;
    for (int t = 0; t < g->n_tensors; t++)
        for (int k = 0; k < g->tensors[t].n_splits; k++)
            if (g->tensors[t].splits[k] == IR_SPLIT_EXPERT)
                return true;
    return false;
}

static void check_model_rules(const struct ir_graph *g, const struct par_config *pc, struct diag *d)
{
    if (pc->ep > 1 && !has_experts(g))
        diag_error(d, NULL, 0,
                   "--expert-model-parallel-size (--ep) %d: %s has no experts to spread over ranks (no parameter is "
                   "split by expert, no op dispatches to experts); leave it at 1, or use a mixture-of-experts model",
                   pc->ep, g->file);
    char f[96];
    snprintf(f, sizeof f, "--tp %d", pc->tp);
    check_divides(g, d, "num-attention-heads", pc->tp, f, "tensor parallel size must divide num-attention-heads");
    check_divides(g, d, "num-query-groups", pc->tp, f, "tensor parallel size must divide num-query-groups");
    check_divides(g, d, "ffn-hidden-size", pc->tp, f, "tensor parallel size must divide ffn-hidden-size");
    check_divides(g, d, "hidden-size", pc->tp, f, "tensor parallel size must divide hidden-size");
    snprintf(f, sizeof f, "--ep %d", pc->ep);
    check_divides(g, d, "num-experts", pc->ep, f, "expert parallel size must divide num-experts");
    /* Context parallelism splits the sequence in 2*cp chunks when attention is
     * causal, so that every rank gets an equal share of the triangle. */
    int cp_split = pc->cp > 1 && any_causal(g) ? 2 * pc->cp : pc->cp;
    snprintf(f, sizeof f, cp_split != pc->cp ? "2 x --cp %d (causal load balancing)" : "--cp %d", pc->cp);
    /* Sequence parallelism splits each context-parallel rank's share of the
     * sequence over its tensor-parallel ranks (Megatron splits the sequence by
     * cp, then the cp-local sequence by tp): tp divides seq / cp.  An encoder
     * on ranks of its own splits over its own tp. */
    static const char *seq_flags[] = {"seq-length", "encoder-seq-length", "decoder-seq-length"};
    for (size_t i = 0; i < WF_COUNT(seq_flags); i++) {
        check_divides(g, d, seq_flags[i], cp_split, f, "context parallelism splits the sequence evenly");
        int tp = i == 1 && pc->epp > 0 && pc->etp > 0 ? pc->etp : pc->tp;
        if (pc->sequence_parallel && tp > 1) {
            char t[96];
            if (pc->cp > 1)
                snprintf(t, sizeof t, "--cp %d x %s %d = %d", pc->cp, i == 1 && tp != pc->tp ? "--etp" : "--tp", tp, pc->cp * tp);
            else
                snprintf(t, sizeof t, "%s %d", i == 1 && tp != pc->tp ? "--etp" : "--tp", tp);
            check_divides(g, d, seq_flags[i], tp * pc->cp, t,
                          pc->cp > 1 ? "with --sequence-parallel each context-parallel rank's share of the sequence splits over "
                                       "the tensor-parallel ranks"
                                     : "with --sequence-parallel the sequence splits over the tensor-parallel ranks");
        }
    }
}

int partition_part_layers(const struct ir_graph *g, enum ir_part part)
{
    int n = 0;
    for (int b = 0; b < g->n_blocks; b++)
        if (g->blocks[b].part == part && g->blocks[b].parent < 0)
            n += (int)g->blocks[b].count;
    return n;
}

int partition_op_layer(const struct ir_graph *g, const struct ir_op *op)
{
    if (op->block < 0)
        return -1;
    int top = op->block;
    while (g->blocks[top].parent >= 0)
        top = g->blocks[top].parent;
    int offset = 0;
    for (int b = 0; b < top; b++)
        if (g->blocks[b].part == g->blocks[top].part && g->blocks[b].parent < 0)
            offset += (int)g->blocks[b].count;
    return offset + op->layer;
}

bool partition_rank_runs(const struct partition *P, int r, int c)
{
    const struct rank_coords *rc = &P->L->ranks[r];
    const struct part_chunk *ch = &P->chunks[c];
    return rc->stage == ch->stage && (rc->part == ch->part || (P->L->pc.epp == 0 && ch->stage == 0));
}

/* The dimension that sets a part's layer count, for messages. */
static const struct ir_dim *layers_dim(const struct ir_graph *g, enum ir_part part)
{
    for (int b = 0; b < g->n_blocks; b++)
        if (g->blocks[b].part == part && g->blocks[b].parent < 0)
            return ir_graph_dim(g, g->blocks[b].count_expr);
    return NULL;
}

static void layer_error(struct partition *P, struct diag *d, enum ir_part part, const char *fmt, int a, int b)
{
    const struct ir_dim *dm = layers_dim(P->g, part);
    char msg[512];
    snprintf(msg, sizeof msg, fmt, a, b);
    if (dm)
        diag_error(d, dm->loc.file, dm->loc.line, "<dim name=\"%s\">: %s", dm->name, msg);
    else
        diag_error(d, P->g->file, 0, "%s", msg);
}

static void add_chunk(struct partition *P, enum ir_part part, int stage, int vstage, int first, int n)
{
    P->chunks = wf_realloc(P->chunks, (size_t)(P->n_chunks + 1) * sizeof *P->chunks);
    P->chunks[P->n_chunks++] = (struct part_chunk){.part = part, .stage = stage, .vstage = vstage,
                                                   .first_layer = first, .n_layers = n};
}

/* Split each part's layers into chunks, Megatron's way. */
static int make_chunks(struct partition *P, const struct par_config *pc, struct diag *d)
{
    int errors = d->n_errors;
    const struct ir_graph *g = P->g;
    if (g->has_part[IR_PART_ENCODER]) {
        int n = partition_part_layers(g, IR_PART_ENCODER), stages = pc->epp > 0 ? pc->epp : 1;
        if (n % stages)
            layer_error(P, d, IR_PART_ENCODER, "%d encoder layers are not divisible by --epp %d", n, stages);
        else
            for (int s = 0; s < stages; s++)
                add_chunk(P, IR_PART_ENCODER, s, 0, s * (n / stages), n / stages);
    }
    int n = partition_part_layers(g, IR_PART_DECODER), pp = pc->pp, base = pc->epp > 0 ? pc->epp : 0;
    int first = pc->first_stage_layers, last = pc->last_stage_layers;
    P->virtual_stages = 1;
    if (pc->layers_per_virtual_stage) {
        int per = pc->layers_per_virtual_stage;
        if (first || last) {
            diag_error(d, NULL, 0, "--num-layers-per-virtual-pipeline-stage cannot be combined with uneven first or last stages");
        } else if (pp < 2) {
            diag_error(d, NULL, 0, "--num-layers-per-virtual-pipeline-stage %d needs --pp 2 or more", per);
        } else if (n % (pp * per)) {
            char msg[256];
            snprintf(msg, sizeof msg, "%%d layers are not a multiple of --pp %d x --num-layers-per-virtual-pipeline-stage %%d = %d",
                     pp, pp * per);
            layer_error(P, d, IR_PART_DECODER, msg, n, per);
        } else {
            P->virtual_stages = n / (pp * per);
            for (int k = 0; k < pp * P->virtual_stages; k++)
                add_chunk(P, IR_PART_DECODER, base + k % pp, k / pp, k * per, per);
        }
        return d->n_errors == errors ? 0 : -1;
    }
    if (!first && !last) {
        if (n % pp) {
            layer_error(P, d, IR_PART_DECODER,
                        "%d layers are not divisible by --pp %d (uneven stages need "
                        "--decoder-first-pipeline-num-layers or --decoder-last-pipeline-num-layers)", n, pp);
        } else {
            for (int s = 0; s < pp; s++)
                add_chunk(P, IR_PART_DECODER, base + s, 0, s * (n / pp), n / pp);
        }
        return d->n_errors == errors ? 0 : -1;
    }
    int middle = pp - (first > 0) - (last > 0), rest = n - first - last;
    if (pp < 2 || first < 0 || last < 0 || rest < 0 || (middle == 0 ? rest != 0 : rest % middle)) {
        diag_error(d, NULL, 0,
                   "--decoder-first-pipeline-num-layers %d and --decoder-last-pipeline-num-layers %d leave %d of %d layers "
                   "for %d middle stage%s of --pp %d, which do not share them evenly",
                   first, last, rest, n, middle, middle == 1 ? "" : "s", pp);
        return -1;
    }
    int at = 0;
    for (int s = 0; s < pp; s++) {
        int k = s == 0 && first ? first : s == pp - 1 && last ? last : rest / middle;
        add_chunk(P, IR_PART_DECODER, base + s, 0, at, k);
        at += k;
    }
    return 0;
}

static int chunk_of_layer(const struct partition *P, enum ir_part part, int layer)
{
    for (int c = 0; c < P->n_chunks; c++)
        if (P->chunks[c].part == part && layer >= P->chunks[c].first_layer &&
            layer < P->chunks[c].first_layer + P->chunks[c].n_layers)
            return c;
    return -1;
}

static int first_chunk(const struct partition *P, enum ir_part part)
{
    for (int c = 0; c < P->n_chunks; c++)
        if (P->chunks[c].part == part)
            return c;
    return -1;
}

static int last_chunk(const struct partition *P, enum ir_part part)
{
    for (int c = P->n_chunks - 1; c >= 0; c--)
        if (P->chunks[c].part == part && P->chunks[c].n_layers > 0)
            return c;
    return first_chunk(P, part);
}

static void place_ops(struct partition *P)
{
    const struct ir_graph *g = P->g;
    P->op_chunk = wf_calloc((size_t)g->n_ops + 1, sizeof *P->op_chunk);
    /* An op outside the layers that a layer of its part needs runs before
     * them: walk consumers to producers, from the last op back. */
    bool *feeds = wf_calloc((size_t)g->n_ops + 1, sizeof *feeds);
    for (int i = g->n_ops - 1; i >= 0; i--) {
        const struct ir_op *op = &g->ops[i];
        if (partition_op_layer(g, op) < 0 && !feeds[i])
            continue;
        for (int k = 0; k < op->n_in; k++) {
            int p = op->in[k] >= 0 ? g->tensors[op->in[k]].producer : -1;
            if (p >= 0 && g->ops[p].part == op->part)
                feeds[p] = true;
        }
    }
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *op = &g->ops[i];
        enum ir_part part = op->part == IR_PART_SHARED ? IR_PART_DECODER : op->part;
        int layer = partition_op_layer(g, op);
        int c = layer >= 0 ? chunk_of_layer(P, part, layer) : feeds[i] ? first_chunk(P, part) : last_chunk(P, part);
        WF_ASSERT(c >= 0);
        P->op_chunk[i] = c;
        P->chunks[c].flops += ir_op_flops(g, op);
        if (layer < 0) {
            if (feeds[i])
                P->chunks[c].has_embedding = true;
            else
                P->chunks[c].has_head = true;
        }
    }
    free(feeds);
    /* Parameter bytes: each parameter once per chunk that reads it. */
    int *seen = wf_calloc((size_t)g->n_tensors + 1, sizeof *seen);
    for (int c = 0; c < P->n_chunks; c++) {
        for (int i = 0; i < g->n_ops; i++) {
            if (P->op_chunk[i] != c)
                continue;
            for (int k = 0; k < g->ops[i].n_in; k++) {
                int t = g->ops[i].in[k];
                if (t < 0 || g->tensors[t].kind != IR_TENSOR_PARAM || seen[t] == c + 1)
                    continue;
                seen[t] = c + 1;
                P->chunks[c].param_bytes +=
                    ir_shape_numel(&g->tensors[t].shape) * ir_dtype_bytes(g->tensors[t].dtype);
            }
        }
    }
    free(seen);
}

static int check_batch(struct partition *P, const struct par_config *pc, struct diag *d)
{
    const struct ir_dim *mb = dim_by_flag(P->g, "micro-batch-size");
    int64_t micro = pc->micro_batch ? pc->micro_batch : mb ? mb->value : 1;
    int64_t per_step = micro * P->L->pc.dp;
    if (!pc->global_batch) {
        P->n_micro = 1;
    } else if (pc->global_batch % per_step) {
        diag_error(d, NULL, 0,
                   "--global-batch-size %d is not a multiple of --micro-batch-size %" PRId64 " x data parallel size %d = %" PRId64,
                   pc->global_batch, micro, P->L->pc.dp, per_step);
        return -1;
    } else {
        P->n_micro = (int)(pc->global_batch / per_step);
    }
    if (P->virtual_stages > 1 && P->n_micro % pc->pp) {
        diag_error(d, NULL, 0,
                   "the interleaved schedule needs the micro-batches per step (%d = --global-batch-size %d / (micro-batch %" PRId64
                   " x dp %d)) to be a multiple of --pp %d",
                   P->n_micro, pc->global_batch, micro, P->L->pc.dp, pc->pp);
        return -1;
    }
    return 0;
}

/* Chunks, op placement and shards for a config; each chunk's cost. */
static int place(struct partition *P, const struct par_config *pc, struct diag *d)
{
    if (make_chunks(P, pc, d) || check_batch(P, pc, d))
        return -1;
    place_ops(P);
    if (partition_shard(P, d))
        return -1;
    for (int i = 0; i < P->g->n_ops; i++)
        P->chunks[P->op_chunk[i]].seconds += cost_op_seconds(P, i, device_find(DEVICE_DEFAULT));
    return 0;
}

static void unplace(struct partition *P)
{
    free(P->chunks);
    free(P->op_chunk);
    free(P->shard);
    free(P->xfers);
    free(P->reads_via);
    free(P->grad_via);
    P->chunks = NULL, P->op_chunk = NULL, P->shard = NULL, P->xfers = NULL, P->reads_via = P->grad_via = NULL;
    P->n_chunks = P->n_xfers = 0;
}

/* The first and last decoder stage sizes that make the slowest stage
 * fastest, with the middle stages even (so Megatron's two flags express it);
 * ties go to the split nearest an even one.  pre and post: the cost of the
 * ops before and after the layers (embedding; head and loss). */
static void choose_stage_sizes(int n, int pp, double pre, const double *layer, double post, int *first, int *last)
{
    double best = -1;
    int best_skew = 0;
    for (int f = 1; f <= n; f++)
        for (int l = 1; f + l <= n; l++) {
            int middle = pp - 2, rest = n - f - l;
            if (middle == 0 ? rest != 0 : (rest % middle || rest / middle < 1))
                continue;
            double worst = pre, t = 0;
            for (int i = 0; i < f; i++)
                worst += layer[i];
            for (int s = 0, at = f; s < middle; s++, at += rest / middle) {
                t = 0;
                for (int i = at; i < at + rest / middle; i++)
                    t += layer[i];
                worst = t > worst ? t : worst;
            }
            t = post;
            for (int i = n - l; i < n; i++)
                t += layer[i];
            worst = t > worst ? t : worst;
            int skew = abs(f - n / pp) + abs(l - n / pp);
            if (best < 0 || worst < best * (1 - 1e-9) || (worst <= best * (1 + 1e-9) && skew < best_skew)) {
                best = worst;
                best_skew = skew;
                *first = f;
                *last = l;
            }
        }
}

/* Measure each decoder layer and the ops around them on one stage, then choose. */
static int balance(struct partition *P, struct par_config *pc, struct diag *d)
{
    struct par_config one = *pc;
    one.pp = 1;
    one.global_batch = 0;
    if (place(P, &one, d))
        return -1;
    int n = partition_part_layers(P->g, IR_PART_DECODER);
    double *layer = wf_calloc((size_t)n + 1, sizeof *layer), pre = 0, post = 0;
    bool after_layers = false; /* ops outside the layers: the embedding before them, the head after */
    for (int i = 0; i < P->g->n_ops; i++) {
        if (P->chunks[P->op_chunk[i]].part != IR_PART_DECODER)
            continue;
        double t = cost_op_seconds(P, i, device_find(DEVICE_DEFAULT));
        int l = partition_op_layer(P->g, &P->g->ops[i]);
        if (l >= 0) {
            layer[l] += t;
            after_layers = true;
        } else if (after_layers) {
            post += t;
        } else {
            pre += t;
        }
    }
    unplace(P);
    choose_stage_sizes(n, pc->pp, pre, layer, post, &pc->first_stage_layers, &pc->last_stage_layers);
    free(layer);
    P->balanced_first = pc->first_stage_layers;
    P->balanced_last = pc->last_stage_layers;
    return 0;
}

/* Load the model with the caller's overrides, and those the layout implies:
 * the micro-batch sizes the model's batch (where it binds --micro-batch-size),
 * and a padded vocabulary replaces its own. */
static struct ir_graph *load(const char *path, const struct fe_options *opt, const struct par_config *pc,
                             const char *vocab_dim, int64_t padded, struct diag *d)
{
    if (!pc) {
        static struct par_config none;
        pc = &none;
    }
    struct fe_override *ov = wf_calloc((size_t)opt->n_overrides + 2, sizeof *ov);
    int n = opt->n_overrides;
    if (n)
        memcpy(ov, opt->overrides, (size_t)n * sizeof *ov);
    char micro[32], vocab[32];
    if (pc->micro_batch > 0) {
        snprintf(micro, sizeof micro, "%d", pc->micro_batch);
        ov[n++] = (struct fe_override){FE_FLAG_IF_BOUND, "micro-batch-size", micro};
    }
    if (vocab_dim) {
        snprintf(vocab, sizeof vocab, "%" PRId64, padded);
        ov[n++] = (struct fe_override){FE_SET, vocab_dim, vocab};
    }
    struct fe_options all = *opt;
    all.overrides = ov;
    all.n_overrides = n;
    struct ir_graph *g = compile_model(path, &all, d);
    free(ov);
    return g;
}

struct ir_graph *partition_load_model(const char *path, const struct fe_options *opt, const struct par_config *pc,
                                      struct diag *d)
{
    return load(path, opt, pc, NULL, 0, d);
}

struct partition *partition_model(const char *path, const struct fe_options *opt, const struct par_config *pc,
                                  struct diag *d)
{
    struct ir_graph *g = load(path, opt, pc, NULL, 0, d);
    if (!g)
        return NULL;
    struct partition *P = wf_calloc(1, sizeof *P);
    P->g = g;
    P->L = rank_layout_new(pc, g->has_part[IR_PART_ENCODER], d);
    if (!P->L) {
        partition_free(P);
        return NULL;
    }
    /* Megatron pads the vocabulary to a multiple of 128 x tp so that every
     * tensor-parallel rank holds an equal slice of the embedding and head. */
    const struct ir_dim *vocab = dim_by_flag(g, "vocab-size");
    if (vocab) {
        int64_t m = (int64_t)(pc->vocab_divisible_by > 0 ? pc->vocab_divisible_by : 1) * pc->tp;
        P->vocab = vocab->value;
        P->padded_vocab = (vocab->value + m - 1) / m * m;
        if (P->padded_vocab != P->vocab) {
            char name[128]; /* a copy: the graph holding vocab->name is freed below */
            snprintf(name, sizeof name, "%s", vocab->name);
            ir_graph_free(g);
            P->g = g = load(path, opt, pc, name, P->padded_vocab, d);
            if (!g) {
                partition_free(P);
                return NULL;
            }
        }
    }
    check_model_rules(g, &P->L->pc, d);
    struct par_config use = P->L->pc;
    if (!d->n_errors && use.balance_pipeline) {
        if (use.first_stage_layers || use.last_stage_layers || use.layers_per_virtual_stage)
            diag_error(d, NULL, 0, "--balance-pipeline chooses the first and last stage sizes itself: drop "
                                   "--decoder-first/last-pipeline-num-layers and virtual stages");
        else if (use.pp > 1 && balance(P, &use, d) == 0)
            P->L->pc = use;
    }
    if (d->n_errors || place(P, &use, d)) {
        partition_free(P);
        return NULL;
    }
    return P;
}

void partition_free(struct partition *P)
{
    if (!P)
        return;
    ir_graph_free(P->g);
    rank_layout_free(P->L);
    unplace(P);
    free(P);
}

int partition_stage_params(const struct partition *P, int stage, int *params, int *chunks)
{
    const struct ir_graph *g = P->g;
    int *owner = wf_calloc((size_t)g->n_tensors + 1, sizeof *owner); /* chunk + 1; -1: listed */
    for (int i = 0; i < g->n_ops; i++)
        for (int k = 0; P->chunks[P->op_chunk[i]].stage == stage && k < g->ops[i].n_in; k++) {
            int t = g->ops[i].in[k];
            if (t >= 0 && g->tensors[t].kind == IR_TENSOR_PARAM && !owner[t])
                owner[t] = P->op_chunk[i] + 1;
        }
    int n = 0;
    for (int c = 0; c < P->n_chunks; c++)
        for (int i = g->n_ops - 1; P->chunks[c].stage == stage && i >= 0; i--)
            for (int k = g->ops[i].n_in - 1; P->op_chunk[i] == c && k >= 0; k--) {
                int t = g->ops[i].in[k];
                if (t < 0 || g->tensors[t].kind != IR_TENSOR_PARAM || owner[t] != c + 1)
                    continue;
                owner[t] = -1;
                chunks[n] = c;
                params[n++] = t;
            }
    free(owner);
    return n;
}

int64_t partition_stage_param_elems(const struct partition *P, int stage)
{
    const struct ir_graph *g = P->g;
    int *params = wf_calloc((size_t)g->n_tensors + 1, sizeof *params), *chunks = wf_calloc((size_t)g->n_tensors + 1, sizeof *chunks);
    int64_t n = 0;
    for (int i = 0, np = partition_stage_params(P, stage, params, chunks); i < np; i++) {
        struct ir_shape l = partition_local_shape(P, P->chunks[chunks[i]].part, &g->tensors[params[i]].shape, &P->shard[params[i]]);
        n += ir_shape_numel(&l);
    }
    free(params);
    free(chunks);
    return n;
}


void partition_norm_counts(const struct partition *P, int rank, bool *counts)
{
    const struct ir_graph *g = P->g;
    const struct rank_coords *rc = &P->L->ranks[rank];
    int *first = wf_calloc((size_t)g->n_tensors + 1, sizeof *first); /* stage + 1 */
    for (int i = 0; i < g->n_ops; i++)
        for (int k = 0; k < g->ops[i].n_in; k++) {
            int t = g->ops[i].in[k], st = P->chunks[P->op_chunk[i]].stage;
            if (t >= 0 && g->tensors[t].kind == IR_TENSOR_PARAM && (!first[t] || st + 1 < first[t]))
                first[t] = st + 1;
        }
    for (int t = 0; t < g->n_tensors; t++) {
        counts[t] = first[t] == rc->stage + 1;
        if (!counts[t])
            continue;
        const struct ir_shard *sh = &P->shard[t];
        bool split[IR_PDIM_COUNT] = {false}, expert = false;
        for (int k = 0; k < g->tensors[t].shape.rank; k++)
            for (int p = 1; p < IR_PDIM_COUNT; p++)
                split[p] |= (sh->split[k] & IR_PDIM_BIT(p)) != 0;
        expert = split[IR_PDIM_EP] || split[IR_PDIM_XTP];
        int tp = expert ? IR_PDIM_XTP : IR_PDIM_TP, coord = expert ? rc->expert_tp : rc->tp;
        if (!split[tp] && partition_degree(P, rc->part, (enum ir_pdim)tp) > 1 && coord != 0)
            counts[t] = false;
        if (!expert && partition_degree(P, rc->part, IR_PDIM_CP) > 1 && rc->cp != 0)
            counts[t] = false; /* (the expert grid folds cp into its data parallel ranks) */
    }
    free(first);
}

int partition_elem_bytes(const struct partition *P, const struct ir_tensor *t)
{
    return ir_dtype_is_float(t->dtype) && P->L->pc.bf16 ? 2 : ir_dtype_bytes(t->dtype);
}

int partition_grad_dtype(const struct partition *P)
{
    return P->L->pc.bf16 && P->L->pc.grad_reduce_in_bf16 ? IR_DTYPE_BF16 : IR_DTYPE_F32;
}

int partition_grad_bytes(const struct partition *P) { return ir_dtype_bytes((enum ir_dtype)partition_grad_dtype(P)); }
