/* diag.c: collect, deduplicate and print diagnostics. */
#include "diag.h"
#include "util.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void diag_init(struct diag *d)
{
    memset(d, 0, sizeof *d);
    d->max_errors = 50;
}

void diag_free(struct diag *d)
{
    for (int i = 0; i < d->n; i++) {
        free(d->v[i].file);
        free(d->v[i].msg);
    }
    free(d->v);
    memset(d, 0, sizeof *d);
}

static char *dup_or_null(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *p = wf_realloc(NULL, n);
    memcpy(p, s, n);
    return p;
}

static void add(struct diag *d, enum diag_level level, const char *file, int line,
                const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (int i = 0; i < d->n; i++) {
        struct diag_entry *e = &d->v[i];
        if (e->level == level && e->line == line && strcmp(e->msg, msg) == 0 &&
            ((!e->file && !file) || (e->file && file && strcmp(e->file, file) == 0)))
            return;
    }
    if (level == DIAG_ERROR) {
        d->n_errors++;
        if (d->n_errors > d->max_errors) {
            d->n_dropped++;
            return;
        }
    } else if (level == DIAG_WARNING) {
        d->n_warnings++;
    }
    WF_GROW(d->v, d->n, d->cap);
    d->v[d->n++] = (struct diag_entry){level, dup_or_null(file), line, dup_or_null(msg)};
}

#define DIAG_FN(fn, level)                                                     \
    void fn(struct diag *d, const char *file, int line, const char *fmt, ...) \
    {                                                                          \
        va_list ap;                                                            \
        va_start(ap, fmt);                                                     \
        add(d, level, file, line, fmt, ap);                                    \
        va_end(ap);                                                            \
    }
DIAG_FN(diag_error, DIAG_ERROR)
DIAG_FN(diag_warn, DIAG_WARNING)
DIAG_FN(diag_note, DIAG_NOTE)

static void format_entry(const struct diag_entry *e, char *buf, size_t n)
{
    static const char *tag[] = {"", "warning: ", "note: "};
    if (e->file && e->line)
        snprintf(buf, n, "%s:%d: %s%s", e->file, e->line, tag[e->level], e->msg);
    else if (e->file)
        snprintf(buf, n, "%s: %s%s", e->file, tag[e->level], e->msg);
    else
        snprintf(buf, n, "%s%s", tag[e->level], e->msg);
}

void diag_print(const struct diag *d, FILE *f)
{
    char buf[4096];
    for (int i = 0; i < d->n; i++) {
        format_entry(&d->v[i], buf, sizeof buf);
        fprintf(f, "%s\n", buf);
    }
    if (d->n_dropped)
        fprintf(f, "... and %d more errors\n", d->n_dropped);
}

const char *diag_first_error(const struct diag *d)
{
    static char buf[4096];
    buf[0] = 0;
    for (int i = 0; i < d->n; i++)
        if (d->v[i].level == DIAG_ERROR) {
            format_entry(&d->v[i], buf, sizeof buf);
            break;
        }
    return buf;
}
