/* kernels.h: the fused kernels' binaries: a cubin per GPU architecture
 * and PTX for newer GPUs (NVRTC), and one shared object for the CPU
 * backend (the system C compiler), with a cache on disk.
 *
 *   int archs[8];  int n = kernels_parse_archs("sm_90,sm_80", archs, 8, &diag);
 *   struct kernel_stats st;
 *   kernels_build(&F, archs, n, &st, &diag);   // fills F.kernels[k].bins, F.cpu_object
 *
 * The cache ($XDG_CACHE_HOME/weft, else ~/.cache/weft) keys each binary by
 * the hash of its source, the compiler's options and NVRTC's version; a
 * binary is written to a temporary file and renamed into place, so
 * compiles that share the cache never see half a file.  Identical kernels
 * are compiled once: the fusion pass already merged them. */
#ifndef WEFT_KERNELS_H
#define WEFT_KERNELS_H

#include "diag.h"
#include "emit_kernel.h"
#include "kernel.h"

#define KERNELS_DEFAULT_ARCHS "sm_80,sm_90"

struct kernel_stats {
    int distinct;         /* kernels */
    int compiled, cached; /* binaries NVRTC made now, binaries read from the cache */
    double nvrtc_seconds; /* NVRTC's time, summed over the binaries */
    double nvrtc_wall;    /* the time it took, its threads side by side */
    double cc_seconds;    /* the CPU object (0 when it came from the cache) */
    bool cpu_cached;
    char no_gpu[640];     /* why there are no GPU binaries (no NVRTC), or "" */
    int ptx_arch;         /* the PTX's virtual architecture */
};

/* "sm_90,sm_80" (or "90,80") into architecture numbers, sorted, each once;
 * "cpu": none (a plan for CPU ranks only, compiled without NVRTC).  An
 * architecture NVRTC does not know is an error listing those it does.
 * Returns the count, or -1. */
int kernels_parse_archs(const char *s, int *archs, int max, struct diag *d);
/* 0; or -1 if NVRTC rejects a kernel (a weft bug: the diagnosis names the
 * kernel, gives NVRTC's log and where the source was saved) or the C
 * compiler fails.  Without NVRTC the plan gets no GPU binaries and
 * st->no_gpu says why. */
int kernels_build(struct kn_set *F, const int *archs, int n_archs, struct kernel_stats *st, struct diag *d);
/* An entry's source, whatever its kind (a fused kernel, attention). */
char *kernels_source(const struct kn_entry *e, enum kn_lang lang);
/* The cache's directory (made if missing), into buf; NULL if there is none. */
const char *kernels_cache_dir(char *buf, size_t n);

#endif
