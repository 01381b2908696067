/* diag.h: user-facing errors, collected rather than thrown.
 *
 *   struct diag d;
 *   diag_init(&d);
 *   diag_error(&d, "models/gpt2.xml", 14, "<dim name=\"heads\">: %d heads ...", 12);
 *   if (d.n_errors) { diag_print(&d, stderr); status = 2; }
 *   diag_free(&d);
 *
 * A pass reports into a diag and returns non-zero; it never exits, so one run
 * reports every error it finds (SQLite's sqlite3ErrorMsg, chibicc's error_tok).
 * Messages print as "file:line: text" ("file: text" when line is 0).  An entry
 * identical to an earlier one (same file, line, level and text) is dropped: an
 * error inside a <repeat> body is reported once, not once per layer. */
#ifndef WEFT_DIAG_H
#define WEFT_DIAG_H

#include <stdio.h>

enum diag_level { DIAG_ERROR, DIAG_WARNING, DIAG_NOTE };

struct diag_entry {
    enum diag_level level;
    char *file; /* may be NULL */
    int line;   /* 0: no line */
    char *msg;
};

struct diag {
    struct diag_entry *v;
    int n, cap;
    int n_errors, n_warnings;
    int max_errors; /* errors past this are counted, not stored */
    int n_dropped;
};

void diag_init(struct diag *d);
void diag_free(struct diag *d);
void diag_error(struct diag *d, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void diag_warn(struct diag *d, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void diag_note(struct diag *d, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void diag_print(const struct diag *d, FILE *f);
/* The first error's text, formatted as printed ("" if none): for tests. */
const char *diag_first_error(const struct diag *d);

#endif
