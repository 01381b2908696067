/* cc.h: C source into a shared object with the system C compiler, for the
 * CPU backend's kernels.
 *
 *   char log[4096];
 *   if (cc_shared_object(&src, 1, "/tmp/k.so", log, sizeof log)) fputs(log, stderr);
 *
 * $CC if set, else cc, with CC_FLAGS: -O3 and no errno from math
 * functions, so the column loops vectorise; no -march, so the object
 * runs on any x86-64 (or whatever the compiler targets) node of a cluster
 * (the kernels carry their own AVX2 and AVX-512 clones: emit_kernel.h). */
#ifndef WEFT_CC_H
#define WEFT_CC_H

#include <stddef.h>

/* The options every compile gets: a part of the kernel cache's key, so
 * that changing them compiles the kernels again.  (-ffp-contract=fast, FMAs
 * in the attention's loops, measured no faster on GPT-2 124M.) */
#define CC_COMPILE_FLAGS "-std=c11 -O3 -fno-math-errno -fPIC"
#define CC_LINK_FLAGS "-shared"
#define CC_FLAGS CC_COMPILE_FLAGS " " CC_LINK_FLAGS

/* Translation units sources[0..n_sources) into one shared object: each
 * unit compiled by its own compiler process, all at once (a plan's kernels
 * come in several units, so a cold compile takes the machine's cores),
 * then linked.  0 on success; -1 with the compiler's messages (or why it
 * did not run) in log. */
int cc_shared_object(const char *const *sources, int n_sources, const char *so_path, char *log, size_t n);

#endif
