/* nvrtc.c: NVRTC, opened at run time (see nvrtc.h).  The few entry points
 * are declared here by their documented C signatures, so building weft
 * needs no CUDA header either. */
#include "nvrtc.h"
#include "util.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvrtc_result;      /* nvrtcResult: NVRTC_SUCCESS is 0 */
typedef struct _nvrtcProgram *nvrtc_program;

static struct {
    bool tried;
    void *lib;
    char why[640], version[16];
    nvrtc_result (*version_fn)(int *, int *);
    nvrtc_result (*num_archs)(int *);
    nvrtc_result (*archs)(int *);
    nvrtc_result (*create)(nvrtc_program *, const char *, const char *, int, const char *const *, const char *const *);
    nvrtc_result (*destroy)(nvrtc_program *);
    nvrtc_result (*compile)(nvrtc_program, int, const char *const *);
    nvrtc_result (*log_size)(nvrtc_program, size_t *);
    nvrtc_result (*log)(nvrtc_program, char *);
    nvrtc_result (*cubin_size)(nvrtc_program, size_t *);
    nvrtc_result (*cubin)(nvrtc_program, char *);
    nvrtc_result (*ptx_size)(nvrtc_program, size_t *);
    nvrtc_result (*ptx)(nvrtc_program, char *);
    const char *(*error_string)(nvrtc_result);
} nv;

static bool load(void)
{
    if (nv.tried)
        return nv.lib != NULL;
    nv.tried = true;
    const char *home = getenv("CUDA_HOME");
    char path[512];
    snprintf(path, sizeof path, "%s/lib64/libnvrtc.so", home && *home ? home : "/usr/local/cuda");
    const char *names[] = {path, "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"};
    nv.lib = wf_dlopen_first(names, WF_COUNT(names));
    if (!nv.lib) {
        snprintf(nv.why, sizeof nv.why, "no NVRTC: %s not found (set CUDA_HOME to the CUDA toolkit)", path);
        return false;
    }
    static const struct wf_dlsym syms[] = {
        WF_DLSYM(nv, version_fn, "nvrtcVersion"), WF_DLSYM(nv, num_archs, "nvrtcGetNumSupportedArchs"),
        WF_DLSYM(nv, archs, "nvrtcGetSupportedArchs"), WF_DLSYM(nv, create, "nvrtcCreateProgram"),
        WF_DLSYM(nv, destroy, "nvrtcDestroyProgram"), WF_DLSYM(nv, compile, "nvrtcCompileProgram"),
        WF_DLSYM(nv, log_size, "nvrtcGetProgramLogSize"), WF_DLSYM(nv, log, "nvrtcGetProgramLog"),
        WF_DLSYM(nv, cubin_size, "nvrtcGetCUBINSize"), WF_DLSYM(nv, cubin, "nvrtcGetCUBIN"),
        WF_DLSYM(nv, ptx_size, "nvrtcGetPTXSize"), WF_DLSYM(nv, ptx, "nvrtcGetPTX"),
        WF_DLSYM(nv, error_string, "nvrtcGetErrorString")};
    if (wf_dlsyms(nv.lib, syms, WF_COUNT(syms), "NVRTC", "", nv.why, sizeof nv.why)) {
        dlclose(nv.lib);
        nv.lib = NULL;
        return false;
    }
    int major = 0, minor = 0;
    nv.version_fn(&major, &minor);
    snprintf(nv.version, sizeof nv.version, "%d.%d", major, minor);
    return true;
}

int nvrtc_available(char *why, size_t n)
{
    if (load())
        return 1;
    snprintf(why, n, "%s", nv.why);
    return 0;
}

const char *nvrtc_version(void) { return load() ? nv.version : ""; }

int nvrtc_archs(int *out, int max)
{
    int n = 0;
    if (!load() || nv.num_archs(&n) || n <= 0)
        return 0;
    int *all = wf_calloc((size_t)n, sizeof *all);
    nv.archs(all);
    int k = n < max ? n : max;
    memcpy(out, all, (size_t)k * sizeof *out);
    free(all);
    return k;
}

static char *copy(const char *s)
{
    size_t n = strlen(s) + 1;
    char *c = wf_calloc(n, 1);
    memcpy(c, s, n);
    return c;
}

static int compile(const char *src, const char *name, int arch, bool ptx, bool report, struct nvrtc_out *out)
{
    memset(out, 0, sizeof *out);
    if (!load()) {
        out->log = copy(nv.why);
        return -1;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    nvrtc_program prog = NULL;
    nvrtc_result r = nv.create(&prog, src, name, 0, NULL, NULL);
    if (r) {
        char msg[256];
        snprintf(msg, sizeof msg, "nvrtcCreateProgram: %s", nv.error_string(r));
        out->log = copy(msg);
        return -1;
    }
    char gpu[64];
    snprintf(gpu, sizeof gpu, "--gpu-architecture=%s_%d", ptx ? "compute" : "sm", arch);
    const char *opts[] = {gpu, "--std=c++17", "-default-device", "--fmad=true", "--ptxas-options=-v"};
    r = nv.compile(prog, (int)WF_COUNT(opts) - !report, opts);
    size_t n = 0;
    nv.log_size(prog, &n);
    out->log = wf_calloc(n + 1, 1);
    if (n)
        nv.log(prog, out->log);
    if (r == 0) {
        (ptx ? nv.ptx_size : nv.cubin_size)(prog, &out->size);
        out->bytes = wf_calloc(out->size + 1, 1);
        (ptx ? nv.ptx : nv.cubin)(prog, out->bytes);
    }
    nv.destroy(&prog);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    out->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (r) {
        size_t m = strlen(out->log);
        char *msg = wf_calloc(m + 128, 1);
        snprintf(msg, m + 128, "%s%s%s", nv.error_string(r), m ? ":\n" : "", out->log);
        free(out->log);
        out->log = msg;
        return -1;
    }
    return 0;
}

int nvrtc_compile(const char *src, const char *name, int arch, bool ptx, struct nvrtc_out *out)
{
    return compile(src, name, arch, ptx, false, out);
}

int nvrtc_compile_report(const char *src, const char *name, int arch, struct nvrtc_out *out)
{
    return compile(src, name, arch, false, true, out);
}

void nvrtc_out_free(struct nvrtc_out *o)
{
    free(o->bytes);
    free(o->log);
    memset(o, 0, sizeof *o);
}
