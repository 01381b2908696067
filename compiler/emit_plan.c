/* emit_plan.c: a compiled model into the plan file's sections. */
#include "emit_plan.h"
#include "plan.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

int emit_plan(const struct compiled *C, const char *path, struct diag *d)
{
    const struct partition *P = C->P;
    const struct ir_schedule *S = &C->S;
    const struct sim_result *sim = &C->sim;
    const char *model_path = C->model;
    const struct ir_graph *g = P->g;
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
        bool vocab = g->dims[i].flag && !strcmp(g->dims[i].flag, "vocab-size") && P->vocab;
        plan_put_str(w, g->dims[i].name);
        plan_put_i64(w, vocab ? P->vocab : g->dims[i].value);
    }
    plan_put_str(w, sim->dev ? sim->dev->name : "");
    plan_put_f64(w, sim->step_time);
    plan_put_f64(w, sim->bubble);

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

    ir_memory_write(w, &C->M);
    ir_actions_write(w, &C->A);
    kn_set_write(w, &C->K);

    if (C->train)
        optim_write(w, &C->opt);
    ir_schedule_write(w, S);
    return plan_writer_finish(w, path, d);
}
