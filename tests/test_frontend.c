/* test_frontend.c: the front end's language: scopes, repeats, carried names,
 * defaults, and how it reports what is wrong. */
#include "testing.h"

#include <math.h>

#define HEAD "<model name=\"t\" xmlns=\"urn:weft:model:1\"><dim name=\"h\" value=\"4\"/><dim name=\"n\" value=\"2\"/>"

static struct ir_graph *load(const char *xml, struct diag *d)
{
    diag_init(d);
    struct ir_graph *g = fe_load_memory("t.xml", xml, strlen(xml), NULL, d);
    if (g && ir_infer_shapes(g, d)) {
        ir_graph_free(g);
        g = NULL;
    }
    return g;
}

static int find_tensor(const struct ir_graph *g, const char *name)
{
    for (int i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name))
            return i;
    return -1;
}

static void test_nested_repeat(void **state)
{
    (void)state;
    struct diag d;
    struct ir_graph *g = load(HEAD "<decoder><input name=\"x\" shape=\"h\"/>"
                                   "<repeat name=\"outer\" count=\"2\" carry=\"x\">"
                                   "<repeat name=\"inner\" count=\"n+1\" carry=\"x\">"
                                   "<param name=\"g\" shape=\"h\" init=\"ones\"/>"
                                   "<op kind=\"rmsnorm\" in=\"x g\" out=\"x\"/>"
                                   "</repeat></repeat><output name=\"x\"/></decoder></model>", &d);
    if (!g)
        fail_msg("%s", diag_first_error(&d));
    assert_int_equal(g->n_ops, 6);
    assert_int_equal(g->n_blocks, 2);
    assert_string_equal(g->blocks[1].name, "decoder.outer.inner");
    assert_true(find_tensor(g, "decoder.outer.1.inner.2.g") >= 0);
    /* Each rmsnorm reads the one before it: the carried value threads through. */
    for (int i = 1; i < g->n_ops; i++)
        assert_int_equal(g->ops[i].in[0], g->ops[i - 1].out[0]);
    assert_int_equal(g->ops[5].layer, 1); /* the outer iteration */
    assert_int_equal(g->ops[5].iter, 2);  /* the inner one */
    assert_int_equal(g->outputs[0], g->ops[5].out[0]);
    ir_graph_free(g);
    diag_free(&d);
}

static void test_two_carried_names(void **state)
{
    (void)state;
    struct diag d;
    struct ir_graph *g = load(HEAD "<decoder><input name=\"a\" shape=\"h\"/><input name=\"b\" shape=\"h\"/>"
                                   "<repeat name=\"l\" count=\"3\" carry=\"a b\">"
                                   "<op kind=\"add\" in=\"a b\" out=\"s\"/>"
                                   "<op kind=\"relu\" in=\"s\" out=\"a\"/>"
                                   "<op kind=\"mul\" in=\"a b\" out=\"b\"/>" /* reads the new a */
                                   "</repeat><op kind=\"add\" in=\"a b\" out=\"y\"/><output name=\"y\"/></decoder></model>", &d);
    if (!g)
        fail_msg("%s", diag_first_error(&d));
    assert_int_equal(g->n_ops, 10);
    assert_int_equal(g->ops[2].in[0], g->ops[1].out[0]);                     /* mul reads this layer's a */
    assert_int_equal(g->ops[3].in[1], g->ops[2].out[0]);                     /* next add reads b */
    assert_int_equal(g->ops[9].in[0], find_tensor(g, "decoder.l.2.a")); /* after: the last a */
    ir_graph_free(g);
    diag_free(&d);
}

static void test_defaults(void **state)
{
    (void)state;
    struct diag d;
    struct ir_graph *g = load(HEAD "<decoder><input name=\"x\" shape=\"2 h 3*h\"/>"
                                   "<param name=\"w\" shape=\"h h\" init=\"normal:0.5\"/><param name=\"b\" shape=\"h\"/>"
                                   "<op kind=\"split_heads\" in=\"x\" heads=\"n\" out=\"q k v\"/>"
                                   "<op kind=\"attention\" in=\"q k v\" out=\"o\"/>"
                                   "<op kind=\"merge_heads\" in=\"o\" out=\"m\"/>"
                                   "<op kind=\"matmul\" in=\"m w\" out=\"y0\"/>"
                                   "<op kind=\"bias_add\" in=\"y0 b\" out=\"y\"/>"
                                   "<op kind=\"layernorm\" in=\"y b\" out=\"z\"/>"
                                   "<output name=\"z\"/></decoder></model>", &d);
    if (!g)
        fail_msg("%s", diag_first_error(&d));
    assert_int_equal(ir_op_int(&g->ops[0], IR_ATTR_GROUPS), 2); /* groups=heads */
    assert_true(isnan(ir_op_float(&g->ops[1], IR_ATTR_SCALE)));  /* auto: 1/sqrt(head_dim) */
    assert_int_equal(ir_op_int(&g->ops[1], IR_ATTR_CAUSAL), 0);
    assert_true(ir_op_float(&g->ops[5], IR_ATTR_EPS) == 1e-5);
    const struct ir_tensor *w = &g->tensors[find_tensor(g, "decoder.w")];
    const struct ir_tensor *b = &g->tensors[find_tensor(g, "decoder.b")];
    assert_int_equal(w->init, IR_INIT_NORMAL);
    assert_true(w->init_std == 0.5);
    assert_int_equal(b->init, IR_INIT_ZEROS); /* a vector: zeros unless it says */
    ir_graph_free(g);
    diag_free(&d);
}

static void expect_error(const char *xml, const char *fragment)
{
    struct diag d;
    struct ir_graph *g = load(xml, &d);
    if (g)
        fail_msg("loaded; want an error with \"%s\"", fragment);
    bool found = false;
    for (int i = 0; i < d.n; i++)
        found |= d.v[i].level == DIAG_ERROR && strstr(d.v[i].msg, fragment);
    if (!found)
        fail_msg("no error contains \"%s\"; first: %s", fragment, diag_first_error(&d));
    diag_free(&d);
}

static void test_scopes(void **state)
{
    (void)state;
    expect_error(HEAD "<encoder><input name=\"x\" shape=\"h\"/><op kind=\"relu\" in=\"x\" out=\"out\"/></encoder>"
                      "<decoder><op kind=\"relu\" in=\"encoder.nope\" out=\"y\"/><output name=\"y\"/></decoder></model>",
                 "'encoder.nope' is not defined here (the encoder defines no such tensor)");
    expect_error(HEAD "<decoder><input name=\"x\" shape=\"h\"/><repeat name=\"l\" count=\"2\" carry=\"x\">"
                      "<op kind=\"relu\" in=\"x\" out=\"x\"/><op kind=\"relu\" in=\"x\" out=\"x\"/></repeat>"
                      "<output name=\"x\"/></decoder></model>",
                 "carried 'x' is redefined a second time");
    expect_error(HEAD "<decoder><input name=\"x\" shape=\"h\"/><input name=\"y\" shape=\"h\"/>"
                      "<repeat name=\"l\" count=\"2\" carry=\"x\"><op kind=\"relu\" in=\"x\" out=\"y\"/>"
                      "<op kind=\"relu\" in=\"y\" out=\"x\"/></repeat><output name=\"x\"/></decoder></model>",
                 "'y' is defined twice (first at line 1, in an enclosing scope)");
    expect_error(HEAD "<decoder><input name=\"x\" shape=\"h\"/><repeat name=\"l\" count=\"2\" carry=\"zz\">"
                      "<op kind=\"relu\" in=\"x\" out=\"zz\"/></repeat><output name=\"x\"/></decoder></model>",
                 "carried 'zz' must be defined before the repeat");
    expect_error(HEAD "<decoder><input name=\"x\" shape=\"h\"/><repeat name=\"l\" count=\"h-4\">"
                      "<op kind=\"relu\" in=\"x\" out=\"y\"/></repeat><output name=\"x\"/></decoder></model>",
                 "count: 'h-4' is 0; it must be at least 1");
}

/* An error inside a 12-layer repeat is one error, not twelve; unrelated
 * errors are all reported by one run. */
static void test_error_reporting(void **state)
{
    (void)state;
    struct diag d;
    struct ir_graph *g = load(HEAD "<decoder><input name=\"x\" shape=\"h\"/>"
                                   "<repeat name=\"l\" count=\"12\" carry=\"x\"><op kind=\"relu\" in=\"xq\" out=\"x\"/></repeat>"
                                   "<op kind=\"gelu\" in=\"x\" tanh=\"maybe\" out=\"g\"/>"
                                   "<op kind=\"silu\" in=\"nothing\" out=\"s\"/>"
                                   "<output name=\"g\"/></decoder></model>", &d);
    assert_null(g);
    assert_int_equal(d.n_errors, 3);
    assert_non_null(strstr(d.v[0].msg, "'xq' is not defined"));
    assert_non_null(strstr(d.v[1].msg, "attribute tanh: 'maybe' is not true or false"));
    assert_non_null(strstr(d.v[2].msg, "'nothing' is not defined"));
    diag_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nested_repeat), cmocka_unit_test(test_two_carried_names),
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_error_reporting),
    };
    int rc = cmocka_run_group_tests_name("frontend", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
