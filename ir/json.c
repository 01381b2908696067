/* json.c: compact JSON with a space after ':' and ',' for people who read it. */
#include "json.h"
#include "util.h"

#include <inttypes.h>
#include <math.h>

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
