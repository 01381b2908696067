/* test_bad_input.c: every file in tests/bad/ is a model that must be refused.
 *
 * Each file names its expected failure in a comment on its first line,
 *   <!-- expect: exit 2, "shape-mismatch.xml:9:", "inner dimensions differ" -->
 * (or, where a comment cannot stand, in FILE.expect: the same text on its
 * first line, and an "args: ..." line for flags to pass).  The test runs
 * `weft check FILE ARGS` and wants that exit status, every quoted fragment in
 * its error output, nothing on stdout, and no crash, hang or sanitizer report. */
#include "testing.h"

#include <dirent.h>

#define BAD_DIR "tests/bad"

struct expectation {
    int status;
    char fragments[8][512];
    int n_fragments;
    char args[512];
};

static char *slurp(const char *path)
{
    size_t len;
    return wf_read_file(path, 1 << 20, &len);
}

/* Parse 'exit N, "a", "b"' (backslash escapes a quote). */
static int parse_expect(const char *s, struct expectation *e)
{
    const char *p = strstr(s, "exit ");
    if (!p)
        return -1;
    e->status = atoi(p + 5);
    const char *end = strstr(p, "-->");
    for (p = strchr(p, '"'); p && (!end || p < end) && e->n_fragments < 8; p = strchr(p + 1, '"')) {
        char *out = e->fragments[e->n_fragments++];
        size_t n = 0;
        for (p++; *p && *p != '"' && n < 511; p++) {
            if (*p == '\\' && p[1])
                p++;
            out[n++] = *p;
        }
        out[n] = 0;
    }
    return e->n_fragments ? 0 : -1;
}

static void load_expectation(const char *file, struct expectation *e)
{
    memset(e, 0, sizeof *e);
    char path[512], side[600];
    snprintf(path, sizeof path, BAD_DIR "/%s", file);
    snprintf(side, sizeof side, "%s.expect", path);
    char *text = slurp(side);
    bool sidecar = text != NULL;
    if (!text)
        text = slurp(path);
    assert_non_null(text);
    const char *at = sidecar ? text : strstr(text, "<!-- expect:");
    if (!at || parse_expect(at, e))
        fail_msg("%s: no expectation (a first-line <!-- expect: exit N, \"...\" --> or %s.expect)", file, file);
    const char *args = strstr(text, sidecar ? "args:" : "<!-- args:");
    if (args) {
        args = strchr(args, ':') + 1;
        size_t n = strcspn(args, sidecar ? "\n" : "-");
        snprintf(e->args, sizeof e->args, "%.*s", (int)n, args);
    }
    free(text);
}

static void test_bad_file(void **state)
{
    const char *file = *state;
    struct expectation e;
    load_expectation(file, &e);
    char path[512];
    snprintf(path, sizeof path, BAD_DIR "/%s", file);
    const char *argv[32] = {"check", path};
    int n = 2;
    for (char *tok = strtok(e.args, " \t"); tok && n < 31; tok = strtok(NULL, " \t"))
        argv[n++] = tok;
    argv[n] = NULL;
    struct run *r = malloc(sizeof *r);
    assert_non_null(r);
    run_weftv(r, argv);
    printf("    %s -> exit %d: %s", file, r->status, r->err);
    if (r->timed_out)
        fail_msg("%s: weft check did not finish in %d s", file, RUN_DEADLINE_S);
    if (strstr(r->err, "internal error") || strstr(r->err, "Sanitizer") || strstr(r->err, "runtime error"))
        fail_msg("%s: weft check crashed or hit a bug:\n%s", file, r->err);
    if (r->status != e.status)
        fail_msg("%s: exit status %d, want %d", file, r->status, e.status);
    for (int i = 0; i < e.n_fragments; i++)
        if (!strstr(r->err, e.fragments[i]))
            fail_msg("%s: the error output lacks \"%s\"", file, e.fragments[i]);
    if (r->out[0])
        fail_msg("%s: printed on stdout although it failed: %s", file, r->out);
    free(r);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void)
{
    DIR *dir = opendir(BAD_DIR);
    if (!dir) {
        fprintf(stderr, "test_bad_input: cannot open %s (run from the repository root)\n", BAD_DIR);
        return 1;
    }
    char *names[256];
    int n = 0;
    for (struct dirent *de; (de = readdir(dir)) && n < 256;) {
        size_t len = strlen(de->d_name);
        if (len > 4 && !strcmp(de->d_name + len - 4, ".xml"))
            names[n++] = strdup(de->d_name);
    }
    closedir(dir);
    qsort(names, (size_t)n, sizeof names[0], by_name);
    struct CMUnitTest tests[256];
    for (int i = 0; i < n; i++)
        tests[i] = (struct CMUnitTest){names[i], test_bad_file, NULL, NULL, names[i]};
    int rc = _cmocka_run_group_tests("bad_input", tests, (size_t)n, NULL, NULL);
    for (int i = 0; i < n; i++)
        free(names[i]);
    return rc;
}
