/* emit_attention.h: the fused attention kernel, forward and backward, in
 * the flash-attention manner: keys and values in tiles (in shared memory
 * on the GPU), an online softmax, no Sq x Sk matrix in memory.  Causal or
 * not, grouped-query (Hk divides Hq), with an additive bias (T5's relative
 * positions) and its gradient.  One text serves C and CUDA C: macros say
 * what a thread is.
 *
 *   struct attn_config c = {.dtype = IR_DTYPE_BF16, .D = 128, .Dv = 128, .causal = true};
 *   char *src = emit_attention(&c, "k7_attention", KN_LANG_CUDA);
 *
 * Functions (NAME_ prefixed), all taking struct kn_attn_args (ir/kernel.h):
 *   NAME_fwd       out and stats from q, k, v (and bias)
 *   NAME_delta     delta = rowsum(dout * out), the backward's first step
 *   NAME_bwd_kv    dk, dv (written, not added), a kv head summing its group
 *   NAME_bwd_q     dq, and dbias when the config asks
 * CUDA launches: ATTN_BM threads a block; fwd, delta: grid (ceil(Sq/BM),
 * Hq, B); bwd_kv: (ceil(Sk/BM), Hk, B); bwd_q: (ceil(Sq/BM), Hq, B), or
 * (.., .., 1) with bias_grad (the block walks the batch, so a bias shared
 * by the batch sums its gradient without atomics: deterministic). */
#ifndef WEFT_EMIT_ATTENTION_H
#define WEFT_EMIT_ATTENTION_H

#include "emit_kernel.h"

#define ATTN_BM 64

struct attn_config {
    int dtype;       /* IR_DTYPE_F32 or IR_DTYPE_BF16: q, k, v, out, dout, and the gradients */
    int D, Dv;       /* head dims of q/k and of v */
    bool causal, bias, bias_grad;
};

/* Keys a tile: 32 KiB of shared memory for a K and a V tile. */
int attn_block_n(const struct attn_config *c);
char *emit_attention(const struct attn_config *c, const char *name, enum kn_lang lang);

#endif
