/* autodiff.h: append the backward pass to a typed forward graph.
 *
 *   struct autodiff ad;
 *   autodiff_run(g, g->outputs[0], &ad, &diag);   // the loss: a scalar
 *   ad.grad[t]        // the gradient tensor of forward tensor t (-1 if none)
 *   ad.loss_grad      // an input the executor sets to 1 (or the loss scale)
 *   autodiff_free(&ad);
 *
 * For every tensor on a path from a parameter to the loss, its gradient: a
 * backward op per forward op (ir_op.grad_of, in reverse order), and add ops
 * summing the contributions of a tensor read by several ops. */
#ifndef WEFT_AUTODIFF_H
#define WEFT_AUTODIFF_H

#include "ir.h"

struct autodiff {
    int n_forward_ops, n_forward_tensors;
    int loss, loss_grad;
    int *grad; /* [n_forward_tensors] */
};

/* needs[t] (n_tensors entries): whether tensor t gets a gradient: a float
 * tensor that a parameter reaches and that reaches the loss. */
void autodiff_needs_grad(const struct ir_graph *g, int loss, bool *needs);
int autodiff_run(struct ir_graph *g, int loss, struct autodiff *ad, struct diag *d);
void autodiff_free(struct autodiff *ad);

#endif
