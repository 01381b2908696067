/* test_expr.c: dimension expressions: values, and the error for each way an
 * expression can be wrong. */
#include "testing.h"

#include "expr.h"

static int lookup(void *ctx, const char *name, int64_t *v, char *err, size_t n)
{
    (void)ctx;
    static const struct {
        const char *name;
        int64_t value;
    } dims[] = {{"hidden", 768}, {"heads", 12}, {"big", INT64_MAX / 2 + 1}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (!strcmp(dims[i].name, name)) {
            *v = dims[i].value;
            return 0;
        }
    snprintf(err, n, "unknown dimension '%s'", name);
    return -1;
}

static void check_value(const char *text, int64_t want)
{
    struct arena *a = arena_new(1024);
    char err[256] = "";
    struct expr *e = expr_parse(a, text, err, sizeof err);
    if (!e)
        fail_msg("'%s': parse failed: %s", text, err);
    int64_t v = 0;
    if (expr_eval(e, lookup, NULL, &v, err, sizeof err))
        fail_msg("'%s': eval failed: %s", text, err);
    if (v != want)
        fail_msg("'%s' = %lld, want %lld", text, (long long)v, (long long)want);
    arena_free(a);
}

static void check_error(const char *text, const char *fragment)
{
    struct arena *a = arena_new(1024);
    char err[256] = "";
    struct expr *e = expr_parse(a, text, err, sizeof err);
    int64_t v;
    if (e && expr_eval(e, lookup, NULL, &v, err, sizeof err) == 0)
        fail_msg("'%s' gave %lld; want an error containing \"%s\"", text, (long long)v, fragment);
    if (!strstr(err, fragment))
        fail_msg("'%s': error \"%s\" lacks \"%s\"", text, err, fragment);
    arena_free(a);
}

static void test_values(void **state)
{
    (void)state;
    check_value("768", 768);
    check_value("hidden", 768);
    check_value("3*hidden", 2304);
    check_value("hidden/heads", 64);
    check_value("4*hidden/heads", 256);
    check_value("2+3*4", 14);
    check_value("(2+3)*4", 20);
    check_value("10-2-3", 5); /* left to right */
    check_value("10%4", 2);
    check_value("-3+5", 2);
    check_value("cdiv(10,4)", 3);
    check_value("cdiv(8,4)", 2);
    check_value("min(hidden,1024)", 768);
    check_value("max(hidden,1024)", 1024);
    check_value("(heads+2*4)*64", 1280);
}

static void test_errors(void **state)
{
    (void)state;
    check_error("7.5", "'7.5' is not an integer");
    check_error("1e3", "not an integer");
    check_error("", "empty expression");
    check_error("3 * hidden", "space inside an expression");
    check_error("3*", "ends too soon");
    check_error("(3", "expected ')'");
    check_error("3)", "unexpected ')'");
    check_error("sqrt(4,2)", "unknown function 'sqrt'");
    check_error("hiden", "unknown dimension 'hiden'");
    check_error("hidden/7", "768 is not divisible by 7");
    check_error("1/0", "division by zero");
    check_error("cdiv(1,0)", "division by zero");
    check_error("big*2", "overflows 64 bits");
    check_error("9223372036854775807+1", "overflows 64 bits");
    check_error("99999999999999999999", "too large for 64 bits");
    check_error("3$", "unexpected '$'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("expr", tests, NULL, NULL);
}
