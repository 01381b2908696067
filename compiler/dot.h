/* dot.h: the partitioned model as a picture, through Graphviz.
 *
 *   dot_write(P, DOT_DETAIL_LAYER, "gpt2.svg", &diag);   // .dot, .svg or .png
 *
 * One cluster per pipeline chunk (encoder and decoder in their own colours),
 * nodes for layers (runs of identical layers folded, so a 96-layer model
 * still reads) or for single ops, each with the shape one rank holds, and the
 * transfers as edges labelled with the collective or send, its group and its
 * bytes; a legend explains the colours.  At op detail the ops one fused
 * kernel runs are boxed together, named by the kernel. */
#ifndef WEFT_DOT_H
#define WEFT_DOT_H

#include "kernel.h"
#include "partition.h"

enum dot_detail { DOT_DETAIL_LAYER, DOT_DETAIL_OP };

/* kernels (may be NULL): at op detail, each fused launch's ops are boxed
 * together under its kernel's name. */
int dot_write(const struct partition *P, const struct kn_set *kernels, enum dot_detail detail, const char *path,
              struct diag *d);

#endif
