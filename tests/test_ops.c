/* test_ops.c: every op's shape rule, one model snippet per case: the shape it
 * must infer, or the error it must give (naming the input and the axis).
 * test_every_op_has_a_case keeps the table honest as ops are added. */
#include "testing.h"

/* B batch, S and T sequences, H hidden, N heads, G groups, D head_dim, F ffn,
 * V vocab, E experts, K topk, C capacity, P positions. */
#define MODEL_HEAD                                                                   \
    "<model name=\"t\" xmlns=\"urn:weft:model:1\">"                                  \
    "<dim name=\"B\" value=\"2\"/><dim name=\"S\" value=\"8\"/><dim name=\"T\" value=\"6\"/>" \
    "<dim name=\"H\" value=\"16\"/><dim name=\"N\" value=\"4\"/><dim name=\"G\" value=\"2\"/>" \
    "<dim name=\"D\" value=\"4\"/><dim name=\"F\" value=\"32\"/><dim name=\"V\" value=\"50\"/>" \
    "<dim name=\"E\" value=\"4\"/><dim name=\"K\" value=\"2\"/><dim name=\"C\" value=\"8\"/>"  \
    "<dim name=\"P\" value=\"12\"/><decoder>"
#define MODEL_TAIL "<output name=\"y\"/></decoder></model>"

#define IN(name, shape) "<input name=\"" name "\" shape=\"" shape "\"/>"
#define INT(name, shape) "<input name=\"" name "\" shape=\"" shape "\" dtype=\"i32\"/>"

struct op_case {
    const char *name;
    const char *body;  /* inputs and the op that makes y */
    const char *shape; /* y's sizes ("2x8x16", "scalar"); NULL: an error is expected */
    const char *error; /* fragment of the expected error */
};

static const struct op_case cases[] = {
    {"embedding", INT("ids", "B S") IN("w", "V H") "<op kind=\"embedding\" in=\"w ids\" out=\"y\"/>", "2x8x16", NULL},
    {"embedding float ids", IN("ids", "B S") IN("w", "V H") "<op kind=\"embedding\" in=\"w ids\" out=\"y\"/>",
     NULL, "ids (ids) is f32; it must be i32"},
    {"position_embedding", IN("w", "P H") "<op kind=\"position_embedding\" in=\"w\" length=\"S\" out=\"y\"/>", "8x16", NULL},
    {"position_embedding too long", IN("w", "P H") "<op kind=\"position_embedding\" in=\"w\" length=\"2*P\" out=\"y\"/>",
     NULL, "length 2*P=24 is longer than the P=12 rows of table (w)"},
    {"matmul", IN("a", "B S H") IN("w", "H F") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>", "2x8x32", NULL},
    {"matmul transpose_b", IN("a", "B S H") IN("w", "F H") "<op kind=\"matmul\" in=\"a w\" transpose_b=\"true\" out=\"y\"/>", "2x8x32", NULL},
    {"matmul transpose_a", IN("a", "H S") IN("w", "H F") "<op kind=\"matmul\" in=\"a w\" transpose_a=\"true\" out=\"y\"/>", "8x32", NULL},
    {"matmul batched", IN("a", "E C H") IN("w", "E H F") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>", "4x8x32", NULL},
    {"matmul inner mismatch", IN("a", "B S H") IN("w", "F H") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>",
     NULL, "inner dimensions differ: axis 2 of a (a) is H=16 but axis 0 of b (w) is F=32"},
    {"matmul batch mismatch", IN("a", "E C H") IN("w", "K H F") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>",
     NULL, "batch dimensions differ: axis 0 of a (a) is E=4 but axis 0 of b (w) is K=2"},
    {"add broadcast", IN("a", "B S H") IN("b", "S H") "<op kind=\"add\" in=\"a b\" out=\"y\"/>", "2x8x16", NULL},
    {"add mismatch", IN("a", "B S H") IN("b", "S F") "<op kind=\"add\" in=\"a b\" out=\"y\"/>",
     NULL, "cannot broadcast: axis 2 of a (a) is H=16 but axis 1 of b (b) is F=32"},
    {"mul", IN("a", "B S H") IN("b", "B S H") "<op kind=\"mul\" in=\"a b\" out=\"y\"/>", "2x8x16", NULL},
    {"scale", IN("a", "B S H") "<op kind=\"scale\" in=\"a\" by=\"0.5\" out=\"y\"/>", "2x8x16", NULL},
    {"scale rsqrt", IN("a", "B S H") "<op kind=\"scale\" in=\"a\" by=\"rsqrt(H)\" out=\"y\"/>", "2x8x16", NULL},
    {"scale without by", IN("a", "B S H") "<op kind=\"scale\" in=\"a\" out=\"y\"/>", NULL, "scale needs attribute by"},
    {"scale bad number", IN("a", "B S H") "<op kind=\"scale\" in=\"a\" by=\"half\" out=\"y\"/>", NULL, "'half' is not a number"},
    {"bias_add", IN("a", "B S F") IN("b", "F") "<op kind=\"bias_add\" in=\"a b\" out=\"y\"/>", "2x8x32", NULL},
    {"bias_add mismatch", IN("a", "B S F") IN("b", "H") "<op kind=\"bias_add\" in=\"a b\" out=\"y\"/>",
     NULL, "bias length differs from the last axis: axis 2 of x (a) is F=32 but axis 0 of bias (b) is H=16"},
    {"gelu", IN("a", "B S F") "<op kind=\"gelu\" in=\"a\" out=\"y\"/>", "2x8x32", NULL},
    {"gelu on integers", INT("a", "B S F") "<op kind=\"gelu\" in=\"a\" out=\"y\"/>", NULL, "x (a) is i32; it must be a floating-point tensor"},
    {"silu", IN("a", "B S F") "<op kind=\"silu\" in=\"a\" out=\"y\"/>", "2x8x32", NULL},
    {"relu", IN("a", "B S F") "<op kind=\"relu\" in=\"a\" out=\"y\"/>", "2x8x32", NULL},
    {"swiglu", IN("g", "B S F") IN("u", "B S F") "<op kind=\"swiglu\" in=\"g u\" out=\"y\"/>", "2x8x32", NULL},
    {"swiglu mismatch", IN("g", "B S F") IN("u", "B S H") "<op kind=\"swiglu\" in=\"g u\" out=\"y\"/>",
     NULL, "shapes differ: axis 2 of gate (g) is F=32 but axis 2 of up (u) is H=16"},
    {"layernorm", IN("x", "B S H") IN("g", "H") IN("b", "H") "<op kind=\"layernorm\" in=\"x g b\" out=\"y\"/>", "2x8x16", NULL},
    {"layernorm no beta", IN("x", "B S H") IN("g", "H") "<op kind=\"layernorm\" in=\"x g\" out=\"y\"/>", "2x8x16", NULL},
    {"layernorm weight mismatch", IN("x", "B S H") IN("g", "F") "<op kind=\"layernorm\" in=\"x g\" out=\"y\"/>",
     NULL, "norm weight length differs from the last axis: axis 2 of x (x) is H=16 but axis 0 of gamma (g) is F=32"},
    {"layernorm too many inputs", IN("x", "B S H") IN("g", "H") "<op kind=\"layernorm\" in=\"x g g g\" out=\"y\"/>",
     NULL, "layernorm takes 2 or more (optional last) inputs (x gamma beta), not 4"},
    {"rmsnorm", IN("x", "B S H") IN("g", "H") "<op kind=\"rmsnorm\" in=\"x g\" out=\"y\"/>", "2x8x16", NULL},
    {"rmsnorm eps", IN("x", "B S H") IN("g", "H") "<op kind=\"rmsnorm\" in=\"x g\" eps=\"0\" out=\"y\"/>", NULL, "eps must be positive"},
    {"softmax causal", IN("x", "B N S S") "<op kind=\"softmax\" in=\"x\" causal=\"true\" out=\"y\"/>", "2x4x8x8", NULL},
    {"softmax mask", IN("x", "B N T S") INT("m", "B S") "<op kind=\"softmax\" in=\"x m\" out=\"y\"/>", "2x4x6x8", NULL},
    {"softmax causal rectangle", IN("x", "B N S T") "<op kind=\"softmax\" in=\"x\" causal=\"true\" out=\"y\"/>",
     NULL, "a causal softmax needs as many queries as keys"},
    {"attention grouped-query", IN("q", "B N S D") IN("k", "B G S D") IN("v", "B G S D")
     "<op kind=\"attention\" in=\"q k v\" causal=\"true\" out=\"y\"/>", "2x4x8x4", NULL},
    {"attention cross", IN("q", "B N S D") IN("k", "B N T D") IN("v", "B N T D")
     "<op kind=\"attention\" in=\"q k v\" out=\"y\"/>", "2x4x8x4", NULL},
    {"attention bias", IN("q", "B N S D") IN("k", "B N S D") IN("v", "B N S D") IN("b", "N S S")
     "<op kind=\"attention\" in=\"q k v b\" scale=\"1\" out=\"y\"/>", "2x4x8x4", NULL},
    {"attention bias mismatch", IN("q", "B N S D") IN("k", "B N S D") IN("v", "B N S D") IN("b", "N S T")
     "<op kind=\"attention\" in=\"q k v b\" out=\"y\"/>", NULL, "bias columns differ from the keys"},
    {"attention heads", IN("q", "B N S D") IN("k", "B 3 S D") IN("v", "B 3 S D")
     "<op kind=\"attention\" in=\"q k v\" out=\"y\"/>", NULL, "q's N=4 heads are not a multiple of k's 3 heads"},
    {"attention causal cross", IN("q", "B N S D") IN("k", "B N T D") IN("v", "B N T D")
     "<op kind=\"attention\" in=\"q k v\" causal=\"true\" out=\"y\"/>", NULL, "causal attention needs as many queries as keys"},
    {"rotary", IN("x", "B N S D") "<op kind=\"rotary\" in=\"x\" out=\"y\"/>", "2x4x8x4", NULL},
    {"rotary odd", IN("x", "B N S 3") "<op kind=\"rotary\" in=\"x\" out=\"y\"/>", NULL, "head_dim 3 must be even"},
    {"dropout", IN("x", "B S H") "<op kind=\"dropout\" in=\"x\" p=\"0.1\" out=\"y\"/>", "2x8x16", NULL},
    {"dropout p", IN("x", "B S H") "<op kind=\"dropout\" in=\"x\" p=\"1.5\" out=\"y\"/>", NULL, "p is a probability below 1, not 1.5"},
    {"split_heads qkv", IN("x", "B S 3*H") "<op kind=\"split_heads\" in=\"x\" heads=\"N\" out=\"y k v\"/>", "2x4x8x4", NULL},
    {"split_heads grouped", IN("x", "B S (N+2*G)*D") "<op kind=\"split_heads\" in=\"x\" heads=\"N\" groups=\"G\" out=\"q y v\"/>", "2x2x8x4", NULL},
    {"split_heads one", IN("x", "B S H") "<op kind=\"split_heads\" in=\"x\" heads=\"N\" out=\"y\"/>", "2x4x8x4", NULL},
    {"split_heads uneven", IN("x", "B S 17") "<op kind=\"split_heads\" in=\"x\" heads=\"N\" out=\"y\"/>",
     NULL, "features 17 do not divide into 1 output of heads"},
    {"merge_heads", IN("x", "B N S D") "<op kind=\"merge_heads\" in=\"x\" out=\"y\"/>", "2x8x16", NULL},
    {"reshape", IN("x", "B S H") "<op kind=\"reshape\" in=\"x\" shape=\"B S N D\" out=\"y\"/>", "2x8x4x4", NULL},
    {"reshape count", IN("x", "B S H") "<op kind=\"reshape\" in=\"x\" shape=\"B S 3\" out=\"y\"/>",
     NULL, "(256 elements) to (B=2, S=8, 3) (48 elements)"},
    {"concat", IN("a", "B S H") IN("b", "B T H") "<op kind=\"concat\" in=\"a b\" axis=\"1\" out=\"y\"/>", "2x14x16", NULL},
    {"concat three", IN("a", "B S H") IN("b", "B S H") "<op kind=\"concat\" in=\"a b a\" axis=\"-1\" out=\"y\"/>", "2x8x48", NULL},
    {"concat mismatch", IN("a", "B S H") IN("b", "B T F") "<op kind=\"concat\" in=\"a b\" axis=\"1\" out=\"y\"/>",
     NULL, "inputs differ off the concat axis"},
    {"concat axis", IN("a", "B S H") IN("b", "B T H") "<op kind=\"concat\" in=\"a b\" axis=\"5\" out=\"y\"/>",
     NULL, "axis 5 is out of range for rank 3"},
    {"cross_entropy", IN("l", "B S V") INT("t", "B S") "<op kind=\"cross_entropy\" in=\"l t\" out=\"y\"/>", "scalar", NULL},
    {"cross_entropy labels", IN("l", "B S V") INT("t", "B T") "<op kind=\"cross_entropy\" in=\"l t\" out=\"y\"/>",
     NULL, "labels and logits differ: axis 1 of labels (t) is T=6 but axis 1 of logits (l) is S=8"},
    {"router", IN("l", "B S E") "<op kind=\"router\" in=\"l\" topk=\"K\" out=\"y i\"/>", "2x8x2", NULL},
    {"router topk", IN("l", "B S E") "<op kind=\"router\" in=\"l\" topk=\"5\" out=\"y i\"/>", NULL, "topk 5 is more than the E=4 experts"},
    {"router one output", IN("l", "B S E") "<op kind=\"router\" in=\"l\" topk=\"K\" out=\"y\"/>", NULL, "router gives 2 to 2 outputs, not 1"},
    {"dispatch", IN("x", "B S H") INT("i", "B S K") "<op kind=\"dispatch\" in=\"x i\" experts=\"E\" capacity=\"C\" out=\"y\"/>", "4x8x16", NULL},
    {"dispatch float indices", IN("x", "B S H") IN("i", "B S K") "<op kind=\"dispatch\" in=\"x i\" experts=\"E\" capacity=\"C\" out=\"y\"/>",
     NULL, "indices (i) is f32; it must be i32"},
    {"combine", IN("e", "E C H") IN("w", "B S K") INT("i", "B S K") "<op kind=\"combine\" in=\"e w i\" out=\"y\"/>", "2x8x16", NULL},
    {"combine mismatch", IN("e", "E C H") IN("w", "B S E") INT("i", "B S K") "<op kind=\"combine\" in=\"e w i\" out=\"y\"/>",
     NULL, "shapes differ: axis 2 of weights (w) is E=4 but axis 2 of indices (i) is K=2"},
    {"relpos_bias", IN("t", "P N") "<op kind=\"relpos_bias\" in=\"t\" q_len=\"S\" k_len=\"T\" out=\"y\"/>", "4x8x6", NULL},
    {"relpos_bias odd buckets", IN("t", "5 N") "<op kind=\"relpos_bias\" in=\"t\" q_len=\"S\" k_len=\"S\" out=\"y\"/>",
     NULL, "5 buckets must be even"},
    {"patchify", IN("img", "B 3 28 28") "<op kind=\"patchify\" in=\"img\" patch=\"7\" out=\"y\"/>", "2x16x147", NULL},
    {"patchify uneven", IN("img", "B 3 28 28") "<op kind=\"patchify\" in=\"img\" patch=\"5\" out=\"y\"/>",
     NULL, "image height 28 is not a multiple of patch 5"},
};

static void test_case(void **state)
{
    const struct op_case *c = *state;
    char xml[4096];
    snprintf(xml, sizeof xml, MODEL_HEAD "%s" MODEL_TAIL, c->body);
    struct diag d;
    diag_init(&d);
    struct ir_graph *g = fe_load_memory("case.xml", xml, strlen(xml), NULL, &d);
    if (g && ir_infer_shapes(g, &d)) {
        ir_graph_free(g);
        g = NULL;
    }
    if (c->shape) {
        if (!g)
            fail_msg("%s: unexpected error: %s", c->name, diag_first_error(&d));
        const struct ir_tensor *y = NULL;
        for (int i = 0; i < g->n_tensors; i++)
            if (!strcmp(g->tensors[i].local_name, "y"))
                y = &g->tensors[i];
        assert_non_null(y);
        char got[128];
        shape_sizes(&y->shape, got, sizeof got);
        if (strcmp(got, c->shape))
            fail_msg("%s: y is %s, want %s", c->name, got, c->shape);
    } else {
        if (g)
            fail_msg("%s: loaded, but want an error containing \"%s\"", c->name, c->error);
        if (!strstr(diag_first_error(&d), c->error))
            fail_msg("%s: error\n  %s\nlacks\n  %s", c->name, diag_first_error(&d), c->error);
        if (strncmp(diag_first_error(&d), "case.xml:1: <op kind=", 21))
            fail_msg("%s: error does not start with file:line and the op: %s", c->name, diag_first_error(&d));
    }
    ir_graph_free(g);
    diag_free(&d);
}

static void test_every_op_has_a_case(void **state)
{
    (void)state;
    for (int k = 0; k < IR_OP_COUNT; k++) {
        char want[64];
        snprintf(want, sizeof want, "kind=\"%s\"", ir_op_info((enum ir_op_kind)k)->name);
        int good = 0;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            if (strstr(cases[i].body, want) && cases[i].shape)
                good++;
        if (!good)
            fail_msg("op %s has no shape case", ir_op_info((enum ir_op_kind)k)->name);
    }
}

/* Each op row in ops.def parses: names, arity, attributes with known types. */
static void test_op_table(void **state)
{
    (void)state;
    for (int k = 0; k < IR_OP_COUNT; k++) {
        const struct ir_op_info *info = ir_op_info((enum ir_op_kind)k);
        assert_int_equal(ir_op_parse_kind(info->name), k);
        assert_true(info->in_min >= 1 && info->in_min <= info->in_max);
        assert_true(info->out_min >= 1 && info->out_min <= info->out_max);
        for (int a = 0; a < info->n_attrs; a++)
            assert_true(info->attrs[a].id < IR_ATTR_COUNT);
    }
    assert_int_equal(ir_op_parse_kind("matmull"), -1);
}

int main(void)
{
    enum { N = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N + 2];
    for (size_t i = 0; i < N; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, test_case, NULL, NULL, (void *)&cases[i]};
    tests[N] = (struct CMUnitTest)cmocka_unit_test(test_every_op_has_a_case);
    tests[N + 1] = (struct CMUnitTest)cmocka_unit_test(test_op_table);
    int rc = _cmocka_run_group_tests("ops", tests, N + 2, NULL, NULL);
    fe_cleanup();
    return rc;
}
