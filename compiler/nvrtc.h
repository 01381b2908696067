/* nvrtc.h: CUDA C to cubin and PTX with NVRTC, which needs no GPU.
 *
 *   char why[256];
 *   if (nvrtc_available(why, sizeof why))  ...         // else why says what is missing
 *   struct nvrtc_out o;
 *   if (nvrtc_compile(src, "k3_bias_add_gelu", 90, false, &o) == 0) use(o.bytes, o.size);
 *   else fputs(o.log, stderr);
 *   nvrtc_out_free(&o);
 *
 * The library is opened at run time ($CUDA_HOME/lib64/libnvrtc.so, then the
 * loader's path), so weft builds and runs where there is no CUDA toolkit;
 * only compiling kernels for a GPU needs one. */
#ifndef WEFT_NVRTC_H
#define WEFT_NVRTC_H

#include <stdbool.h>
#include <stddef.h>

/* 1 if NVRTC can be used; else 0 and why. */
int nvrtc_available(char *why, size_t n);
/* "13.0": NVRTC's version, for cache keys; "" without NVRTC. */
const char *nvrtc_version(void);
/* The virtual architectures NVRTC knows (80, 90, ...); returns how many. */
int nvrtc_archs(int *out, int max);

struct nvrtc_out {
    void *bytes;   /* the cubin (or PTX text, NUL included) */
    size_t size;
    char *log;     /* NVRTC's log: warnings, or why it failed */
    double seconds;
};

/* Compile for sm_<arch> (a cubin), or for compute_<arch> as PTX.  0 on
 * success; -1 with the log (or why NVRTC is missing) in out->log. */
int nvrtc_compile(const char *src, const char *name, int arch, bool ptx, struct nvrtc_out *out);
/* The same cubin, with ptxas's report in out->log (--ptxas-options=-v: per
 * function "Used N registers", "N bytes spill stores", "N bytes smem"). */
int nvrtc_compile_report(const char *src, const char *name, int arch, struct nvrtc_out *out);
void nvrtc_out_free(struct nvrtc_out *o);

#endif
