/* emit_route.h: the MoE routing kernel (ir/kernel.h, struct kn_route_args):
 * each (token, choice) entry's row in its expert's capacity, and each
 * expert row's entry.  A slot is a running count over the tokens in order,
 * a scan that no row of a fused kernel can express; everything around it
 * (dispatch's gather, combine's weighted sum, their backwards) is a fused
 * kernel reading these rows (compiler/fuse.c).
 *
 *   char *src = emit_route("k9_route", KN_LANG_CUDA);
 *
 * Defines `void NAME(const struct kn_route_args *a)` (C: one pass over the
 * entries, a counter per expert) or `extern "C" __global__ void
 * NAME(struct kn_route_args a)` (CUDA: a block per expert, grid-stride
 * over the experts, KN_CUDA_THREADS threads walking the entries in order
 * with a block-wide prefix count: no atomics, the same slots as the CPU).
 * Every route and fill is written, so neither buffer needs clearing. */
#ifndef WEFT_EMIT_ROUTE_H
#define WEFT_EMIT_ROUTE_H

#include "emit_kernel.h"

char *emit_route(const char *name, enum kn_lang lang);

#endif
