/* util.h: the few helpers every part of weft uses.
 *
 *   WF_ASSERT(n_in <= IR_MAX_IN);        // a bug, never bad input: prints file:line, aborts
 *   struct ir_op *ops = wf_calloc(n, sizeof *ops);
 *   WF_GROW(g->ops, g->n_ops, g->cap_ops);   // make room for one more element
 */
#ifndef WEFT_UTIL_H
#define WEFT_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* The compiler's version, recorded in every plan file. */
#define WEFT_VERSION "0.1.0"

#define WF_ASSERT(cond)                                                        \
    do {                                                                       \
        if (!(cond))                                                           \
            wf_assert_fail(__FILE__, __LINE__, #cond);                         \
    } while (0)

#define WF_COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Ensure array `v` (with n used, cap allocated) has room for one more. */
#define WF_GROW(v, n, cap)                                                     \
    do {                                                                       \
        if ((n) >= (cap)) {                                                    \
            (cap) = (cap) ? 2 * (cap) : 16;                                    \
            (v) = wf_realloc((v), (size_t)(cap) * sizeof *(v));                \
        }                                                                      \
    } while (0)

_Noreturn void wf_assert_fail(const char *file, int line, const char *cond);
void *wf_calloc(size_t n, size_t size);
void *wf_realloc(void *p, size_t size);

/* "124,439,808": n with thousands separators, into buf (at least 32 bytes). */
char *wf_commas(int64_t n, char buf[32]);
/* "474.7 MiB": a byte count in binary units. */
char *wf_bytes(double bytes, char buf[32]);
/* "873.4 GFLOP": a count with SI prefixes and the given unit. */
char *wf_si(double v, const char *unit, char buf[32]);

/* Read a whole file into memory (NUL-terminated, *len excludes the NUL).
 * Returns NULL and sets errno on failure; files over max_bytes fail with EFBIG. */
char *wf_read_file(const char *path, size_t max_bytes, size_t *len);
/* mkdir -p: path and the directories above it (0, or -1 with errno). */
int wf_make_dirs(const char *path);
/* Seconds on the monotonic clock (for durations). */
double wf_seconds(void);
/* bf16 as every kernel of the plan rounds it (to nearest, ties to even), and back. */
uint16_t wf_bf16(float f);
float wf_bf16_float(uint16_t h);

/* A library's entry points, opened at run time (the CUDA driver, cuBLASLt,
 * NCCL, NVRTC: weft builds and runs without them).  Each entry's address
 * goes into *at, a function pointer's storage (POSIX lets dlsym's data
 * pointer hold a function's address):
 *   static const struct wf_dlsym syms[] = {WF_DLSYM(cu, init, "cuInit"), ...};
 *   if (wf_dlsyms(lib, syms, WF_COUNT(syms), "the CUDA driver", "", why, sizeof why)) ...
 * 0, or -1 with why "WHAT lacks NAME" and suffix, for the first one missing. */
struct wf_dlsym {
    const char *name;
    void **at;
};
#define WF_DLSYM(table, field, name) {name, (void **)&(table).field}
int wf_dlsyms(void *lib, const struct wf_dlsym *syms, size_t n, const char *what, const char *suffix, char *why, size_t why_n);
/* The first of n library names that opens (RTLD_NOW | RTLD_LOCAL), or NULL. */
void *wf_dlopen_first(const char *const *names, size_t n);

/* "did you mean": offer each candidate a misspelt word could have meant; the
 * closest by edit distance, within a third of the word's length plus one,
 * is the hint.  Flags, dimensions, tensors, attributes and op kinds all use it.
 *   struct wf_suggest s = wf_suggest_begin("hiden");
 *   wf_suggest_add(&s, "hidden");  wf_suggest_add(&s, "heads");
 *   wf_suggest_text(&s, "", hint, sizeof hint);   // " (did you mean 'hidden'?)", or "" */
struct wf_suggest {
    const char *word, *best;
    int dist;
};
struct wf_suggest wf_suggest_begin(const char *word);
void wf_suggest_add(struct wf_suggest *s, const char *candidate);
/* prefix goes before the name in the hint ("--" for a flag). */
const char *wf_suggest_text(const struct wf_suggest *s, const char *prefix, char *buf, size_t n);

/* FNV-1a, 64 bit: stable hashes for names and caches. */
uint64_t wf_hash(const void *p, size_t n, uint64_t seed);

#endif
