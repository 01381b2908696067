/* kernels.c: compile every distinct kernel, through the cache (see kernels.h). */
#include "kernels.h"
#include "cc.h"
#include "emit_attention.h"
#include "emit_route.h"
#include "emit_kernel.h"
#include "nvrtc.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int by_number(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int kernels_parse_archs(const char *s, int *archs, int max, struct diag *d)
{
    if (!strcmp(s, "cpu"))
        return 0; /* a plan for CPU ranks only: no GPU binaries */
    int known[64], n_known = nvrtc_archs(known, 64), n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        const char *num = !strncmp(tok, "sm_", 3) ? tok + 3 : tok;
        char *end;
        long a = strtol(num, &end, 10);
        bool ok = *num && !*end && a > 0 && a < 1000, found = n_known == 0;
        for (int k = 0; k < n_known; k++)
            found |= known[k] == a;
        ok &= found;
        if (!ok) {
            char list[512] = "";
            size_t m = 0;
            for (int k = 0; k < n_known && m < sizeof list; k++)
                m += (size_t)snprintf(list + m, sizeof list - m, "%ssm_%d", k ? ", " : "", known[k]);
            if (n_known)
                diag_error(d, NULL, 0, "--arch %s: NVRTC %s does not know '%s'; it knows %s", s, nvrtc_version(), tok, list);
            else
                diag_error(d, NULL, 0, "--arch %s: '%s' is not an architecture such as sm_90", s, tok);
            return -1;
        }
        bool seen = false;
        for (int k = 0; k < n; k++)
            seen |= archs[k] == (int)a;
        if (!seen && n < max)
            archs[n++] = (int)a;
    }
    if (!n) {
        diag_error(d, NULL, 0, "--arch '%s': no architecture named (such as sm_90)", s);
        return -1;
    }
    qsort(archs, (size_t)n, sizeof *archs, by_number);
    return n;
}

const char *kernels_cache_dir(char *buf, size_t n)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, n, "%s/weft", xdg);
    else if (home && *home)
        snprintf(buf, n, "%s/.cache/weft", home);
    else
        return NULL;
    /* make each missing directory on the way */
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST)
        return NULL;
    return buf;
}

static void *read_all(const char *path, size_t *size)
{
    size_t n = 0;
    char *p = wf_read_file(path, (size_t)1 << 30, &n);
    *size = n;
    return p;
}

/* Into the cache under `name`, atomically: a temporary file, renamed. */
static void cache_put(const char *dir, const char *name, const void *bytes, size_t size)
{
    if (!dir)
        return;
    char tmp[1024], path[1024];
    snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return;
    FILE *f = fdopen(fd, "wb");
    bool ok = f && fwrite(bytes, 1, size, f) == size;
    if (f)
        ok &= fclose(f) == 0;
    else
        close(fd);
    if (!ok || rename(tmp, path))
        unlink(tmp);
}

/* A cached binary that looks like what it claims: an ELF cubin or object,
 * PTX text. */
static void *cache_get(const char *dir, const char *name, bool ptx, size_t *size)
{
    if (!dir)
        return NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    void *p = read_all(path, size);
    if (p && (ptx ? *size < 2 || memcmp(p, "//", 2) : *size < 4 || memcmp(p, "\177ELF", 4))) {
        free(p);
        return NULL;
    }
    return p;
}

char *kernels_source(const struct kn_entry *e, enum kn_lang lang)
{
    switch ((enum kn_kind)e->kind) {
    case KN_KIND_ATTENTION: return emit_attention(&e->attn, e->name, lang);
    case KN_KIND_ROUTE: return emit_route(e->name, lang);
    default: return emit_kernel(&e->k, e->name, lang);
    }
}

/* One binary NVRTC makes: a kernel for an architecture (or PTX). */
struct job {
    struct kn_entry *e;
    int bin;            /* the entry's binary it fills */
    int arch;
    bool ptx;
    char name[128];     /* in the cache */
    char *src;          /* shared by the kernel's jobs; the first owns it */
    struct nvrtc_out out;
    int rc;
};

struct pool {
    struct job *jobs;
    int n, next;
    pthread_mutex_t lock;
};

static void *worker(void *arg)
{
    struct pool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        int i = p->next++;
        pthread_mutex_unlock(&p->lock);
        if (i >= p->n)
            return NULL;
        struct job *j = &p->jobs[i];
        j->rc = nvrtc_compile(j->src, j->e->name, j->arch, j->ptx, &j->out);
    }
}

/* Every kernel's cubins and PTX: from the cache, else NVRTC on as many
 * threads as there are cores (NVRTC compiles separate programs at once).
 * Results are placed in job order, so the plan does not depend on which
 * thread finished first. */
static int gpu_binaries(struct kn_set *F, const int *archs, int n_archs, const char *dir, struct kernel_stats *st,
                        struct diag *d)
{
    struct job *jobs = wf_calloc((size_t)F->n_kernels * (size_t)(n_archs + 1) + 1, sizeof *jobs);
    char **srcs = wf_calloc((size_t)F->n_kernels + 1, sizeof *srcs);
    int n = 0;
    for (int k = 0; k < F->n_kernels; k++) {
        struct kn_entry *e = &F->kernels[k];
        srcs[k] = kernels_source(e, KN_LANG_CUDA);
        uint64_t key = wf_hash(srcs[k], strlen(srcs[k]), wf_hash(nvrtc_version(), strlen(nvrtc_version()), 0));
        for (int b = 0; b <= n_archs; b++) {
            bool ptx = b == n_archs; /* after the cubins: PTX of the newest, for GPUs newer still */
            int arch = ptx ? archs[n_archs - 1] : archs[b];
            struct kn_binary *bin = &e->bins[e->n_bins++];
            *bin = (struct kn_binary){.arch = arch, .ptx = ptx};
            char name[128];
            snprintf(name, sizeof name, "%016llx.%s_%d.%s", (unsigned long long)key, ptx ? "compute" : "sm", arch,
                     ptx ? "ptx" : "cubin");
            if ((bin->bytes = cache_get(dir, name, ptx, &bin->size))) {
                st->cached++;
                continue;
            }
            jobs[n] = (struct job){.e = e, .bin = e->n_bins - 1, .arch = arch, .ptx = ptx, .src = srcs[k]};
            snprintf(jobs[n].name, sizeof jobs[n].name, "%s", name);
            n++;
        }
    }
    struct pool pool = {.jobs = jobs, .n = n};
    pthread_mutex_init(&pool.lock, NULL);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n_threads = cores < 1 ? 1 : cores > 16 ? 16 : (int)cores;
    n_threads = n_threads > n ? n : n_threads;
    pthread_t threads[16];
    int started = 0;
    for (int t = 0; t < n_threads; t++)
        started += pthread_create(&threads[started], NULL, worker, &pool) == 0;
    if (!started)
        worker(&pool);
    for (int t = 0; t < started; t++)
        pthread_join(threads[t], NULL);
    pthread_mutex_destroy(&pool.lock);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        struct job *j = &jobs[i];
        struct kn_binary *bin = &j->e->bins[j->bin];
        if (j->rc && !rc) {
            char saved[1024];
            snprintf(saved, sizeof saved, "%s/%s.cu", dir ? dir : "/tmp", j->e->name);
            FILE *f = fopen(saved, "w");
            if (f) {
                fputs(j->src, f);
                fclose(f);
            }
            diag_error(d, NULL, 0, "kernel %s: NVRTC rejects it for %s_%d: a bug in weft, not in your model; the source is "
                                   "saved as %s; NVRTC says:\n%s",
                       j->e->name, j->ptx ? "compute" : "sm", j->arch, f ? saved : "(could not be saved)", j->out.log);
            rc = -1;
        }
        if (!j->rc) {
            st->compiled++;
            st->nvrtc_seconds += j->out.seconds;
            cache_put(dir, j->name, j->out.bytes, j->out.size);
            bin->bytes = j->out.bytes;
            bin->size = j->out.size;
            j->out.bytes = NULL;
        }
        nvrtc_out_free(&j->out);
    }
    for (int k = 0; k < F->n_kernels; k++)
        free(srcs[k]);
    free(srcs);
    free(jobs);
    return rc;
}

/* The shared object of these units, from the cache or the C compiler. */
static int cpu_units(struct kn_set *F, const char *const *units, int n_units, uint64_t hash, const char *dir,
                     struct kernel_stats *st, struct diag *d)
{
    const char *cc = getenv("CC");
    uint64_t key = wf_hash(cc ? cc : "cc", strlen(cc ? cc : "cc"), wf_hash(CC_FLAGS, strlen(CC_FLAGS), hash));
    char name[64];
    snprintf(name, sizeof name, "%016llx.so", (unsigned long long)key);
    if ((F->cpu_object = cache_get(dir, name, false, &F->cpu_size))) {
        st->cpu_cached = true;
        return 0;
    }
    char so[1100], log[8192];
    snprintf(so, sizeof so, "%s/.%s.%d", dir ? dir : "/tmp", name, (int)getpid());
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = cc_shared_object(units, n_units, so, log, sizeof log);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    st->cc_seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (rc) {
        diag_error(d, NULL, 0, "the CPU kernels do not compile (a bug in weft, or no working C compiler): %s", log);
        return -1;
    }
    F->cpu_object = read_all(so, &F->cpu_size);
    unlink(so);
    if (!F->cpu_object) {
        diag_error(d, NULL, 0, "cannot read the CPU kernels' object %s: %s", so, strerror(errno));
        return -1;
    }
    cache_put(dir, name, F->cpu_object, F->cpu_size);
    return 0;
}

/* The fused kernels in translation units of CPU_UNIT_KERNELS each (the C
 * compiler runs one process a unit, at once: cc.h), one unit per attention
 * (each defines its own configuration's macros).  A fixed size, not the
 * machine's cores: the units, and so the cached object, are the same
 * wherever the plan is compiled. */
enum { CPU_UNIT_KERNELS = 6 };

static int cpu_object(struct kn_set *F, const char *dir, struct kernel_stats *st, struct diag *d)
{
    const struct kn_kernel **ks = wf_calloc((size_t)F->n_kernels + 1, sizeof *ks);
    const char **names = wf_calloc((size_t)F->n_kernels + 1, sizeof *names);
    char **units = wf_calloc((size_t)F->n_kernels + 2, sizeof *units);
    int n = 0, n_units = 0;
    for (int k = 0; k < F->n_kernels; k++)
        if (F->kernels[k].kind == KN_KIND_FUSED) {
            ks[n] = &F->kernels[k].k;
            names[n++] = F->kernels[k].name;
        } else
            units[n_units++] = kernels_source(&F->kernels[k], KN_LANG_C);
    for (int at = 0; at < n || (!n && !at); at += CPU_UNIT_KERNELS) /* an empty set: one empty unit, still an object */
        units[n_units++] = emit_kernels(ks + at, names + at, n - at < CPU_UNIT_KERNELS ? n - at : CPU_UNIT_KERNELS, KN_LANG_C);
    free(ks);
    free(names);
    uint64_t h = 0;
    for (int u = 0; u < n_units; u++)
        h = wf_hash(units[u], strlen(units[u]), h);
    int rc = cpu_units(F, (const char *const *)units, n_units, h, dir, st, d);
    for (int u = 0; u < n_units; u++)
        free(units[u]);
    free(units);
    return rc;
}
int kernels_build(struct kn_set *F, const int *archs, int n_archs, struct kernel_stats *st, struct diag *d)
{
    memset(st, 0, sizeof *st);
    st->distinct = F->n_kernels;
    char buf[1024];
    const char *dir = kernels_cache_dir(buf, sizeof buf);
    if (!nvrtc_available(st->no_gpu, sizeof st->no_gpu))
        n_archs = 0;
    else if (n_archs)
        st->ptx_arch = archs[n_archs - 1];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (n_archs && gpu_binaries(F, archs, n_archs, dir, st, d))
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    st->nvrtc_wall = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return cpu_object(F, dir, st, d);
}
