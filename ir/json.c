/* json.c: compact JSON with a space after ':' and ',' for people who read it. */
#include "json.h"
#include "util.h"

#include <inttypes.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

void json_init(struct json *j, FILE *f)
{
    j->f = f;
    j->depth = 0;
    j->first[0] = true;
}

static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\t': fputs("\\t", f); break;
        case '\r': fputs("\\r", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

static void element(struct json *j, const char *key)
{
    if (!j->first[j->depth])
        fputs(", ", j->f);
    j->first[j->depth] = false;
    if (key) {
        put_string(j->f, key);
        fputs(": ", j->f);
    }
}

static void open(struct json *j, const char *key, char c)
{
    element(j, key);
    fputc(c, j->f);
    WF_ASSERT(j->depth + 1 < (int)WF_COUNT(j->first));
    j->first[++j->depth] = true;
}

static void close(struct json *j, char c)
{
    WF_ASSERT(j->depth > 0);
    j->depth--;
    fputc(c, j->f);
}

void json_begin_object(struct json *j, const char *key) { open(j, key, '{'); }
void json_end_object(struct json *j) { close(j, '}'); }
void json_begin_array(struct json *j, const char *key) { open(j, key, '['); }
void json_end_array(struct json *j) { close(j, ']'); }

void json_string(struct json *j, const char *key, const char *s)
{
    element(j, key);
    if (s)
        put_string(j->f, s);
    else
        fputs("null", j->f);
}

void json_int(struct json *j, const char *key, int64_t v)
{
    element(j, key);
    fprintf(j->f, "%" PRId64, v);
}

void json_double(struct json *j, const char *key, double v)
{
    element(j, key);
    if (isfinite(v))
        fprintf(j->f, "%.17g", v);
    else
        fputs("null", j->f);
}

void json_bool(struct json *j, const char *key, bool v)
{
    element(j, key);
    fputs(v ? "true" : "false", j->f);
}

void json_null(struct json *j, const char *key)
{
    element(j, key);
    fputs("null", j->f);
}

void json_finish(struct json *j)
{
    WF_ASSERT(j->depth == 0);
    fputc('\n', j->f);
    fflush(j->f);
}

/* ---- reading ---- */

struct reader {
    const char *p, *end, *start;
    char *err;
    size_t err_n;
    bool failed;
};

static void fail(struct reader *r, const char *what)
{
    if (!r->failed && r->err_n)
        snprintf(r->err, r->err_n, "offset %lld: %s", (long long)(r->p - r->start), what);
    r->failed = true;
}

static void skip_space(struct reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static bool literal(struct reader *r, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n))
        return false;
    r->p += n;
    return true;
}

static int hex4(struct reader *r)
{
    if (r->end - r->p < 4) {
        fail(r, "a \\u escape needs four hex digits");
        return -1;
    }
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = *r->p++;
        v = v * 16 + (c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1000);
    }
    if (v < 0)
        fail(r, "a \\u escape needs four hex digits");
    return v;
}

static size_t put_utf8(char *o, uint32_t c)
{
    if (c < 0x80)
        return o[0] = (char)c, 1;
    if (c < 0x800)
        return o[0] = (char)(0xc0 | c >> 6), o[1] = (char)(0x80 | (c & 0x3f)), 2;
    if (c < 0x10000)
        return o[0] = (char)(0xe0 | c >> 12), o[1] = (char)(0x80 | (c >> 6 & 0x3f)), o[2] = (char)(0x80 | (c & 0x3f)), 3;
    return o[0] = (char)(0xf0 | c >> 18), o[1] = (char)(0x80 | (c >> 12 & 0x3f)), o[2] = (char)(0x80 | (c >> 6 & 0x3f)),
           o[3] = (char)(0x80 | (c & 0x3f)), 4;
}

/* A string after its opening quote; its text (escapes resolved) in *out. */
static char *read_string(struct reader *r, size_t *len)
{
    const char *q = r->p;
    while (q < r->end && *q != '"')
        q += *q == '\\' ? 2 : 1;
    if (q >= r->end) {
        fail(r, "a string does not end");
        return NULL;
    }
    char *s = wf_calloc((size_t)(q - r->p) + 1, 1), *o = s; /* escapes only shrink */
    while (!r->failed && *r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c < 0x20) {
            r->p--;
            fail(r, "a control character inside a string");
        } else if (c != '\\')
            *o++ = (char)c;
        else {
            char e = *r->p++;
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t", *k = e ? strchr(from, e) : NULL;
            if (k)
                *o++ = to[k - from];
            else if (e == 'u') {
                int u = hex4(r);
                uint32_t cp = (uint32_t)u;
                if (u >= 0xd800 && u < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u') {
                    r->p += 2;
                    int lo = hex4(r);
                    if (lo >= 0xdc00 && lo < 0xe000)
                        cp = 0x10000 + ((uint32_t)(u - 0xd800) << 10) + (uint32_t)(lo - 0xdc00);
                    else
                        fail(r, "a high surrogate without its low one");
                } else if (u >= 0xd800 && u < 0xe000)
                    cp = 0xfffd; /* a lone surrogate: the replacement character, as Python's json does not, but UTF-8 must */
                if (u >= 0)
                    o += put_utf8(o, cp);
            } else {
                r->p--;
                fail(r, "an unknown escape in a string");
            }
        }
    }
    r->p++;
    *len = (size_t)(o - s);
    *o = 0;
    return s;
}

static void parse_value(struct reader *r, struct json_value *v, int depth);

static void parse_members(struct reader *r, struct json_value *v, int depth, char close)
{
    int cap = 0;
    skip_space(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return;
    }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? 2 * cap : 4;
            v->items = wf_realloc(v->items, (size_t)cap * sizeof *v->items);
            if (close == '}')
                v->keys = wf_realloc(v->keys, (size_t)cap * sizeof *v->keys);
        }
        struct json_value *it = &v->items[v->n];
        memset(it, 0, sizeof *it);
        if (close == '}') {
            v->keys[v->n] = NULL;
            skip_space(r);
            size_t kl;
            if (r->p >= r->end || *r->p != '"') {
                fail(r, "expected a key in quotes");
                return;
            }
            r->p++;
            char *key = read_string(r, &kl);
            v->n++;
            v->keys[v->n - 1] = key;
            skip_space(r);
            if (r->failed || r->p >= r->end || *r->p++ != ':') {
                fail(r, "expected ':' after a key");
                return;
            }
        } else
            v->n++;
        parse_value(r, it, depth + 1);
        skip_space(r);
        if (r->failed)
            return;
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == close) {
            r->p++;
            return;
        }
        fail(r, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
        return;
    }
}

static void parse_value(struct reader *r, struct json_value *v, int depth)
{
    skip_space(r);
    if (depth > 256) {
        fail(r, "nested deeper than 256");
        return;
    }
    if (r->p >= r->end) {
        fail(r, "expected a value");
        return;
    }
    char c = *r->p;
    if (c == '{' || c == '[') {
        r->p++;
        v->type = c == '{' ? JSON_OBJECT : JSON_ARRAY;
        parse_members(r, v, depth, c == '{' ? '}' : ']');
    } else if (c == '"') {
        r->p++;
        v->type = JSON_STRING;
        v->string = read_string(r, &v->len);
    } else if (literal(r, "true") || literal(r, "false")) {
        v->type = JSON_BOOL;
        v->boolean = c == 't';
    } else if (literal(r, "null"))
        v->type = JSON_NULL;
    else if (c == '-' || (c >= '0' && c <= '9')) {
        const char *q = r->p + (c == '-');
        bool integer = true;
        if (q >= r->end || *q < '0' || *q > '9' || (*q == '0' && q + 1 < r->end && q[1] >= '0' && q[1] <= '9')) {
            fail(r, "a malformed number");
            return;
        }
        while (q < r->end && ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' || *q == '+' || *q == '-'))
            integer &= *q >= '0' && *q <= '9', q++;
        char buf[64];
        if (q - r->p >= (ptrdiff_t)sizeof buf) {
            fail(r, "a number too long");
            return;
        }
        memcpy(buf, r->p, (size_t)(q - r->p));
        buf[q - r->p] = 0;
        char *end;
        v->type = JSON_NUMBER;
        v->number = strtod(buf, &end);
        if (*end) {
            fail(r, "a malformed number");
            return;
        }
        errno = 0;
        long long i = integer ? strtoll(buf, &end, 10) : 0;
        v->is_int = integer && !errno && !*end;
        v->integer = v->is_int ? (int64_t)i : (int64_t)v->number;
        r->p = q;
    } else
        fail(r, "expected a value");
}

struct json_value *json_parse(const char *text, size_t len, char *err, size_t err_n)
{
    struct reader r = {.p = text, .end = text + len, .start = text, .err = err, .err_n = err_n};
    struct json_value *v = wf_calloc(1, sizeof *v);
    parse_value(&r, v, 0);
    skip_space(&r);
    if (!r.failed && r.p != r.end)
        fail(&r, "text after the value");
    if (r.failed) {
        json_free(v);
        return NULL;
    }
    return v;
}

static void free_members(struct json_value *v)
{
    for (int i = 0; i < v->n; i++) {
        free_members(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
}

void json_free(struct json_value *v)
{
    if (!v)
        return;
    free_members(v);
    free(v);
}

const struct json_value *json_get(const struct json_value *o, const char *key)
{
    for (int i = 0; o && o->type == JSON_OBJECT && i < o->n; i++)
        if (o->keys[i] && !strcmp(o->keys[i], key))
            return &o->items[i];
    return NULL;
}
