/* safetensors.c: Hugging Face's safetensors files (safetensors.h). */
#include "safetensors.h"
#include "json.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    int bytes;
    bool is_float;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1, false}, [ST_U8] = {"U8", 1, false},    [ST_I8] = {"I8", 1, false},   [ST_I16] = {"I16", 2, false},
    [ST_U16] = {"U16", 2, false},   [ST_F16] = {"F16", 2, true},   [ST_BF16] = {"BF16", 2, true}, [ST_I32] = {"I32", 4, false},
    [ST_U32] = {"U32", 4, false},   [ST_F32] = {"F32", 4, true},   [ST_I64] = {"I64", 8, false}, [ST_U64] = {"U64", 8, false},
    [ST_F64] = {"F64", 8, true},
};

const char *st_dtype_name(enum st_dtype t) { return t < ST_DTYPE_COUNT ? dtypes[t].name : "?"; }
int st_dtype_bytes(enum st_dtype t) { return t < ST_DTYPE_COUNT ? dtypes[t].bytes : 0; }
bool st_dtype_is_float(enum st_dtype t) { return t < ST_DTYPE_COUNT && dtypes[t].is_float; }

int64_t st_tensor_elements(const struct st_tensor *t)
{
    int64_t n = 1;
    for (int k = 0; k < t->rank; k++)
        n *= t->shape[k];
    return n;
}

/* The largest header a reader accepts, as Hugging Face's reader does (100 MB). */
#define ST_MAX_HEADER (100 * 1000 * 1000)

static int compare_begin(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a, *y = *(const struct st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int read_all(int fd, void *buf, int64_t bytes, int64_t at)
{
    for (int64_t done = 0; done < bytes;) {
        ssize_t r = pread(fd, (char *)buf + done, (size_t)(bytes - done), (off_t)(at + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += r;
    }
    return 0;
}

static int write_all(int fd, const void *buf, int64_t bytes, int64_t at)
{
    for (int64_t done = 0; done < bytes;) {
        ssize_t r = pwrite(fd, (const char *)buf + done, (size_t)(bytes - done), (off_t)(at + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = ENOSPC;
            return -1;
        }
        done += r;
    }
    return 0;
}

/* One tensor's header entry into t; an error names the file and tensor. */
static int read_entry(const char *path, const char *name, const struct json_value *e, int64_t data_bytes, struct st_tensor *t,
                      struct diag *d)
{
    t->name = wf_calloc(strlen(name) + 1, 1);
    memcpy(t->name, name, strlen(name));
    const struct json_value *dt = json_get(e, "dtype"), *shape = json_get(e, "shape"), *off = json_get(e, "data_offsets");
    if (!dt || dt->type != JSON_STRING || !shape || shape->type != JSON_ARRAY || !off || off->type != JSON_ARRAY) {
        diag_error(d, path, 0, "tensor '%s': its header entry needs \"dtype\", \"shape\" and \"data_offsets\"", name);
        return 2;
    }
    t->dtype = ST_DTYPE_COUNT;
    for (int k = 0; k < ST_DTYPE_COUNT; k++)
        if (!strcmp(dt->string, dtypes[k].name))
            t->dtype = (enum st_dtype)k;
    if (t->dtype == ST_DTYPE_COUNT) {
        diag_error(d, path, 0, "tensor '%s': unknown dtype \"%s\"", name, dt->string);
        return 2;
    }
    if (shape->n > ST_MAX_RANK) {
        diag_error(d, path, 0, "tensor '%s': %d dimensions, more than %d", name, shape->n, ST_MAX_RANK);
        return 2;
    }
    t->rank = shape->n;
    int64_t elements = 1;
    for (int k = 0; k < shape->n; k++) {
        const struct json_value *s = &shape->items[k];
        if (s->type != JSON_NUMBER || !s->is_int || s->integer < 0 || (s->integer && elements > INT64_MAX / 16 / s->integer)) {
            diag_error(d, path, 0, "tensor '%s': dimension %d of its shape is not a size", name, k);
            return 2;
        }
        t->shape[k] = s->integer;
        elements *= s->integer;
    }
    if (off->n != 2 || off->items[0].type != JSON_NUMBER || !off->items[0].is_int || off->items[1].type != JSON_NUMBER ||
        !off->items[1].is_int) {
        diag_error(d, path, 0, "tensor '%s': data_offsets must be two integers", name);
        return 2;
    }
    t->begin = off->items[0].integer, t->end = off->items[1].integer;
    if (t->begin < 0 || t->end < t->begin || t->end > data_bytes) {
        diag_error(d, path, 0, "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] lie outside the file's %" PRId64 " bytes of data",
                   name, t->begin, t->end, data_bytes);
        return 2;
    }
    if (t->end - t->begin != elements * dtypes[t->dtype].bytes) {
        diag_error(d, path, 0, "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] hold %" PRId64 " bytes; %s of shape [", name,
                   t->begin, t->end, t->end - t->begin, dtypes[t->dtype].name);
        char buf[256] = "";
        for (int k = 0, at = 0; k < t->rank && at < (int)sizeof buf; k++)
            at += snprintf(buf + at, sizeof buf - (size_t)at, "%s%" PRId64, k ? ", " : "", t->shape[k]);
        diag_note(d, path, 0, "tensor '%s': shape [%s] needs %" PRId64 " bytes", name, buf, elements * dtypes[t->dtype].bytes);
        return 2;
    }
    return 0;
}

int st_open(const char *path, struct st_file *f, struct diag *d)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = wf_calloc(strlen(path) + 1, 1);
    memcpy(f->path, path, strlen(path));
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (f->fd < 0 || fstat(f->fd, &sb)) {
        diag_error(d, path, 0, "cannot open it: %s", strerror(errno));
        return 2;
    }
    f->file_bytes = sb.st_size;
    unsigned char len8[8];
    if (f->file_bytes < 8 || read_all(f->fd, len8, 8, 0)) {
        diag_error(d, path, 0, "not a safetensors file: %lld bytes, shorter than its header's length", (long long)f->file_bytes);
        return 2;
    }
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--)
        n = n << 8 | len8[k];
    if (n < 2 || n > ST_MAX_HEADER || (int64_t)n > f->file_bytes - 8) {
        diag_error(d, path, 0, "not a safetensors file: its header claims %llu bytes of a %lld-byte file", (unsigned long long)n,
                   (long long)f->file_bytes);
        return 2;
    }
    char *text = malloc(n + 1), err[128];
    if (!text || read_all(f->fd, text, (int64_t)n, 8)) {
        free(text);
        diag_error(d, path, 0, "cannot read its %llu-byte header", (unsigned long long)n);
        return 2;
    }
    text[n] = 0;
    f->data_start = 8 + (int64_t)n;
    struct json_value *h = json_parse(text, n, err, sizeof err);
    free(text);
    if (!h || h->type != JSON_OBJECT) {
        diag_error(d, path, 0, "its header is not a JSON object%s%s", h ? "" : ": ", h ? "" : err);
        json_free(h);
        return 2;
    }
    f->tensors = wf_calloc((size_t)h->n + 1, sizeof *f->tensors);
    int rc = 0;
    for (int i = 0; i < h->n && !rc; i++) {
        const struct json_value *e = &h->items[i];
        if (!strcmp(h->keys[i], "__metadata__")) {
            if (e->type != JSON_OBJECT) {
                diag_error(d, path, 0, "__metadata__ is not an object");
                rc = 2;
                break;
            }
            f->meta_keys = wf_calloc((size_t)e->n + 1, sizeof *f->meta_keys);
            f->meta_values = wf_calloc((size_t)e->n + 1, sizeof *f->meta_values);
            for (int k = 0; k < e->n && !rc; k++) {
                if (e->items[k].type != JSON_STRING) {
                    diag_error(d, path, 0, "__metadata__ \"%s\" is not a string", e->keys[k]);
                    rc = 2;
                    break;
                }
                f->meta_keys[k] = e->keys[k], f->meta_values[k] = e->items[k].string;
                e->keys[k] = NULL, e->items[k].string = NULL; /* taken */
                f->n_meta++;
            }
            continue;
        }
        if (e->type != JSON_OBJECT) {
            diag_error(d, path, 0, "tensor '%s': its header entry is not an object", h->keys[i]);
            rc = 2;
            break;
        }
        rc = read_entry(path, h->keys[i], e, f->file_bytes - f->data_start, &f->tensors[f->n], d);
        f->n++;
    }
    json_free(h);
    if (rc)
        return rc;
    const struct st_tensor **by = wf_calloc((size_t)f->n + 1, sizeof *by);
    for (int i = 0; i < f->n; i++)
        by[i] = &f->tensors[i];
    qsort(by, (size_t)f->n, sizeof *by, compare_begin);
    for (int i = 1; i < f->n && !rc; i++)
        if (by[i]->begin < by[i - 1]->end && by[i]->end > by[i]->begin) {
            diag_error(d, path, 0, "tensors '%s' and '%s': their data_offsets overlap", by[i - 1]->name, by[i]->name);
            rc = 2;
        }
    free(by);
    return rc;
}

void st_close(struct st_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    for (int i = 0; i < f->n; i++)
        free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++)
        free(f->meta_keys[i]), free(f->meta_values[i]);
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

const char *st_meta(const struct st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key))
            return f->meta_values[i];
    return NULL;
}

static float half_float(uint16_t h)
{
    int e = h >> 10 & 0x1f, m = h & 0x3ff;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 0x400), e - 25);
    return h & 0x8000 ? -v : v;
}

/* fp32 to IEEE half, to nearest even (overflow to infinity). */
static uint16_t float_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)(x >> 16 & 0x8000);
    if (isnan(f))
        return sign | 0x7e00;
    float a = fabsf(f);
    if (a >= 65520.0f)
        return sign | 0x7c00;
    if (a < ldexpf(1, -14)) /* a subnormal half: multiples of 2^-24 */
        return sign | (uint16_t)lrintf(a * ldexpf(1, 24));
    int e;
    float m = frexpf(a, &e); /* a = m 2^e, m in [0.5, 1) */
    long q = lrintf(ldexpf(m, 11)); /* 11 significant bits, rounded to even */
    if (q == 2048)
        q = 1024, e++;
    return sign | (uint16_t)((e + 14) << 10 | (q & 0x3ff));
}

#define CHUNK 65536 /* elements converted at a time */

int st_read_f32(const struct st_file *f, const struct st_tensor *t, int64_t first, int64_t count, float *out, struct diag *d)
{
    int b = dtypes[t->dtype].bytes;
    if (!dtypes[t->dtype].is_float) {
        diag_error(d, f->path, 0, "tensor '%s': dtype %s is not a floating-point type weft can convert to fp32", t->name, dtypes[t->dtype].name);
        return -1;
    }
    if (first < 0 || count < 0 || first + count > st_tensor_elements(t)) {
        diag_error(d, f->path, 0, "tensor '%s': elements [%lld, %lld) are outside its %lld", t->name, (long long)first,
                   (long long)(first + count), (long long)st_tensor_elements(t));
        return -1;
    }
    int64_t at = f->data_start + t->begin + first * b;
    if (t->dtype == ST_F32) {
        if (read_all(f->fd, out, count * 4, at))
            goto short_read;
        return 0;
    }
    unsigned char *buf = malloc((size_t)CHUNK * 8);
    for (int64_t done = 0; done < count; done += CHUNK) {
        int64_t n = count - done < CHUNK ? count - done : CHUNK;
        if (read_all(f->fd, buf, n * b, at + done * b)) {
            free(buf);
            goto short_read;
        }
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            double x;
            switch (t->dtype) {
            case ST_BF16: memcpy(&h, buf + 2 * i, 2), out[done + i] = wf_bf16_float(h); break;
            case ST_F16: memcpy(&h, buf + 2 * i, 2), out[done + i] = half_float(h); break;
            default: memcpy(&x, buf + 8 * i, 8), out[done + i] = (float)x; break;
            }
        }
    }
    free(buf);
    return 0;
short_read:
    diag_error(d, f->path, 0, "tensor '%s': cannot read its data: %s", t->name, errno ? strerror(errno) : "the file ends early");
    return -1;
}

struct st_writer {
    int n, cap;
    struct st_tensor *t;
    int n_meta;
    char **meta; /* key, value, key, value, ... */
    char *header;
    int64_t header_bytes, total;
};

struct st_writer *st_writer_new(void) { return wf_calloc(1, sizeof(struct st_writer)); }

void st_writer_free(struct st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (int i = 0; i < 2 * w->n_meta; i++)
        free(w->meta[i]);
    free(w->t);
    free(w->meta);
    free(w->header);
    free(w);
}

static char *copy(const char *s)
{
    char *c = wf_calloc(strlen(s) + 1, 1);
    memcpy(c, s, strlen(s));
    return c;
}

int st_writer_add(struct st_writer *w, const char *name, enum st_dtype dtype, int rank, const int64_t *shape)
{
    WF_ASSERT(!w->header && rank >= 0 && rank <= ST_MAX_RANK);
    if (w->n == w->cap)
        w->cap = w->cap ? 2 * w->cap : 16, w->t = wf_realloc(w->t, (size_t)w->cap * sizeof *w->t);
    struct st_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = copy(name), t->dtype = dtype, t->rank = rank;
    for (int k = 0; k < rank; k++)
        t->shape[k] = shape[k];
    return w->n++;
}

void st_writer_meta(struct st_writer *w, const char *key, const char *value)
{
    WF_ASSERT(!w->header);
    w->meta = wf_realloc(w->meta, (size_t)(2 * w->n_meta + 2) * sizeof *w->meta);
    w->meta[2 * w->n_meta] = copy(key), w->meta[2 * w->n_meta + 1] = copy(value);
    w->n_meta++;
}

/* s as a JSON string into a growing buffer. */
static void put_json_string(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t need = *len + 6 * strlen(s) + 3;
    if (need > *cap)
        *cap = need * 2, *buf = wf_realloc(*buf, *cap);
    char *o = *buf + *len;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '"' || *p == '\\')
            *o++ = '\\', *o++ = (char)*p;
        else if (*p < 0x20)
            o += sprintf(o, "\\u%04x", *p);
        else
            *o++ = (char)*p;
    *o++ = '"';
    *len = (size_t)(o - *buf);
}

static void put_text(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap)
        *cap = (*len + n + 1) * 2, *buf = wf_realloc(*buf, *cap);
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

void st_writer_finish(struct st_writer *w)
{
    size_t len = 8, cap = 4096;
    char *h = wf_calloc(cap, 1), num[96];
    put_text(&h, &len, &cap, "{");
    if (w->n_meta) {
        put_text(&h, &len, &cap, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            put_text(&h, &len, &cap, i ? "," : "");
            put_json_string(&h, &len, &cap, w->meta[2 * i]);
            put_text(&h, &len, &cap, ":");
            put_json_string(&h, &len, &cap, w->meta[2 * i + 1]);
        }
        put_text(&h, &len, &cap, "}");
    }
    int64_t at = 0;
    for (int i = 0; i < w->n; i++) {
        struct st_tensor *t = &w->t[i];
        t->begin = at, t->end = at + st_tensor_elements(t) * dtypes[t->dtype].bytes;
        at = t->end;
        put_text(&h, &len, &cap, i || w->n_meta ? "," : "");
        put_json_string(&h, &len, &cap, t->name);
        snprintf(num, sizeof num, ":{\"dtype\":\"%s\",\"shape\":[", dtypes[t->dtype].name);
        put_text(&h, &len, &cap, num);
        for (int k = 0; k < t->rank; k++) {
            snprintf(num, sizeof num, "%s%" PRId64, k ? "," : "", t->shape[k]);
            put_text(&h, &len, &cap, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRId64 ",%" PRId64 "]}", t->begin, t->end);
        put_text(&h, &len, &cap, num);
    }
    put_text(&h, &len, &cap, "}");
    while (len % 8) /* the data 8-byte aligned, as Hugging Face's writer pads */
        put_text(&h, &len, &cap, " ");
    uint64_t n = len - 8;
    for (int k = 0; k < 8; k++)
        h[k] = (char)(n >> (8 * k) & 0xff);
    w->header = h, w->header_bytes = (int64_t)len, w->total = (int64_t)len + at;
}

int64_t st_writer_file_bytes(const struct st_writer *w) { return w->total; }
const struct st_tensor *st_writer_tensor(const struct st_writer *w, int k) { return &w->t[k]; }

int st_writer_create(const struct st_writer *w, int fd, const char *path, struct diag *d)
{
    WF_ASSERT(w->header);
    if (ftruncate(fd, (off_t)w->total) || write_all(fd, w->header, w->header_bytes, 0)) {
        diag_error(d, path, 0, "cannot write it (%lld bytes): %s", (long long)w->total, strerror(errno));
        return -1;
    }
    return 0;
}

int st_writer_put_f32(const struct st_writer *w, int fd, const char *path, int k, int64_t first, const float *src, int64_t count,
                      struct diag *d)
{
    const struct st_tensor *t = &w->t[k];
    WF_ASSERT(w->header && first >= 0 && first + count <= st_tensor_elements(t));
    WF_ASSERT(t->dtype == ST_F32 || t->dtype == ST_BF16 || t->dtype == ST_F16);
    int b = dtypes[t->dtype].bytes;
    int64_t at = w->header_bytes + t->begin + first * b;
    int rc = 0;
    if (t->dtype == ST_F32)
        rc = write_all(fd, src, count * 4, at);
    else {
        uint16_t *buf = malloc((size_t)CHUNK * 2);
        for (int64_t done = 0; done < count && !rc; done += CHUNK) {
            int64_t n = count - done < CHUNK ? count - done : CHUNK;
            for (int64_t i = 0; i < n; i++)
                buf[i] = t->dtype == ST_BF16 ? wf_bf16(src[done + i]) : float_half(src[done + i]);
            rc = write_all(fd, buf, n * 2, at + done * 2);
        }
        free(buf);
    }
    if (rc)
        diag_error(d, path, 0, "tensor '%s': cannot write its data: %s", t->name, strerror(errno));
    return rc;
}

int st_writer_open_shared(const struct st_writer *w, struct comm *c, const char *path, struct diag *d)
{
    int rc = 0;
    if (!c || c->rank == 0) {
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0) {
            diag_error(d, path, 0, "cannot create it: %s", strerror(errno));
            rc = 1;
        } else {
            rc = st_writer_create(w, fd, path, d) ? 1 : 0;
            close(fd);
        }
    }
    if (comm_agree(c, rc, NULL, d))
        return -1;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        diag_error(d, path, 0, "rank %d: cannot open it: %s", c ? c->rank : 0, strerror(errno));
    return fd;
}

int st_writer_sync_close(int fd, struct comm *c, const char *path, int status, struct diag *d)
{
    int rc = status ? -1 : 0;
    if (!rc && fsync(fd)) {
        diag_error(d, path, 0, "rank %d: fsync: %s", c ? c->rank : 0, strerror(errno));
        rc = -1;
    }
    if (close(fd) && !rc) {
        diag_error(d, path, 0, "rank %d: close: %s", c ? c->rank : 0, strerror(errno));
        rc = -1;
    }
    return rc;
}
