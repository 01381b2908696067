/* ref.h: every op of the IR computed plainly, in float, on whole tensors: the
 * reference that gradients, fused kernels and parallel layouts are checked
 * against (as llm.c checks against PyTorch, and ggml every backend against
 * its CPU one).
 *
 *   struct ref *r = ref_new(g, 1234);      // a buffer per tensor; parameters drawn from the seed
 *   ref_fill_inputs(r, 1234, vocab);       // token ids below vocab, floats normal
 *   if (ref_forward(r, &diag) == 0)
 *       loss = ref_data(r, loss_tensor)[0];
 *   ref_free(r);
 *
 * Random numbers come from a counter-based hash of (seed, the tensor's name,
 * the element's index in the whole tensor), so any layout that holds a slice
 * of a tensor can draw exactly the elements this reference draws.
 * Conventions, where models differ, follow Megatron-Core: rotary embedding
 * rotates the two halves of head_dim; split_heads reads Megatron's grouped
 * layout (per query group: its query heads, then one head of each other
 * output); relpos_bias is T5's bucketing. */
#ifndef WEFT_REF_H
#define WEFT_REF_H

#include <stdint.h>

#include "diag.h"
#include "ir.h"

struct ref;

struct ref *ref_new(const struct ir_graph *g, uint64_t seed);
void ref_free(struct ref *r);
/* Fill every input: i32 ones uniform in [0, int_bound), floats standard normal. */
void ref_fill_inputs(struct ref *r, uint64_t seed, int64_t int_bound);
/* The tensor's values (floats; i32 tensors are read with ref_ints). */
float *ref_data(struct ref *r, int tensor);
int32_t *ref_ints(struct ref *r, int tensor);
/* Run every op in order; an input out of range (a token id, a label) is an error. */
int ref_forward(struct ref *r, struct diag *d);
/* Run one op (its inputs must be set). */
int ref_op(struct ref *r, int op, struct diag *d);

/* One op's backward: given the gradient of each float output (gout, NULL for
 * an output nobody reads), add each float input's gradient into gin (NULL to
 * skip one).  Reads the op's inputs and outputs as the forward left them. */
int ref_op_backward(struct ref *r, int op, float *const *gout, float **gin, struct diag *d);

/* The counter-based generator's standard normal (its uniform: kn_uniform). */
double ref_normal(uint64_t seed, uint64_t stream, uint64_t index);

#endif
