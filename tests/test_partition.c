/* test_partition.c: models placed on ranks: pipeline chunks, the op of each
 * chunk, Megatron's model-dependent rules, and `weft layout`. */
#include "testing.h"

#include "partition.h"

static struct partition *part(const char *file, const char *variant, struct par_config pc, struct diag *d)
{
    struct fe_options opt = {.variant = variant};
    diag_init(d);
    return partition_model(file, &opt, &pc, d);
}

static struct partition *must(const char *file, const char *variant, struct par_config pc)
{
    struct diag d;
    struct partition *P = part(file, variant, pc, &d);
    if (!P)
        fail_msg("%s: %s", file, diag_first_error(&d));
    diag_free(&d);
    return P;
}

static void refused(const char *file, const char *variant, struct par_config pc, const char *fragment)
{
    struct diag d;
    struct partition *P = part(file, variant, pc, &d);
    if (P)
        fail_msg("%s: accepted; want an error with \"%s\"", file, fragment);
    if (!strstr(diag_first_error(&d), fragment))
        fail_msg("%s: error \"%s\" lacks \"%s\"", file, diag_first_error(&d), fragment);
    diag_free(&d);
}

static void test_even_stages(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 16, pc.tp = 2, pc.pp = 4;
    struct partition *P = must("models/gpt2.xml", NULL, pc);
    assert_int_equal(P->n_chunks, 4);
    for (int c = 0; c < 4; c++) {
        assert_int_equal(P->chunks[c].stage, c);
        assert_int_equal(P->chunks[c].first_layer, 3 * c);
        assert_int_equal(P->chunks[c].n_layers, 3);
    }
    assert_true(P->chunks[0].has_embedding && !P->chunks[0].has_head);
    assert_true(P->chunks[3].has_head && !P->chunks[3].has_embedding);
    /* The embedding on the first stage, the head and loss on the last. */
    for (int i = 0; i < P->g->n_ops; i++) {
        const struct ir_op *op = &P->g->ops[i];
        if (op->kind == IR_OP_EMBEDDING || op->kind == IR_OP_POSITION_EMBEDDING)
            assert_int_equal(P->op_chunk[i], 0);
        if (op->kind == IR_OP_CROSS_ENTROPY)
            assert_int_equal(P->op_chunk[i], 3);
    }
    /* Megatron pads 50,257 to a multiple of 128 x 2. */
    assert_int_equal(P->vocab, 50257);
    assert_int_equal(P->padded_vocab, 50432);
    assert_int_equal(ir_graph_dim(P->g, "vocab")->value, 50432);
    partition_free(P);
}

static void test_uneven_and_virtual(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 4, pc.first_stage_layers = 2, pc.last_stage_layers = 2;
    struct partition *P = must("models/gpt2.xml", NULL, pc);
    static const int want[] = {2, 4, 4, 2};
    for (int c = 0; c < 4; c++)
        assert_int_equal(P->chunks[c].n_layers, want[c]);
    partition_free(P);

    pc = par_config_default();
    pc.pp = 4, pc.layers_per_virtual_stage = 1, pc.global_batch = 8;
    P = must("models/gpt2.xml", NULL, pc);
    assert_int_equal(P->virtual_stages, 3);
    assert_int_equal(P->n_chunks, 12);
    assert_int_equal(P->n_micro, 8);
    for (int k = 0; k < 12; k++) { /* rank p runs chunks p, p+4, p+8 */
        assert_int_equal(P->chunks[k].stage, k % 4);
        assert_int_equal(P->chunks[k].vstage, k / 4);
        assert_int_equal(P->chunks[k].first_layer, k);
    }
    partition_free(P);
}

static void test_encoder_stages(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 10, pc.tp = 2, pc.pp = 2, pc.etp = 1, pc.epp = 1;
    struct partition *P = must("models/t5.xml", "tiny", pc);
    assert_int_equal(P->n_chunks, 3);
    assert_int_equal(P->chunks[0].part, IR_PART_ENCODER);
    assert_int_equal(P->chunks[1].stage, 1);
    assert_int_equal(P->chunks[2].stage, 2);
    assert_true(P->chunks[1].has_embedding); /* the decoder embeds too */
    for (int i = 0; i < P->g->n_ops; i++)
        if (P->g->ops[i].part == IR_PART_ENCODER)
            assert_int_equal(P->op_chunk[i], 0);
    partition_free(P);
    /* Without encoder stages the encoder runs on the decoder's first stage. */
    pc = par_config_default();
    pc.tp = 2;
    P = must("models/t5.xml", "tiny", pc);
    assert_int_equal(P->chunks[0].part, IR_PART_ENCODER);
    assert_int_equal(P->chunks[0].stage, 0);
    assert_int_equal(P->chunks[1].stage, 0);
    partition_free(P);
}

static void test_model_rules(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.tp = 5;
    refused("models/gpt2.xml", NULL, pc, "models/gpt2.xml:11: <dim name=\"heads\">: --tp 5 does not divide --num-attention-heads 12 "
                                         "(tensor parallel size must divide num-attention-heads: 1, 2, 3, 4, 6, 12)");
    pc.tp = 7; /* 12 heads do not divide either; ffn is reported too, at its own line */
    refused("models/gpt2.xml", NULL, pc, "models/gpt2.xml:11: <dim name=\"heads\">: --tp 7 does not divide --num-attention-heads 12");
    pc.tp = 2;
    {
        struct fe_override ov[] = {{FE_FLAG, "ffn-hidden-size", "3071"}};
        struct fe_options opt = {.overrides = ov, .n_overrides = 1};
        struct diag d;
        diag_init(&d);
        assert_null(partition_model("models/gpt2.xml", &opt, &pc, &d));
        assert_non_null(strstr(diag_first_error(&d), "<dim name=\"ffn\">: --tp 2 does not divide --ffn-hidden-size 3071"));
        diag_free(&d);
        struct fe_override ov2[] = {{FE_FLAG, "hidden-size", "770"}, {FE_FLAG, "num-attention-heads", "10"}};
        opt.overrides = ov2, opt.n_overrides = 2;
        diag_init(&d);
        pc.tp = 4; /* 10 heads of 77: heads do not divide by 4 either, hidden is reported at its line */
        assert_null(partition_model("models/gpt2.xml", &opt, &pc, &d));
        bool hidden = false;
        for (int i = 0; i < d.n; i++)
            hidden |= strstr(d.v[i].msg, "<dim name=\"hidden\">: --tp 4 does not divide --hidden-size 770") != NULL;
        assert_true(hidden);
        diag_free(&d);
    }
    pc.tp = 16;
    refused("models/mixtral.xml", NULL, pc, "--tp 16 does not divide --num-query-groups 8"); /* 32 heads divide */
    pc = par_config_default();
    pc.tp = 2, pc.ep = 3;
    pc.world_size = 6;
    refused("models/mixtral.xml", NULL, pc, "--ep 3 does not divide --num-experts 8");
    pc = par_config_default();
    pc.cp = 3;
    refused("models/gpt2.xml", NULL, pc, "2 x --cp 3 (causal load balancing) does not divide --seq-length 1024");
    pc = par_config_default();
    pc.pp = 5;
    refused("models/gpt2.xml", NULL, pc, "models/gpt2.xml:9: <dim name=\"layers\">: 12 layers are not divisible by --pp 5");
    pc = par_config_default();
    pc.pp = 4, pc.first_stage_layers = 1, pc.last_stage_layers = 2;
    refused("models/gpt2.xml", NULL, pc, "leave 9 of 12 layers for 2 middle stages of --pp 4");
    pc = par_config_default();
    pc.world_size = 4, pc.tp = 2, pc.global_batch = 7;
    refused("models/gpt2.xml", NULL, pc, "--global-batch-size 7 is not a multiple of --micro-batch-size 1 x data parallel size 2 = 2");
    pc = par_config_default();
    pc.pp = 4, pc.layers_per_virtual_stage = 1, pc.global_batch = 6;
    refused("models/gpt2.xml", NULL, pc, "needs the micro-batches per step (6");
    pc = par_config_default();
    pc.tp = 3, pc.sequence_parallel = true; /* 12 heads and 3072 ffn divide by 3; 1024 tokens do not */
    refused("models/gpt2.xml", NULL, pc,
            "--tp 3 does not divide --seq-length 1024 (with --sequence-parallel the sequence splits over the tensor-parallel ranks");
}

static void refused_with(const char *file, const char *variant, struct fe_override *ov, int n_ov, struct par_config pc,
                         const char *fragment)
{
    struct fe_options opt = {.variant = variant, .overrides = ov, .n_overrides = n_ov};
    struct diag d;
    diag_init(&d);
    struct partition *P = partition_model(file, &opt, &pc, &d);
    if (P)
        fail_msg("%s: accepted; want an error with \"%s\"", file, fragment);
    if (!strstr(diag_first_error(&d), fragment))
        fail_msg("%s: error \"%s\" lacks \"%s\"", file, diag_first_error(&d), fragment);
    diag_free(&d);
}

/* --sequence-parallel is never dropped in silence.  Megatron splits the
 * sequence by cp, then each cp rank's share by tp, and its scatter to the
 * sequence-parallel region asserts that tp divides that share.
 *   GPT-2 at --seq-length 36 with cp 2 and tp 4: causal cp needs 2 x 2 = 4
 *   chunks (36 = 4 x 9, fine); each cp rank holds 36 / 2 = 18 positions,
 *   which 4 does not divide: refused at the seq dim, naming cp x tp = 8.
 *   At --seq-length 40 each cp rank holds 20 = 4 x 5: accepted.
 *   LLaVA tiny with 21-pixel images in 7-pixel patches: (21/7)^2 = 9 image
 *   positions, a sequence no flag names; over tp 2 they do not split, so the
 *   vision tower's first row-parallel matmul output (the attention
 *   projection's 'o0') is refused at its op: before, it was all-reduced whole. */
static void test_sequence_parallel_rules(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.tp = 4, pc.cp = 2, pc.sequence_parallel = true;
    struct fe_override seq36[] = {{FE_FLAG, "seq-length", "36"}}, seq40[] = {{FE_FLAG, "seq-length", "40"}};
    refused_with("models/gpt2.xml", NULL, seq36, 1, pc,
                 "models/gpt2.xml:16: <dim name=\"seq\">: --cp 2 x --tp 4 = 8 does not divide --seq-length 36 (with "
                 "--sequence-parallel each context-parallel rank's share of the sequence splits over the tensor-parallel ranks");
    struct fe_options opt = {.overrides = seq40, .n_overrides = 1};
    struct diag d;
    diag_init(&d);
    struct partition *P = partition_model("models/gpt2.xml", &opt, &pc, &d);
    if (!P)
        fail_msg("seq 40, cp 2, tp 4: %s", diag_first_error(&d));
    partition_free(P);
    diag_free(&d);

    pc = par_config_default();
    pc.tp = 2, pc.sequence_parallel = true;
    struct fe_override image[] = {{FE_FLAG, "img-h", "21"}, {FE_FLAG, "img-w", "21"}, {FE_FLAG, "patch-dim", "7"}};
    refused_with("models/llava.xml", "tiny", image, 3, pc,
                 "<op kind=\"matmul\" out=\"o0\">: --sequence-parallel splits the sequence over the 2 tensor-parallel ranks, "
                 "but axis 1 of 'o0' (patches=9) does not split over 2");
    partition_free(must("models/llava.xml", "tiny", pc)); /* 28-pixel images: (28/7)^2 = 16 positions split */
}

static double slowest(const struct partition *P)
{
    double t = 0;
    for (int c = 0; c < P->n_chunks; c++)
        t = P->chunks[c].seconds > t ? P->chunks[c].seconds : t;
    return t;
}

/* --balance-pipeline: GPT-2's large head makes the last of 4 even stages the
 * slowest; balancing moves layers off it and the slowest stage gets faster. */
static void test_balance(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 4;
    struct partition *even = must("models/gpt2.xml", NULL, pc);
    pc.balance_pipeline = true;
    struct partition *bal = must("models/gpt2.xml", NULL, pc);
    assert_true(bal->balanced_first > 0 && bal->balanced_last > 0);
    assert_true(bal->balanced_last < 3); /* the head's stage holds fewer layers */
    int sum = 0;
    for (int c = 0; c < bal->n_chunks; c++)
        sum += bal->chunks[c].n_layers;
    assert_int_equal(sum, 12);
    assert_true(slowest(bal) < slowest(even));
    for (int c = 0; c < even->n_chunks; c++)
        assert_true(even->chunks[c].seconds > 0);
    partition_free(even);
    partition_free(bal);
    pc.first_stage_layers = 2;
    refused("models/gpt2.xml", NULL, pc, "--balance-pipeline chooses the first and last stage sizes itself");
}

/* Over one model replica, the global gradient norm counts every parameter
 * element exactly once: split parameters on every rank, tensor-parallel
 * copies on tp rank 0, tied copies on their first stage, T5's one-rank
 * encoder and its table shared with a two-way decoder, context-parallel
 * copies on cp rank 0, experts in the expert grid. */
static void test_norm_counts_once(void **state)
{
    (void)state;
    static const struct {
        const char *file, *variant;
        int world, tp, pp, etp, epp, cp, ep;
    } cfg[] = {
        {"models/gpt2.xml", NULL, 16, 2, 4, 0, -1, 1, 1},   {"models/t5.xml", "tiny", 10, 2, 2, 1, 1, 1, 1},
        {"models/llama2.xml", "tiny", 16, 2, 2, 0, -1, 2, 1}, {"models/mixtral.xml", "tiny", 8, 2, 1, 0, -1, 1, 2},
        {"models/llava.xml", "tiny", 16, 2, 2, 2, 2, 1, 1},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        struct par_config pc = par_config_default();
        pc.world_size = cfg[i].world, pc.tp = cfg[i].tp, pc.pp = cfg[i].pp, pc.etp = cfg[i].etp, pc.epp = cfg[i].epp;
        pc.cp = cfg[i].cp, pc.ep = cfg[i].ep;
        struct partition *P = must(cfg[i].file, cfg[i].variant, pc);
        const struct ir_graph *g = P->g;
        int64_t whole = 0, counted = 0;
        for (int t = 0; t < g->n_tensors; t++)
            if (g->tensors[t].kind == IR_TENSOR_PARAM)
                whole += ir_shape_numel(&g->tensors[t].shape);
        bool *counts = calloc((size_t)g->n_tensors + 1, sizeof *counts);
        for (int r = 0; r < P->L->n_ranks; r++) {
            const struct rank_coords *rc = &P->L->ranks[r];
            partition_norm_counts(P, r, counts);
            for (int t = 0; t < g->n_tensors; t++) {
                if (!counts[t])
                    continue;
                bool expert = false;
                for (int k = 0; k < g->tensors[t].shape.rank; k++)
                    expert |= (P->shard[t].split[k] & (IR_PDIM_BIT(IR_PDIM_EP) | IR_PDIM_BIT(IR_PDIM_XTP))) != 0;
                if ((expert ? rc->expert_dp : rc->dp) != 0)
                    continue; /* another replica */
                struct ir_shape l = partition_local_shape(P, rc->part, &g->tensors[t].shape, &P->shard[t]);
                counted += ir_shape_numel(&l);
            }
        }
        if (counted != whole)
            fail_msg("%s (config %zu): the norm counts %lld parameter elements of %lld", cfg[i].file, i, (long long)counted,
                     (long long)whole);
        free(counts);
        partition_free(P);
    }
}

static void test_layout_json(void **state)
{
    (void)state;
    struct run *r = malloc(sizeof *r);
    run_weft(r, "layout", "models/llava.xml", "--world-size", "24", "--tp", "4", "--pp", "2", "--etp", "2", "--epp", "2",
             "--json", NULL);
    assert_int_equal(r->status, 0);
    static const char *keys[] = {"\"world_size\": 24", "\"groups\": {", "\"tp\": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9, 10, 11]",
                                 "\"pp\": [[0, 4, 8, 16], [0, 4, 9, 17], [1, 5, 10, 18]", "\"dp\": [", "\"cp\": [", "\"ep\": [",
                                 "\"embedding\": [", "\"ranks\": [{\"rank\": 0, \"role\": \"encoder stage 0\""};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strstr(r->out, keys[i]))
            fail_msg("layout --json lacks %s", keys[i]);
    run_weft(r, "layout", "models/gpt2.xml", "--tp", "5", NULL);
    assert_int_equal(r->status, 2);
    assert_non_null(strstr(r->err, "--tp 5 does not divide --num-attention-heads 12"));
    run_weft(r, "layout", "models/gpt2.xml", "--tp", "two", NULL);
    assert_int_equal(r->status, 2);
    assert_non_null(strstr(r->err, "--tp two: expected a positive integer"));
    /* Megatron's long names and --micro-batch-size, which also sizes the model's batch. */
    run_weft(r, "layout", "models/gpt2.xml", "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
             "--world-size", "8", "--micro-batch-size", "4", "--global-batch-size", "64", "--json", NULL);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "\"dp\": 2"));
    assert_non_null(strstr(r->out, "\"micro_batches\": 8"));
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_even_stages),  cmocka_unit_test(test_uneven_and_virtual),
        cmocka_unit_test(test_encoder_stages), cmocka_unit_test(test_model_rules),
        cmocka_unit_test(test_balance),      cmocka_unit_test(test_layout_json),
        cmocka_unit_test(test_norm_counts_once), cmocka_unit_test(test_sequence_parallel_rules),
    };
    int rc = cmocka_run_group_tests_name("partition", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
