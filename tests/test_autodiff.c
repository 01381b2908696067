/* test_autodiff.c: the backward graph autodiff.c builds, run on the CPU
 * reference, gives every model's parameter gradients: checked against
 * central finite differences of the whole model's loss.
 *
 * The numeric side is made sound rather than the tolerance loose: Richardson
 * extrapolation of two step sizes cancels the h^2 error (LLaVA's projector
 * bias curves enough to need it); the tolerance includes the float32 noise
 * of the loss itself; and an element whose perturbation changes a routing
 * decision (Mixtral's top-k) is skipped, since the loss is not
 * differentiable there, and counted. */
#include "testing.h"

#include "kernel.h"

#include "autodiff.h"
#include "ref.h"

#include <math.h>

/* The loss at the current parameters; *routing: a hash of every routing
 * decision the forward made (router indices). */
static double forward_loss(struct ref *r, const struct ir_graph *g, const struct autodiff *ad, uint64_t *routing)
{
    struct diag d;
    diag_init(&d);
    *routing = 0;
    for (int i = 0; i < ad->n_forward_ops; i++) {
        if (ref_op(r, i, &d))
            fail_msg("%s", diag_first_error(&d));
        if (g->ops[i].kind == IR_OP_ROUTER) {
            int t = g->ops[i].out[1];
            *routing = wf_hash(ref_ints(r, t), (size_t)ir_shape_numel(&g->tensors[t].shape) * 4, *routing);
        }
    }
    diag_free(&d);
    return ref_data(r, ad->loss)[0];
}

/* The central difference of the loss in one element with step h; -1e30 if
 * the step changed a routing decision. */
static double central(struct ref *r, const struct ir_graph *g, const struct autodiff *ad, int t, int64_t e, double h,
                      uint64_t base)
{
    float *x = ref_data(r, t), keep = x[e];
    uint64_t ru, rd;
    x[e] = keep + (float)h;
    double up = forward_loss(r, g, ad, &ru);
    x[e] = keep - (float)h;
    double down = forward_loss(r, g, ad, &rd);
    x[e] = keep;
    return ru != base || rd != base ? -1e30 : (up - down) / (2 * h);
}

static void check_model(const char *file)
{
    struct ir_graph *g = load_model(file, "tiny", NULL, 0);
    assert_non_null(g);
    struct diag d;
    diag_init(&d);
    struct autodiff ad;
    if (autodiff_run(g, g->outputs[0], &ad, &d))
        fail_msg("%s: %s", file, diag_first_error(&d));
    struct ref *r = ref_new(g, 5);
    ref_fill_inputs(r, 5, 512);
    for (int t = 0; t < ad.n_forward_tensors; t++) /* LLaVA: image positions carry the ignore label */
        if (!strcmp(g->tensors[t].local_name, "labels") && strstr(file, "llava"))
            for (int k = 0; k < 2 * 16; k++)
                ref_ints(r, t)[(k / 16) * 48 + k % 16] = -100;
    ref_data(r, ad.loss_grad)[0] = 1;
    if (ref_forward(r, &d)) /* forward, then backward */
        fail_msg("%s: %s", file, diag_first_error(&d));
    int checked = 0, params = 0, skipped = 0;
    double worst = 0;
    char where[512] = "";
    const double h = 1e-2;
    uint64_t base;
    double loss = forward_loss(r, g, &ad, &base);
    /* The numeric gradient's own error: the loss is a float32, so each
     * central difference is off by up to an ulp over h, and extrapolation
     * adds a few: allow 8 ulps of the loss over h, plus 5% of the gradient. */
    double noise = 8 * (nextafterf((float)loss, INFINITY) - (float)loss) / h;
    for (int t = 0; t < ad.n_forward_tensors; t++) {
        if (g->tensors[t].kind != IR_TENSOR_PARAM)
            continue;
        params++;
        assert_true(ad.grad[t] >= 0); /* every parameter reaches the loss in these models */
        const float *gr = ref_data(r, ad.grad[t]);
        int64_t n = ir_shape_numel(&g->tensors[t].shape), big = 0;
        for (int64_t e = 1; e < n; e++)
            if (fabs(gr[e]) > fabs(gr[big]))
                big = e;
        int64_t pick[2] = {big, (int64_t)(kn_uniform(3, (uint64_t)t, 0) * (double)n)};
        for (int s = 0; s < 2; s++) {
            double d1 = central(r, g, &ad, t, pick[s], h, base), d2 = central(r, g, &ad, t, pick[s], h / 2, base);
            if (d1 < -1e29 || d2 < -1e29) {
                skipped++;
                continue;
            }
            double num = (4 * d2 - d1) / 3, ana = gr[pick[s]];
            double err = fabs(num - ana) / (noise + 5e-2 * fabs(ana)); /* <= 1 passes */
            if (err > worst) {
                worst = err;
                snprintf(where, sizeof where, "%s[%lld]: numeric %.6f, analytic %.6f", g->tensors[t].name,
                         (long long)pick[s], num, ana);
            }
            checked++;
        }
    }
    printf("    %s tiny: %d parameters, %d gradient elements checked (%d skipped: routing changed), worst %.2f of "
           "the allowance (5%% + %.1e) at %s\n", file, params, checked, skipped, worst, noise, where);
    assert_true(checked >= params); /* most elements were differentiable */
    if (worst > 1)
        fail_msg("%s: a gradient differs from finite differences: %s", file, where);
    ref_free(r);
    autodiff_free(&ad);
    ir_graph_free(g);
    diag_free(&d);
}

static void test_gpt2(void **state) { (void)state; check_model("models/gpt2.xml"); }
static void test_llama2(void **state) { (void)state; check_model("models/llama2.xml"); }
static void test_mixtral(void **state) { (void)state; check_model("models/mixtral.xml"); }
static void test_t5(void **state) { (void)state; check_model("models/t5.xml"); }
static void test_llava(void **state) { (void)state; check_model("models/llava.xml"); }

/* The backward graph's shape: one backward op per forward op that a
 * parameter reaches, sums where a tensor has several readers. */
static void test_structure(void **state)
{
    (void)state;
    struct ir_graph *g = load_model("models/gpt2.xml", "tiny", NULL, 0);
    struct diag d;
    diag_init(&d);
    struct autodiff ad;
    assert_int_equal(autodiff_run(g, g->outputs[0], &ad, &d), 0);
    int backward = 0, sums = 0;
    for (int i = ad.n_forward_ops; i < g->n_ops; i++) {
        backward += g->ops[i].grad_of >= 0;
        sums += g->ops[i].grad_of < 0 && g->ops[i].kind == IR_OP_ADD;
    }
    assert_true(backward > 0 && backward <= ad.n_forward_ops);
    /* wte is read by the embedding and the head: its gradient is a sum */
    int wte = -1;
    for (int t = 0; t < ad.n_forward_tensors; t++)
        if (!strcmp(g->tensors[t].name, "decoder.wte"))
            wte = t;
    assert_true(wte >= 0 && ad.grad[wte] >= 0);
    int p = g->tensors[ad.grad[wte]].producer;
    assert_int_equal(g->ops[p].kind, IR_OP_ADD);
    assert_int_equal(g->ops[p].grad_of, -1);
    printf("    gpt2 tiny: %d forward ops, %d backward ops, %d sums\n", ad.n_forward_ops, backward, sums);
    autodiff_free(&ad);
    ir_graph_free(g);
    diag_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_structure), cmocka_unit_test(test_gpt2), cmocka_unit_test(test_llama2),
        cmocka_unit_test(test_mixtral),   cmocka_unit_test(test_t5),   cmocka_unit_test(test_llava),
    };
    int rc = cmocka_run_group_tests_name("autodiff", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
