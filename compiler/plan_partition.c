/* plan_partition.c: a partition rebuilt from a plan file, for the commands
 * that draw or time a compiled plan (weft dot PLAN, weft simulate PLAN).
 *   requires: a plan written by emit_plan
 *   produces: a partition with its layout, chunks, graph (tensors with
 *             shapes and shards, ops with attributes), transfers; each
 *             part's layers as one repeat block, so layers fold as drawn
 *             from the model */
#include "partition.h"
#include "plan.h"
#include "rank_plan.h"
#include "program.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static int corrupt(struct diag *d, const char *section)
{
    diag_error(d, NULL, 0, "plan section '%s' is inconsistent: the plan is corrupted", section);
    return -1;
}

static int read_chunks(struct plan *p, struct partition *P, struct diag *d)
{
    struct plan_reader r;
    if (plan_read(p, "chunks", &r, d))
        return -1;
    uint32_t n = plan_get_u32(&r);
    if (n < 1 || n > (uint32_t)(r.end - r.at))
        return corrupt(d, "chunks");
    P->n_chunks = (int)n;
    P->chunks = wf_calloc(n, sizeof *P->chunks);
    for (uint32_t c = 0; c < n; c++) {
        struct part_chunk *ch = &P->chunks[c];
        ch->part = (enum ir_part)plan_get_u8(&r);
        ch->stage = plan_get_i32(&r);
        ch->vstage = plan_get_i32(&r);
        ch->first_layer = plan_get_i32(&r);
        ch->n_layers = plan_get_i32(&r);
        ch->has_embedding = plan_get_u8(&r);
        ch->has_head = plan_get_u8(&r);
        ch->flops = plan_get_f64(&r);
        ch->seconds = plan_get_f64(&r);
        ch->param_bytes = plan_get_i64(&r);
        if (ch->part >= IR_PART_COUNT || ch->stage < 0 || ch->vstage < 0)
            r.bad = true;
        if (ch->vstage + 1 > P->virtual_stages)
            P->virtual_stages = ch->vstage + 1;
    }
    return r.bad ? corrupt(d, "chunks") : 0;
}

static int read_graph(struct plan *p, struct partition *P, struct diag *d)
{
    struct plan_reader r, o;
    char name[1024], local[512];
    if (plan_read(p, "tensors", &r, d) || plan_read(p, "ops", &o, d))
        return -1;
    struct ir_graph *g = P->g;
    uint32_t nt = plan_get_u32(&r);
    if (nt > (uint32_t)(r.end - r.at))
        return corrupt(d, "tensors");
    P->shard = wf_calloc((size_t)nt + 1, sizeof *P->shard);
    for (uint32_t i = 0; i < nt && !r.bad; i++) {
        plan_get_str(&r, name, sizeof name);
        plan_get_str(&r, local, sizeof local);
        int kind = plan_get_u8(&r), dtype = plan_get_u8(&r), rank = plan_get_u8(&r);
        if (kind > IR_TENSOR_ACT || dtype >= IR_DTYPE_COUNT || rank > IR_MAX_RANK)
            return corrupt(d, "tensors");
        struct ir_shape s = {.rank = rank};
        const uint8_t pdims = (uint8_t)((1u << IR_PDIM_COUNT) - 2); /* every pdim's bit but NONE's */
        for (int k = 0; k < rank; k++) {
            s.ax[k].size = plan_get_i64(&r);
            P->shard[i].split[k] = plan_get_u8(&r);
            P->shard[i].stack[k] = plan_get_u8(&r);
            if (s.ax[k].size < 1 || (P->shard[i].split[k] & ~pdims) || (P->shard[i].stack[k] & ~pdims))
                return corrupt(d, "tensors");
        }
        P->shard[i].partial = plan_get_u8(&r);
        if (P->shard[i].partial & ~pdims)
            return corrupt(d, "tensors");
        int t = ir_graph_add_tensor(g, name, (enum ir_tensor_kind)kind, (enum ir_dtype)dtype, &s, (struct ir_loc){0});
        struct ir_tensor *x = &g->tensors[t];
        x->local_name = arena_strdup(g->arena, local);
        x->part = (enum ir_part)plan_get_u8(&r);
        x->layer = plan_get_i32(&r);
        plan_get_i32(&r); /* producer: set by the ops below */
        x->init = (enum ir_init)plan_get_u8(&r);
        x->init_std = plan_get_f64(&r);
        if (x->part >= IR_PART_COUNT)
            return corrupt(d, "tensors");
    }
    uint32_t no = plan_get_u32(&o);
    if (r.bad || no > (uint32_t)(o.end - o.at))
        return corrupt(d, r.bad ? "tensors" : "ops");
    P->op_chunk = wf_calloc((size_t)no + 1, sizeof *P->op_chunk);
    int blocks[IR_PART_COUNT];
    for (int k = 0; k < IR_PART_COUNT; k++)
        blocks[k] = -1;
    for (uint32_t i = 0; i < no && !o.bad; i++) {
        int kind = plan_get_u8(&o);
        if (kind >= IR_OP_COUNT)
            return corrupt(d, "ops");
        int op = ir_graph_add_op(g, (enum ir_op_kind)kind, (struct ir_loc){0});
        int n_in = plan_get_u8(&o);
        for (int k = 0; k < n_in; k++) {
            int t = plan_get_i32(&o);
            if (n_in > IR_MAX_IN || t < -1 || t >= (int)nt)
                return corrupt(d, "ops");
            ir_op_add_input(g, op, t);
        }
        int n_out = plan_get_u8(&o);
        for (int k = 0; k < n_out; k++) {
            int t = plan_get_i32(&o);
            if (n_out > IR_MAX_OUT || t < 0 || t >= (int)nt)
                return corrupt(d, "ops");
            ir_op_add_output(g, op, t);
        }
        int chunk = plan_get_i32(&o), layer = plan_get_i32(&o), n_attrs = plan_get_u8(&o);
        if (chunk < 0 || chunk >= P->n_chunks || n_attrs > IR_MAX_ATTRS || n_out < 1 || layer < -1 ||
            layer > (int)no)
            return corrupt(d, "ops");
        struct ir_op *x = &g->ops[op];
        x->n_attrs = n_attrs;
        for (int a = 0; a < n_attrs; a++) {
            x->attrs[a].id = (enum ir_attr_id)plan_get_u8(&o);
            x->attrs[a].i = plan_get_i64(&o);
            x->attrs[a].f = plan_get_f64(&o);
            if (x->attrs[a].id >= IR_ATTR_COUNT)
                return corrupt(d, "ops");
        }
        P->op_chunk[op] = chunk;
        x->part = P->chunks[chunk].part;
        if (layer >= 0) { /* one block per part: its layers, numbered across the part */
            if (blocks[x->part] < 0)
                blocks[x->part] = ir_graph_add_block(g, ir_part_name(x->part), x->part, -1, 0, "", (struct ir_loc){0});
            x->block = blocks[x->part];
            x->layer = x->iter = layer;
            if (layer + 1 > g->blocks[x->block].count)
                g->blocks[x->block].count = layer + 1;
        }
    }
    if (o.bad)
        return corrupt(d, "ops");
    for (int i = 0; i < g->n_tensors; i++)
        g->has_part[g->tensors[i].part] = true;
    return ir_verify(g, true, d);
}

static int read_xfers(struct plan *p, struct partition *P, struct diag *d)
{
    struct plan_reader r;
    if (plan_read(p, "xfers", &r, d))
        return -1;
    uint32_t n = plan_get_u32(&r);
    if (n > (uint32_t)(r.end - r.at))
        return corrupt(d, "xfers");
    P->n_xfers = (int)n;
    P->xfers = wf_calloc((size_t)n + 1, sizeof *P->xfers);
    for (uint32_t i = 0; i < n; i++) {
        struct part_xfer *x = &P->xfers[i];
        x->kind = (enum part_xfer_kind)plan_get_u8(&r);
        x->over = (enum ir_pdim)plan_get_u8(&r);
        uint8_t grad = plan_get_u8(&r);
        x->grad = grad == 1;
        x->prev = -1; /* the chains and the ops' own transfers are the compiler's: the actions carry them */
        x->tensor = plan_get_i32(&r);
        x->op = plan_get_i32(&r);
        x->from_chunk = plan_get_i32(&r);
        x->to_chunk = plan_get_i32(&r);
        x->axis = plan_get_i32(&r);
        x->bytes = plan_get_i64(&r);
        if (x->kind >= PART_XFER_COUNT || x->over >= IR_PDIM_COUNT || grad > 1 || x->tensor < 0 || x->tensor >= P->g->n_tensors ||
            x->op < 0 || x->op >= P->g->n_ops || x->from_chunk < 0 || x->from_chunk >= P->n_chunks || x->to_chunk < 0 ||
            x->to_chunk >= P->n_chunks)
            r.bad = true;
    }
    return r.bad ? corrupt(d, "xfers") : 0;
}

struct partition *partition_from_plan(const char *path, struct diag *d)
{
    struct plan *p = plan_open(path, d);
    if (!p)
        return NULL;
    struct partition *P = partition_read_plan(p, d);
    plan_close(p);
    return P;
}

struct partition *partition_read_plan(struct plan *p, struct diag *d)
{
    struct partition *P = wf_calloc(1, sizeof *P);
    struct plan_meta m;
    struct par_config pc;
    bool enc;
    int rc = plan_meta_read(p, &m, d);
    P->g = ir_graph_new(rc ? "" : m.model, rc ? "" : m.file);
    if (rc == 0)
        plan_meta_free(&m);
    if (rc == 0 && ir_layout_read(p, &pc, &enc, d) == 0 && (P->L = rank_layout_new(&pc, enc, d)) &&
        read_chunks(p, P, d) == 0 && read_graph(p, P, d) == 0 && read_xfers(p, P, d) == 0) {
        struct ir_schedule S;
        if (ir_schedule_read(p, 0, &S, d) == 0) {
            P->n_micro = S.n_micro;
            ir_schedule_free(&S);
            return P;
        }
    }
    partition_free(P);
    return NULL;
}
