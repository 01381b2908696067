/* cuda_emu.h: the CUDA source of a kernel run on the CPU, thread by thread,
 * so that a machine without a GPU checks what the GPU would compute.  A
 * test puts this header before the generated CUDA source and compiles the
 * two as C++ (the source keeps its device-only definitions behind
 * `#ifndef KN_EMULATE`); kn_emu_run then runs a grid block after block,
 * each block's threads as coroutines of one OS thread.
 *
 * What it models, and how:
 * - __syncthreads: a thread waits until every thread of the block that has
 *   not returned waits there too;
 * - warp collectives (__shfl_sync, __shfl_xor_sync, __ballot_sync, ldmatrix,
 *   mma.sync m16n8k16): every
 *   lane of the warp deposits its part, waits for the 31 others, computes
 *   its own result from all 32 parts as the PTX ISA lays the fragments out,
 *   and waits again; a warp whose lanes do not all arrive is an error
 *   (divergence), as is a block that can make no progress (deadlock);
 * - cp.async: a copy lands only when its thread waits for its group
 *   (cp.async.wait_group), so a kernel that reads a tile before waiting for
 *   it reads stale bytes, and fails its test;
 * - dynamic shared memory is filled with 0xff (NaN in bf16 and f32) before
 *   each block, so a kernel that reads what it did not write fails;
 * - races between cp.async and ldmatrix in dynamic shared memory: a copy may
 *   land any time from its issue to its thread's wait, so an ldmatrix of
 *   another thread between the barriers around that window, on the same 16
 *   bytes, is an error, as is a copy issued onto bytes another thread read
 *   since the last barrier.
 * What it does not model: timing, races through plain loads and stores,
 * registers, occupancy.  compute-sanitizer's racecheck and a GPU stay
 * necessary; this checks the indexing, masks, fragment layouts, the
 * pipeline's waits and the barriers' placement. */
#ifndef KN_CUDA_EMU_H
#define KN_CUDA_EMU_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#define KN_EMULATE 1
#define KN_EMU_MAX_THREADS 1024

struct kn_emu_dim3 {
    unsigned x, y, z;
};
/* the running thread's: the scheduler sets them before it switches */
static struct kn_emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() kn_emu_wait(KN_EMU_AT_BLOCK)
#define __trap() kn_emu_fail("__trap()")
#define DYNAMIC_SHARED(name) unsigned char *name = kn_emu_smem

static inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

enum { KN_EMU_RUNNING, KN_EMU_AT_WARP, KN_EMU_AT_BLOCK, KN_EMU_DONE };

struct kn_emu_copy { /* a cp.async in flight: 16 bytes, or 16 zeros */
    void *dst;
    const void *src;
    int full, group;
};

/* A coroutine's context.  On x86-64 its saved stack pointer, switched in
 * a dozen instructions: glibc's swapcontext also saves the signal mask, a
 * system call at every switch, which made the emulation twice as slow.
 * Elsewhere a ucontext. */
#if defined(__x86_64__)
struct kn_emu_ctx {
    void *sp;
};
/* save the callee-saved registers on this stack and its pointer in *from; resume *to */
__asm__(".text\n.p2align 4\n.hidden kn_emu_swap\n.globl kn_emu_swap\n.type kn_emu_swap, @function\n"
        "kn_emu_swap:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n    movq (%rsi), %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n    ret\n"
        ".size kn_emu_swap, .-kn_emu_swap\n");
#ifdef __cplusplus
extern "C"
#endif
void kn_emu_swap(struct kn_emu_ctx *from, struct kn_emu_ctx *to);
/* a context that starts fn (which never returns) on the stack's bytes */
static void kn_emu_start(struct kn_emu_ctx *c, char *stack, size_t bytes, void (*fn)(void))
{
    void **sp = (void **)(((uintptr_t)stack + bytes) & ~(uintptr_t)15);
    *--sp = 0;                     /* fn's return address: as after a call, the stack 8 past 16-byte alignment */
    *--sp = (void *)(uintptr_t)fn; /* where kn_emu_swap's ret goes */
    for (int r = 0; r < 6; r++)    /* the callee-saved registers it pops */
        *--sp = 0;
    c->sp = sp;
}
#else
struct kn_emu_ctx {
    ucontext_t uc;
};
static void kn_emu_swap(struct kn_emu_ctx *from, struct kn_emu_ctx *to) { swapcontext(&from->uc, &to->uc); }
static void kn_emu_start(struct kn_emu_ctx *c, char *stack, size_t bytes, void (*fn)(void))
{
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = bytes;
    c->uc.uc_link = NULL;
    makecontext(&c->uc, fn, 0);
}
#endif

struct kn_emu_thread {
    struct kn_emu_ctx ctx;
    int state;
    int commits;     /* cp.async groups this thread committed */
    int n_copies, cap_copies;
    struct kn_emu_copy *copies;
    uint32_t part[8]; /* what it deposits for a warp collective */
};

static struct kn_emu_thread kn_emu_threads[KN_EMU_MAX_THREADS];
static char *kn_emu_stacks;
static const size_t kn_emu_stack_bytes = 128 * 1024;
static struct kn_emu_ctx kn_emu_scheduler;
static int kn_emu_current, kn_emu_failed;
static char kn_emu_why[512];
static unsigned char *kn_emu_smem;
static size_t kn_emu_smem_bytes;
static void (*kn_emu_entry)(const void *);
/* Shared memory's 16-byte chunks: who read each last and in which epoch (the
 * block barriers passed), and the last cp.async into it: issued in epoch
 * `from` by `writer`, landed in epoch `landed` (-1: not yet). */
struct kn_emu_chunk {
    int read_epoch, reader; /* reader -2: several threads */
    int from, landed, writer;
};
static struct kn_emu_chunk *kn_emu_chunks;
static int kn_emu_epoch;
static const void *kn_emu_args;

static void kn_emu_wait(int at)
{
    struct kn_emu_thread *t = &kn_emu_threads[kn_emu_current];
    t->state = at;
    kn_emu_swap(&t->ctx, &kn_emu_scheduler);
}

static void kn_emu_fail(const char *fmt, ...)
{
    if (!kn_emu_failed) {
        int n = snprintf(kn_emu_why, sizeof kn_emu_why, "block (%u, %u, %u) thread %d: ", blockIdx.x, blockIdx.y, blockIdx.z,
                         kn_emu_current);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(kn_emu_why + n, sizeof kn_emu_why - (size_t)n, fmt, ap);
        va_end(ap);
    }
    kn_emu_failed = 1;
    kn_emu_wait(KN_EMU_DONE); /* never resumed */
}

/* the bytes of dynamic shared memory the launch gave (PTX's %dynamic_smem_size) */
static inline uint32_t kn_dynamic_smem_bytes(void) { return (uint32_t)kn_emu_smem_bytes; }

/* The chunk of dynamic shared memory at p, or NULL elsewhere. */
static struct kn_emu_chunk *kn_emu_chunk_at(const void *p)
{
    uintptr_t at = (uintptr_t)p, base = (uintptr_t)kn_emu_smem;
    return at >= base && at < base + kn_emu_smem_bytes ? &kn_emu_chunks[(at - base) / 16] : NULL;
}

static void kn_emu_note_read(const void *p)
{
    struct kn_emu_chunk *c = kn_emu_chunk_at(p);
    if (!c)
        return;
    if (c->writer >= 0 && c->writer != kn_emu_current && c->from <= kn_emu_epoch && (c->landed < 0 || c->landed >= kn_emu_epoch))
        kn_emu_fail("a race: ldmatrix reads shared byte %td, where thread %d's cp.async (issued %d barriers ago) may land",
                    (const unsigned char *)p - kn_emu_smem, c->writer, kn_emu_epoch - c->from);
    if (c->read_epoch == kn_emu_epoch && c->reader != kn_emu_current)
        c->reader = -2;
    else
        c->read_epoch = kn_emu_epoch, c->reader = kn_emu_current;
}

static void kn_emu_note_copy(void *dst)
{
    struct kn_emu_chunk *c = kn_emu_chunk_at(dst);
    if (!c)
        return;
    if (c->read_epoch == kn_emu_epoch && c->reader != kn_emu_current)
        kn_emu_fail("a race: cp.async onto shared byte %td, which %s read since the last barrier", (unsigned char *)dst - kn_emu_smem,
                    c->reader == -2 ? "other threads" : "another thread");
    c->from = kn_emu_epoch, c->landed = -1, c->writer = kn_emu_current;
}

/* A warp collective: deposit, wait for the warp, read every lane's part (part(lane)), wait again. */
#define KN_EMU_LANE (kn_emu_current & 31)
#define KN_EMU_PART(lane) (kn_emu_threads[(kn_emu_current & ~31) + (lane)].part)

/* v of lane `from` of this warp (every lane takes part) */
static float kn_emu_shfl(const char *what, unsigned mask, float v, int from)
{
    if (mask != 0xffffffffu)
        kn_emu_fail("%s with mask %#x: the emulation takes whole warps only", what, mask);
    memcpy(KN_EMU_PART(KN_EMU_LANE), &v, 4);
    kn_emu_wait(KN_EMU_AT_WARP);
    float r;
    memcpy(&r, KN_EMU_PART(from & 31), 4);
    kn_emu_wait(KN_EMU_AT_WARP);
    return r;
}
static float __shfl_xor_sync(unsigned mask, float v, int lane_mask) { return kn_emu_shfl("__shfl_xor_sync", mask, v, KN_EMU_LANE ^ lane_mask); }
static float __shfl_sync(unsigned mask, float v, int lane) { return kn_emu_shfl("__shfl_sync", mask, v, lane); }

static unsigned __ballot_sync(unsigned mask, int predicate)
{
    if (mask != 0xffffffffu)
        kn_emu_fail("__ballot_sync with mask %#x: the emulation takes whole warps only", mask);
    KN_EMU_PART(KN_EMU_LANE)[0] = predicate != 0;
    kn_emu_wait(KN_EMU_AT_WARP);
    unsigned r = 0;
    for (int l = 0; l < 32; l++)
        r |= KN_EMU_PART(l)[0] << l;
    kn_emu_wait(KN_EMU_AT_WARP);
    return r;
}

static inline int __popc(unsigned x) { return __builtin_popcount(x); }

/* ldmatrix .x4 (.trans): lane l gives the address of row l % 8 of matrix l / 8;
 * register i of lane l gets matrix i's elements (l / 4, 2 (l % 4)) and the next
 * column, or transposed (2 (l % 4), l / 4) and the next row. */
static void kn_emu_ldmatrix(uint32_t *r, const void *p, int trans)
{
    const int lane = KN_EMU_LANE;
    kn_emu_note_read(p);
    memcpy(KN_EMU_PART(lane), &p, sizeof p);
    kn_emu_wait(KN_EMU_AT_WARP);
    for (int i = 0; i < 4; i++) {
        uint16_t e[2];
        for (int k = 0; k < 2; k++) {
            int row = trans ? 2 * (lane % 4) + k : lane / 4, col = trans ? lane / 4 : 2 * (lane % 4) + k;
            const uint16_t *at;
            memcpy(&at, KN_EMU_PART(i * 8 + row), sizeof at);
            e[k] = at[col];
        }
        r[i] = (uint32_t)e[0] | (uint32_t)e[1] << 16;
    }
    kn_emu_wait(KN_EMU_AT_WARP);
}
static void ldsm4(uint32_t *r, const void *p) { kn_emu_ldmatrix(r, p, 0); }
static void ldsm4_t(uint32_t *r, const void *p) { kn_emu_ldmatrix(r, p, 1); }

static inline float kn_emu_bf16(uint32_t reg, int high) { return __uint_as_float((reg >> (high ? 16 : 0)) << 16); }

/* mma.sync m16n8k16 row.col, bf16 in, f32 accumulation: c += a b.  A's
 * registers: (row g, cols 2t, 2t+1), (g + 8, same), (g, 2t + 8, +9), (g + 8,
 * 2t + 8, +9); B's: (rows 2t, 2t+1 of col g), (rows 2t + 8, +9); C's: (g, 2t),
 * (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1); g = lane / 4, t = lane % 4. */
static void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    const int lane = KN_EMU_LANE;
    uint32_t *mine = KN_EMU_PART(lane);
    memcpy(mine, a, 16);
    mine[4] = b0, mine[5] = b1;
    kn_emu_wait(KN_EMU_AT_WARP);
    float out[4];
    for (int x = 0; x < 4; x++) {
        int row = lane / 4 + (x >> 1) * 8, col = 2 * (lane % 4) + (x & 1);
        float sum = c[x];
        for (int k = 0; k < 16; k++) {
            float av = kn_emu_bf16(KN_EMU_PART(row % 8 * 4 + k % 8 / 2)[(row >= 8) + 2 * (k >= 8)], k % 2);
            float bv = kn_emu_bf16(KN_EMU_PART(col * 4 + k % 8 / 2)[4 + (k >= 8)], k % 2);
            sum += av * bv;
        }
        out[x] = sum;
    }
    kn_emu_wait(KN_EMU_AT_WARP);
    memcpy(c, out, sizeof out);
}

/* cvt.rn.bf16x2.f32: round to nearest even, a NaN to the canonical one; lo in the low half */
static inline uint32_t kn_emu_round_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    return f != f ? 0x7fc0u : (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
}
static inline uint32_t pack_bf16(float lo, float hi) { return kn_emu_round_bf16(lo) | kn_emu_round_bf16(hi) << 16; }

static void cp16(void *dst, const void *src, int full)
{
    struct kn_emu_thread *t = &kn_emu_threads[kn_emu_current];
    if ((uintptr_t)dst % 16 || (full && (uintptr_t)src % 16))
        kn_emu_fail("cp.async of 16 bytes from %p to %p: both must be 16-byte aligned", src, dst);
    if (t->n_copies == t->cap_copies) {
        t->cap_copies = t->cap_copies ? 2 * t->cap_copies : 64;
        t->copies = (struct kn_emu_copy *)realloc(t->copies, (size_t)t->cap_copies * sizeof *t->copies);
        if (!t->copies)
            abort();
    }
    kn_emu_note_copy(dst);
    struct kn_emu_copy c = {dst, src, full, t->commits};
    t->copies[t->n_copies++] = c;
}
static void cp_commit(void) { kn_emu_threads[kn_emu_current].commits++; }
/* cp.async.wait_group n: the copies of every committed group but the newest n land */
static void kn_emu_cp_wait(int newest)
{
    struct kn_emu_thread *t = &kn_emu_threads[kn_emu_current];
    int kept = 0;
    for (int i = 0; i < t->n_copies; i++) {
        struct kn_emu_copy *c = &t->copies[i];
        if (c->group < t->commits - newest) {
            if (c->full)
                memcpy(c->dst, c->src, 16);
            else
                memset(c->dst, 0, 16);
            struct kn_emu_chunk *k = kn_emu_chunk_at(c->dst);
            if (k && k->writer == kn_emu_current && k->landed < 0)
                k->landed = kn_emu_epoch;
        } else
            t->copies[kept++] = *c;
    }
    t->n_copies = kept;
}
static void cp_wait_all_but_newest(void) { kn_emu_cp_wait(1); }
static void cp_wait_all(void) { kn_emu_cp_wait(0); }

static void kn_emu_thread_main(void)
{
    kn_emu_entry(kn_emu_args);
    kn_emu_wait(KN_EMU_DONE); /* never resumed */
}

/* One block to its end: 0, or -1 (kn_emu_why says why). */
static int kn_emu_block(int n)
{
    for (int t = 0; t < n; t++) {
        struct kn_emu_thread *th = &kn_emu_threads[t];
        kn_emu_start(&th->ctx, kn_emu_stacks + (size_t)t * kn_emu_stack_bytes, kn_emu_stack_bytes, kn_emu_thread_main);
        th->state = KN_EMU_RUNNING, th->commits = 0, th->n_copies = 0;
    }
    for (;;) {
        for (int t = 0; t < n; t++)
            if (kn_emu_threads[t].state == KN_EMU_RUNNING) {
                kn_emu_current = t;
                threadIdx.x = (unsigned)t;
                kn_emu_swap(&kn_emu_scheduler, &kn_emu_threads[t].ctx);
                if (kn_emu_failed)
                    return -1;
            }
        int released = 0, at_block = 0, done = 0;
        for (int w = 0; w < n; w += 32) {
            int lanes = n - w < 32 ? n - w : 32, waiting = 0;
            for (int l = 0; l < lanes; l++)
                waiting += kn_emu_threads[w + l].state == KN_EMU_AT_WARP;
            if (waiting == lanes) {
                for (int l = 0; l < lanes; l++)
                    kn_emu_threads[w + l].state = KN_EMU_RUNNING;
                released++;
            } else if (waiting) {
                snprintf(kn_emu_why, sizeof kn_emu_why, "block (%u, %u, %u) warp %d: %d of its %d lanes wait at a warp collective, the others do not come",
                         blockIdx.x, blockIdx.y, blockIdx.z, w / 32, waiting, lanes);
                return -1;
            }
        }
        if (released)
            continue;
        for (int t = 0; t < n; t++)
            at_block += kn_emu_threads[t].state == KN_EMU_AT_BLOCK, done += kn_emu_threads[t].state == KN_EMU_DONE;
        if (done == n)
            return 0;
        for (int t = 0; t < n; t++)
            if (kn_emu_threads[t].state == KN_EMU_AT_BLOCK)
                kn_emu_threads[t].state = KN_EMU_RUNNING;
        kn_emu_epoch++;
    }
}

/* entry(args) over a grid of blocks of `threads` threads with smem bytes of
 * dynamic shared memory: 0, or -1 with why (the first failure). */
static int kn_emu_run(void (*entry)(const void *), const int64_t grid[3], int threads, size_t smem, const void *args, char *why,
                      size_t n_why)
{
    if (threads < 1 || threads > KN_EMU_MAX_THREADS) {
        snprintf(why, n_why, "%d threads a block", threads);
        return -1;
    }
    if (!(kn_emu_stacks = (char *)malloc((size_t)threads * kn_emu_stack_bytes)))
        abort();
    unsigned char *mem = (unsigned char *)malloc(smem + 16);
    struct kn_emu_chunk *chunks = (struct kn_emu_chunk *)malloc((smem / 16 + 1) * sizeof *chunks);
    if (!mem || !chunks)
        abort();
    kn_emu_chunks = chunks;
    kn_emu_smem = mem, kn_emu_smem_bytes = smem;
    kn_emu_entry = entry, kn_emu_args = args, kn_emu_failed = 0;
    blockDim.x = (unsigned)threads, blockDim.y = blockDim.z = 1;
    gridDim.x = (unsigned)grid[0], gridDim.y = (unsigned)grid[1], gridDim.z = (unsigned)grid[2];
    int rc = 0;
    for (int64_t z = 0; z < grid[2] && !rc; z++)
        for (int64_t y = 0; y < grid[1] && !rc; y++)
            for (int64_t x = 0; x < grid[0] && !rc; x++) {
                blockIdx.x = (unsigned)x, blockIdx.y = (unsigned)y, blockIdx.z = (unsigned)z;
                memset(mem, 0xff, smem + 16);
                for (size_t c = 0; c <= smem / 16; c++)
                    chunks[c].read_epoch = chunks[c].reader = chunks[c].from = chunks[c].landed = chunks[c].writer = -1;
                kn_emu_epoch = 0;
                rc = kn_emu_block(threads);
            }
    if (rc)
        snprintf(why, n_why, "%s", kn_emu_why);
    free(mem), free(chunks), free(kn_emu_stacks);
    for (int t = 0; t < threads; t++) {
        free(kn_emu_threads[t].copies);
        kn_emu_threads[t].copies = NULL, kn_emu_threads[t].cap_copies = 0;
    }
    return rc;
}

/* NAME's entry for kn_emu_run: a kernel takes its argument struct by value */
#define KN_EMU_ENTRY(fn, type)                                                                                                        \
    static void kn_emu_entry_##fn(const void *a) { fn(*(const type *)a); }

#endif
