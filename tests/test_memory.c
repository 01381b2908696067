/* test_memory.c: the memory plan against a count done by hand, and what the
 * schedule and --bf16 change. */
#include "testing.h"

#include "memory.h"
#include "schedule.h"

struct built {
    struct partition *P;
    struct ir_schedule S;
    struct mem_report m;
};

static void build_mode(struct built *b, const char *file, struct par_config pc, bool forward_only)
{
    struct fe_options opt = {0};
    struct diag d;
    diag_init(&d);
    b->P = partition_model(file, &opt, &pc, &d);
    if (!b->P || schedule_build(b->P, schedule_default(b->P), forward_only, &b->S, &d))
        fail_msg("%s: %s", file, diag_first_error(&d));
    memory_plan(b->P, &b->S, &b->m);
    diag_free(&d);
}

static void build(struct built *b, const char *file, struct par_config pc) { build_mode(b, file, pc, false); }

static void unbuild(struct built *b)
{
    mem_report_free(&b->m);
    ir_schedule_free(&b->S);
    partition_free(b->P);
}

/* GPT-2 124M at tp 1, pp 1, micro-batch 4, sequence 1024, fp32, counted by hand. */
static void test_gpt2_by_hand(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.micro_batch = 4;
    struct built b;
    build(&b, "models/gpt2.xml", pc);
    const int64_t B = 4, S = 1024, H = 768, F = 3072, N = 12, L = 12;
    const int64_t V = 50304; /* 50,257 padded to a multiple of 128 */
    const int64_t params = 124439808 + (V - 50257) * H;
    const int64_t BSH = B * S * H, BSF = B * S * F, BS = B * S;
    /* A layer keeps, in fp32: its input x (for ln1), ln1's output (the qkv
     * matmul's input), qkv (attention's q, k, v are views of it), attention's
     * output (its merge is a view: the projection reads the same bytes), x1
     * (for ln2), ln2's output (the fc matmul's input), fc (gelu's input) and
     * gelu's output (the out matmul's input): 8 BSH + 2 BSF elements; two
     * dropout masks of a byte per element; two floats per row for ln1, ln2
     * and attention (B*N*S rows). */
    const int64_t layer = (8 * BSH + 2 * BSF) * 4 + 2 * BSH + (2 * BS + 2 * B * N * S + 2 * BS) * 4;
    /* Before the layers: the token ids (i32), the embedding dropout's mask.
     * After: the final norm's input and row stats, the head's input, the
     * logits (B*S*V fp32) and the labels (i32). */
    const int64_t outside = BS * 4 + BSH + BSH * 4 + 2 * BS * 4 + BSH * 4 + BS * V * 4 + BS * 4;
    const struct mem_stage *ms = &b.m.stages[0];
    assert_int_equal(ms->bytes[MEM_PARAMS], params * 4);
    assert_int_equal(ms->bytes[MEM_GRADS], params * 4);
    assert_int_equal(ms->bytes[MEM_OPTIMIZER], params * 8); /* AdamW's two moments */
    assert_int_equal(ms->bytes[MEM_ACTIVATIONS], L * layer + outside);
    assert_int_equal(ms->bytes[MEM_ACTIVATIONS], 3349479424LL);
    assert_int_equal(ms->in_flight, 1);
    assert_int_equal(ms->bytes[MEM_COMM], 0); /* one rank: nothing moves */
    assert_int_equal(ms->bytes[MEM_WORKSPACE], 32 << 20);
    int64_t sum = 0;
    for (int k = 0; k < MEM_COUNT; k++)
        sum += ms->bytes[k];
    assert_int_equal(ms->total, sum);
    unbuild(&b);
}

/* Forward only, the same GPT-2: no gradients, no optimizer state, and the
 * activations are the forward's working set, whose peak is the head: its
 * input (the final norm's output) and the logits, both live at once. */
static void test_gpt2_forward_only_by_hand(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.micro_batch = 4;
    pc.pp = 2, pc.global_batch = 8;
    struct built b, t;
    build_mode(&b, "models/gpt2.xml", pc, true);
    build(&t, "models/gpt2.xml", pc);
    const int64_t B = 4, S = 1024, H = 768, F = 3072, V = 50304;
    const struct mem_stage *last = &b.m.stages[1], *first = &b.m.stages[0];
    assert_int_equal(last->bytes[MEM_ACTIVATIONS], (B * S * H + B * S * V) * 4);
    /* Within a layer the peak is the MLP: fc's output and gelu's output
     * (B*S*F each), plus the residual stream x1 the MLP adds back to. */
    assert_int_equal(first->bytes[MEM_ACTIVATIONS], (2 * B * S * F + B * S * H) * 4);
    for (int s = 0; s < 2; s++) {
        const struct mem_stage *ms = &b.m.stages[s];
        assert_int_equal(ms->bytes[MEM_GRADS], 0);
        assert_int_equal(ms->bytes[MEM_OPTIMIZER], 0);
        assert_int_equal(ms->bytes[MEM_PARAMS], t.m.stages[s].bytes[MEM_PARAMS]);
        assert_int_equal(ms->in_flight, 1);
        assert_true(ms->bytes[MEM_ACTIVATIONS] < t.m.stages[s].bytes[MEM_ACTIVATIONS]);
    }
    unbuild(&b);
    unbuild(&t);
}

/* 1F1B: stage s of p holds p - s micro-batches at its peak; --bf16 halves
 * weights and activations and puts fp32 master weights in the optimizer. */
static void test_schedule_and_precision(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 4, pc.global_batch = 16;
    struct built b, h;
    build(&b, "models/gpt2.xml", pc);
    for (int s = 0; s < 4; s++)
        assert_int_equal(b.m.stages[s].in_flight, 4 - s);
    assert_int_equal(b.m.stages[1].bytes[MEM_ACTIVATIONS], 3 * b.m.stages[1].activations_per_micro);
    pc.bf16 = true;
    build(&h, "models/gpt2.xml", pc);
    for (int s = 0; s < 4; s++) {
        assert_int_equal(h.m.stages[s].bytes[MEM_PARAMS] * 2, b.m.stages[s].bytes[MEM_PARAMS]);
        assert_int_equal(h.m.stages[s].bytes[MEM_GRADS], b.m.stages[s].bytes[MEM_GRADS]);
        assert_int_equal(h.m.stages[s].bytes[MEM_OPTIMIZER] * 2, b.m.stages[s].bytes[MEM_OPTIMIZER] * 3);
        assert_true(h.m.stages[s].bytes[MEM_ACTIVATIONS] < b.m.stages[s].bytes[MEM_ACTIVATIONS]);
    }
    unbuild(&b);
    unbuild(&h);
}

static void test_limit(void **state)
{
    (void)state;
    assert_int_equal(memory_parse_size("80GiB"), 80LL << 30);
    assert_int_equal(memory_parse_size("80G"), 80LL << 30);
    assert_int_equal(memory_parse_size("512MiB"), 512LL << 20);
    assert_int_equal(memory_parse_size("1.5TB"), 1500000000000LL);
    assert_int_equal(memory_parse_size("1e9"), 1000000000LL);
    assert_int_equal(memory_parse_size("lots"), -1);
    assert_int_equal(memory_parse_size("80 parsecs"), -1);
    struct run *r = malloc(sizeof *r);
    run_weft(r, "compile", "models/gpt2.xml", "--pp", "2", "--global-batch-size", "8", "--memory-limit", "1GiB", "-o",
             "/tmp/weft-memory-test.plan", NULL);
    assert_int_equal(r->status, 2);
    assert_non_null(strstr(r->err, "--memory-limit 1.0 GiB: rank 0 (decoder stage 0, and every rank of that stage) needs"));
    assert_non_null(strstr(r->err, "micro-batches in flight"));
    unlink("/tmp/weft-memory-test.plan");
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_by_hand),
        cmocka_unit_test(test_gpt2_forward_only_by_hand),
        cmocka_unit_test(test_schedule_and_precision),
        cmocka_unit_test(test_limit),
    };
    int rc = cmocka_run_group_tests_name("memory", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
