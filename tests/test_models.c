/* test_models.c: the models in models/ at their published sizes.
 *
 * Expected parameter counts are the published ones:
 *   GPT-2: Radford et al. 2019, as counted by the released checkpoints
 *     (124M: 124,439,808; 355M: 354,823,168; 774M: 774,030,080; 1558M: 1,557,611,200).
 *   Llama 2: Touvron et al. 2023 checkpoints (7B: 6,738,415,616; 70B: 68,976,648,192).
 *   Mixtral 8x7B: Jiang et al. 2024 checkpoint (46,702,792,704).
 *   T5 v1.0: Raffel et al. 2020 checkpoints with the tied head (small: 60,506,624;
 *     base: 222,903,552). */
#include "testing.h"

struct model_case {
    const char *name, *file;
    struct fe_override ov[8];
    int n_ov;
    int64_t params;
    int64_t layer_params; /* of the first block; 0: not checked */
};

#define FLAG(k, v) {FE_FLAG, k, v}

static const struct model_case cases[] = {
    {"gpt2 124M", "models/gpt2.xml", {{0}}, 0, 124439808, 7087872},
    {"gpt2 355M", "models/gpt2.xml",
     {FLAG("num-layers", "24"), FLAG("hidden-size", "1024"), FLAG("num-attention-heads", "16")}, 3, 354823168, 12596224},
    {"gpt2 774M", "models/gpt2.xml",
     {FLAG("num-layers", "36"), FLAG("hidden-size", "1280"), FLAG("num-attention-heads", "20")}, 3, 774030080, 0},
    {"gpt2 XL", "models/gpt2.xml",
     {FLAG("num-layers", "48"), FLAG("hidden-size", "1600"), FLAG("num-attention-heads", "25")}, 3, 1557611200, 30740800},
    {"llama2 7B", "models/llama2.xml", {{0}}, 0, 6738415616, 202383360},
    {"llama2 70B", "models/llama2.xml",
     {FLAG("num-query-groups", "8"), FLAG("num-layers", "80"), FLAG("hidden-size", "8192"),
      FLAG("num-attention-heads", "64"), FLAG("ffn-hidden-size", "28672")}, 5, 68976648192, 0},
    {"mixtral 8x7B", "models/mixtral.xml", {{0}}, 0, 46702792704, 1451270144},
    {"t5 small", "models/t5.xml", {{0}}, 0, 60506624, 3146752},
    {"t5 base", "models/t5.xml",
     {FLAG("encoder-num-layers", "12"), FLAG("decoder-num-layers", "12"), FLAG("hidden-size", "768"),
      FLAG("num-attention-heads", "12"), FLAG("ffn-hidden-size", "3072")}, 5, 222903552, 0},
};

static void test_params(void **state)
{
    const struct model_case *c = *state;
    struct ir_graph *g = load_model(c->file, NULL, c->ov, c->n_ov);
    assert_non_null(g);
    struct model_summary s;
    struct diag d;
    diag_init(&d);
    assert_int_equal(model_summarize(g, &s, &d), 0);
    if (s.params != c->params)
        fail_msg("%s: %lld parameters, published %lld", c->name, (long long)s.params, (long long)c->params);
    if (c->layer_params && s.blocks[0].params_per_iter != c->layer_params)
        fail_msg("%s: %lld parameters per layer, want %lld", c->name, (long long)s.blocks[0].params_per_iter,
                 (long long)c->layer_params);
    int64_t sum = 0;
    for (int p = 0; p < IR_PART_COUNT; p++)
        sum += s.params_by_part[p];
    assert_int_equal(sum, s.params);
    assert_int_equal(s.weight_bytes_fp32, 4 * s.params);
    assert_int_equal(s.weight_bytes_bf16, 2 * s.params);
    diag_free(&d);
    ir_graph_free(g);
}

/* GPT-2 124M's GEMM FLOPs, counted by hand: per token, 2 per multiply-add over
 * 12 layers of (768x2304 + 768x768 + 2x768x3072) weights plus the 768x50257 head. */
static void test_gpt2_gemm_flops(void **state)
{
    (void)state;
    struct ir_graph *g = load_model("models/gpt2.xml", NULL, NULL, 0);
    assert_non_null(g);
    double gemm = 0;
    for (int i = 0; i < g->n_ops; i++)
        if (g->ops[i].kind == IR_OP_MATMUL)
            gemm += ir_op_flops(g, &g->ops[i]);
    double want = 2.0 * 1024 * (12.0 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 768.0 * 50257);
    assert_true(gemm == want);
    /* Causal attention: (S+1)/2 keys per query on average, QK^T and PV, 12 heads of 64. */
    double attn = 0;
    for (int i = 0; i < g->n_ops; i++)
        if (g->ops[i].kind == IR_OP_ATTENTION)
            attn += ir_op_flops(g, &g->ops[i]);
    assert_true(attn == 12.0 * 12 * (1024.0 * 1025 / 2) * (2 * 64 + 2 * 64 + 5));
    ir_graph_free(g);
}

/* Every model in models/ loads at its defaults and at its tiny variant. */
static void test_every_model_and_variant(void **state)
{
    (void)state;
    static const char *files[] = {"models/gpt2.xml", "models/llama2.xml", "models/mixtral.xml", "models/t5.xml",
                                  "models/llava.xml"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        for (int tiny = 0; tiny < 2; tiny++) {
            struct ir_graph *g = load_model(files[i], tiny ? "tiny" : NULL, NULL, 0);
            if (!g)
                fail_msg("%s%s does not load", files[i], tiny ? " --variant tiny" : "");
            struct model_summary s;
            struct diag d;
            diag_init(&d);
            assert_int_equal(model_summarize(g, &s, &d), 0);
            assert_true(s.params > 0 && s.flops_per_token_forward > 0);
            if (tiny)
                assert_true(s.params < 2000000);
            diag_free(&d);
            ir_graph_free(g);
        }
    }
}

/* T5 and LLaVA: the decoder reads the encoder; T5's embedding is one tensor
 * used by the encoder, the decoder and the head. */
static void test_encoder_decoder(void **state)
{
    (void)state;
    struct ir_graph *g = load_model("models/t5.xml", "tiny", NULL, 0);
    assert_non_null(g);
    assert_true(g->has_part[IR_PART_ENCODER] && g->has_part[IR_PART_DECODER]);
    int shared = -1;
    for (int i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, "shared"))
            shared = i;
    assert_true(shared >= 0);
    assert_int_equal(g->tensors[shared].part, IR_PART_SHARED);
    assert_int_equal(g->tensors[shared].n_uses, 3); /* encoder embedding, decoder embedding, head */
    int cross = 0;
    for (int i = 0; i < g->n_ops; i++)
        for (int k = 0; k < g->ops[i].n_in; k++)
            if (g->ops[i].part == IR_PART_DECODER && g->tensors[g->ops[i].in[k]].part == IR_PART_ENCODER)
                cross++;
    assert_int_equal(cross, 2); /* each of the 2 tiny decoder layers projects the encoder's output */
    ir_graph_free(g);

    g = load_model("models/llava.xml", "tiny", NULL, 0);
    assert_non_null(g);
    const struct ir_dim *text = ir_graph_dim(g, "text"), *patches = ir_graph_dim(g, "patches");
    assert_int_equal(patches->value, 16);
    assert_int_equal(text->value, 48 - 16);
    ir_graph_free(g);
}

/* A repeat unrolls into one copy per layer, named by layer, and the carried
 * residual stream threads through them in order. */
static void test_repeat_unrolls(void **state)
{
    (void)state;
    struct ir_graph *g = load_model("models/gpt2.xml", "tiny", NULL, 0);
    assert_non_null(g);
    assert_int_equal(g->n_blocks, 1);
    assert_string_equal(g->blocks[0].name, "decoder.layer");
    assert_int_equal(g->blocks[0].count, 2);
    int found = 0;
    for (int i = 0; i < g->n_tensors; i++) {
        if (!strcmp(g->tensors[i].name, "decoder.layer.1.qkv.w")) {
            assert_int_equal(g->tensors[i].layer, 1);
            found++;
        }
        if (!strcmp(g->tensors[i].name, "decoder.layer.0.x")) /* layer 0's output */
            found++;
    }
    assert_int_equal(found, 2);
    /* The final layernorm reads the last layer's carried x. */
    for (int i = 0; i < g->n_ops; i++)
        if (g->ops[i].kind == IR_OP_LAYERNORM && g->ops[i].layer < 0)
            assert_string_equal(g->tensors[g->ops[i].in[0]].name, "decoder.layer.1.x");
    ir_graph_free(g);
}

int main(void)
{
    enum { N = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N + 4];
    for (size_t i = 0; i < N; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, test_params, NULL, NULL, (void *)&cases[i]};
    tests[N] = (struct CMUnitTest)cmocka_unit_test(test_gpt2_gemm_flops);
    tests[N + 1] = (struct CMUnitTest)cmocka_unit_test(test_every_model_and_variant);
    tests[N + 2] = (struct CMUnitTest)cmocka_unit_test(test_encoder_decoder);
    tests[N + 3] = (struct CMUnitTest)cmocka_unit_test(test_repeat_unrolls);
    int rc = _cmocka_run_group_tests("models", tests, N + 4, NULL, NULL);
    fe_cleanup();
    return rc;
}
