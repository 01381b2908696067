/* emit_kernel.h: a fused kernel's source, as C for the CPU backend or as
 * CUDA C for NVRTC, from one description (ir/kernel.h).
 *
 *   char *src = emit_kernel(&k, "k3_bias_add_gelu", KN_LANG_CUDA);
 *   free(src);
 *
 * Both define `void NAME(const struct kn_args *a)` (C) or
 * `extern "C" __global__ void NAME(struct kn_args a)` (CUDA) over the
 * kernel's rows x cols domain:
 *   C     a loop over rows; in each, one loop over the columns per pass;
 *         where the accesses allow a vector (as for CUDA, below) and the
 *         row's length is a multiple of 16, the columns go 16 at a time
 *         through arrays (loads, then the arithmetic lane by lane, then
 *         the stores; sums and maxima per lane), which the compiler
 *         vectorises, else one at a time.  exp, tanh and max are
 *         emit_c_math's, which vectorise where libm's calls do not.
 *         A kernel whose rows are independent (it adds into no output
 *         but the rows of FULL ones) is NAME_rows(a, r0, r1), rows r0 ..
 *         r1 only, with NAME(a) calling it for every row: the backend's
 *         threads take a range each where no output has a modulus (omod)
 *   CUDA  a kernel with reductions or accumulations: a block per row
 *         (grid-stride over rows), threads striding over the columns, a
 *         block reduction per ROWSUM/ROWMAX; without: a grid-stride loop
 *         over every element; with no value that varies along a row
 *         (per-row arithmetic only): a grid-stride loop over the rows,
 *         a thread each (ir/launch.h names these shapes).  Where every
 *         per-element access is a contiguous row (FULL, COLUMN, ROW_DIV,
 *         HEADS and GATHER reads; FULL writes), a variant takes eight bf16
 *         or four f32 columns a thread in one 16-byte access; it runs when
 *         the row length and every pointer allow it (kn_vec), else the
 *         scalar loops do.  One that adds into an output with a
 *         modulus must run with gridDim.x equal to it (kn_has_full_accum),
 *         one with column sums with a.nblocks = gridDim.x and its
 *         NAME_colsum after it.  One that adds into a gathered table
 *         (an embedding's gradient) takes any grid: each block reads
 *         every row's index, 256 at a time, finds with a ballot those
 *         whose table row is blockIdx.x modulo gridDim.x and adds them in
 *         row order, so the sums are deterministic.
 * Values are float whatever the slots' types (bf16 and f32 in, f32
 * accumulation); no header beyond the C library is needed, so NVRTC
 * compiles the source as it stands. */
#ifndef WEFT_EMIT_KERNEL_H
#define WEFT_EMIT_KERNEL_H

#include "kernel.h"
#include "launch.h"

enum kn_lang { KN_LANG_C, KN_LANG_CUDA };

char *emit_kernel(const struct kn_kernel *k, const char *name, enum kn_lang lang);
/* Several kernels in one translation unit (the CPU backend's object). */
char *emit_kernels(const struct kn_kernel *const *ks, const char *const *names, int n, enum kn_lang lang);

/* What the generated C (fused kernels and attention) shares: KN_CLONES,
 * the attribute that compiles an exported kernel for x86-64-v4 (AVX-512),
 * x86-64-v3 (AVX2, FMA) and the baseline, the machine picking one when the
 * object loads (GCC on x86-64; elsewhere nothing, the baseline only), so a
 * plan compiled on one machine runs on any; and kn_expf and kn_tanhf,
 * branch-free forms of expf and tanhf (within 2 ulp, Cephes's polynomials)
 * that the compiler can vectorise, where libm's are calls. */
extern const char emit_c_math[];

#endif
