/* test_run.c: weft run's executor against the reference: a plan compiled
 * for one rank, run from the plan file, computes the loss runtime/ref.c
 * computes from the same parameters and tokens; and training lowers it. */
#include "testing.h"
#include "emit_plan.h"
#include "exec.h"
#include "ref.h"

#include <math.h>

enum { SEED = 1234 };

/* Compile a model for one rank with one micro-batch, write its plan. */
static void compile_to(const char *model, const char *plan, double lr, struct compiled *C)
{
    struct par_config pc = par_config_default();
    struct optim_config opt = optim_config_default();
    opt.lr = lr, opt.decay_style = OPTIM_DECAY_CONSTANT;
    compile_or_fail(C, model, "tiny", pc, NULL, 0, &opt, NULL, 0);
    struct diag d;
    diag_init(&d);
    if (emit_plan(C, plan, &d))
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
}

static struct exec *run_plan(const char *plan, struct rank_plan *R)
{
    struct diag d;
    diag_init(&d);
    struct exec *x = NULL;
    if (rank_plan_load(plan, 0, 1, R, &d) || !(x = exec_new(R, SEED, &d)))
        fail_msg("%s: %s", plan, diag_first_error(&d));
    diag_free(&d);
    return x;
}

/* The first step's loss: the executor's (kernels, GEMMs, the memory plan's
 * addresses) against the reference's plain loops on whole tensors, from
 * the same seed and the same synthetic tokens. */
static void test_loss_matches_reference(void **state)
{
    (void)state;
    static const char *const models[] = {"models/gpt2.xml", "models/llama2.xml"};
    for (size_t m = 0; m < WF_COUNT(models); m++) {
        char plan[] = "/tmp/weft-test-run-XXXXXX";
        int fd = mkstemp(plan);
        close(fd);
        struct compiled C;
        compile_to(models[m], plan, 1e-4, &C);
        struct rank_plan R;
        struct exec *x = run_plan(plan, &R);
        struct exec_stats st;
        struct diag d;
        diag_init(&d);
        if (exec_step(x, 0, &st, &d))
            fail_msg("%s", diag_first_error(&d));
        const struct ir_graph *g = C.P->g;
        struct ref *r = ref_new(g, SEED);
        for (int t = 0; t < g->n_tensors; t++) {
            const struct ir_tensor *T = &g->tensors[t];
            if (T->kind != IR_TENSOR_INPUT || T->dtype != IR_DTYPE_I32)
                continue;
            int64_t B = T->shape.ax[0].size, S = T->shape.ax[1].size, shift = strstr(T->name, "labels") ? 1 : 0;
            for (int64_t b = 0; b < B; b++)
                for (int64_t s = 0; s < S; s++)
                    ref_ints(r, t)[b * S + s] = exec_token(SEED, b, s + shift, R.vocab);
        }
        if (ref_forward(r, &d))
            fail_msg("%s", diag_first_error(&d));
        double want = ref_data(r, g->outputs[0])[0], rel = fabs(st.loss - want) / fabs(want);
        printf("    %-18s loss %.7f, reference %.7f: relative difference %.1e\n", models[m], st.loss, want, rel);
        assert_true(rel < 1e-5);
        ref_free(r);
        exec_free(x);
        rank_plan_free(&R);
        compiled_free(&C);
        diag_free(&d);
        unlink(plan);
    }
}

/* The loss falls: the synthetic tokens are each a function of the one
 * before, which the model learns; 40 steps at lr 3e-3 take it well below
 * its start (ln of the vocabulary, near 6.2 for tiny GPT-2). */
static void test_training_lowers_the_loss(void **state)
{
    (void)state;
    char plan[] = "/tmp/weft-test-run-XXXXXX";
    int fd = mkstemp(plan);
    close(fd);
    struct compiled C;
    compile_to("models/gpt2.xml", plan, 3e-3, &C);
    struct rank_plan R;
    struct exec *x = run_plan(plan, &R);
    struct diag d;
    diag_init(&d);
    double first = 0, last = 0;
    for (long it = 0; it < 40; it++) {
        struct exec_stats st;
        if (exec_step(x, it, &st, &d))
            fail_msg("%s", diag_first_error(&d));
        assert_true(isfinite(st.loss) && isfinite(st.grad_norm));
        first = it ? first : st.loss;
        last = st.loss;
    }
    printf("    tiny GPT-2, 40 steps at lr 3e-3: loss %.3f -> %.3f\n", first, last);
    assert_true(last < first - 1.0);
    exec_free(x);
    rank_plan_free(&R);
    compiled_free(&C);
    diag_free(&d);
    unlink(plan);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_matches_reference),
        cmocka_unit_test(test_training_lowers_the_loss),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
