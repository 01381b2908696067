/* emit_attention.h: the fused attention kernel, forward and backward, in
 * the flash-attention manner: keys and values in tiles (in shared memory
 * on the GPU), an online softmax, no Sq x Sk matrix in memory.  Causal or
 * not, grouped-query (Hk divides Hq), with an additive bias (T5's relative
 * positions) and its gradient.  C and CUDA C share the loads, masks and
 * offsets; the loops differ (a thread a row on the GPU, a block of rows
 * against each tile on the CPU).
 *
 *   struct kn_attn c = {.dtype = IR_DTYPE_BF16, .D = 128, .Dv = 128, .causal = true, .backward = true};
 *   char *src = emit_attention(&c, "k7_attention", KN_LANG_CUDA);
 *
 * Functions (NAME_ prefixed), all taking struct kn_attn_args (ir/kernel.h):
 *   NAME_fwd       out and stats (unless NULL) from q, k, v (and bias)
 *   NAME_delta     delta = rowsum(dout * out), the backward's first step
 *   NAME_bwd_kv    dk, dv (written, not added), a kv head summing its group
 *   NAME_bwd_q     dq, and dbias when the config asks
 * (the last three only with .backward: a forward-only plan needs none).
 * C also has each as NAME_fn_heads(a, h0, h1): heads h0 .. h1 only (kv
 * heads for bwd_kv), for the backend's threads; every batch's rows of a
 * head are one thread's, so a bias gradient summed over the batch is too
 * (not one shared by the heads, bias_sh 0: run that bwd_q whole).
 * CUDA launches (ir/launch.h, kn_attn_grid, kn_attn_threads): KN_ATTN_THREADS (BM) threads
 * a block; fwd, delta: grid (ceil(Sq/BM), Hq, B); bwd_kv: (ceil(Sk/BM),
 * Hk, B); bwd_q: (ceil(Sq/BM), Hq, B), or (.., .., 1) with bias_grad (the block walks the batch, so a bias shared
 * by the batch sums its gradient without atomics: deterministic).
 * Where kn_attn_mma(c) (bf16, head dims 64, 80, 96 or 128) the CUDA fwd,
 * bwd_kv and bwd_q are FlashAttention-2's on the tensor cores instead:
 * KN_ATTN_MMA_THREADS (4 warps of 16 query, or key, rows) a block, the same
 * grids (64 rows a block), tiles in dynamic shared memory
 * (kn_attn_shared_bytes, checked by the source at compile time), mma.sync
 * m16n8k16 with fp32 accumulation; the same out, stats and gradients (dq by
 * its own pass over key tiles: deterministic, no atomics).  The C
 * functions are the same for every config (the reference). */
#ifndef WEFT_EMIT_ATTENTION_H
#define WEFT_EMIT_ATTENTION_H

#include "emit_kernel.h"

/* Keys a tile: 32 KiB of shared memory for a K and a V tile. */
int attn_block_n(const struct kn_attn *c);
char *emit_attention(const struct kn_attn *c, const char *name, enum kn_lang lang);

#endif
