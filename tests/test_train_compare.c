/* test_train_compare.c: bench/train_compare.py, issue 15's GPU training
 * comparison, checked on the CPU by its dry run: tiny GPT-2 trained by weft
 * (the CPU backend) and by eager PyTorch on the same tokens, each side's
 * figures read from what it prints and logs, merged into a results file
 * that already holds another benchmark's entry (kept) and a stale entry of
 * its own (replaced).  PyTorch is no dependency of weft: without python3
 * the test skips, saying so; without torch it checks weft's side, then
 * skips, saying the PyTorch side went unchecked. */
#include "testing.h"
#include "json.h"

#include <math.h>

static const char *const stale_results =
    "[{\"name\": \"attention\", \"pass\": \"forward\", \"head_dim\": 64, \"seq\": 1024, \"causal\": true, \"weft_us\": 1.5},\n"
    " {\"name\": \"gpt2-tiny-train\", \"baseline\": \"torch-eager\", \"weft_tokens_per_s\": -1}]\n";

static bool python_has(const char *code)
{
    struct run r;
    return run_prog(&r, "python3", "-c", code, NULL) == 0 && r.status == 0;
}

/* The entry of `name` and `baseline` (NULL: a null baseline), and how many there are. */
static const struct json_value *entry(const struct json_value *list, const char *name, const char *baseline, int *count)
{
    const struct json_value *found = NULL;
    *count = 0;
    for (int i = 0; i < list->n; i++) {
        const struct json_value *n = json_get(&list->items[i], "name"), *b = json_get(&list->items[i], "baseline");
        bool same = baseline ? b && b->type == JSON_STRING && !strcmp(b->string, baseline) : !b || b->type == JSON_NULL;
        if (n && n->type == JSON_STRING && !strcmp(n->string, name) && same) {
            found = &list->items[i];
            ++*count;
        }
    }
    return found;
}

static double field(const struct json_value *e, const char *key)
{
    const struct json_value *v = json_get(e, key);
    if (!v || v->type != JSON_NUMBER)
        fail_msg("the entry's %s is not a number", key);
    return v->number;
}

static void test_dry_run(void **state)
{
    (void)state;
    if (!python_has("pass"))
        SKIP_BECAUSE("python3 is not installed");
    bool torch = python_has("import torch");
    char dir[] = "/tmp/weft-train-compare-XXXXXX", results[64];
    assert_non_null(mkdtemp(dir));
    snprintf(results, sizeof results, "%s/results.json", dir);
    FILE *f = fopen(results, "w");
    assert_non_null(f);
    fputs(stale_results, f);
    fclose(f);

    struct run r; /* weft run joins MPI: run_mpi */
    run_mpi(&r, (const char *const[]){"python3", "bench/train_compare.py", "--dry-run", "--baselines", "torch-eager", "--peak-tflops",
                                      "1", "--out", dir, "--results", results, NULL});
    if (r.status || r.timed_out)
        printf("%s%s", r.out, r.err);
    assert_false(r.timed_out);
    assert_int_equal(r.status, 0);

    size_t len = 0;
    char *text = wf_read_file(results, 1 << 20, &len), err[128];
    assert_non_null(text);
    struct json_value *list = json_parse(text, len, err, sizeof err);
    if (!list)
        fail_msg("%s: %s", results, err);
    assert_int_equal(list->type, JSON_ARRAY);
    int n;
    const struct json_value *attention = entry(list, "attention", NULL, &n); /* another benchmark's entry, kept */
    assert_int_equal(n, 1);
    assert_float_equal(field(attention, "weft_us"), 1.5, 0);

    const struct json_value *e = entry(list, "gpt2-tiny-train", torch ? "torch-eager" : NULL, &n);
    assert_int_equal(n, 1);
    assert_true(field(e, "weft_tokens_per_s") > 0); /* the stale -1 replaced, with torch */
    assert_true(field(e, "step_predicted") > 0 && field(e, "step_measured") > 0);
    /* on the CPU: the arena and the bf16 GEMMs' scratch, against the peak resident set (which holds them) */
    assert_true(field(e, "memory_predicted") > 0 && field(e, "memory_measured") >= field(e, "memory_predicted"));
    assert_true(field(e, "mfu") > 0);
    const struct json_value *dev = json_get(e, "device");
    assert_true(dev && dev->type == JSON_STRING && dev->len > 0);
    if (torch) {
        /* the same model FLOPs for both: the MFUs are in the ratio of the tokens/s */
        double ratio = field(e, "mfu") / field(e, "baseline_mfu"), speed = field(e, "weft_tokens_per_s") / field(e, "baseline_tokens_per_s");
        assert_true(fabs(ratio / speed - 1) < 2e-3);
        assert_non_null(strstr(r.out, "| gpt2-tiny-train | torch-eager | "));
    } else {
        assert_non_null(entry(list, "gpt2-tiny-train", "torch-eager", &n)); /* the stale one: no entry of that key came */
        assert_non_null(strstr(r.out, "torch-eager: skipped: torch is not installed here"));
        assert_non_null(strstr(r.out, "| gpt2-tiny-train | none | "));
    }
    json_free(list);
    free(text);
    run_prog(&r, "rm", "-rf", dir, NULL);
    if (!torch)
        SKIP_BECAUSE("the PyTorch side: torch is not installed (weft's side was checked)");
}

/* A model, baseline or precision it does not know: exit 2, naming it. */
static void test_bad_arguments(void **state)
{
    (void)state;
    if (!python_has("pass"))
        SKIP_BECAUSE("python3 is not installed");
    struct run r;
    run_prog(&r, "python3", "bench/train_compare.py", "--models", "124m,7b", "--baselines", "jax", NULL);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "unknown: 7b, jax"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dry_run),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
