/* testing.h: what the weft tests share: cmocka, loading models, running the
 * weft binary with a deadline, and skipping with a visible reason.
 *
 *   struct run r;
 *   run_weft(&r, "check", "models/gpt2.xml", "--json", NULL);
 *   assert_int_equal(r.status, 0);
 *   assert_non_null(strstr(r.out, "\"params\": 124439808"));
 *
 * Tests run from the repository root; WEFT_BIN names the binary under test
 * (tests/run.sh sets it: build/weft, or build-asan/weft under sanitizers). */
#ifndef WEFT_TESTING_H
#define WEFT_TESTING_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cc.h"
#include "compiler.h"
#include "kernels.h"
#include "nvrtc.h"
#include "partition.h"
#include "pipeline.h"
#include "util.h"

/* Skip with the reason on the output, so a skipped test is never silent. */
#define SKIP_BECAUSE(...)                                                      \
    do {                                                                       \
        printf("SKIP %s: ", __func__);                                         \
        printf(__VA_ARGS__);                                                   \
        printf("\n");                                                          \
        fflush(stdout);                                                        \
        skip();                                                                \
    } while (0)

static inline const char *weft_bin(void)
{
    const char *b = getenv("WEFT_BIN");
    return b && *b ? b : "build/weft";
}

#define RUN_CAPTURE (1 << 16)
#define RUN_DEADLINE_S 60

struct run {
    int status;      /* exit status; 128+signal if killed */
    bool timed_out;
    char out[RUN_CAPTURE], err[RUN_CAPTURE];
};

/* Run a program (found on PATH) with argv (NULL-terminated, argv[0] the
 * program), capturing stdout and stderr.  A run past RUN_DEADLINE_S is killed
 * and reported as timed out. */
static inline int run_progv(struct run *r, const char *const *argv)
{
    memset(r, 0, sizeof *r);
    int po[2], pe[2];
    if (pipe(po) || pipe(pe))
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]), close(pe[0]), close(po[1]), close(pe[1]);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]), close(pe[1]);
    size_t no = 0, ne = 0;
    struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    time_t start = time(NULL);
    int open_fds = 2;
    while (open_fds) {
        if (time(NULL) - start > RUN_DEADLINE_S) {
            kill(pid, SIGKILL);
            r->timed_out = true;
            break;
        }
        if (poll(fds, 2, 1000) <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP)))
                continue;
            char *buf = i ? r->err : r->out;
            size_t *len = i ? &ne : &no;
            char tmp[4096];
            ssize_t got = read(fds[i].fd, tmp, sizeof tmp);
            if (got <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            size_t keep = (size_t)got < RUN_CAPTURE - 1 - *len ? (size_t)got : RUN_CAPTURE - 1 - *len;
            memcpy(buf + *len, tmp, keep);
            *len += keep;
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    int st = 0;
    waitpid(pid, &st, 0);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

/* Whether mpirun (Open MPI) is here to launch ranks. */
static inline bool have_mpirun(void)
{
    struct run r;
    const char *argv[] = {"mpirun", "--version", NULL};
    return run_progv(&r, argv) == 0 && r.status == 0;
}

/* A program that starts MPI (mpirun, or weft run, which joins MPI even as
 * one rank), with argv.  Under AddressSanitizer, leaks are not checked in
 * it: Open MPI keeps allocations in components it unloads, whose stacks no
 * suppression can name.  Memory errors still are; weft's own leaks are
 * checked by the tests that run the executor in process. */
static inline int run_mpi(struct run *r, const char *const *argv)
{
    const char *asan = getenv("ASAN_OPTIONS");
    char *keep = asan ? strdup(asan) : NULL, opts[512];
    snprintf(opts, sizeof opts, "%s%sdetect_leaks=0", asan ? asan : "", asan ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    int rc = run_progv(r, argv);
    if (keep)
        setenv("ASAN_OPTIONS", keep, 1);
    else
        unsetenv("ASAN_OPTIONS");
    free(keep);
    return rc;
}

/* Run the weft binary under test with args (NULL-terminated). */
static inline int run_weftv(struct run *r, const char *const *args)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = weft_bin();
    for (; args[n - 1] && n < 63; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    return run_progv(r, argv);
}

/* weft CMD ARGS... -o OUT, with args NULL-terminated. */
static inline int run_weft_out(struct run *r, const char *cmd, const char *const *args, const char *out)
{
    const char *argv[64] = {cmd};
    int n = 1;
    for (; args[n - 1] && n < 60; n++)
        argv[n] = args[n - 1];
    argv[n++] = "-o";
    argv[n++] = out;
    argv[n] = NULL;
    return run_weftv(r, argv);
}

#define run_weft(r, ...) run_weftv((r), (const char *const[]){__VA_ARGS__})
#define run_prog(r, ...) run_progv((r), (const char *const[]){__VA_ARGS__})

/* Load and type a model as `weft check` would; NULL if it has errors (printed). */
static inline struct ir_graph *load_model(const char *path, const char *variant,
                                          const struct fe_override *ov, int n_ov)
{
    struct fe_options opt = {.variant = variant, .overrides = ov, .n_overrides = n_ov};
    struct diag d;
    diag_init(&d);
    struct ir_graph *g = compile_model(path, &opt, &d);
    if (!g)
        diag_print(&d, stdout);
    diag_free(&d);
    return g;
}

/* "2x8x16" (sizes only) or "scalar". */
/* Skip the test, saying why, where NVRTC cannot be loaded. */
static inline void skip_without_nvrtc(void)
{
    char why[1024];
    if (!nvrtc_available(why, sizeof why)) {
        printf("    skipped: %s\n", why);
        skip();
    }
}

/* A model placed on ranks by pc (variant and overrides may be NULL, 0);
 * fails the test with the first error otherwise. */
static inline struct partition *place_model(const char *file, const char *variant, struct par_config pc,
                                            const struct fe_override *ov, int n_ov)
{
    struct fe_options opt = {.variant = variant, .overrides = ov, .n_overrides = n_ov};
    struct diag d;
    diag_init(&d);
    struct partition *P = partition_model(file, &opt, &pc, &d);
    if (!P)
        fail_msg("%s: %s", file, diag_first_error(&d));
    diag_free(&d);
    return P;
}

/* The whole compile (pipeline.h) of a model for pc, training with opt;
 * GPU binaries for archs (n_archs 0: none, the CPU object only).  Fails the
 * test with the first error otherwise. */
static inline void compile_or_fail(struct compiled *C, const char *file, const char *variant, struct par_config pc,
                                   const struct fe_override *ov, int n_ov, const struct optim_config *opt,
                                   const int *archs, int n_archs)
{
    struct compile_request q = compile_request_default();
    q.model = file;
    q.fe = (struct fe_options){.variant = variant, .overrides = ov, .n_overrides = n_ov};
    q.pc = pc;
    q.opt = *opt;
    q.archs = archs;
    q.n_archs = n_archs;
    struct diag d;
    diag_init(&d);
    if (compile_plan(&q, C, &d))
        fail_msg("%s: %s", file, diag_first_error(&d));
    diag_free(&d);
}

/* The flags and compiler of the C++ compile below (tests/cuda_emu.h's GPU source on the CPU). */
#define CXX_FLAGS "-std=c++17 -O1 -fPIC -shared -w"

/* C++ source into the shared object `so`: ${CXX:-g++} CXX_FLAGS; 0, or -1 with its messages in log. */
static inline int cxx_shared_object(const char *const *sources, int n_sources, const char *so, char *log, size_t n)
{
    (void)n_sources; /* one unit */
    char cpp[] = "/tmp/weft-test-cxx-XXXXXX", err[] = "/tmp/weft-test-cxx-log-XXXXXX";
    int fd = mkstemp(cpp), fe = mkstemp(err);
    if (fd < 0 || fe < 0) {
        snprintf(log, n, "cannot make a temporary file");
        return -1;
    }
    size_t len = strlen(sources[0]);
    bool wrote = write(fd, sources[0], len) == (ssize_t)len;
    close(fd), close(fe);
    const char *cxx = getenv("CXX");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s " CXX_FLAGS " -x c++ '%s' -o '%s' 2> '%s'", cxx && *cxx ? cxx : "g++", cpp, so, err);
    int rc = wrote ? system(cmd) : -1;
    log[0] = 0;
    FILE *f = fopen(err, "r");
    if (f) {
        size_t got = fread(log, 1, n - 1, f);
        log[got] = 0;
        fclose(f);
    }
    unlink(cpp), unlink(err);
    return rc == 0 ? 0 : -1;
}

/* Compile source into the shared object `so` by compile (cc_shared_object,
 * cc.h, for C; cxx_shared_object for C++), through a cache of such objects
 * in the kernel cache's directory keyed by the source, the compiler and its
 * flags: the kernels the tests compile one by one recur across tests and
 * runs (the plain suite and the sanitizers'), and a kernel compiled for
 * three instruction sets takes seconds.  The object is a hard link to the
 * cached one, so the caller may unlink it. */
static inline int compile_cached(const char *src, const char *so, char *log, size_t n, bool cxx)
{
    uint64_t h = 1469598103934665603ull;
    const char *cc = getenv(cxx ? "CXX" : "CC"), *parts[3] = {src, cxx ? CXX_FLAGS : CC_FLAGS, cc ? cc : cxx ? "g++" : "cc"};
    for (int k = 0; k < 3; k++)
        for (const char *p = parts[k]; *p; p++)
            h = (h ^ (uint8_t)*p) * 1099511628211ull;
    char dir[512], path[640];
    bool cached = kernels_cache_dir(dir, sizeof dir) != NULL;
    snprintf(path, sizeof path, "%s/test-%s-%016llx.so", cached ? dir : "/tmp", cxx ? "cxx" : "cc", (unsigned long long)h);
    unlink(so);
    if (cached && link(path, so) == 0)
        return 0;
    int rc = (cxx ? cxx_shared_object : cc_shared_object)(&src, 1, so, log, n);
    if (!rc && cached)
        (void)link(so, path); /* another process may have put it there first: either is the same */
    return rc;
}

static inline int cc_cached(const char *src, const char *so, char *log, size_t n) { return compile_cached(src, so, log, n, false); }

static inline const char *shape_sizes(const struct ir_shape *s, char *buf, size_t n)
{
    if (s->rank == 0) {
        snprintf(buf, n, "scalar");
        return buf;
    }
    size_t len = 0;
    for (int i = 0; i < s->rank && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%lld", i ? "x" : "", (long long)s->ax[i].size);
    return buf;
}

#endif
