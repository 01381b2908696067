/* backend.c: the backends' common face, and the CPU backend: the plan's
 * shared object, written to a temporary file and dlopen'd (see backend.h). */
#include "backend_impl.h"
#include "util.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cpu {
    struct backend be;
    void *lib;
    void **fns;     /* per kernel: its function (fused, routing), or attention's [KN_ATTN_FNS] */
};

static int cpu_missing(struct diag *d, const struct kn_entry *K, const char *suffix)
{
    diag_error(d, NULL, 0, "the plan's CPU object has no function %s%s: the plan is corrupted", K->name, suffix);
    return -1;
}

static void *cpu_fn(struct cpu *c, int kernel, int fn)
{
    return c->fns[(size_t)kernel * KN_ATTN_FNS + (size_t)fn];
}

static int cpu_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d)
{
    void (*f)(const struct kn_args *);
    *(void **)&f = cpu_fn((struct cpu *)be, kernel, 0);
    if (!f)
        return cpu_missing(d, &be->F->kernels[kernel], "");
    f(a);
    return 0;
}

static int cpu_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d)
{
    void (*f)(const struct kn_attn_args *);
    *(void **)&f = cpu_fn((struct cpu *)be, kernel, fn);
    if (!f)
        return cpu_missing(d, &be->F->kernels[kernel], kn_attn_fn_suffix[fn]);
    f(a);
    return 0;
}

static int cpu_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    void (*f)(const struct kn_route_args *);
    *(void **)&f = cpu_fn((struct cpu *)be, kernel, 0);
    if (!f)
        return cpu_missing(d, &be->F->kernels[kernel], "");
    f(a);
    return 0;
}

static void *cpu_alloc(struct backend *be, size_t bytes, struct diag *d)
{
    (void)be;
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        diag_error(d, NULL, 0, "out of memory: %zu bytes", bytes);
    return p;
}

static void cpu_free(struct backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    (void)be, (void)d;
    memcpy(dst, src, bytes);
    return 0;
}

static int cpu_sync(struct backend *be, struct diag *d)
{
    (void)be, (void)d;
    return 0;
}

static void cpu_close(struct backend *be)
{
    struct cpu *c = (struct cpu *)be;
    if (c->lib)
        dlclose(c->lib);
    free(c->fns);
    free(c);
}

static const struct backend_ops cpu_ops = {cpu_alloc, cpu_free, cpu_copy, cpu_copy, cpu_copy, cpu_fused, cpu_attention, cpu_route,
                                           cpu_sync, cpu_close};

static struct backend *cpu_open(const struct kn_set *F, struct diag *d)
{
    if (!F->cpu_object || !F->cpu_size) {
        diag_error(d, NULL, 0, "the plan has no CPU kernels (compiled without a C compiler?)");
        return NULL;
    }
    const char *tmp = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/weft-kernels-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        diag_error(d, NULL, 0, "cannot write the CPU kernels to %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t done = 0;
    while (done < F->cpu_size) {
        ssize_t w = write(fd, (const char *)F->cpu_object + done, F->cpu_size - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    close(fd);
    void *lib = done == F->cpu_size ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    unlink(path); /* the mapping stays */
    if (!lib) {
        diag_error(d, NULL, 0, "cannot load the plan's CPU kernels: %s", done == F->cpu_size ? dlerror() : "short write");
        return NULL;
    }
    struct cpu *c = wf_calloc(1, sizeof *c);
    c->be = (struct backend){.ops = &cpu_ops, .F = F, .kind = BACKEND_CPU};
    snprintf(c->be.description, sizeof c->be.description, "cpu");
    c->lib = lib;
    c->fns = wf_calloc((size_t)F->n_kernels * KN_ATTN_FNS + 1, sizeof *c->fns);
    for (int k = 0; k < F->n_kernels; k++) {
        const struct kn_entry *K = &F->kernels[k];
        for (int f = 0; f < (K->kind == KN_KIND_ATTENTION ? KN_ATTN_FNS : 1); f++) {
            char name[160];
            snprintf(name, sizeof name, "%s%s", K->name, K->kind == KN_KIND_ATTENTION ? kn_attn_fn_suffix[f] : "");
            c->fns[(size_t)k * KN_ATTN_FNS + (size_t)f] = dlsym(lib, name);
        }
    }
    return &c->be;
}

struct backend *backend_open(enum backend_kind kind, const struct kn_set *F, struct diag *d)
{
    return kind == BACKEND_CUDA ? backend_cuda_open(F, d) : cpu_open(F, d);
}

void backend_close(struct backend *be)
{
    if (be)
        be->ops->close(be);
}

const char *backend_describe(const struct backend *be) { return be->description; }

void *backend_alloc(struct backend *be, size_t bytes, struct diag *d) { return be->ops->alloc(be, bytes, d); }
void backend_free(struct backend *be, void *p)
{
    if (p)
        be->ops->free(be, p);
}
int backend_put(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return be->ops->put(be, dst, src, bytes, d);
}
int backend_get(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return be->ops->get(be, dst, src, bytes, d);
}
int backend_copy(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    return be->ops->copy(be, dst, src, bytes, d);
}

static int bad_kernel(const struct backend *be, int kernel, enum kn_kind kind, struct diag *d)
{
    if (kernel >= 0 && kernel < be->F->n_kernels && be->F->kernels[kernel].kind == kind)
        return 0;
    diag_error(d, NULL, 0, "launch of kernel %d: the plan has no such kernel of that kind", kernel);
    return -1;
}

int backend_fused(struct backend *be, int kernel, const struct kn_args *a, struct diag *d)
{
    return bad_kernel(be, kernel, KN_KIND_FUSED, d) ? -1 : be->ops->fused(be, kernel, a, d);
}

int backend_attention(struct backend *be, int kernel, enum kn_attn_fn fn, const struct kn_attn_args *a, struct diag *d)
{
    if (bad_kernel(be, kernel, KN_KIND_ATTENTION, d))
        return -1;
    if (fn != KN_ATTN_FWD && !be->F->kernels[kernel].attn.backward) {
        diag_error(d, NULL, 0, "%s has no backward (a forward-only plan)", be->F->kernels[kernel].name);
        return -1;
    }
    return be->ops->attention(be, kernel, fn, a, d);
}

int backend_route(struct backend *be, int kernel, const struct kn_route_args *a, struct diag *d)
{
    return bad_kernel(be, kernel, KN_KIND_ROUTE, d) ? -1 : be->ops->route(be, kernel, a, d);
}

int backend_sync(struct backend *be, struct diag *d) { return be->ops->sync(be, d); }
