/* plan.c: write and map plan files. */
#include "plan.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_SIZE 72 /* magic 8, major 2, minor 2, sections 4, size 8, table 8, compiler 32, crc 4, pad 4 */
#define ENTRY_SIZE (PLAN_NAME_MAX + 8 + 8 + 4 + 4)

uint32_t plan_crc32(const void *p, size_t n)
{
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t c = 0xFFFFFFFFu;
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ b[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ---- writing ------------------------------------------------------------------ */

struct wsection {
    char name[PLAN_NAME_MAX];
    uint8_t *data;
    size_t n, cap;
};

struct plan_writer {
    char compiler[32];
    struct wsection *s;
    int n, cap;
};

struct plan_writer *plan_writer_new(const char *compiler_version)
{
    struct plan_writer *w = wf_calloc(1, sizeof *w);
    snprintf(w->compiler, sizeof w->compiler, "%s", compiler_version);
    return w;
}

void plan_section(struct plan_writer *w, const char *name)
{
    WF_GROW(w->s, w->n, w->cap);
    memset(&w->s[w->n], 0, sizeof w->s[w->n]);
    WF_ASSERT(strlen(name) < PLAN_NAME_MAX);
    snprintf(w->s[w->n].name, PLAN_NAME_MAX, "%s", name);
    w->n++;
}

static void put(struct plan_writer *w, const void *p, size_t n)
{
    WF_ASSERT(w->n > 0);
    struct wsection *s = &w->s[w->n - 1];
    if (s->n + n > s->cap) {
        s->cap = (s->n + n) * 2 + 64;
        s->data = wf_realloc(s->data, s->cap);
    }
    memcpy(s->data + s->n, p, n);
    s->n += n;
}

static void le(uint8_t *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

void plan_put_u8(struct plan_writer *w, uint8_t v) { put(w, &v, 1); }
void plan_put_u32(struct plan_writer *w, uint32_t v) { uint8_t b[4]; le(b, v, 4); put(w, b, 4); }
void plan_put_u64(struct plan_writer *w, uint64_t v) { uint8_t b[8]; le(b, v, 8); put(w, b, 8); }
void plan_put_i32(struct plan_writer *w, int32_t v) { plan_put_u32(w, (uint32_t)v); }
void plan_put_i64(struct plan_writer *w, int64_t v) { plan_put_u64(w, (uint64_t)v); }

void plan_put_f64(struct plan_writer *w, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    plan_put_u64(w, u);
}

void plan_put_str(struct plan_writer *w, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    plan_put_u32(w, (uint32_t)n);
    if (n)
        put(w, s, n);
}

static void writer_free(struct plan_writer *w)
{
    for (int i = 0; i < w->n; i++)
        free(w->s[i].data);
    free(w->s);
    free(w);
}

int plan_writer_finish(struct plan_writer *w, const char *path, struct diag *d)
{
    size_t off = HEADER_SIZE, *at = wf_calloc((size_t)w->n + 1, sizeof *at);
    for (int i = 0; i < w->n; i++) {
        off = (off + 7) & ~(size_t)7;
        at[i] = off;
        off += w->s[i].n;
    }
    size_t table = (off + 7) & ~(size_t)7, size = table + (size_t)w->n * ENTRY_SIZE;
    uint8_t *file = wf_calloc(size, 1);
    for (int i = 0; i < w->n; i++) {
        if (w->s[i].n)
            memcpy(file + at[i], w->s[i].data, w->s[i].n);
        uint8_t *e = file + table + (size_t)i * ENTRY_SIZE;
        memcpy(e, w->s[i].name, PLAN_NAME_MAX);
        le(e + PLAN_NAME_MAX, at[i], 8);
        le(e + PLAN_NAME_MAX + 8, w->s[i].n, 8);
        le(e + PLAN_NAME_MAX + 16, plan_crc32(w->s[i].data ? w->s[i].data : (const uint8_t *)"", w->s[i].n), 4);
    }
    memcpy(file, PLAN_MAGIC, 8);
    le(file + 8, PLAN_VERSION_MAJOR, 2);
    le(file + 10, PLAN_VERSION_MINOR, 2);
    le(file + 12, (uint64_t)w->n, 4);
    le(file + 16, size, 8);
    le(file + 24, table, 8);
    memcpy(file + 32, w->compiler, 32);
    le(file + 64, plan_crc32(file, 64), 4);
    le(file + 64 + 4, plan_crc32(file + table, (size_t)w->n * ENTRY_SIZE), 4); /* the table's own CRC */
    free(at);
    writer_free(w);
    /* Write a temporary beside the target and rename it: a reader never sees half a plan. */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int rc = 0;
    if (!f || fwrite(file, 1, size, f) != size || fclose(f) != 0 || rename(tmp, path) != 0) {
        diag_error(d, path, 0, "cannot write the plan: %s", strerror(errno));
        if (f)
            unlink(tmp);
        rc = -1;
    }
    free(file);
    return rc;
}

/* ---- reading ------------------------------------------------------------------ */

struct rsection {
    char name[PLAN_NAME_MAX + 1];
    uint64_t offset, size;
    uint32_t crc;
    bool checked;
};

struct plan {
    char path[4096];
    uint8_t *map;
    size_t size;
    bool mapped; /* munmap on close */
    int major, minor, n;
    char compiler[33];
    struct rsection *s;
};

static uint64_t rd(const uint8_t *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

struct plan *plan_open(const char *path, struct diag *d)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        diag_error(d, path, 0, "cannot open the plan: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        diag_error(d, path, 0, "not a regular file");
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    if (size < HEADER_SIZE) {
        diag_error(d, path, 0, "truncated or not a weft plan: %zu bytes, shorter than a plan header (%d)", size,
                   HEADER_SIZE);
        close(fd);
        return NULL;
    }
    uint8_t *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        diag_error(d, path, 0, "cannot map the plan: %s", strerror(errno));
        return NULL;
    }
    struct plan *p = plan_open_memory(path, map, size, d);
    if (p)
        p->mapped = true;
    else
        munmap(map, size);
    return p;
}

struct plan *plan_open_memory(const char *path, const void *bytes, size_t size, struct diag *d)
{
    const uint8_t *map = bytes;
    if (size < HEADER_SIZE) {
        diag_error(d, path, 0, "truncated or not a weft plan: %zu bytes, shorter than a plan header (%d)", size,
                   HEADER_SIZE);
        return NULL;
    }
    struct plan *p = wf_calloc(1, sizeof *p);
    snprintf(p->path, sizeof p->path, "%s", path);
    p->map = (uint8_t *)map;
    p->size = size;
#define FAIL(...)                                                              \
    do {                                                                       \
        diag_error(d, path, 0, __VA_ARGS__);                                   \
        plan_close(p);                                                         \
        return NULL;                                                           \
    } while (0)
    if (memcmp(map, PLAN_MAGIC, 8))
        FAIL("not a weft plan (bad magic)");
    p->major = (int)rd(map + 8, 2);
    p->minor = (int)rd(map + 10, 2);
    if (p->major > PLAN_VERSION_MAJOR)
        FAIL("plan format %d.%d is newer than this weft reads (%d.x): use a newer weft, or compile the plan again with this one",
             p->major, p->minor, PLAN_VERSION_MAJOR);
    if (p->major < PLAN_VERSION_MAJOR)
        FAIL("plan format %d.%d is older than this weft reads (%d.x): compile the plan again", p->major, p->minor,
             PLAN_VERSION_MAJOR);
    if ((uint32_t)rd(map + 64, 4) != plan_crc32(map, 64))
        FAIL("the header fails its checksum: the file is corrupted");
    uint64_t want = rd(map + 16, 8), table = rd(map + 24, 8);
    p->n = (int)rd(map + 12, 4);
    if (want != size)
        FAIL("truncated or extended: the header says %llu bytes, the file has %zu", (unsigned long long)want, size);
    if (p->n < 0 || p->n > 1 << 20 || table > size || (size - table) / ENTRY_SIZE < (uint64_t)p->n)
        FAIL("the section table lies outside the file: the file is corrupted");
    if ((uint32_t)rd(map + 68, 4) != plan_crc32(map + table, (size_t)p->n * ENTRY_SIZE))
        FAIL("the section table fails its checksum: the file is corrupted");
    memcpy(p->compiler, map + 32, 32);
    p->compiler[32] = 0;
    p->s = wf_calloc((size_t)p->n + 1, sizeof *p->s);
    for (int i = 0; i < p->n; i++) {
        const uint8_t *e = map + table + (size_t)i * ENTRY_SIZE;
        memcpy(p->s[i].name, e, PLAN_NAME_MAX);
        p->s[i].name[PLAN_NAME_MAX] = 0;
        p->s[i].offset = rd(e + PLAN_NAME_MAX, 8);
        p->s[i].size = rd(e + PLAN_NAME_MAX + 8, 8);
        p->s[i].crc = (uint32_t)rd(e + PLAN_NAME_MAX + 16, 4);
        if (p->s[i].offset > size || p->s[i].size > size - p->s[i].offset)
            FAIL("section '%s' lies outside the file: the file is truncated or corrupted", p->s[i].name);
    }
#undef FAIL
    return p;
}

void plan_close(struct plan *p)
{
    if (!p)
        return;
    if (p->mapped)
        munmap(p->map, p->size);
    free(p->s);
    free(p);
}

const char *plan_compiler(const struct plan *p) { return p->compiler; }
int plan_version_major(const struct plan *p) { return p->major; }
int plan_version_minor(const struct plan *p) { return p->minor; }
int plan_n_sections(const struct plan *p) { return p->n; }
const char *plan_section_name(const struct plan *p, int i) { return p->s[i].name; }
uint64_t plan_section_size(const struct plan *p, int i) { return p->s[i].size; }
uint64_t plan_section_offset(const struct plan *p, int i) { return p->s[i].offset; }

static int find(const struct plan *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->s[i].name, name))
            return i;
    return -1;
}

bool plan_has(const struct plan *p, const char *name) { return find(p, name) >= 0; }

int plan_read(struct plan *p, const char *name, struct plan_reader *r, struct diag *d)
{
    memset(r, 0, sizeof *r);
    int i = find(p, name);
    if (i < 0) {
        diag_error(d, p->path, 0, "the plan has no section '%s'", name);
        return -1;
    }
    struct rsection *s = &p->s[i];
    if (!s->checked) {
        uint32_t crc = plan_crc32(p->map + s->offset, s->size);
        if (crc != s->crc) {
            diag_error(d, p->path, 0, "section '%s' fails its checksum (stored %08x, computed %08x): the file is corrupted",
                       name, s->crc, crc);
            return -1;
        }
        s->checked = true;
    }
    r->at = p->map + s->offset;
    r->end = r->at + s->size;
    r->section = s->name;
    return 0;
}

static const uint8_t *take(struct plan_reader *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->at) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *b = r->at;
    r->at += n;
    return b;
}

uint8_t plan_get_u8(struct plan_reader *r) { const uint8_t *b = take(r, 1); return b ? b[0] : 0; }
uint32_t plan_get_u32(struct plan_reader *r) { const uint8_t *b = take(r, 4); return b ? (uint32_t)rd(b, 4) : 0; }
uint64_t plan_get_u64(struct plan_reader *r) { const uint8_t *b = take(r, 8); return b ? rd(b, 8) : 0; }
int32_t plan_get_i32(struct plan_reader *r) { return (int32_t)plan_get_u32(r); }
int64_t plan_get_i64(struct plan_reader *r) { return (int64_t)plan_get_u64(r); }

double plan_get_f64(struct plan_reader *r)
{
    uint64_t u = plan_get_u64(r);
    double v;
    memcpy(&v, &u, 8);
    return v;
}

const char *plan_get_str(struct plan_reader *r, char *buf, size_t n)
{
    uint32_t len = plan_get_u32(r);
    const uint8_t *b = take(r, len);
    size_t k = b ? (len < n - 1 ? len : n - 1) : 0;
    if (k)
        memcpy(buf, b, k);
    buf[k] = 0;
    return buf;
}
