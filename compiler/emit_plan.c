/* emit_plan.c: a compiled model into the plan file's sections. */
#include "emit_plan.h"
#include "expr.h"
#include "plan.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether ops a and b are forward dropouts with one flag and one p. */
static bool same_dropout(const struct ir_op *a, const struct ir_op *b)
{
    return a->kind == IR_OP_DROPOUT && b->kind == IR_OP_DROPOUT && a->grad_of < 0 && b->grad_of < 0 &&
           ir_op_float(a, IR_ATTR_P) == ir_op_float(b, IR_ATTR_P) && !strcmp(a->flag ? a->flag : "", b->flag ? b->flag : "");
}

/* For the first forward dropout of its (flag, p): the ops that share them;
 * 0 for any other op. */
static int dropout_ops(const struct ir_graph *g, int i)
{
    int n = 0;
    for (int k = 0; k < g->n_ops; k++)
        if (same_dropout(&g->ops[k], &g->ops[i])) {
            if (k < i)
                return 0;
            n++;
        }
    return n;
}

/* A dimension as the model file and its flags set it: the vocabulary
 * before the layout padded it (partition.c), so token ids stay below it
 * and a Hugging Face file's shapes are its own. */
static int64_t dim_written(const struct partition *P, const struct ir_dim *dm)
{
    return P->vocab && dm->flag && !strcmp(dm->flag, "vocab-size") ? P->vocab : dm->value;
}

static int lookup_written(void *ctx, const char *name, int64_t *v, char *err, size_t n)
{
    const struct partition *P = ctx;
    for (int i = 0; i < P->g->n_dims; i++)
        if (!strcmp(P->g->dims[i].name, name)) {
            *v = dim_written(P, &P->g->dims[i]);
            return 0;
        }
    snprintf(err, n, "no dimension '%s'", name);
    return -1;
}

/* An expression the frontend checked over the dimensions the compile used,
 * now over the dimensions as written (an unpadded vocabulary may not divide
 * where the padded one did: an error at loc). */
static int64_t eval_written(const struct partition *P, const char *text, struct ir_loc loc, struct diag *d)
{
    char err[256];
    int64_t v = 0;
    struct expr *e = expr_parse(P->g->arena, text, err, sizeof err);
    if (!e || expr_eval(e, lookup_written, (void *)P, &v, err, sizeof err) || v < 1) {
        diag_error(d, loc.file, loc.line, "'%s' with the vocabulary as written (%" PRId64 "): %s", text, P->vocab,
                   v < 1 ? "less than 1" : err);
        return 1;
    }
    return v;
}

/* A shape's axes as written (the frontend checked: 1..IR_MAX_RANK of them). */
static int shape_axes(const char *shape, char axes[IR_MAX_RANK][128])
{
    int n = 0;
    for (const char *q = shape; *q && n < IR_MAX_RANK;) {
        while (*q == ' ' || *q == '\t' || *q == '\n')
            q++;
        size_t len = strcspn(q, " \t\n");
        if (!len)
            break;
        snprintf(axes[n++], sizeof axes[0], "%.*s", (int)len, q);
        q += len;
    }
    return n;
}

/* Every expression of the "hf" section evaluates over the dimensions as written. */
static int hf_check(const struct partition *P, struct diag *d)
{
    const struct ir_hf *hf = P->g->hf;
    int errors = d->n_errors;
    for (int i = 0; i < hf->n_config; i++)
        if (hf->config[i].kind == IR_HF_INT)
            eval_written(P, hf->config[i].value, hf->config[i].loc, d);
    for (int i = 0; i < hf->n_maps; i++) {
        eval_written(P, hf->maps[i].blocks, P->g->tensors[hf->maps[i].tensor].loc, d);
        for (int k = 0; k < hf->maps[i].n_sources; k++) {
            char axes[IR_MAX_RANK][128];
            int n = shape_axes(hf->maps[i].sources[k].shape, axes);
            for (int a = 0; a < n; a++)
                eval_written(P, axes[a], hf->maps[i].sources[k].loc, d);
        }
    }
    return d->n_errors != errors ? -1 : 0;
}

/* Section "hf" (present where the model file has <huggingface>): model_type,
 * architecture, the optional prefix; config.json's keys (key, kind, value as
 * text: an INT evaluated); per mapped param its tensor, blocks and sources
 * (name, transpose, chunks, rank, the shape in Hugging Face's orientation
 * with the dimensions as written). */
static void emit_hf(struct plan_writer *w, const struct partition *P, struct diag *d)
{
    const struct ir_hf *hf = P->g->hf;
    plan_section(w, "hf");
    plan_put_str(w, hf->model_type);
    plan_put_str(w, hf->architecture);
    plan_put_str(w, hf->optional_prefix);
    plan_put_u32(w, (uint32_t)hf->n_config);
    for (int i = 0; i < hf->n_config; i++) {
        const struct ir_hf_config *c = &hf->config[i];
        char num[32];
        if (c->kind == IR_HF_INT)
            snprintf(num, sizeof num, "%" PRId64, eval_written(P, c->value, c->loc, d));
        plan_put_str(w, c->key);
        plan_put_u8(w, (uint8_t)c->kind);
        plan_put_str(w, c->kind == IR_HF_INT ? num : c->value);
    }
    plan_put_u32(w, (uint32_t)hf->n_maps);
    for (int i = 0; i < hf->n_maps; i++) {
        const struct ir_hf_map *m = &hf->maps[i];
        plan_put_i32(w, m->tensor);
        plan_put_i64(w, eval_written(P, m->blocks, P->g->tensors[m->tensor].loc, d));
        plan_put_u32(w, (uint32_t)m->n_sources);
        for (int k = 0; k < m->n_sources; k++) {
            const struct ir_hf_source *src = &m->sources[k];
            plan_put_str(w, src->name);
            plan_put_u8(w, src->transpose);
            plan_put_i64(w, src->chunks);
            char axes[IR_MAX_RANK][128];
            int n = shape_axes(src->shape, axes);
            plan_put_u8(w, (uint8_t)n);
            for (int a = 0; a < n; a++)
                plan_put_i64(w, eval_written(P, axes[a], src->loc, d));
        }
    }
}

int emit_plan(const struct compiled *C, const char *path, struct diag *d)
{
    const struct partition *P = C->P;
    const struct ir_schedule *S = &C->S;
    const struct sim_result *sim = &C->sim;
    const char *model_path = C->model;
    const struct ir_graph *g = P->g;
    if (g->hf && hf_check(P, d))
        return -1;
    struct plan_writer *w = plan_writer_new("weft " WEFT_VERSION);
    size_t len = 0;
    char *src = wf_read_file(model_path, 64u << 20, &len);
    plan_section(w, "meta");
    plan_put_str(w, g->name);
    plan_put_str(w, model_path);
    plan_put_u64(w, src ? wf_hash(src, len, 0) : 0); /* the model file's digest */
    free(src);
    plan_put_str(w, g->variant);
    plan_put_u32(w, (uint32_t)g->n_dims);
    for (int i = 0; i < g->n_dims; i++) { /* as written: the vocabulary unpadded (the tensors hold it padded) */
        plan_put_str(w, g->dims[i].name);
        plan_put_i64(w, dim_written(P, &g->dims[i]));
    }
    plan_put_str(w, sim->dev.name);
    plan_put_f64(w, sim->step_time);
    plan_put_f64(w, sim->bubble);
    /* The dropout probabilities the ops use (after --hidden-dropout and
     * the like): each distinct flag and p once, with its count of ops. */
    int n_drop = 0;
    for (int i = 0; i < g->n_ops; i++)
        n_drop += dropout_ops(g, i) > 0;
    plan_put_u32(w, (uint32_t)n_drop);
    for (int i = 0; i < g->n_ops; i++) {
        int n = dropout_ops(g, i);
        if (n > 0) {
            plan_put_str(w, g->ops[i].flag ? g->ops[i].flag : "");
            plan_put_f64(w, ir_op_float(&g->ops[i], IR_ATTR_P));
            plan_put_u32(w, (uint32_t)n);
        }
    }
    /* The model FLOPs of one step, whole (every replica's micro-batches):
     * each chunk's forward FLOPs a micro-batch (ir_op_flops summed, as weft
     * check counts them), times the micro-batches of a step (each replica's
     * schedule's, over the data-parallel replicas), times 3
     * when training (the backward twice the forward, as weft check and
     * Megatron's num_floating_point_operations count it). */
    double flops = 0;
    for (int c = 0; c < P->n_chunks; c++)
        flops += P->chunks[c].flops;
    plan_put_f64(w, flops * S->n_micro * P->L->pc.dp * (C->train ? 3 : 1));

    ir_layout_write(w, &P->L->pc, P->L->has_encoder);

    plan_section(w, "chunks");
    plan_put_u32(w, (uint32_t)P->n_chunks);
    for (int c = 0; c < P->n_chunks; c++) {
        const struct part_chunk *ch = &P->chunks[c];
        plan_put_u8(w, (uint8_t)ch->part);
        plan_put_i32(w, ch->stage);
        plan_put_i32(w, ch->vstage);
        plan_put_i32(w, ch->first_layer);
        plan_put_i32(w, ch->n_layers);
        plan_put_u8(w, ch->has_embedding);
        plan_put_u8(w, ch->has_head);
        plan_put_f64(w, ch->flops);
        plan_put_f64(w, ch->seconds);
        plan_put_i64(w, ch->param_bytes);
    }

    plan_section(w, "tensors");
    plan_put_u32(w, (uint32_t)g->n_tensors);
    for (int i = 0; i < g->n_tensors; i++) {
        const struct ir_tensor *t = &g->tensors[i];
        plan_put_str(w, t->name);
        plan_put_str(w, t->local_name);
        plan_put_u8(w, (uint8_t)t->kind);
        plan_put_u8(w, (uint8_t)t->dtype);
        plan_put_u8(w, (uint8_t)t->shape.rank);
        for (int k = 0; k < t->shape.rank; k++) {
            plan_put_i64(w, t->shape.ax[k].size);
            plan_put_u8(w, P->shard[i].split[k]);
            plan_put_u8(w, P->shard[i].stack[k]);
        }
        plan_put_u8(w, P->shard[i].partial);
        plan_put_u8(w, (uint8_t)t->part);
        plan_put_i32(w, t->layer);
        plan_put_i32(w, t->producer);
        plan_put_u8(w, (uint8_t)t->init);
        plan_put_f64(w, t->init_std);
    }

    plan_section(w, "ops");
    plan_put_u32(w, (uint32_t)g->n_ops);
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *o = &g->ops[i];
        plan_put_u8(w, (uint8_t)o->kind);
        plan_put_u8(w, (uint8_t)o->n_in);
        for (int k = 0; k < o->n_in; k++)
            plan_put_i32(w, o->in[k]);
        plan_put_u8(w, (uint8_t)o->n_out);
        for (int k = 0; k < o->n_out; k++)
            plan_put_i32(w, o->out[k]);
        plan_put_i32(w, P->op_chunk[i]);
        plan_put_i32(w, partition_op_layer(g, o)); /* the layer across its part's repeats */
        plan_put_u8(w, (uint8_t)o->n_attrs);
        for (int a = 0; a < o->n_attrs; a++) {
            plan_put_u8(w, (uint8_t)o->attrs[a].id);
            plan_put_i64(w, o->attrs[a].i);
            plan_put_f64(w, o->attrs[a].f);
        }
    }

    plan_section(w, "xfers");
    plan_put_u32(w, (uint32_t)P->n_xfers);
    for (int i = 0; i < P->n_xfers; i++) {
        const struct part_xfer *x = &P->xfers[i];
        plan_put_u8(w, (uint8_t)x->kind);
        plan_put_u8(w, (uint8_t)x->over);
        plan_put_u8(w, x->grad);
        plan_put_i32(w, x->tensor);
        plan_put_i32(w, x->op);
        plan_put_i32(w, x->from_chunk);
        plan_put_i32(w, x->to_chunk);
        plan_put_i32(w, x->axis);
        plan_put_i64(w, x->bytes);
    }

    plan_section(w, "outputs");
    plan_put_u32(w, (uint32_t)g->n_outputs);
    for (int i = 0; i < g->n_outputs; i++)
        plan_put_i32(w, g->outputs[i]);
    /* the input the loss takes its labels from (the synthetic data shift it a token on), or -1 */
    int loss = ir_graph_loss(g), labels = -1;
    if (loss >= 0 && g->tensors[loss].producer >= 0) {
        const struct ir_op *o = &g->ops[g->tensors[loss].producer];
        if (o->kind == IR_OP_CROSS_ENTROPY && o->in[1] >= 0 && g->tensors[o->in[1]].kind == IR_TENSOR_INPUT)
            labels = o->in[1];
    }
    plan_put_i32(w, labels);

    if (g->hf)
        emit_hf(w, P, d); /* hf_check passed */
    ir_memory_write(w, &C->M);
    ir_actions_write(w, &C->A);
    kn_set_write(w, &C->K);

    if (C->train)
        optim_write(w, &C->opt);
    ir_schedule_write(w, S);
    return plan_writer_finish(w, path, d);
}
