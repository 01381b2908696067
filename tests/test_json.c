/* test_json.c: the JSON reader (ir/json.h): every kind of value, escapes
 * and surrogate pairs, integers kept exact, and the error for each way a
 * text can be wrong (a safetensors header or a vocab.json from outside). */
#include "testing.h"

#include "json.h"

static struct json_value *parse(const char *text)
{
    char err[128] = "";
    struct json_value *v = json_parse(text, strlen(text), err, sizeof err);
    if (!v)
        fail_msg("'%s': %s", text, err);
    return v;
}

static void test_values(void **state)
{
    (void)state;
    struct json_value *v = parse(" {\"a\": [1, -2.5e3, true, false, null], \"big\": 9007199254740993, \"s\": \"x\\u00e9\\ud83d\\ude00\\n\\\"\", "
                                 "\"o\": {}, \"e\": []} ");
    assert_int_equal(v->type, JSON_OBJECT);
    assert_int_equal(v->n, 5);
    const struct json_value *a = json_get(v, "a");
    assert_int_equal(a->type, JSON_ARRAY);
    assert_int_equal(a->n, 5);
    assert_true(a->items[0].is_int && a->items[0].integer == 1);
    assert_false(a->items[1].is_int);
    assert_true(a->items[1].number == -2500.0);
    assert_true(a->items[2].type == JSON_BOOL && a->items[2].boolean);
    assert_true(a->items[3].type == JSON_BOOL && !a->items[3].boolean);
    assert_int_equal(a->items[4].type, JSON_NULL);
    assert_true(json_get(v, "big")->is_int);
    assert_true(json_get(v, "big")->integer == 9007199254740993LL); /* past a double's exact integers */
    const struct json_value *s = json_get(v, "s");
    assert_string_equal(s->string, "x\xc3\xa9\xf0\x9f\x98\x80\n\"");
    assert_int_equal(s->len, 9);
    assert_int_equal(json_get(v, "o")->n, 0);
    assert_int_equal(json_get(v, "e")->type, JSON_ARRAY);
    assert_null(json_get(v, "missing"));
    assert_null(json_get(a, "a")); /* not an object */
    json_free(v);
    v = parse("\"a\\u0000b\"");
    assert_int_equal(v->len, 3);
    json_free(v);
}

static void check_error(const char *text, const char *want)
{
    char err[128] = "";
    struct json_value *v = json_parse(text, strlen(text), err, sizeof err);
    if (v || !strstr(err, want))
        fail_msg("'%s': expected an error with '%s', got %s", text, want, v ? "a value" : err);
}

static void test_errors(void **state)
{
    (void)state;
    check_error("", "expected a value");
    check_error("{\"a\" 1}", "expected ':'");
    check_error("{\"a\": 1", "expected ',' or '}'");
    check_error("[1 2]", "expected ',' or ']'");
    check_error("\"abc", "does not end");
    check_error("\"a\\qb\"", "unknown escape");
    check_error("\"\\u12\"", "four hex digits");
    check_error("\"\\ud83d\\u0041\"", "surrogate");
    check_error("01", "malformed number");
    check_error("1.2.3", "malformed number");
    check_error("tru", "expected a value");
    check_error("{} x", "text after the value");
    check_error("{1: 2}", "expected a key");
    check_error("\"a\tb\"", "control character");
    char deep[600];
    memset(deep, '[', sizeof deep - 1);
    deep[sizeof deep - 1] = 0;
    check_error(deep, "deeper than 256");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
