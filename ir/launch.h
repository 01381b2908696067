/* launch.h: how a kernel of the plan is launched, one contract for the
 * emitters that write the kernels (compiler/emit_*.c), the backends that
 * run them (runtime/backend.h) and the tests: the CUDA grid each kind
 * needs, and how many elements of each buffer a launch may touch, so that
 * a buffer can be checked against the kernel before it runs.
 *
 *   struct kn_grid g;
 *   kn_cuda_grid(&k, &args, 132 * 8, &g);     // blocks, then the colsum launch
 *   kn_slot_extent(&k, &args, true, 0)        // elements output 0 must hold
 *   kn_attn_grid(&c, &attn_args, KN_ATTN_BWD_Q, grid);
 *   kn_attn_extent(&c, &attn_args, KN_ATTN_BUF_Q)
 *   kn_route_extent(&route_args, KN_ROUTE_BUF_FILLS) */
#ifndef WEFT_LAUNCH_H
#define WEFT_LAUNCH_H

#include "kernel.h"

/* Threads a CUDA block of a fused or routing kernel; of an attention kernel
 * on the CUDA cores (a thread a query or key row, KN_ATTN_THREADS rows a block). */
#define KN_CUDA_THREADS 256
#define KN_ATTN_THREADS 64
/* The tensor-core kernels (FlashAttention-2's): 4 warps of 16 query (or key) rows each. */
#define KN_ATTN_MMA_THREADS 128
#define KN_ATTN_MMA_ROWS 64

/* How a fused kernel's CUDA threads cover its rows x cols domain. */
enum kn_cuda_shape {
    KN_CUDA_PER_ELEMENT, /* no reduction nor accumulation across rows: a grid-stride loop over every element */
    KN_CUDA_PER_ROW,     /* no value varies along a row: a grid-stride loop over rows, a thread each */
    KN_CUDA_BLOCK_ROWS,  /* reductions or sums over rows: a block per row, grid-stride over rows */
    KN_CUDA_OWNED_ROWS,  /* adds into a gathered table: every block reads every row and adds those
                          * whose table row is blockIdx.x modulo gridDim.x (deterministic, no atomics) */
};

enum kn_cuda_shape kn_cuda_shape(const struct kn_kernel *k);
/* Its COLUMN accumulations: each is summed per block into a.partial
 * (nblocks x cols floats each), then by NAME_colsum in block order.
 * kn_column_sum_index: which of them output `slot` is, or -1. */
int kn_column_sums(const struct kn_kernel *k);
int kn_column_sum_index(const struct kn_kernel *k, int slot);

struct kn_grid {
    int64_t blocks;        /* gridDim.x of NAME (blockDim.x KN_CUDA_THREADS); also a.nblocks */
    int64_t partial;       /* floats of a.partial it needs (0: none) */
    int64_t colsum_blocks; /* gridDim.x of NAME_colsum, launched after it; 0: there is none */
};

/* The grid for launch args a, at most max_blocks blocks where the kernel
 * lets the grid be chosen.  A kernel that adds rows into an output with a
 * modulus runs with exactly as many blocks as the moduli's greatest
 * common divisor (rows that meet in one element belong to one block). */
void kn_cuda_grid(const struct kn_kernel *k, const struct kn_args *a, int64_t max_blocks, struct kn_grid *g);

/* Elements (of the slot's type) that input or output `slot` must hold for
 * args a: one past the furthest the kernel reads or writes. */
int64_t kn_slot_extent(const struct kn_kernel *k, const struct kn_args *a, bool out, int slot);

/* The attention kernel's functions (compiler/emit_attention.h), in the order a step runs them. */
enum kn_attn_fn { KN_ATTN_FWD, KN_ATTN_DELTA, KN_ATTN_BWD_KV, KN_ATTN_BWD_Q, KN_ATTN_FNS };
extern const char *const kn_attn_fn_suffix[KN_ATTN_FNS]; /* "_fwd", "_delta", ... */

/* The buffers of struct kn_attn_args. */
enum kn_attn_buf {
    KN_ATTN_BUF_Q, KN_ATTN_BUF_K, KN_ATTN_BUF_V, KN_ATTN_BUF_BIAS, KN_ATTN_BUF_OUT, KN_ATTN_BUF_STATS,
    KN_ATTN_BUF_DELTA, KN_ATTN_BUF_DOUT, KN_ATTN_BUF_DQ, KN_ATTN_BUF_DK, KN_ATTN_BUF_DV, KN_ATTN_BUF_DBIAS,
    KN_ATTN_BUFS
};
extern const char *const kn_attn_buf_name[KN_ATTN_BUFS];
/* The args' pointer to buffer b. */
void **kn_attn_buf(struct kn_attn_args *a, enum kn_attn_buf b);
/* Elements buffer b must hold (0: the configuration has none); stats two
 * floats a row, delta one. */
int64_t kn_attn_extent(const struct kn_attn *c, const struct kn_attn_args *a, enum kn_attn_buf b);
/* Whether config c runs on the tensor cores (mma.sync, bf16 in, fp32
 * accumulation): bf16, head dims D and Dv each 64, 80, 96 or 128; then its
 * forward, bwd_kv and bwd_q are FlashAttention-2's kernels and only the
 * delta pre-pass stays a thread a row.  Every other config (fp32 plans
 * among them) runs on the CUDA cores.  The emitter and the launch both ask this. */
bool kn_attn_mma(const struct kn_attn *c);
/* Function fn's grid (x, y, z); kn_attn_threads: its blockDim.x
 * (KN_ATTN_MMA_THREADS on the tensor cores, else KN_ATTN_THREADS).  Both
 * kinds take 64 query rows a block (bwd_kv: 64 keys). */
void kn_attn_grid(const struct kn_attn *c, const struct kn_attn_args *a, enum kn_attn_fn fn, int64_t grid[3]);
int kn_attn_threads(const struct kn_attn *c, enum kn_attn_fn fn);
/* A tensor-core function's tile: the keys a tile of the forward and of
 * bwd_q, the queries a tile of bwd_kv; 0 on the CUDA cores. */
int kn_attn_mma_tile(const struct kn_attn *c, enum kn_attn_fn fn);
/* The dynamic shared memory fn's launch gives a block, in bytes (0: none):
 * the kernel's tiles, which its source checks at compile time against
 * the same figure.  At most 70 KiB, within what every GPU from sm_80 on
 * lets a block opt into (99 KiB on sm_86 and sm_89). */
int64_t kn_attn_shared_bytes(const struct kn_attn *c, enum kn_attn_fn fn);

/* A template launch's integers (kn_launch.sizes: the args' integers come
 * first), out of the launch and into it; pointers and scale are the caller's. */
void kn_launch_attn_args(const struct kn_launch *L, struct kn_attn_args *a);
void kn_launch_route_args(const struct kn_launch *L, struct kn_route_args *a);
void kn_launch_set_attn_args(struct kn_launch *L, const struct kn_attn_args *a);
void kn_launch_set_route_args(struct kn_launch *L, const struct kn_route_args *a);

enum kn_route_buf { KN_ROUTE_BUF_IDX, KN_ROUTE_BUF_ROUTES, KN_ROUTE_BUF_FILLS, KN_ROUTE_BUFS };
int64_t kn_route_extent(const struct kn_route_args *a, enum kn_route_buf b);
/* The routing kernel's gridDim.x: a block per expert, at most max_blocks. */
int64_t kn_route_grid(const struct kn_route_args *a, int64_t max_blocks);

#endif
