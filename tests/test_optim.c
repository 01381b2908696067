/* test_optim.c: the optimizer against values worked by hand from Megatron's
 * and torch's formulas, and its flags from the command line to the plan. */
#include "testing.h"

#include "optim.h"

#include <math.h>

static struct run *R;

/* OptimizerParamScheduler.get_lr: lr 6e-4 to 6e-5, 2000 warm-up iterations,
 * decay to iteration 600,000. */
static void test_lr_schedule(void **state)
{
    (void)state;
    struct optim_config o = optim_config_default();
    char err[256];
    assert_int_equal(optim_flag_set(&o, "lr", "6e-4", err, sizeof err), 0);
    assert_int_equal(optim_flag_set(&o, "min-lr", "6e-5", err, sizeof err), 0);
    assert_int_equal(optim_flag_set(&o, "lr-warmup-iters", "2000", err, sizeof err), 0);
    assert_int_equal(optim_flag_set(&o, "lr-decay-iters", "600000", err, sizeof err), 0);
    assert_int_equal(optim_flag_set(&o, "lr-decay-style", "cosine", err, sizeof err), 0);
    assert_int_equal(optim_check(&o, err, sizeof err), 0);
    assert_true(optim_lr(&o, 0) == 0);
    assert_true(fabs(optim_lr(&o, 1000) - 3e-4) < 1e-15);  /* halfway up */
    assert_true(fabs(optim_lr(&o, 2000) - 6e-4) < 1e-15);  /* the peak */
    assert_true(fabs(optim_lr(&o, 301000) - 3.3e-4) < 1e-15); /* half the decay: cos = 0 */
    assert_true(fabs(optim_lr(&o, 600000) - 6e-5) < 1e-15);
    assert_true(fabs(optim_lr(&o, 700000) - 6e-5) < 1e-15); /* past the decay: min-lr */
    assert_int_equal(optim_flag_set(&o, "lr-decay-style", "linear", err, sizeof err), 0);
    assert_true(fabs(optim_lr(&o, 151500) - (6e-5 + 0.75 * 5.4e-4)) < 1e-15); /* a quarter of the decay */
    assert_int_equal(optim_flag_set(&o, "lr-decay-style", "constant", err, sizeof err), 0);
    assert_true(fabs(optim_lr(&o, 500000) - 6e-4) < 1e-15);
    /* No --lr-decay-iters: the decay runs over --train-iters. */
    o = optim_config_default();
    optim_flag_set(&o, "train-iters", "100", err, sizeof err);
    assert_true(fabs(optim_lr(&o, 50) - 0.5e-4) < 1e-15);
}

static void test_bad_config(void **state)
{
    (void)state;
    struct optim_config o = optim_config_default();
    char err[256];
    assert_int_equal(optim_flag_set(&o, "lr", "fast", err, sizeof err), -1);
    assert_string_equal(err, "--lr fast: expected a non-negative number");
    assert_int_equal(optim_flag_set(&o, "lr-warmup-iters", "1.5", err, sizeof err), -1);
    assert_string_equal(err, "--lr-warmup-iters 1.5: expected a non-negative integer");
    assert_int_equal(optim_flag_set(&o, "lr-decay-style", "step", err, sizeof err), -1);
    optim_flag_set(&o, "adam-beta2", "1", err, sizeof err);
    assert_int_equal(optim_check(&o, err, sizeof err), -1);
    assert_non_null(strstr(err, "must be below 1"));
    o = optim_config_default();
    optim_flag_set(&o, "lr-warmup-iters", "100", err, sizeof err);
    optim_flag_set(&o, "train-iters", "100", err, sizeof err);
    assert_int_equal(optim_check(&o, err, sizeof err), -1);
    assert_non_null(strstr(err, "leaves nothing of the 100 decay iterations"));
}

/* torch.optim.AdamW, two steps worked out by hand (in double precision):
 * w = 1, gradients 0.5 then -0.25, lr 0.1, weight decay 0.01. */
static void test_adamw(void **state)
{
    (void)state;
    struct optim_config o = optim_config_default();
    float w = 1, m = 0, v = 0, g = 0.5f;
    optim_adamw(&o, 1, 0.1, 1, &w, &g, &m, &v);
    assert_true(fabs(w - 0.899000002) < 1e-6);
    assert_true(fabs(m - 0.05) < 1e-7 && fabs(v - 0.00025) < 1e-9);
    g = -0.25f;
    optim_adamw(&o, 2, 0.1, 1, &w, &g, &m, &v);
    assert_true(fabs(w - 0.8714672987058464) < 1e-6);
    /* Clipping: a norm of 4 under --clip-grad 1 scales by 1/4; a small norm not at all. */
    assert_true(fabs(optim_clip_coeff(&o, 4.0) - 1.0 / (4.0 + 1e-6)) < 1e-15);
    assert_true(optim_clip_coeff(&o, 0.5) == 1.0);
    o.clip_grad = 0;
    assert_true(optim_clip_coeff(&o, 1e9) == 1.0);
}

/* The flags reach the plan; a forward-only plan has no optimizer; a plan's
 * optimizer is fixed. */
static void test_plan_records_it(void **state)
{
    (void)state;
    const char *plan = "/tmp/weft-optim-test.plan";
    run_weft(R, "compile", "models/gpt2.xml", "--variant", "tiny", "--lr", "6e-4", "--min-lr", "6e-5",
             "--lr-warmup-iters", "20", "--train-iters", "1000", "--lr-decay-style", "cosine", "--clip-grad", "0.5", "-o",
             plan, NULL);
    assert_int_equal(R->status, 0);
    run_weft(R, "inspect", plan, "--json", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "\"lr_warmup_iters\": 20, \"lr_decay_iters\": 1000, \"lr_decay_style\": \"cosine\""));
    assert_non_null(strstr(R->out, "\"clip_grad\": 0.5"));
    run_weft(R, "inspect", plan, NULL);
    assert_non_null(strstr(R->out, "optimizer AdamW, fp32 master weights: lr 0.0006, warm-up over 20 iterations, cosine decay to 6e-05 by iteration 1000"));
    /* fixed: only weft compile takes the optimizer's flags, and it takes no plan */
    run_weft(R, "simulate", plan, "--lr", "1", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--lr is an optimizer flag of weft compile, not of weft simulate"));
    run_weft(R, "compile", plan, "--lr", "1", "-o", "/tmp/weft-optim-test-2.plan", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "is a plan file; weft compile takes a model file"));
    run_weft(R, "compile", "models/gpt2.xml", "--variant", "tiny", "--mode", "infer", "-o", plan, NULL);
    assert_int_equal(R->status, 0);
    run_weft(R, "inspect", plan, "--json", NULL);
    assert_null(strstr(R->out, "\"optimizer\""));
    run_weft(R, "compile", "models/gpt2.xml", "--min-lr", "1", "-o", plan, NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--min-lr 1 is above --lr 0.0001"));
    unlink(plan);
}

int main(void)
{
    R = malloc(sizeof *R);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lr_schedule),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_plan_records_it),
    };
    int rc = cmocka_run_group_tests_name("optim", tests, NULL, NULL);
    free(R);
    return rc;
}
