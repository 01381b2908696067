/* test_memory.c: the memory plan against a count done by hand, what the
 * schedule and --bf16 change, and the arena's proof on every model. */
#include "testing.h"

#include "autodiff.h"
#include "fuse.h"
#include "memory.h"
#include "schedule.h"

struct built {
    struct partition *P;
    struct ir_schedule S;
    struct ir_memory M;
};

static void build_kind(struct built *b, const char *file, const char *variant, struct par_config pc, int kind,
                       bool forward_only)
{
    struct fe_options opt = {0};
    struct diag d;
    diag_init(&d);
    opt.variant = variant;
    b->P = partition_model(file, &opt, &pc, &d);
    if (!b->P || schedule_build(b->P, kind < 0 ? schedule_default(b->P) : (enum ir_sched_kind)kind, forward_only, &b->S, &d))
        fail_msg("%s: %s", file, diag_first_error(&d));
    memory_plan(b->P, &b->S, NULL, &b->M);
    if (ir_memory_check(&b->M, &d))
        fail_msg("%s: the arena does not hold: %s", file, diag_first_error(&d));
    diag_free(&d);
}

static void build_mode(struct built *b, const char *file, struct par_config pc, bool forward_only)
{
    build_kind(b, file, NULL, pc, -1, forward_only);
}

static void build(struct built *b, const char *file, struct par_config pc) { build_mode(b, file, pc, false); }

static void unbuild(struct built *b)
{
    ir_memory_free(&b->M);
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
     * logits (B*S*V fp32), the labels (i32) and the loss's row statistics
     * (log-sum-exp and the row's loss, per token). */
    const int64_t outside = BS * 4 + BSH + BSH * 4 + 2 * BS * 4 + BSH * 4 + BS * V * 4 + BS * 4 + 2 * BS * 4;
    const struct ir_role_memory *ms = &b.M.roles[0];
    assert_int_equal(ms->size[IR_REGION_PARAMS], params * 4);
    assert_int_equal(ms->size[IR_REGION_GRADS], params * 4);
    assert_int_equal(ms->size[IR_REGION_OPTIMIZER], params * 8); /* AdamW's two moments */
    /* One micro-batch's block, and nothing crosses a stage. */
    assert_int_equal(memory_block_bytes(ms), L * layer + outside);
    assert_int_equal(ms->size[IR_REGION_ACTIVATIONS], 3349479424LL + 2 * BS * 4);
    assert_int_equal(ms->in_flight, 1);
    /* The working set peaks in the head's backward: the logits' gradient
     * (B*S*V) and the gradient of the head's input (B*S*H), both fp32 and
     * alive at once; every layer's transients fit beside them. */
    assert_int_equal(ms->size[IR_REGION_WORKING], (BS * V + BSH) * 4);
    assert_int_equal(ms->size[IR_REGION_COMM], 0); /* one rank: nothing moves */
    assert_int_equal(ms->size[IR_REGION_WORKSPACE], 32 << 20);
    int64_t sum = 0; /* every size here is a multiple of the alignment */
    for (int k = 0; k < IR_REGION_COUNT; k++)
        sum += ms->size[k];
    assert_int_equal(ms->total, sum);
    unbuild(&b);
}

/* Forward only, the same GPT-2 on two stages: no gradients, no optimizer
 * state, no blocks; the activations are the one buffer a transfer fills or
 * drains (B*S*H), and the working set peaks at the head: its input (the
 * final norm's output), the logits and the labels (loaded as the step
 * starts), all live at once. */
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
    const struct ir_role_memory *last = &b.M.roles[1], *first = &b.M.roles[0];
    assert_int_equal(last->size[IR_REGION_WORKING], (B * S * H + B * S * V) * 4 + B * S * 4 /* the labels, i32 */);
    /* Within a layer the peak is the MLP: fc's output and gelu's output
     * (B*S*F each), plus the residual stream x1 the MLP adds back to. */
    assert_int_equal(first->size[IR_REGION_WORKING], (2 * B * S * F + B * S * H) * 4);
    for (int s = 0; s < 2; s++) {
        const struct ir_role_memory *ms = &b.M.roles[s];
        assert_int_equal(ms->size[IR_REGION_ACTIVATIONS], B * S * H * 4);
        assert_int_equal(ms->size[IR_REGION_GRADS], 0);
        assert_int_equal(ms->size[IR_REGION_OPTIMIZER], 0);
        assert_int_equal(ms->size[IR_REGION_PARAMS], t.M.roles[s].size[IR_REGION_PARAMS]);
        assert_int_equal(ms->in_flight, 0);
        assert_true(ms->total < t.M.roles[s].total);
    }
    unbuild(&b);
    unbuild(&t);
}

/* 1F1B: stage s of p holds p - s micro-batches' blocks at its peak, and
 * the buffers transfers fill besides; --bf16 halves weights and activations
 * and puts fp32 master weights in the optimizer. */
static void test_schedule_and_precision(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 4, pc.global_batch = 16;
    struct built b, h, g;
    build(&b, "models/gpt2.xml", pc);
    for (int s = 0; s < 4; s++) {
        const struct ir_role_memory *m = &b.M.roles[s];
        assert_int_equal(m->in_flight, 4 - s);
        int64_t blocks = m->in_flight * memory_block_bytes(m), transfer = 0;
        for (int i = 0; i < m->n_bufs; i++)
            if (m->bufs[i].region == IR_REGION_ACTIVATIONS && m->bufs[i].what != IR_BUF_BLOCK)
                transfer = m->bufs[i].bytes > transfer ? m->bufs[i].bytes : transfer;
        assert_true(m->size[IR_REGION_ACTIVATIONS] >= blocks + transfer);
        assert_true(m->size[IR_REGION_ACTIVATIONS] <= blocks + 4 * transfer); /* a few transfers at once, no more */
    }
    /* GPipe keeps every micro-batch until the backward starts. */
    build_kind(&g, "models/gpt2.xml", NULL, pc, IR_SCHED_GPIPE, false);
    for (int s = 0; s < 4; s++)
        assert_int_equal(g.M.roles[s].in_flight, 16);
    pc.bf16 = true;
    build(&h, "models/gpt2.xml", pc);
    for (int s = 0; s < 4; s++) {
        assert_int_equal(h.M.roles[s].size[IR_REGION_PARAMS] * 2, b.M.roles[s].size[IR_REGION_PARAMS]);
        assert_int_equal(h.M.roles[s].size[IR_REGION_GRADS], b.M.roles[s].size[IR_REGION_GRADS]);
        assert_int_equal(h.M.roles[s].size[IR_REGION_OPTIMIZER] * 2, b.M.roles[s].size[IR_REGION_OPTIMIZER] * 3);
        assert_true(h.M.roles[s].size[IR_REGION_ACTIVATIONS] < b.M.roles[s].size[IR_REGION_ACTIVATIONS]);
    }
    unbuild(&b);
    unbuild(&h);
    unbuild(&g);
}

/* --grad-reduce-in-bf16: GPT-2 124M at dp 2 with --bf16 holds its main
 * gradients in bf16, so GRADS is exactly half the fp32-reduced plan's: the
 * by-hand count of test_gpt2_by_hand times 2 bytes (every parameter's
 * elements are a multiple of 128, so no alignment pads either plan).  The
 * optimizer's fp32 state keeps its size and every parameter's place in it
 * (master weights, moments), and each gradient buffer is its parameter's
 * elements times 2. */
static void test_grad_reduce_in_bf16(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 2, pc.micro_batch = 4, pc.bf16 = true;
    const int64_t params = 124439808 + (50304 - 50257) * 768;
    struct built f, h;
    build(&f, "models/gpt2.xml", pc);
    pc.grad_reduce_in_bf16 = true;
    build(&h, "models/gpt2.xml", pc);
    const struct ir_role_memory *mf = &f.M.roles[0], *mh = &h.M.roles[0];
    assert_int_equal(mf->size[IR_REGION_GRADS], params * 4);
    assert_int_equal(mh->size[IR_REGION_GRADS], params * 2);
    assert_int_equal(mh->grad_bytes, 2);
    assert_int_equal(mf->size[IR_REGION_OPTIMIZER], params * 12); /* master weights and two moments, fp32 */
    assert_int_equal(mh->size[IR_REGION_OPTIMIZER], params * 12);
    assert_int_equal(mf->total - mh->total, params * 2);
    int n = 0;
    for (int i = 0; i < mh->n_bufs; i++) {
        const struct ir_buf *g = &mh->bufs[i];
        if (g->region != IR_REGION_GRADS)
            continue;
        n++;
        int64_t fb, hb;
        assert_true(ir_memory_find(mf, IR_BUF_GRAD, g->id, -1, -1, &fb) >= 0);
        assert_int_equal(g->bytes * 2, fb);
        for (int what = IR_BUF_EXP_AVG; what <= IR_BUF_MASTER; what++) {
            int64_t at_f = ir_memory_find(mf, what, g->id, -1, -1, &fb), at_h = ir_memory_find(mh, what, g->id, -1, -1, &hb);
            assert_int_equal(at_h - mh->base[IR_REGION_OPTIMIZER], at_f - mf->base[IR_REGION_OPTIMIZER]);
            assert_int_equal(hb, fb);
        }
    }
    assert_int_equal(n, 148); /* GPT-2's 12 layers of 12 parameters, the two embeddings and the final norm's two */
    unbuild(&f);
    unbuild(&h);
}

/* Whether role m has a buffer holding `what` of tensor t. */
static bool has_home(const struct ir_role_memory *m, enum ir_buf_what what, int t)
{
    for (int i = 0; i < m->n_items; i++)
        if (m->items[i].what == what && m->items[i].id == t)
            return true;
    for (int i = 0; i < m->n_bufs; i++)
        if (m->bufs[i].what == what && m->bufs[i].id == t)
            return true;
    return false;
}

/* Every model under each schedule, trained and forward only: the arena
 * holds (build checks that no two live buffers share a byte), and every
 * value a stage's ops touch, and in training every gradient they need, has
 * a buffer (a view shares its input's). */
static void test_every_model_has_a_home(void **state)
{
    (void)state;
    static const struct {
        const char *file, *variant;
        int world, tp, pp, etp, epp, gbs, per_virtual;
        bool sp;
    } cfg[] = {
        {"models/gpt2.xml", NULL, 16, 2, 4, 0, -1, 16, 0, false},   {"models/gpt2.xml", NULL, 16, 2, 4, 0, -1, 16, 1, false},
        {"models/gpt2.xml", NULL, 4, 2, 2, 0, -1, 4, 0, true},      {"models/llama2.xml", "tiny", 8, 2, 2, 0, -1, 8, 0, false},
        {"models/mixtral.xml", "tiny", 8, 2, 2, 0, -1, 4, 0, false}, {"models/t5.xml", "tiny", 10, 2, 2, 1, 1, 8, 0, false},
        {"models/t5.xml", "tiny", 4, 2, 1, 0, -1, 4, 0, false},     {"models/llava.xml", "tiny", 12, 2, 2, 1, 2, 8, 0, false},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++)
        for (int k = 0; k < 4; k++) {
            struct par_config pc = par_config_default();
            pc.world_size = cfg[i].world, pc.tp = cfg[i].tp, pc.pp = cfg[i].pp, pc.etp = cfg[i].etp, pc.epp = cfg[i].epp;
            pc.global_batch = cfg[i].gbs, pc.layers_per_virtual_stage = cfg[i].per_virtual;
            pc.sequence_parallel = cfg[i].sp;
            int kind = cfg[i].per_virtual ? IR_SCHED_INTERLEAVED : k % 2 ? IR_SCHED_1F1B : IR_SCHED_GPIPE;
            bool forward_only = k >= 2;
            struct built b;
            build_kind(&b, cfg[i].file, cfg[i].variant, pc, kind, forward_only);
            const struct ir_graph *g = b.P->g;
            bool *needs = calloc((size_t)g->n_tensors, sizeof *needs);
            if (!forward_only)
                autodiff_needs_grad(g, g->outputs[0], needs);
            for (int op = 0; op < g->n_ops; op++) {
                const struct ir_op *o = &g->ops[op];
                const struct ir_role_memory *m = &b.M.roles[b.P->chunks[b.P->op_chunk[op]].stage];
                for (int x = 0; x < o->n_in + o->n_out; x++) {
                    int t = x < o->n_in ? o->in[x] : o->out[x - o->n_in], p = t >= 0 ? g->tensors[t].producer : -1;
                    if (t < 0 || (p >= 0 && (g->ops[p].kind == IR_OP_SPLIT_HEADS || g->ops[p].kind == IR_OP_MERGE_HEADS ||
                                             g->ops[p].kind == IR_OP_RESHAPE || g->ops[p].kind == IR_OP_POSITION_EMBEDDING)))
                        continue;
                    if (!has_home(m, IR_BUF_VALUE, t))
                        fail_msg("%s (config %zu, %d): %s has no buffer on its stage", cfg[i].file, i, k, g->tensors[t].name);
                    if (needs[t] && !has_home(m, IR_BUF_GRAD, t))
                        fail_msg("%s (config %zu, %d): the gradient of %s has no buffer", cfg[i].file, i, k,
                                 g->tensors[t].name);
                }
            }
            free(needs);
            unbuild(&b);
        }
}

/* The proof catches a packer's mistake: two live buffers moved onto the
 * same bytes, a buffer pushed past its region's end. */
static void test_check_catches_overlap(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 2, pc.global_batch = 4;
    struct built b;
    build(&b, "models/gpt2.xml", pc);
    struct ir_role_memory *m = &b.M.roles[0];
    int x = -1, y = -1; /* two blocks alive at once */
    for (int i = 0; i < m->n_bufs && y < 0; i++)
        for (int j = 0; m->bufs[i].what == IR_BUF_BLOCK && j < i && y < 0; j++)
            if (m->bufs[j].what == IR_BUF_BLOCK && ir_buf_meet(&m->bufs[i], &m->bufs[j]))
                x = j, y = i;
    assert_true(y >= 0);
    int64_t keep = m->bufs[y].offset;
    m->bufs[y].offset = m->bufs[x].offset + 256;
    struct diag d;
    diag_init(&d);
    assert_int_equal(ir_memory_check(&b.M, &d), -1);
    assert_non_null(strstr(diag_first_error(&d), "stage 0 activations: block"));
    assert_non_null(strstr(diag_first_error(&d), "share bytes while both alive"));
    diag_free(&d);
    m->bufs[y].offset = keep;
    diag_init(&d);
    assert_int_equal(ir_memory_check(&b.M, &d), 0);
    m->bufs[0].offset = m->size[m->bufs[0].region];
    assert_int_equal(ir_memory_check(&b.M, &d), -1);
    assert_non_null(strstr(diag_first_error(&d), "lies outside its"));
    diag_free(&d);
    unbuild(&b);
}

/* With the fused kernels, a value a kernel keeps to itself (GPT-2's
 * bias_add before its dropout) has no buffer, nor has a gradient its
 * backward kernel keeps in registers; the working set shrinks or stays,
 * and the arena still holds. */
static void test_fused_values_need_no_buffer(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 2, pc.global_batch = 4, pc.micro_batch = 2;
    struct built b;
    build(&b, "models/gpt2.xml", pc);
    struct optim_config opt = optim_config_default();
    struct kn_set K;
    fuse(b.P, &opt, &K);
    struct ir_memory M;
    memory_plan(b.P, &b.S, &K, &M);
    struct diag d;
    diag_init(&d);
    if (ir_memory_check(&M, &d))
        fail_msg("%s", diag_first_error(&d));
    diag_free(&d);
    const struct ir_graph *g = b.P->g;
    int proj = -1; /* layer 0's attention projection after its bias: the dropout reads it inside one kernel */
    for (int t = 0; t < g->n_tensors; t++)
        if (!strcmp(g->tensors[t].name, "decoder.layer.0.proj"))
            proj = t;
    assert_true(proj >= 0);
    assert_true(has_home(&b.M.roles[0], IR_BUF_VALUE, proj));
    assert_false(has_home(&M.roles[0], IR_BUF_VALUE, proj));
    assert_true(has_home(&b.M.roles[0], IR_BUF_GRAD, proj));
    assert_false(has_home(&M.roles[0], IR_BUF_GRAD, proj));
    for (int s = 0; s < 2; s++)
        assert_true(M.roles[s].size[IR_REGION_WORKING] <= b.M.roles[s].size[IR_REGION_WORKING]);
    ir_memory_free(&M);
    kn_set_free(&K);
    unbuild(&b);
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
        cmocka_unit_test(test_grad_reduce_in_bf16),
        cmocka_unit_test(test_every_model_has_a_home),
        cmocka_unit_test(test_check_catches_overlap),
        cmocka_unit_test(test_fused_values_need_no_buffer),
        cmocka_unit_test(test_limit),
    };
    int rc = cmocka_run_group_tests_name("memory", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
