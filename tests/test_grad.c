/* test_grad.c: every op's backward against central finite differences of its
 * forward, on the CPU reference.  For the op that makes y: L = sum over its
 * float outputs of out * R (R random), the analytic gradient of L for every
 * float input from ref_op_backward, the numeric one from (L(x+h) - L(x-h))/2h
 * element by element.  test_every_op_has_a_check keeps the table whole. */
#include "testing.h"

#include "ref.h"

#include <math.h>

#define HEAD                                                                                    \
    "<model name=\"t\" xmlns=\"urn:weft:model:1\"><dim name=\"B\" value=\"2\"/><dim name=\"S\" value=\"4\"/>" \
    "<dim name=\"T\" value=\"3\"/><dim name=\"H\" value=\"6\"/><dim name=\"N\" value=\"2\"/><dim name=\"G\" value=\"1\"/>" \
    "<dim name=\"D\" value=\"4\"/><dim name=\"V\" value=\"7\"/><dim name=\"E\" value=\"3\"/><dim name=\"K\" value=\"2\"/>" \
    "<dim name=\"C\" value=\"5\"/><decoder>"
#define TAIL "<output name=\"y\"/></decoder></model>"
#define IN(n, s) "<input name=\"" n "\" shape=\"" s "\"/>"
#define INT(n, s) "<input name=\"" n "\" shape=\"" s "\" dtype=\"i32\"/>"

struct grad_case {
    const char *name, *body;
    int int_bound; /* for i32 inputs */
};

static const struct grad_case cases[] = {
    {"embedding", IN("w", "V H") INT("ids", "B S") "<op kind=\"embedding\" in=\"w ids\" out=\"y\"/>", 7},
    {"position_embedding", IN("w", "S H") "<op kind=\"position_embedding\" in=\"w\" length=\"T\" out=\"y\"/>", 1},
    {"matmul", IN("a", "B S H") IN("w", "H D") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>", 1},
    {"matmul transposed", IN("a", "H S") IN("w", "D H") "<op kind=\"matmul\" in=\"a w\" transpose_a=\"true\" transpose_b=\"true\" out=\"y\"/>", 1},
    {"matmul batched broadcast", IN("a", "B E S H") IN("w", "E H D") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>", 1},
    {"add broadcast", IN("a", "B S H") IN("b", "S H") "<op kind=\"add\" in=\"a b\" out=\"y\"/>", 1},
    {"mul broadcast", IN("a", "B S H") IN("b", "1 H") "<op kind=\"mul\" in=\"a b\" out=\"y\"/>", 1},
    {"scale", IN("a", "B S H") "<op kind=\"scale\" in=\"a\" by=\"-1.5\" out=\"y\"/>", 1},
    {"bias_add", IN("a", "B S H") IN("b", "H") "<op kind=\"bias_add\" in=\"a b\" out=\"y\"/>", 1},
    {"gelu tanh", IN("a", "B S H") "<op kind=\"gelu\" in=\"a\" out=\"y\"/>", 1},
    {"gelu erf", IN("a", "B S H") "<op kind=\"gelu\" in=\"a\" tanh=\"false\" out=\"y\"/>", 1},
    {"silu", IN("a", "B S H") "<op kind=\"silu\" in=\"a\" out=\"y\"/>", 1},
    {"relu", IN("a", "B S H") "<op kind=\"relu\" in=\"a\" out=\"y\"/>", 1},
    {"swiglu", IN("g", "B S H") IN("u", "B S H") "<op kind=\"swiglu\" in=\"g u\" out=\"y\"/>", 1},
    {"layernorm", IN("x", "B S H") IN("g", "H") IN("b", "H") "<op kind=\"layernorm\" in=\"x g b\" out=\"y\"/>", 1},
    {"layernorm no beta", IN("x", "B S H") IN("g", "H") "<op kind=\"layernorm\" in=\"x g\" out=\"y\"/>", 1},
    {"rmsnorm", IN("x", "B S H") IN("g", "H") "<op kind=\"rmsnorm\" in=\"x g\" out=\"y\"/>", 1},
    {"softmax causal", IN("x", "B N S S") "<op kind=\"softmax\" in=\"x\" causal=\"true\" out=\"y\"/>", 1},
    {"softmax mask", IN("x", "B N T S") INT("m", "B S") "<op kind=\"softmax\" in=\"x m\" out=\"y\"/>", 2},
    {"attention grouped causal", IN("q", "B N S D") IN("k", "B G S D") IN("v", "B G S D")
     "<op kind=\"attention\" in=\"q k v\" causal=\"true\" out=\"y\"/>", 1},
    {"attention bias", IN("q", "B N S D") IN("k", "B N S D") IN("v", "B N S D") IN("b", "N S S")
     "<op kind=\"attention\" in=\"q k v b\" scale=\"0.7\" out=\"y\"/>", 1},
    {"attention cross", IN("q", "B N S D") IN("k", "B N T D") IN("v", "B N T D")
     "<op kind=\"attention\" in=\"q k v\" out=\"y\"/>", 1},
    {"rotary", IN("x", "B N S D") "<op kind=\"rotary\" in=\"x\" base=\"100\" out=\"y\"/>", 1},
    {"dropout", IN("x", "B S H") "<op kind=\"dropout\" in=\"x\" p=\"0.3\" out=\"y\"/>", 1},
    {"split_heads", IN("x", "B S 3*N*D") "<op kind=\"split_heads\" in=\"x\" heads=\"N\" out=\"y k v\"/>", 1},
    {"split_heads grouped", IN("x", "B S (N+2*G)*D") "<op kind=\"split_heads\" in=\"x\" heads=\"N\" groups=\"G\" out=\"q y v\"/>", 1},
    {"merge_heads", IN("x", "B N S D") "<op kind=\"merge_heads\" in=\"x\" out=\"y\"/>", 1},
    {"reshape", IN("x", "B S H") "<op kind=\"reshape\" in=\"x\" shape=\"B 2*S 3\" out=\"y\"/>", 1},
    {"concat", IN("a", "B S H") IN("b", "B T H") "<op kind=\"concat\" in=\"a b\" axis=\"1\" out=\"y\"/>", 1},
    {"cross_entropy", IN("l", "B S V") INT("t", "B S") "<op kind=\"cross_entropy\" in=\"l t\" ignore_index=\"3\" out=\"y\"/>", 7},
    {"router", IN("l", "B S E") "<op kind=\"router\" in=\"l\" topk=\"K\" out=\"y i\"/>", 1},
    {"dispatch", IN("x", "B S H") IN("l", "B S E") "<op kind=\"router\" in=\"l\" topk=\"K\" out=\"w i\"/>"
     "<op kind=\"dispatch\" in=\"x i\" experts=\"E\" capacity=\"C\" out=\"y\"/>", 1},
    {"combine", IN("e", "E C H") IN("l", "B S E") "<op kind=\"router\" in=\"l\" topk=\"K\" out=\"w i\"/>"
     "<op kind=\"combine\" in=\"e w i\" out=\"y\"/>", 1},
    {"relpos_bias", IN("t", "8 N") "<op kind=\"relpos_bias\" in=\"t\" q_len=\"S\" k_len=\"T\" max_distance=\"8\" out=\"y\"/>", 1},
    {"relpos_bias causal", IN("t", "8 N") "<op kind=\"relpos_bias\" in=\"t\" q_len=\"S\" k_len=\"S\" bidirectional=\"false\" max_distance=\"8\" out=\"y\"/>", 1},
    {"patchify", IN("img", "B 2 4 6") "<op kind=\"patchify\" in=\"img\" patch=\"2\" out=\"y\"/>", 1},
};

static double loss(struct ref *r, const struct ir_graph *g, const struct ir_op *op, float *const *R)
{
    double l = 0;
    for (int o = 0; o < op->n_out; o++) {
        const struct ir_tensor *t = &g->tensors[op->out[o]];
        if (t->dtype == IR_DTYPE_I32)
            continue;
        const float *y = ref_data(r, op->out[o]);
        for (int64_t k = 0; k < ir_shape_numel(&t->shape); k++)
            l += (double)y[k] * R[o][k];
    }
    return l;
}

static void test_case(void **state)
{
    const struct grad_case *c = *state;
    char xml[8192];
    snprintf(xml, sizeof xml, HEAD "%s" TAIL, c->body);
    struct diag d;
    diag_init(&d);
    struct ir_graph *g = fe_load_memory("g.xml", xml, strlen(xml), NULL, &d);
    if (!g || ir_infer_shapes(g, &d))
        fail_msg("%s: %s", c->name, diag_first_error(&d));
    int target = -1; /* the op that makes y */
    for (int i = 0; i < g->n_ops; i++)
        for (int o = 0; o < g->ops[i].n_out; o++)
            if (!strcmp(g->tensors[g->ops[i].out[o]].local_name, "y"))
                target = i;
    assert_true(target >= 0);
    const struct ir_op *op = &g->ops[target];
    struct ref *r = ref_new(g, 11);
    ref_fill_inputs(r, 11, c->int_bound);
    /* keep inputs off the kinks: relu away from 0, router logits apart; a
     * padding mask that keeps some keys and drops others */
    for (int k = 0; k < g->n_ops; k++) {
        const struct ir_op *o = &g->ops[k];
        if (o->kind == IR_OP_SOFTMAX && o->n_in > 1 && o->in[1] >= 0)
            for (int64_t e = 0; e < ir_shape_numel(&g->tensors[o->in[1]].shape); e++)
                ref_ints(r, o->in[1])[e] = e % 3 != 2;
        if (o->kind != IR_OP_RELU && o->kind != IR_OP_ROUTER)
            continue;
        float *x = ref_data(r, o->in[0]);
        for (int64_t e = 0; e < ir_shape_numel(&g->tensors[o->in[0]].shape); e++)
            x[e] = o->kind == IR_OP_RELU ? (x[e] >= 0 ? 0.2f + x[e] : x[e] - 0.2f) : (float)((e * 37) % 101) / 10.0f - 5;
    }
    if (ref_forward(r, &d))
        fail_msg("%s: %s", c->name, diag_first_error(&d));
    float *R[IR_MAX_OUT] = {0}, *gin[IR_MAX_IN] = {0};
    for (int o = 0; o < op->n_out; o++) {
        const struct ir_tensor *t = &g->tensors[op->out[o]];
        int64_t n = ir_shape_numel(&t->shape);
        R[o] = calloc((size_t)n, sizeof(float));
        for (int64_t k = 0; k < n; k++)
            R[o][k] = (float)ref_normal(99, (uint64_t)o, (uint64_t)k);
    }
    for (int k = 0; k < op->n_in; k++)
        if (op->in[k] >= 0 && g->tensors[op->in[k]].dtype != IR_DTYPE_I32)
            gin[k] = calloc((size_t)ir_shape_numel(&g->tensors[op->in[k]].shape), sizeof(float));
    assert_int_equal(ref_op_backward(r, target, R, gin, &d), 0);
    const double h = 1e-2;
    double worst = 0;
    char where[256] = "";
    for (int k = 0; k < op->n_in; k++) {
        if (!gin[k])
            continue;
        float *x = ref_data(r, op->in[k]);
        for (int64_t e = 0; e < ir_shape_numel(&g->tensors[op->in[k]].shape); e++) {
            float keep = x[e];
            x[e] = keep + (float)h;
            ref_op(r, target, &d);
            double up = loss(r, g, op, R);
            x[e] = keep - (float)h;
            ref_op(r, target, &d);
            double down = loss(r, g, op, R);
            x[e] = keep;
            double num = (up - down) / (2 * h), err = fabs(num - gin[k][e]) / (1e-2 + fabs(num));
            if (err > worst) {
                worst = err;
                snprintf(where, sizeof where, "input %d element %lld: numeric %.6f, analytic %.6f", k, (long long)e, num,
                         gin[k][e]);
            }
        }
    }
    ref_op(r, target, &d);
    double largest = 0; /* a case whose gradient is all zero checks nothing */
    for (int k = 0; k < op->n_in; k++)
        for (int64_t e = 0; gin[k] && e < ir_shape_numel(&g->tensors[op->in[k]].shape); e++)
            largest = fmax(largest, fabs(gin[k][e]));
    if (largest == 0)
        fail_msg("%s: the gradient is zero everywhere: this case checks nothing", c->name);
    printf("    %-28s worst relative error %.2e%s%s\n", c->name, worst, worst > 0 ? " at " : "", where);
    if (worst > 2e-2)
        fail_msg("%s: gradient differs from finite differences: %s", c->name, where);
    for (int o = 0; o < op->n_out; o++)
        free(R[o]);
    for (int k = 0; k < op->n_in; k++)
        free(gin[k]);
    ref_free(r);
    ir_graph_free(g);
    diag_free(&d);
}

static void test_every_op_has_a_check(void **state)
{
    (void)state;
    for (int k = 0; k < IR_OP_COUNT; k++) {
        char want[64];
        snprintf(want, sizeof want, "kind=\"%s\"", ir_op_info((enum ir_op_kind)k)->name);
        bool found = false;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            found |= strstr(cases[i].body, want) != NULL;
        if (!found)
            fail_msg("op %s has no gradient check", ir_op_info((enum ir_op_kind)k)->name);
    }
}

int main(void)
{
    enum { N = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N + 1];
    for (size_t i = 0; i < N; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, test_case, NULL, NULL, (void *)&cases[i]};
    tests[N] = (struct CMUnitTest)cmocka_unit_test(test_every_op_has_a_check);
    int rc = _cmocka_run_group_tests("grad", tests, N + 1, NULL, NULL);
    fe_cleanup();
    return rc;
}
