/* test_layout.c: ranks and groups, element for element as Megatron-Core
 * builds them.  Where each expectation comes from:
 *   - DESIGN.md's worked example (16 ranks, tp=2, pp=4), which follows
 *     Megatron-Core's RankGenerator with order tp-cp-ep-dp-pp;
 *   - Megatron-Core parallel_state.py, initialize_model_parallel's docstring
 *     for generator_wrapper (encoder_tp=1, encoder_pp=1, tp=2, pp=1, dp=2);
 *   - the RankGenerator rule worked by hand (stride of an axis = product of
 *     the sizes of the faster axes) for the cp, ep and heterogeneous cases. */
#include "testing.h"

#include "layout.h"

static struct rank_layout *lay(struct par_config pc, bool enc)
{
    struct diag d;
    diag_init(&d);
    struct rank_layout *L = rank_layout_new(&pc, enc, &d);
    if (!L)
        fail_msg("layout refused: %s", diag_first_error(&d));
    diag_free(&d);
    return L;
}

/* want: groups separated by '|', ranks by ',' ("0,1|2,3"). */
static void check_groups(const struct rank_layout *L, enum par_group_kind k, const char *want)
{
    const struct rank_groups *g = rank_layout_groups(L, k);
    char got[4096] = "";
    size_t n = 0;
    for (int i = 0; i < g->n_groups; i++)
        for (int j = 0; j < g->sizes[i]; j++)
            n += (size_t)snprintf(got + n, sizeof got - n, "%s%d", j ? "," : i ? "|" : "", g->ranks[i][j]);
    if (strcmp(got, want))
        fail_msg("%s groups:\n  got  %s\n  want %s", par_group_name(k), got, want);
}

static void test_tp2_pp4(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 16, pc.tp = 2, pc.pp = 4;
    struct rank_layout *L = lay(pc, false);
    assert_int_equal(L->pc.dp, 2);
    check_groups(L, PAR_GROUP_TP, "0,1|2,3|4,5|6,7|8,9|10,11|12,13|14,15");
    check_groups(L, PAR_GROUP_DP, "0,2|1,3|4,6|5,7|8,10|9,11|12,14|13,15");
    check_groups(L, PAR_GROUP_PP, "0,4,8,12|1,5,9,13|2,6,10,14|3,7,11,15");
    check_groups(L, PAR_GROUP_EMBEDDING, "0,12|1,13|2,14|3,15");
    check_groups(L, PAR_GROUP_MP, "0,1,4,5,8,9,12,13|2,3,6,7,10,11,14,15");
    check_groups(L, PAR_GROUP_CP, "0|1|2|3|4|5|6|7|8|9|10|11|12|13|14|15");
    assert_int_equal(L->ranks[5].tp, 1);
    assert_int_equal(L->ranks[5].dp, 0);
    assert_int_equal(L->ranks[5].pp, 1); /* in pipeline {1,5,9,13} */
    assert_int_equal(L->ranks[14].dp, 1);
    assert_int_equal(L->ranks[14].pp, 3);
    rank_layout_free(L);
}

static void test_tp2_cp2_dp2(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 8, pc.tp = 2, pc.cp = 2;
    struct rank_layout *L = lay(pc, false);
    assert_int_equal(L->pc.dp, 2);
    check_groups(L, PAR_GROUP_TP, "0,1|2,3|4,5|6,7");
    check_groups(L, PAR_GROUP_CP, "0,2|1,3|4,6|5,7");     /* cp stride tp = 2 */
    check_groups(L, PAR_GROUP_DP, "0,4|1,5|2,6|3,7");     /* dp stride tp*cp = 4 */
    check_groups(L, PAR_GROUP_DP_CP, "0,2,4,6|1,3,5,7");  /* gradients reduce over both */
    check_groups(L, PAR_GROUP_PP, "0|1|2|3|4|5|6|7");
    assert_int_equal(L->ranks[6].cp, 1);
    assert_int_equal(L->ranks[6].dp, 1);
    rank_layout_free(L);
}

static void test_tp2_ep2_pp2(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 16, pc.tp = 2, pc.ep = 2, pc.pp = 2;
    struct rank_layout *L = lay(pc, false);
    assert_int_equal(L->pc.dp, 4);
    assert_int_equal(L->pc.expert_dp, 2); /* 16 / (expert tp 2 x ep 2 x pp 2) */
    check_groups(L, PAR_GROUP_DP, "0,2,4,6|1,3,5,7|8,10,12,14|9,11,13,15");
    check_groups(L, PAR_GROUP_PP, "0,8|1,9|2,10|3,11|4,12|5,13|6,14|7,15");
    /* The expert grid (expert tp 2, ep 2, expert dp 2, pp 2): with cp = 1 the
     * experts carve ep out of dp: ep stride 2, expert-dp stride 4. */
    check_groups(L, PAR_GROUP_EP, "0,2|1,3|4,6|5,7|8,10|9,11|12,14|13,15");
    check_groups(L, PAR_GROUP_EXPERT_DP, "0,4|1,5|2,6|3,7|8,12|9,13|10,14|11,15");
    check_groups(L, PAR_GROUP_EXPERT_TP, "0,1|2,3|4,5|6,7|8,9|10,11|12,13|14,15");
    assert_int_equal(L->ranks[6].ep, 1);
    assert_int_equal(L->ranks[6].expert_dp, 1);
    rank_layout_free(L);
}

/* Megatron-Core's own example: encoder tp 1 pp 1, decoder tp 2 pp 1, dp 2. */
static void test_megatron_encoder_example(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 6, pc.tp = 2, pc.etp = 1, pc.epp = 1;
    struct rank_layout *L = lay(pc, true);
    assert_int_equal(L->pc.dp, 2);
    check_groups(L, PAR_GROUP_DP, "0,1|2,4|3,5");
    check_groups(L, PAR_GROUP_TP, "0|1|2,3|4,5");
    check_groups(L, PAR_GROUP_PP, "0,2|0,3|1,4|1,5");
    assert_int_equal(L->ranks[1].part, IR_PART_ENCODER);
    assert_int_equal(L->ranks[2].part, IR_PART_DECODER);
    assert_int_equal(L->ranks[2].stage, 1);
    rank_layout_free(L);
}

/* etp 2 < tp 4 and epp 2, pp 2: encoder tp rank j feeds decoder tp ranks
 * 2j, 2j+1 of its replica, and its pipelines join theirs. */
static void test_heterogeneous_encoder(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 24, pc.tp = 4, pc.pp = 2, pc.etp = 2, pc.epp = 2;
    struct rank_layout *L = lay(pc, true);
    assert_int_equal(L->pc.dp, 2);               /* 24 / (2*2 + 4*2) */
    assert_int_equal(L->pc.encoder_world, 8);
    check_groups(L, PAR_GROUP_TP, "0,1|2,3|4,5|6,7|8,9,10,11|12,13,14,15|16,17,18,19|20,21,22,23");
    check_groups(L, PAR_GROUP_DP, "0,2|1,3|4,6|5,7|8,12|9,13|10,14|11,15|16,20|17,21|18,22|19,23");
    check_groups(L, PAR_GROUP_PP, "0,4,8,16|0,4,9,17|1,5,10,18|1,5,11,19|2,6,12,20|2,6,13,21|3,7,14,22|3,7,15,23");
    check_groups(L, PAR_GROUP_MP, "0,1,4,5,8,9,10,11,16,17,18,19|2,3,6,7,12,13,14,15,20,21,22,23");
    /* The tied embedding lives on the encoder's first stage and the decoder's first and last. */
    check_groups(L, PAR_GROUP_EMBEDDING, "0,8,16|0,9,17|1,10,18|1,11,19|2,12,20|2,13,21|3,14,22|3,15,23");
    assert_int_equal(L->ranks[5].stage, 1);
    assert_int_equal(L->ranks[17].stage, 3);
    rank_layout_free(L);
}

static void expect_refused(struct par_config pc, bool enc, const char *fragment)
{
    struct diag d;
    diag_init(&d);
    struct rank_layout *L = rank_layout_new(&pc, enc, &d);
    if (L)
        fail_msg("accepted; want an error with \"%s\"", fragment);
    if (!strstr(diag_first_error(&d), fragment))
        fail_msg("error \"%s\" lacks \"%s\"", diag_first_error(&d), fragment);
    diag_free(&d);
}

static void test_rules(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 10, pc.tp = 2, pc.pp = 2;
    expect_refused(pc, false, "--world-size 10 is not divisible by the model-parallel size 4 (--tp 2 x --pp 2 x --cp 1)");
    pc = par_config_default();
    pc.tp = 2, pc.etp = 4, pc.epp = 1;
    expect_refused(pc, true, "--etp 4 is larger than --tp 2");
    pc = par_config_default();
    pc.tp = 4, pc.etp = 2;
    expect_refused(pc, true, "--etp 2 differs from --tp 4, which needs the encoder on ranks of its own");
    pc = par_config_default();
    pc.pp = 2;
    expect_refused(pc, true, "--pp 2 with --epp 0");
    pc = par_config_default();
    pc.epp = 1;
    expect_refused(pc, false, "the model has no encoder");
    pc = par_config_default();
    pc.sequence_parallel = true;
    expect_refused(pc, false, "--sequence-parallel needs --tp 2 or more");
    pc = par_config_default();
    pc.world_size = 6, pc.tp = 2, pc.ep = 2;
    expect_refused(pc, false, "not divisible by --expert-tensor-parallel-size 2 x --ep 2 x --pp 1 = 4");
    pc = par_config_default();
    pc.world_size = 24, pc.tp = 4, pc.pp = 2, pc.etp = 2, pc.epp = 1;
    expect_refused(pc, true, "encoder 2 (--etp 2 x --epp 1 x --cp 1) + decoder 8 (--tp 4 x --pp 2 x --cp 1)");
    pc = par_config_default();
    pc.tp = 0;
    expect_refused(pc, false, "--tensor-model-parallel-size 0: must be at least 1");
}

/* Every rank is in exactly one group of each kind (pipelines may share their
 * encoder ranks), and the world splits into dp equal replicas. */
static void test_partition_property(void **state)
{
    (void)state;
    static const int cfg[][6] = {{16, 2, 4, 1, 1, 0}, {32, 2, 2, 2, 2, 0}, {64, 4, 2, 2, 1, 0}, {48, 2, 3, 1, 2, 0}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        struct par_config pc = par_config_default();
        pc.world_size = cfg[c][0], pc.tp = cfg[c][1], pc.pp = cfg[c][2], pc.cp = cfg[c][3], pc.ep = cfg[c][4];
        struct rank_layout *L = lay(pc, false);
        for (int k = 0; k < PAR_GROUP_COUNT; k++) {
            int *seen = calloc((size_t)L->n_ranks, sizeof *seen);
            const struct rank_groups *g = rank_layout_groups(L, (enum par_group_kind)k);
            for (int i = 0; i < g->n_groups; i++)
                for (int j = 0; j < g->sizes[i]; j++)
                    seen[g->ranks[i][j]]++;
            /* Embedding groups hold only the first and last stages. */
            for (int r = 0; r < L->n_ranks; r++)
                if (k == PAR_GROUP_EMBEDDING ? seen[r] > 1 : seen[r] != 1)
                    fail_msg("config %zu: rank %d is in %d %s groups", c, r, seen[r], par_group_name((enum par_group_kind)k));
            free(seen);
        }
        rank_layout_free(L);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tp2_pp4),          cmocka_unit_test(test_tp2_cp2_dp2),
        cmocka_unit_test(test_tp2_ep2_pp2),      cmocka_unit_test(test_megatron_encoder_example),
        cmocka_unit_test(test_heterogeneous_encoder), cmocka_unit_test(test_rules),
        cmocka_unit_test(test_partition_property),
    };
    return cmocka_run_group_tests_name("layout", tests, NULL, NULL);
}
