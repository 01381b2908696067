/* test_plan.c: plan files: written the same twice, verified from the file,
 * and every way a plan can be bad reported with what is wrong. */
#include "testing.h"

#include "nvrtc.h"

#include "plan.h"

static struct run *R;
static char dir[64];

static const char *path(const char *name)
{
    static char buf[8][256];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
    return buf[i];
}

static void compile(const char *out, const char *const *args)
{
    run_weft_out(R, "compile", args, out);
    if (R->status)
        fail_msg("weft compile %s failed (%d): %s", args[0], R->status, R->err);
}

static const char *const gpt2[] = {"models/gpt2.xml", "--world-size", "16", "--tp", "2", "--pp", "4",
                                   "--micro-batch-size", "4", "--global-batch-size", "128", NULL};

static void test_byte_identical(void **state)
{
    (void)state;
    compile(path("a.plan"), gpt2);
    compile(path("b.plan"), gpt2);
    size_t na, nb;
    char *a = wf_read_file(path("a.plan"), 1 << 28, &na), *b = wf_read_file(path("b.plan"), 1 << 28, &nb);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
    run_weft(R, "verify", path("a.plan"), NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "verified on all 16 ranks"));
}

/* A plan of format 5.1, before --grad-reduce-in-bf16: its layout lacks the
 * flag's byte (and 5.3's --ddp-bucket-size) and its memory sections the
 * gradients' element size.  Made
 * from a new plan by copying every section but those two kinds shortened;
 * it verifies, and every rank's arena and program read as the new plan's
 * (gradients fp32). */
static void test_reads_format_5_1(void **state)
{
    (void)state;
    static const char *const tiny[] = {"models/gpt2.xml", "--variant", "tiny", "--world-size", "4", "--pp", "2", "--bf16",
                                       "--global-batch-size", "8", "--arch", "cpu", NULL};
    compile(path("new.plan"), tiny);
    struct diag d;
    diag_init(&d);
    struct plan *p = plan_open(path("new.plan"), &d);
    assert_non_null(p);
    struct plan_writer *w = plan_writer_new(plan_compiler(p));
    int shortened = 0;
    for (int i = 0; i < plan_n_sections(p); i++) {
        const char *name = plan_section_name(p, i);
        struct plan_reader r;
        assert_int_equal(plan_read(p, name, &r, &d), 0);
        size_t n = (size_t)(r.end - r.at), drop = !strcmp(name, "layout") ? 1 + 4 : !strncmp(name, "memory.", 7) ? 4 : 0;
        shortened += drop > 0;
        plan_section(w, name);
        for (size_t k = 0; k + drop < n; k++)
            plan_put_u8(w, r.at[k]);
    }
    assert_int_equal(shortened, 3); /* the layout, two stages' memory */
    assert_int_equal(plan_writer_finish(w, path("old.plan"), &d), 0);
    plan_close(p);
    diag_free(&d);
    run_weft(R, "verify", path("old.plan"), NULL);
    if (R->status)
        fail_msg("%s", R->err);
    for (int rank = 0; rank < 4; rank += 2) {
        char rk[16], *want;
        snprintf(rk, sizeof rk, "%d", rank);
        run_weft(R, "inspect", path("new.plan"), "--rank", rk, "--actions", NULL);
        assert_int_equal(R->status, 0);
        want = strdup(strchr(R->out, '\n'));
        run_weft(R, "inspect", path("old.plan"), "--rank", rk, "--actions", NULL);
        assert_int_equal(R->status, 0);
        assert_string_equal(strchr(R->out, '\n'), want); /* all but the first line, which names the file */
        free(want);
    }
}

/* Every model compiles under each schedule, with tp, pp and dp, and T5 and
 * LLaVA with encoder degrees of their own; each plan verifies from the file. */
static void test_every_model_verifies(void **state)
{
    (void)state;
    static const char *const cfg[][24] = {
        {"models/gpt2.xml", "--variant", "tiny", "--world-size", "8", "--tp", "2", "--pp", "2", "--global-batch-size", "8",
         "--pipeline-schedule", "gpipe", NULL},
        {"models/gpt2.xml", "--world-size", "16", "--tp", "2", "--pp", "4", "--global-batch-size", "32",
         "--num-layers-per-virtual-pipeline-stage", "1", NULL},
        {"models/llama2.xml", "--variant", "tiny", "--world-size", "8", "--tp", "2", "--pp", "2", "--global-batch-size",
         "8", NULL},
        {"models/mixtral.xml", "--variant", "tiny", "--world-size", "8", "--tp", "2", "--ep", "2", "--pp", "2",
         "--global-batch-size", "4", NULL},
        {"models/t5.xml", "--variant", "tiny", "--world-size", "10", "--tp", "2", "--pp", "2", "--etp", "1", "--epp", "1",
         "--global-batch-size", "8", "--pipeline-schedule", "gpipe", NULL},
        {"models/t5.xml", "--variant", "tiny", "--world-size", "10", "--tp", "2", "--pp", "2", "--etp", "1", "--epp", "1",
         "--global-batch-size", "8", NULL},
        {"models/llava.xml", "--variant", "tiny", "--world-size", "12", "--tp", "2", "--pp", "2", "--etp", "1", "--epp",
         "2", "--global-batch-size", "8", NULL},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        compile(path("m.plan"), cfg[i]);
        run_weft(R, "verify", path("m.plan"), NULL);
        if (R->status)
            fail_msg("%s (config %zu) does not verify: %s", cfg[i][0], i, R->err);
    }
}

static void write_bytes(const char *file, const char *data, size_t n)
{
    FILE *f = fopen(file, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void expect_bad(const char *cmd, const char *file, const char *fragment)
{
    run_weft(R, cmd, file, NULL);
    if (R->status != 2 || !strstr(R->err, fragment))
        fail_msg("weft %s %s: exit %d, \"%s\"; want exit 2 and \"%s\"", cmd, file, R->status, R->err, fragment);
    printf("    %s", R->err);
}

static void test_bad_plans(void **state)
{
    (void)state;
    compile(path("good.plan"), gpt2);
    size_t n;
    char *good = wf_read_file(path("good.plan"), 1 << 28, &n);
    assert_non_null(good);
    char *bad = malloc(n);

    write_bytes(path("truncated.plan"), good, n / 2);
    expect_bad("verify", path("truncated.plan"), "truncated or extended: the header says");
    write_bytes(path("tiny.plan"), good, 20);
    expect_bad("inspect", path("tiny.plan"), "truncated or not a weft plan: 20 bytes");
    write_bytes(path("empty.plan"), good, 0);
    expect_bad("verify", path("empty.plan"), "shorter than a plan header");
    expect_bad("verify", "models/gpt2.xml", "not a weft plan (bad magic)");

    /* A byte flipped inside the program of stage 2: only that section fails. */
    memcpy(bad, good, n);
    struct diag d;
    diag_init(&d);
    struct plan *p = plan_open(path("good.plan"), &d);
    assert_non_null(p);
    int idx = -1;
    for (int i = 0; i < plan_n_sections(p); i++)
        if (!strcmp(plan_section_name(p, i), "program.2"))
            idx = i;
    assert_true(idx >= 0);
    bad[plan_section_offset(p, idx) + plan_section_size(p, idx) / 2] ^= 0x40;
    plan_close(p);
    diag_free(&d);
    write_bytes(path("flipped.plan"), bad, n);
    expect_bad("verify", path("flipped.plan"), "section 'program.2' fails its checksum");
    run_weft(R, "inspect", path("flipped.plan"), "--rank", "0", NULL); /* rank 0 reads program.0 only */
    assert_int_equal(R->status, 0);
    /* verify checks every section, also those the proof does not read */
    memcpy(bad, good, n);
    p = plan_open(path("good.plan"), &d);
    for (int i = 0; i < plan_n_sections(p); i++)
        if (!strcmp(plan_section_name(p, i), "xfers"))
            bad[plan_section_offset(p, i) + plan_section_size(p, i) / 2] ^= 0x40;
    plan_close(p);
    diag_free(&d);
    write_bytes(path("xfers.plan"), bad, n);
    expect_bad("verify", path("xfers.plan"), "section 'xfers' fails its checksum");

    /* The header corrupted; and a plan from a newer format (its header made consistent). */
    memcpy(bad, good, n);
    bad[20] ^= 1;
    write_bytes(path("header.plan"), bad, n);
    expect_bad("verify", path("header.plan"), "the header fails its checksum");
    for (int older = 0; older < 2; older++) { /* a format this weft does not read, either way */
        memcpy(bad, good, n);
        bad[8] = (char)(older ? PLAN_VERSION_MAJOR - 1 : PLAN_VERSION_MAJOR + 1);
        uint32_t crc = plan_crc32(bad, 64);
        for (int i = 0; i < 4; i++)
            bad[64 + i] = (char)(crc >> (8 * i));
        write_bytes(path("other.plan"), bad, n);
        char want[128];
        snprintf(want, sizeof want, "plan format %d.%d is %s than this weft reads (%d.x)", bad[8], PLAN_VERSION_MINOR,
                 older ? "older" : "newer", PLAN_VERSION_MAJOR);
        expect_bad("inspect", path("other.plan"), want);
    }

    /* Checksums right, contents impossible: the schedule claims 2^20 stages.
     * (The plan fuzzer found this path crashing: a half-read schedule freed.) */
    memcpy(bad, good, n);
    p = plan_open(path("good.plan"), &d);
    for (int i = 0; i < plan_n_sections(p); i++)
        if (!strcmp(plan_section_name(p, i), "schedule")) {
            uint64_t off = plan_section_offset(p, i), len = plan_section_size(p, i);
            memset(bad + off + 4, 0, 4);
            bad[off + 4 + 2] = 0x10; /* n_stages = 2^20: more than a plan may have */
            uint32_t c = plan_crc32(bad + off, len);
            uint64_t table = 0;
            for (int k = 0; k < 8; k++)
                table |= (uint64_t)(uint8_t)bad[24 + k] << (8 * k);
            for (int k = 0; k < 4; k++)
                bad[table + (uint64_t)i * 48 + 40 + k] = (char)(c >> (8 * k));
            uint32_t tc = plan_crc32(bad + table, (size_t)plan_n_sections(p) * 48);
            for (int k = 0; k < 4; k++)
                bad[68 + k] = (char)(tc >> (8 * k));
        }
    plan_close(p);
    diag_free(&d);
    write_bytes(path("counts.plan"), bad, n);
    expect_bad("verify", path("counts.plan"), "plan section 'schedule': impossible counts: the plan is corrupted");

    run_weft(R, "inspect", path("good.plan"), "--rank", "99", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--rank 99: the plan has 16 ranks (0-15)"));
    run_weft(R, "verify", path("no-such.plan"), NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "cannot open the plan: No such file or directory"));
    free(good);
    free(bad);
}

static void test_inspect(void **state)
{
    (void)state;
    compile(path("i.plan"), gpt2);
    run_weft(R, "inspect", path("i.plan"), "--json", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "\"roles\": [{\"role\": \"decoder stage 0\", \"ranks\": [0, 1, 2, 3]"));
    assert_non_null(strstr(R->out, "\"memory_bytes\": "));
    assert_non_null(strstr(R->out, "\"working set\": "));
    assert_non_null(strstr(R->out, "\"micro_batches_in_flight\": 4"));
    assert_non_null(strstr(R->out, "\"kernels\": [{\"name\": \"k0_embedding\""));
    run_weft(R, "inspect", path("i.plan"), "--rank", "5", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "rank 5 of"));
    assert_non_null(strstr(R->out, "decoder stage 1, tp 1"));
    assert_non_null(strstr(R->out, "[peer 1]"));
    /* its arena: one allocation, the blocks of stage 1 of 4's three micro-batches in flight */
    assert_non_null(strstr(R->out, "arena "));
    assert_non_null(strstr(R->out, "at most 3 alive"));
    assert_non_null(strstr(R->out, "backward virtual stage 0, micro-batch 0\n    26  all-reduce over tp #43 (12582912 B), of gradients"));
}

/* --mode infer: a forward pass, recorded in the plan and shown by every reader. */
static void test_forward_only(void **state)
{
    (void)state;
    const char *args[16];
    int n = 0;
    for (; gpt2[n]; n++)
        args[n] = gpt2[n];
    args[n++] = "--mode";
    args[n++] = "infer";
    args[n] = NULL;
    compile(path("f.plan"), args);
    assert_non_null(strstr(R->out, "1f1b schedule forward only (--mode infer)"));
    assert_non_null(strstr(R->out, "predicted forward pass"));
    run_weft(R, "verify", path("f.plan"), NULL);
    assert_int_equal(R->status, 0);
    run_weft(R, "inspect", path("f.plan"), "--json", NULL);
    assert_non_null(strstr(R->out, "\"mode\": \"infer\""));
    run_weft(R, "inspect", path("f.plan"), "--rank", "15", NULL);
    assert_int_equal(R->status, 0);
    assert_null(strstr(R->out, "backward"));
    assert_null(strstr(R->out, "optimizer"));
    assert_null(strstr(R->out, "gradients"));
    assert_non_null(strstr(R->out, "working set"));
    run_weft(R, "simulate", path("f.plan"), "--json", NULL);
    assert_non_null(strstr(R->out, "\"mode\": \"infer\""));
    /* A plan's mode is fixed; a mode is train or infer. */
    run_weft(R, "simulate", path("f.plan"), "--mode", "train", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "is a compiled plan"));
    run_weft(R, "compile", "models/gpt2.xml", "--mode", "serve", "-o", path("x.plan"), NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--mode serve: expected train or infer"));
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/weft-plan-%d", (int)getpid());
    return mkdir(dir, 0700);
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

/* The plan carries its fused kernels: listed, one shown, its CUDA C; a
 * second compile takes every binary from the cache; an architecture NVRTC
 * does not know is refused with the list it does. */
static void test_kernels(void **state)
{
    (void)state;
    char why[1024];
    bool gpu = nvrtc_available(why, sizeof why);
    char cache[256];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    setenv("XDG_CACHE_HOME", cache, 1); /* a cold cache of its own */
    compile(path("k.plan"), gpt2);
    if (gpu) {
        assert_non_null(strstr(R->out, "sm_80, sm_90 and PTX compute_90: 69 compiled by NVRTC"));
        assert_non_null(strstr(R->out, ", 0 from the cache"));
    } else
        assert_non_null(strstr(R->out, "no GPU binaries"));
    compile(path("k2.plan"), gpt2);
    if (gpu)
        assert_non_null(strstr(R->out, ": 0 compiled by NVRTC"));
    assert_non_null(strstr(R->out, "CPU object"));
    assert_non_null(strstr(R->out, "from the cache"));
    run_weft(R, "inspect", path("k.plan"), "--kernels", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "23 kernels for 44 forward (and 24 in GEMMs' epilogues), 54 backward, 149 optimizer, 149 gradient-norm "
                                   "launches"));
    assert_non_null(strstr(R->out, "k4_bias_add_dropout_add_layernorm"));
    assert_non_null(strstr(R->out, "k3_attention"));
    assert_non_null(strstr(R->out, "attention (CUDA cores)")); /* an f32 plan: kn_attn_mma says no */
    assert_non_null(strstr(R->out, "k14_bias_add_dropout_add_layernorm_backward"));
    assert_non_null(strstr(R->out, "k21_adamw_no_decay")); /* biases and norms: 1-D, no weight decay */
    assert_non_null(strstr(R->out, "k22_adamw "));
    assert_non_null(strstr(R->out, "k18_add_dropout_layernorm_backward")); /* the position table's gradient sums the batch */
    run_weft(R, "inspect", path("k.plan"), "--kernel", "21", NULL);
    assert_non_null(strstr(R->out, "fuses (optimizer step)"));
    assert_non_null(strstr(R->out, "in  1  f32  full      decoder.layer.2.out.b (exp_avg)"));
    /* the vocab-parallel loss: three launches around its two collectives, writing their buffers */
    run_weft(R, "inspect", path("k.plan"), "--kernel", "9", NULL);
    assert_non_null(strstr(R->out, "kernel 9: k9_cross_entropy_sums"));
    assert_non_null(strstr(R->out, "in  2  f32  row       decoder.logits (via all-reduce-max over tp)"));
    assert_non_null(strstr(R->out, "out 0  f32  rowstats  decoder.logits (via all-reduce over tp)"));
    run_weft(R, "inspect", path("k.plan"), "--kernel", "4", NULL);
    assert_non_null(strstr(R->out, "fuses bias_add dropout add layernorm"));
    assert_non_null(strstr(R->out, "(dropout's mask)"));
    run_weft(R, "inspect", path("k.plan"), "--kernel", "4", "--source", NULL);
    assert_non_null(strstr(R->out, "extern \"C\" __global__ void __launch_bounds__(256) k4_bias_add_dropout_add_layernorm("));
    run_weft(R, "inspect", path("k.plan"), "--kernel", "3", NULL);
    assert_non_null(strstr(R->out, "attention in the flash-attention manner: f32, head dims 64/64, causal; forward and backward; "
                                   "on the GPU on the CUDA cores (a thread a row)")); /* fp32: no tensor cores */
    assert_non_null(strstr(R->out, "in  0  q              decoder.layer.0.qkv"));
    run_weft(R, "inspect", path("k.plan"), "--kernel", "99", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--kernel 99: the plan has 23 kernels (0-22)"));
    if (gpu) {
        run_weft(R, "compile", "models/gpt2.xml", "--arch", "sm_90,sm_42", "-o", path("x.plan"), NULL);
        assert_int_equal(R->status, 2);
        assert_non_null(strstr(R->err, "does not know 'sm_42'; it knows "));
        assert_non_null(strstr(R->err, "sm_90"));
    }
    unsetenv("XDG_CACHE_HOME");
}

int main(void)
{
    R = malloc(sizeof *R);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_identical),
        cmocka_unit_test(test_reads_format_5_1),
        cmocka_unit_test(test_every_model_verifies),
        cmocka_unit_test(test_bad_plans),
        cmocka_unit_test(test_inspect),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_forward_only),
    };
    int rc = cmocka_run_group_tests_name("plan", tests, setup, teardown);
    free(R);
    return rc;
}
