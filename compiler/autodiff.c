/* autodiff.c: the backward graph, by reverse accumulation.
 *   requires:  a typed graph in topological order; the loss, a scalar float
 *   produces:  gradient tensors, backward ops (grad_of) and add ops after
 *              the forward ops; the map from each forward tensor to its
 *              gradient
 * A tensor needs a gradient if a parameter reaches it and it reaches the
 * loss.  Walking the forward ops from last to first, each op's output
 * gradients are summed (one add per extra contribution), its backward op
 * made, and its inputs' contributions recorded. */
#include "autodiff.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct contrib {
    int *v;
    int n, cap;
};

static int new_grad(struct ir_graph *g, int of, const char *suffix)
{
    char name[512];
    snprintf(name, sizeof name, "grad.%s%s", g->tensors[of].name, suffix);
    struct ir_tensor x = g->tensors[of]; /* copy: adding a tensor may move the array */
    int t = ir_graph_add_tensor(g, name, IR_TENSOR_ACT, IR_DTYPE_F32, &x.shape, x.loc);
    struct ir_tensor *y = &g->tensors[t];
    y->local_name = arena_printf(g->arena, "grad.%s", x.local_name);
    y->part = x.part;
    y->block = x.block;
    y->iter = x.iter;
    y->layer = x.layer;
    return t;
}

/* The sum of a tensor's gradient contributions: adds, one per extra. */
static int sum(struct ir_graph *g, int of, struct contrib *c, const struct ir_op *near)
{
    if (c->n == 0)
        return -1;
    int acc = c->v[0];
    for (int k = 1; k < c->n; k++) {
        char suffix[32];
        snprintf(suffix, sizeof suffix, ".sum%d", k);
        int out = new_grad(g, of, suffix);
        int op = ir_graph_add_op(g, IR_OP_ADD, near->loc);
        struct ir_op *o = &g->ops[op];
        o->part = near->part, o->block = near->block, o->iter = near->iter, o->layer = near->layer;
        ir_op_add_input(g, op, acc);
        ir_op_add_input(g, op, c->v[k]);
        ir_op_add_output(g, op, out);
        acc = out;
    }
    c->n = 1;
    c->v[0] = acc;
    return acc;
}

static void push(struct contrib *c, int t)
{
    WF_GROW(c->v, c->n, c->cap);
    c->v[c->n++] = t;
}

void autodiff_needs_grad(const struct ir_graph *g, int loss, bool *needs)
{
    int nt = g->n_tensors;
    bool *from = wf_calloc((size_t)nt + 1, sizeof *from), *to = wf_calloc((size_t)nt + 1, sizeof *to);
    for (int t = 0; t < nt; t++)
        from[t] = g->tensors[t].kind == IR_TENSOR_PARAM;
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *o = &g->ops[i];
        bool any = false;
        for (int k = 0; k < o->n_in; k++)
            any |= o->in[k] >= 0 && from[o->in[k]];
        for (int k = 0; k < o->n_out && any; k++)
            from[o->out[k]] = ir_dtype_is_float(g->tensors[o->out[k]].dtype);
    }
    to[loss] = true;
    for (int i = g->n_ops - 1; i >= 0; i--) {
        const struct ir_op *o = &g->ops[i];
        bool any = false;
        for (int k = 0; k < o->n_out; k++)
            any |= to[o->out[k]];
        for (int k = 0; k < o->n_in && any; k++)
            if (o->in[k] >= 0)
                to[o->in[k]] = true;
    }
    for (int t = 0; t < nt; t++)
        needs[t] = from[t] && to[t] && ir_dtype_is_float(g->tensors[t].dtype);
    free(from);
    free(to);
}

int autodiff_run(struct ir_graph *g, int loss, struct autodiff *ad, struct diag *d)
{
    memset(ad, 0, sizeof *ad);
    const struct ir_tensor *L = &g->tensors[loss];
    if (L->shape.rank != 0 || !ir_dtype_is_float(L->dtype)) {
        diag_error(d, L->loc.file, L->loc.line, "the loss '%s' must be a float scalar to differentiate", L->local_name);
        return -1;
    }
    int nf = g->n_ops, nt = g->n_tensors;
    ad->n_forward_ops = nf;
    ad->n_forward_tensors = nt;
    ad->loss = loss;
    ad->grad = wf_calloc((size_t)nt, sizeof *ad->grad);
    for (int t = 0; t < nt; t++)
        ad->grad[t] = -1;
    bool *needs = wf_calloc((size_t)nt, sizeof *needs);
    autodiff_needs_grad(g, loss, needs);
    struct contrib *c = wf_calloc((size_t)nt, sizeof *c);
    ad->loss_grad = ir_graph_add_tensor(g, "grad.loss", IR_TENSOR_INPUT, IR_DTYPE_F32, &L->shape, L->loc);
    g->tensors[ad->loss_grad].part = L->part;
    push(&c[loss], ad->loss_grad);
    for (int i = nf - 1; i >= 0; i--) {
        struct ir_op f = g->ops[i]; /* a copy: adding ops may move the array */
        int gout[IR_MAX_OUT], any = 0;
        for (int k = 0; k < f.n_out; k++) {
            gout[k] = needs[f.out[k]] ? sum(g, f.out[k], &c[f.out[k]], &f) : -1;
            if (gout[k] >= 0)
                ad->grad[f.out[k]] = gout[k];
            any |= gout[k] >= 0;
        }
        if (!any)
            continue;
        int op = ir_graph_add_op(g, f.kind, f.loc);
        struct ir_op *b = &g->ops[op];
        b->grad_of = i;
        b->part = f.part, b->block = f.block, b->iter = f.iter, b->layer = f.layer;
        for (int k = 0; k < f.n_out; k++)
            ir_op_add_input(g, op, gout[k]);
        for (int k = 0; k < f.n_in; k++) {
            int t = f.in[k];
            int gt = t >= 0 && needs[t] ? new_grad(g, t, "") : -1;
            if (gt >= 0) {
                char suffix[32]; /* several ops may each contribute: name the one */
                snprintf(suffix, sizeof suffix, "@%d", i);
                g->tensors[gt].name = arena_printf(g->arena, "%s%s", g->tensors[gt].name, suffix);
                push(&c[t], gt);
            }
            ir_op_add_output(g, op, gt);
        }
    }
    /* every parameter's gradient, summed over the ops that read it */
    for (int t = 0; t < nt; t++)
        if (g->tensors[t].kind == IR_TENSOR_PARAM && c[t].n) {
            const struct ir_op *near = &g->ops[g->n_ops - 1];
            struct ir_op copy = *near;
            ad->grad[t] = sum(g, t, &c[t], &copy);
        }
    for (int t = 0; t < nt; t++)
        free(c[t].v);
    free(c);
    free(needs);
    return ir_verify(g, true, d);
}

void autodiff_free(struct autodiff *ad)
{
    free(ad->grad);
    memset(ad, 0, sizeof *ad);
}
