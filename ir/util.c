/* util.c: assertion, checked allocation, number formatting, file reading. */
#include "util.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

void wf_assert_fail(const char *file, int line, const char *cond)
{
    fprintf(stderr, "%s:%d: internal error: assertion failed: %s\n", file, line, cond);
    fflush(stderr);
    abort();
}

void *wf_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "weft: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}

void *wf_realloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (!q) {
        fprintf(stderr, "weft: out of memory (%zu bytes)\n", size);
        abort();
    }
    return q;
}

char *wf_commas(int64_t n, char buf[32])
{
    char digits[24];
    uint64_t u = n < 0 ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;
    int len = snprintf(digits, sizeof digits, "%" PRIu64, u);
    char *p = buf;
    if (n < 0)
        *p++ = '-';
    for (int i = 0; i < len; i++) {
        if (i > 0 && (len - i) % 3 == 0)
            *p++ = ',';
        *p++ = digits[i];
    }
    *p = 0;
    return buf;
}

char *wf_bytes(double bytes, char buf[32])
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (bytes >= 1024 && u < 5) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, 32, u ? "%.1f %s" : "%.0f %s", bytes, unit[u]);
    return buf;
}

char *wf_si(double v, const char *unit, char buf[32])
{
    static const char *prefix[] = {"", "K", "M", "G", "T", "P", "E"};
    int p = 0;
    while (v >= 1000 && p < 6) {
        v /= 1000;
        p++;
    }
    snprintf(buf, 32, "%.*f %s%s", p ? 2 : 0, v, prefix[p], unit);
    return buf;
}

char *wf_read_file(const char *path, size_t max_bytes, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = wf_realloc(NULL, cap);
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max_bytes) {
                free(buf);
                fclose(f);
                errno = EFBIG;
                return NULL;
            }
            cap *= 2;
            buf = wf_realloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int err = ferror(f);
    fclose(f);
    if (err || n > max_bytes) {
        free(buf);
        errno = err ? EIO : EFBIG;
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

uint64_t wf_hash(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    uint64_t h = 14695981039346656037ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Levenshtein distance; 99 for words too long to be typos of each other. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    int row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

struct wf_suggest wf_suggest_begin(const char *word) { return (struct wf_suggest){word, NULL, 99}; }

void wf_suggest_add(struct wf_suggest *s, const char *candidate)
{
    int d = edit_distance(s->word, candidate);
    int limit = (int)strlen(s->word) / 3 + 1;
    if (d <= limit && d < s->dist) {
        s->dist = d;
        s->best = candidate;
    }
}

const char *wf_suggest_text(const struct wf_suggest *s, const char *prefix, char *buf, size_t n)
{
    if (s->best)
        snprintf(buf, n, " (did you mean '%s%s'?)", prefix, s->best);
    else
        buf[0] = 0;
    return buf;
}

double wf_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

uint16_t wf_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

float wf_bf16_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int wf_make_dirs(const char *path)
{
    size_t n = strlen(path);
    char *p = wf_calloc(n + 1, 1);
    memcpy(p, path, n);
    int rc = 0;
    for (char *s = p + 1; *s && !rc; s++)
        if (*s == '/') {
            *s = 0;
            rc = mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
            *s = '/';
        }
    if (!rc)
        rc = mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
    free(p);
    return rc;
}

int wf_dlsyms(void *lib, const struct wf_dlsym *syms, size_t n, const char *what, const char *suffix, char *why, size_t why_n)
{
    for (size_t i = 0; i < n; i++)
        if (!(*syms[i].at = dlsym(lib, syms[i].name))) {
            snprintf(why, why_n, "%s lacks %s%s", what, syms[i].name, suffix);
            return -1;
        }
    return 0;
}

void *wf_dlopen_first(const char *const *names, size_t n)
{
    void *lib = NULL;
    for (size_t i = 0; i < n && !lib; i++)
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    return lib;
}
