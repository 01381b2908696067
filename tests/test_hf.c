/* test_hf: Hugging Face's weights in (weft run --load) and out (--save-format
 * hf), for GPT-2 and Llama, on one rank and on tp 2 x pp 2.
 *
 * The fixtures (tests/fixtures/hf/, made once by tools/fixtures/hf_fixture.py
 * with transformers: random weights, no download) hold each model's files,
 * the tokens weft's synthetic data give (the script ports exec_token; the
 * first test checks every token against weft's) and transformers' mean
 * cross-entropy over them.  weft's first loss from those weights must be
 * transformers' within 1e-5 (fp32, no dropout: GPT-2 compiled with
 * --hidden-dropout 0); the files weft writes back after no
 * step must hold the fixture's tensors bit for bit (GPT-2's, one file, must
 * be save_pretrained's file byte for byte). */
#include "testing.h"

#include "exec.h"
#include "hf.h"
#include "json.h"
#include "rank_plan.h"
#include "safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>

#define SEED 1234
#define TOL 1e-5
#define GPT2 "tests/fixtures/hf/gpt2"
#define LLAMA "tests/fixtures/hf/llama"
#define GPT2_FILE GPT2 "/model.safetensors"

static char dir[64]; /* this run's plans and files */

static const char *at(const char *name)
{
    static char buf[8][256];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* The tiny models' dimensions as the fixture script's DIMS. */
#define GPT2_DIMS "--hidden-dropout", "0", "--variant", "tiny", "--arch", "cpu", "--set", "hidden=32", "--set", "ffn=128", "--set", "vocab=256", \
                  "--set", "positions=32", "--set", "seq=16"
#define LLAMA_DIMS "--variant", "tiny", "--arch", "cpu", "--set", "hidden=32", "--set", "ffn=64", "--set", "vocab=256", \
                   "--set", "seq=16"

static void compile(const char *const *args)
{
    struct run r;
    run_weftv(&r, args);
    if (r.status)
        fail_msg("weft compile: %s", r.err);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/weft-test-hf-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    compile((const char *const[]){"compile", "models/gpt2.xml", GPT2_DIMS, "-o", at("g1.plan"), NULL});
    compile((const char *const[]){"compile", "models/llama2.xml", LLAMA_DIMS, "-o", at("l1.plan"), NULL});
    compile((const char *const[]){"compile", "models/gpt2.xml", GPT2_DIMS, "--tp", "2", "--pp", "2", "-o", at("g4.plan"), NULL});
    compile((const char *const[]){"compile", "models/llama2.xml", LLAMA_DIMS, "--tp", "2", "--pp", "2", "-o", at("l4.plan"), NULL});
    compile((const char *const[]){"compile", "models/llama2.xml", LLAMA_DIMS, "--tp", "2", "--world-size", "4", "--bf16", "-o",
                                  at("ldp.plan"), NULL});
    /* 256 padded to 384: weft's output embedding has 128 rows more than the file */
    compile((const char *const[]){"compile", "models/gpt2.xml", GPT2_DIMS, "--make-vocab-size-divisible-by", "384", "-o",
                                  at("gpad.plan"), NULL});
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) ? -1 : 0;
}

/* ---- the fixture's expectations ---------------------------------------------------- */

struct expected {
    double loss, loss_padded;
    int64_t vocab, seed;
    int n, len;
    int32_t tok[4][64];
};

static void expected_read(const char *model_dir, struct expected *e)
{
    char path[256], err[128];
    snprintf(path, sizeof path, "%s/expected.json", model_dir);
    size_t len = 0;
    char *text = wf_read_file(path, 1 << 20, &len);
    assert_non_null(text);
    struct json_value *v = json_parse(text, len, err, sizeof err);
    free(text);
    if (!v)
        fail_msg("%s: %s", path, err);
    memset(e, 0, sizeof *e);
    e->loss = json_get(v, "loss")->number;
    e->loss_padded = json_get(v, "loss_padded_384")->number;
    e->vocab = json_get(v, "vocab")->integer;
    e->seed = json_get(v, "seed")->integer;
    const struct json_value *t = json_get(v, "tokens");
    e->n = t->n;
    assert_true(e->n <= 4 && t->items[0].n <= 64);
    for (int b = 0; b < t->n; b++) {
        e->len = t->items[b].n;
        for (int p = 0; p < t->items[b].n; p++)
            e->tok[b][p] = (int32_t)t->items[b].items[p].integer;
    }
    json_free(v);
}

/* ---- weft in process: one rank --------------------------------------------------- */

struct one {
    struct rank_plan R;
    struct exec *x;
    struct diag d;
};

static void one_open(struct one *o, const char *plan)
{
    diag_init(&o->d);
    if (rank_plan_load(plan, 0, 1, &o->R, &o->d) || !(o->x = exec_new(&o->R, NULL, SEED, BACKEND_CPU, &o->d)))
        fail_msg("%s: %s", plan, diag_first_error(&o->d));
}

static void one_close(struct one *o)
{
    exec_free(o->x);
    rank_plan_free(&o->R);
    diag_free(&o->d);
}

static double one_loss(struct one *o)
{
    struct exec_stats st;
    if (exec_step(o->x, 0, &st, &o->d))
        fail_msg("exec_step: %s", diag_first_error(&o->d));
    return st.loss;
}

/* plan's first loss from the weights at path, beside the expected one */
static void loss_from(const char *plan, const char *path, double want)
{
    struct one o;
    one_open(&o, plan);
    int rc = hf_load(o.x, &o.R, NULL, path, &o.d);
    if (rc)
        fail_msg("hf_load %s: %s", path, diag_first_error(&o.d));
    double loss = one_loss(&o);
    printf("    %s from %s: loss %.9f, transformers' %.9f, difference %.2g\n", plan, path, loss, want, fabs(loss - want));
    assert_true(fabs(loss - want) <= TOL);
    one_close(&o);
}

/* ---- comparing files ------------------------------------------------------------- */

/* The .safetensors files of a directory (or the one file). */
static int files_of(const char *path, char names[8][512])
{
    struct stat st;
    if (!stat(path, &st) && S_ISREG(st.st_mode)) {
        snprintf(names[0], 512, "%.500s", path);
        return 1;
    }
    int n = 0;
    DIR *dp = opendir(path);
    for (struct dirent *e; dp && (e = readdir(dp)) && n < 8;) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors"))
            snprintf(names[n++], 512, "%.250s/%.255s", path, e->d_name);
    }
    if (dp)
        closedir(dp);
    return n;
}

/* Every tensor of the fixture (want) is in got with its shape and the same
 * fp32 values bit for bit, and got has no other. */
static void same_tensors(const char *want, const char *got)
{
    char names[8][512];
    int n = files_of(want, names), count = 0;
    struct diag d;
    diag_init(&d);
    struct st_file g;
    if (st_open(got, &g, &d))
        fail_msg("%s", diag_first_error(&d));
    for (int i = 0; i < n; i++) {
        struct st_file w;
        if (st_open(names[i], &w, &d))
            fail_msg("%s", diag_first_error(&d));
        for (int k = 0; k < w.n; k++, count++) {
            const struct st_tensor *a = &w.tensors[k], *b = st_find(&g, a->name);
            if (!b)
                fail_msg("%s: no tensor '%s'", got, a->name);
            assert_int_equal(a->rank, b->rank);
            for (int x = 0; x < a->rank; x++)
                assert_int_equal(a->shape[x], b->shape[x]);
            int64_t e = st_tensor_elements(a);
            float *va = malloc((size_t)e * 4), *vb = malloc((size_t)e * 4);
            assert_int_equal(st_read_f32(&w, a, 0, e, va, &d), 0);
            assert_int_equal(st_read_f32(&g, b, 0, e, vb, &d), 0);
            for (int64_t x = 0; x < e; x++)
                if (memcmp(&va[x], &vb[x], 4))
                    fail_msg("%s: '%s' element %lld is %.9g; the fixture's %.9g", got, a->name, (long long)x, vb[x], va[x]);
            free(va);
            free(vb);
        }
        st_close(&w);
    }
    assert_int_equal(g.n, count);
    printf("    %s: the fixture's %d tensors, bit for bit\n", got, count);
    st_close(&g);
    diag_free(&d);
}

/* The same bytes: weft writes the tensors in the order of their names, as
 * Hugging Face's writer does, so its file is save_pretrained's. */
static void same_bytes(const char *want, const char *got)
{
    size_t na = 0, nb = 0;
    char *a = wf_read_file(want, 64 << 20, &na), *b = wf_read_file(got, 64 << 20, &nb);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++)
        if (a[i] != b[i])
            fail_msg("%s differs from %s at byte %zu of %zu", got, want, i, na);
    printf("    %s: save_pretrained's file, byte for byte (%zu bytes)\n", got, na);
    free(a);
    free(b);
}

/* A copy of the GPT-2 fixture file with one change: victim dropped, shaped
 * (2, n/2), or stored as I32; every tensor as BF16; or every name without
 * "transformer.". */
enum edit { EDIT_DROP, EDIT_RESHAPE, EDIT_I32, EDIT_BF16, EDIT_STRIP };

static void rewrite(const char *dst, const char *victim, enum edit how)
{
    struct diag d;
    diag_init(&d);
    struct st_file f;
    assert_int_equal(st_open(GPT2_FILE, &f, &d), 0);
    struct st_writer *w = st_writer_new();
    int from[256], n = 0;
    for (int k = 0; k < f.n; k++) {
        const struct st_tensor *t = &f.tensors[k];
        bool hit = victim && !strcmp(t->name, victim);
        if (hit && how == EDIT_DROP)
            continue;
        int64_t shape[ST_MAX_RANK], e = st_tensor_elements(t);
        memcpy(shape, t->shape, sizeof shape);
        int rank = t->rank;
        if (hit && how == EDIT_RESHAPE)
            rank = 2, shape[0] = 2, shape[1] = e / 2;
        const char *name = how == EDIT_STRIP && !strncmp(t->name, "transformer.", 12) ? t->name + 12 : t->name;
        st_writer_add(w, name, hit && how == EDIT_I32 ? ST_I32 : how == EDIT_BF16 ? ST_BF16 : ST_F32, rank, shape);
        from[n++] = k;
    }
    st_writer_finish(w);
    int fd = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(st_writer_create(w, fd, dst, &d), 0);
    for (int i = 0; i < n; i++) {
        const struct st_tensor *t = &f.tensors[from[i]];
        if (st_writer_tensor(w, i)->dtype == ST_I32)
            continue; /* zeros: only its dtype is read */
        int64_t e = st_tensor_elements(t);
        float *v = malloc((size_t)e * 4);
        assert_int_equal(st_read_f32(&f, t, 0, e, v, &d), 0);
        assert_int_equal(st_writer_put_f32(w, fd, dst, i, 0, v, e, &d), 0);
        free(v);
    }
    close(fd);
    st_writer_free(w);
    st_close(&f);
    diag_free(&d);
}

/* ---- tests --------------------------------------------------------------------------- */

/* The fixture script's port of exec_token gives weft's tokens. */
static void test_tokens_are_weft_s(void **state)
{
    (void)state;
    const char *models[] = {GPT2, LLAMA};
    for (int m = 0; m < 2; m++) {
        struct expected e;
        expected_read(models[m], &e);
        assert_int_equal(e.seed, SEED);
        assert_int_equal(e.n, 2);
        for (int b = 0; b < e.n; b++)
            for (int p = 0; p < e.len; p++)
                assert_int_equal(e.tok[b][p], exec_token(SEED, b, p, e.vocab));
    }
}

static void test_gpt2_loss_matches_transformers(void **state)
{
    (void)state;
    struct expected e;
    expected_read(GPT2, &e);
    loss_from(at("g1.plan"), GPT2_FILE, e.loss); /* the file */
    loss_from(at("g1.plan"), GPT2, e.loss);      /* a directory holding model.safetensors */
    rewrite(at("stripped.safetensors"), NULL, EDIT_STRIP); /* names without "transformer." (the Hub's gpt2) */
    loss_from(at("g1.plan"), at("stripped.safetensors"), e.loss);
}

static void test_llama_loss_matches_transformers(void **state)
{
    (void)state;
    struct expected e;
    expected_read(LLAMA, &e);
    loss_from(at("l1.plan"), LLAMA, e.loss); /* an index and three shards */
}

/* BF16 weights are widened: the loss moves by what rounding them moves it. */
static void test_bf16_file(void **state)
{
    (void)state;
    struct expected e;
    expected_read(GPT2, &e);
    rewrite(at("bf16.safetensors"), NULL, EDIT_BF16);
    struct one o;
    one_open(&o, at("g1.plan"));
    assert_int_equal(hf_load(o.x, &o.R, NULL, at("bf16.safetensors"), &o.d), 0);
    double loss = one_loss(&o);
    printf("    from BF16: loss %.6f, fp32's %.6f\n", loss, e.loss);
    assert_true(fabs(loss - e.loss) < 0.02 && fabs(loss - e.loss) > 0);
    one_close(&o);
}

/* One rank: loaded, then written after no step, the same tensors; config.json
 * with the model file's keys. */
static void test_write_after_load(void **state)
{
    (void)state;
    const char *plans[] = {at("g1.plan"), at("l1.plan")}, *fixtures[] = {GPT2, LLAMA}, *outs[] = {at("g1.out"), at("l1.out")};
    for (int m = 0; m < 2; m++) {
        struct one o;
        one_open(&o, plans[m]);
        assert_int_equal(hf_load(o.x, &o.R, NULL, fixtures[m], &o.d), 0);
        if (hf_write(o.x, &o.R, NULL, outs[m], &o.d))
            fail_msg("hf_write: %s", diag_first_error(&o.d));
        one_close(&o);
        char path[256], err[128];
        snprintf(path, sizeof path, "%s/model.safetensors", outs[m]);
        same_tensors(fixtures[m], path);
        if (!m)
            same_bytes(GPT2_FILE, path);
        snprintf(path, sizeof path, "%s/config.json", outs[m]);
        size_t len;
        char *text = wf_read_file(path, 1 << 20, &len);
        assert_non_null(text);
        struct json_value *v = json_parse(text, len, err, sizeof err);
        assert_non_null(v);
        /* the values transformers' own config.json (the fixture's) has */
        const char *keys[] = {m ? "num_key_value_heads" : "n_head", m ? "hidden_size" : "n_embd", "vocab_size",
                              m ? "intermediate_size" : "n_inner", m ? "num_hidden_layers" : "n_layer"};
        const int64_t want[][5] = {{4, 32, 256, 128, 2}, {2, 32, 256, 64, 2}};
        for (int k = 0; k < 5; k++) {
            const struct json_value *x = json_get(v, keys[k]);
            assert_non_null(x);
            assert_int_equal(x->integer, want[m][k]);
        }
        assert_string_equal(json_get(v, "model_type")->string, m ? "llama" : "gpt2");
        assert_string_equal(json_get(v, "architectures")->items[0].string, m ? "LlamaForCausalLM" : "GPT2LMHeadModel");
        if (!m)
            assert_string_equal(json_get(v, "activation_function")->string, "gelu_new");
        json_free(v);
        free(text);
    }
}

/* A vocabulary of 256 padded to 384: the extra rows are zero after loading
 * (so their logits are zero: the fixture's loss over logits widened by
 * zeros), and dropped on writing. */
static int wte_rows(void *ctx, int64_t whole_first, float *local, int64_t count)
{
    int64_t *zero_past = ctx; /* [0]: non-zero elements at rows >= 256; [1]: non-zero elements below */
    for (int64_t i = 0; i < count; i++)
        zero_past[(whole_first + i) / 32 >= 256 ? 0 : 1] += local[i] != 0;
    return 0;
}

static void test_padded_vocabulary(void **state)
{
    (void)state;
    struct expected e;
    expected_read(GPT2, &e);
    struct one o;
    one_open(&o, at("gpad.plan"));
    int wte = -1;
    for (int t = 0; t < o.R.n_tensors; t++)
        if (!strcmp(o.R.tensors[t].name, "decoder.wte"))
            wte = t;
    assert_true(wte >= 0);
    assert_int_equal(o.R.tensors[wte].shape[0], 384);
    assert_int_equal(o.R.vocab, 256); /* the tokens stay below the vocabulary as written */
    assert_int_equal(hf_load(o.x, &o.R, NULL, GPT2_FILE, &o.d), 0);
    int64_t nonzero[2] = {0, 0};
    exec_param_runs(o.x, wte, EXEC_WEIGHTS, false, wte_rows, nonzero, &o.d);
    assert_int_equal(nonzero[0], 0);
    assert_int_equal(nonzero[1], 256 * 32);
    assert_int_equal(hf_write(o.x, &o.R, NULL, at("gpad.out"), &o.d), 0);
    same_bytes(GPT2_FILE, at("gpad.out/model.safetensors"));
    double loss = one_loss(&o);
    printf("    padded to 384: loss %.9f, transformers' over logits widened by zeros %.9f\n", loss, e.loss_padded);
    assert_true(fabs(loss - e.loss_padded) <= TOL);
    one_close(&o);
}

/* mpirun -np 4 weft run PLAN --load FIXTURE: the same first loss; and with
 * --steps 0 --save, the fixture's tensors written by four ranks. */
static void test_tp2_pp2(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    const char *plans[] = {at("g4.plan"), at("l4.plan")}, *fixtures[] = {GPT2_FILE, LLAMA}, *outs[] = {at("g4.out"), at("l4.out")};
    for (int m = 0; m < 2; m++) {
        struct expected e;
        expected_read(m ? LLAMA : GPT2, &e);
        struct run r;
        const char *log = at("tp2pp2.jsonl");
        run_mpi(&r, (const char *const[]){"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "4", weft_bin(), "run", plans[m],
                                          "--steps", "1", "--load", fixtures[m], "--log", log, NULL});
        if (r.status)
            fail_msg("weft run: %s", r.err);
        size_t len;
        char *text = wf_read_file(log, 1 << 20, &len);
        assert_non_null(text);
        const char *l = strstr(text, "\"loss\": ");
        assert_non_null(l);
        double loss = strtod(l + 8, NULL);
        free(text);
        printf("    tp 2 x pp 2, %s: loss %.7f, transformers' %.9f, difference %.2g\n", fixtures[m], loss, e.loss, fabs(loss - e.loss));
        assert_true(fabs(loss - e.loss) <= TOL);
        run_mpi(&r, (const char *const[]){"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "4", weft_bin(), "run", plans[m],
                                          "--steps", "0", "--load", fixtures[m], "--save", outs[m], "--save-format", "hf", NULL});
        if (r.status)
            fail_msg("weft run --save: %s", r.err);
        char path[256]; /* a checkpoint of iteration 0, its model as Hugging Face's */
        snprintf(path, sizeof path, "%s/iter_0000000/model.safetensors", outs[m]);
        same_tensors(fixtures[m], path);
        if (!m)
            same_bytes(GPT2_FILE, path);
    }
}

/* tp 2 x dp 2 under --bf16: the fp32 master weights are what is loaded
 * (the bf16 copies rounded from them) and what the one replica of each
 * slice writes back. */
static void test_bf16_data_parallel(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    struct run r;
    run_mpi(&r, (const char *const[]){"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "4", weft_bin(), "run", at("ldp.plan"),
                                      "--steps", "0", "--load", LLAMA, "--save", at("ldp.out"), "--save-format", "hf", NULL});
    if (r.status)
        fail_msg("weft run --save: %s", r.err);
    same_tensors(LLAMA, at("ldp.out/iter_0000000/model.safetensors"));
}

/* The losses a run's --log holds, in order (at most n). */
static int losses_of(const char *log, double *loss, int n)
{
    size_t len;
    char *text = wf_read_file(log, 1 << 20, &len);
    assert_non_null(text);
    int k = 0;
    for (const char *l = text; k < n && (l = strstr(l, "\"loss\": ")); l += 8)
        loss[k++] = strtod(l + 8, NULL);
    free(text);
    return k;
}

/* A checkpoint saved with --save-format hf (the model by Hugging Face's
 * names, config.json, the optimizer's state and checkpoint.json) resumes:
 * from the fixture, 2 iterations, saved, loaded, 2 more: the losses of 4
 * straight, bit for bit (one layout). */
static void test_hf_checkpoint_resumes(void **state)
{
    (void)state;
    struct run r;
    run_mpi(&r, (const char *const[]){weft_bin(), "run", at("g1.plan"), "--steps", "4", "--load", GPT2, "--log", at("straight.jsonl"), NULL});
    if (r.status)
        fail_msg("weft run: %s", r.err);
    run_mpi(&r, (const char *const[]){weft_bin(), "run", at("g1.plan"), "--steps", "2", "--load", GPT2, "--save", at("hfck"), "--save-format",
                                      "hf", NULL});
    if (r.status)
        fail_msg("weft run --save-format hf: %s", r.err);
    char path[256];
    snprintf(path, sizeof path, "%s/iter_0000002/config.json", at("hfck"));
    assert_int_equal(access(path, R_OK), 0);
    run_mpi(&r, (const char *const[]){weft_bin(), "run", at("g1.plan"), "--steps", "2", "--load", at("hfck"), "--log", at("resumed.jsonl"),
                                      NULL});
    if (r.status)
        fail_msg("weft run --load (an hf checkpoint): %s", r.err);
    assert_non_null(strstr(r.out, "loaded "));
    double straight[4] = {0}, resumed[2] = {0};
    assert_int_equal(losses_of(at("straight.jsonl"), straight, 4), 4);
    assert_int_equal(losses_of(at("resumed.jsonl"), resumed, 2), 2);
    printf("    iterations 3, 4: %.9f %.9f straight, %.9f %.9f resumed from the hf checkpoint\n", straight[2], straight[3], resumed[0],
           resumed[1]);
    assert_true(straight[2] == resumed[0] && straight[3] == resumed[1]);
}

/* Bad files: an error naming the tensor (or shard) and the file, before any weight is read. */
static void expect_bad(const char *path, const char *plan, const char *what)
{
    struct one o;
    one_open(&o, plan);
    assert_int_equal(hf_load(o.x, &o.R, NULL, path, &o.d), 2);
    const char *err = diag_first_error(&o.d);
    printf("    %s\n", err);
    if (!strstr(err, what))
        fail_msg("expected '%s' in: %s", what, err);
    one_close(&o);
}

static void test_bad_files(void **state)
{
    (void)state;
    const char *victim = "transformer.h.1.mlp.c_fc.bias";
    rewrite(at("drop.safetensors"), victim, EDIT_DROP);
    expect_bad(at("drop.safetensors"), at("g1.plan"), "no tensor 'transformer.h.1.mlp.c_fc.bias' (nor 'h.1.mlp.c_fc.bias')");
    rewrite(at("shape.safetensors"), victim, EDIT_RESHAPE);
    expect_bad(at("shape.safetensors"), at("g1.plan"), "tensor 'transformer.h.1.mlp.c_fc.bias' is [2, 64]; weft's 'decoder.layer.1.fc.b' needs [128]");
    rewrite(at("i32.safetensors"), victim, EDIT_I32);
    expect_bad(at("i32.safetensors"), at("g1.plan"), "tensor 'transformer.h.1.mlp.c_fc.bias' is I32");
    expect_bad(GPT2_FILE, at("l1.plan"), "no tensor 'model.embed_tokens.weight'"); /* another model's file */
    /* an index naming a shard that is not there */
    char shards[8][512], cmd[2048];
    int n = files_of(LLAMA, shards);
    assert_int_equal(n, 3);
    snprintf(cmd, sizeof cmd, "mkdir -p %s/shards && cp %s/model.safetensors.index.json %s %s %s/shards/", dir, LLAMA, shards[0],
             shards[1], dir);
    assert_int_equal(system(cmd), 0);
    const char *gone = strrchr(shards[2], '/') + 1;
    char msg[256];
    snprintf(msg, sizeof msg, "names the shard '%s', which is missing", gone);
    expect_bad(at("shards"), at("l1.plan"), msg);

    /* weft run: exit 2 before any step */
    struct run r;
    run_mpi(&r, (const char *const[]){weft_bin(), "run", at("g1.plan"), "--steps", "1", "--load", at("drop.safetensors"), NULL});
    assert_int_equal(r.status, 2);
    assert_null(strstr(r.out, "iteration"));
    assert_non_null(strstr(r.err, "drop.safetensors"));
    assert_non_null(strstr(r.err, victim));
    run_mpi(&r, (const char *const[]){weft_bin(), "run", at("g1.plan"), "--steps", "1", "--load", "tests/fixtures", NULL});
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "neither weft's (latest_checkpointed_iteration.txt or checkpoint.json) nor Hugging Face's"));
    printf("    %s", r.err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens_are_weft_s),
        cmocka_unit_test(test_gpt2_loss_matches_transformers),
        cmocka_unit_test(test_llama_loss_matches_transformers),
        cmocka_unit_test(test_bf16_file),
        cmocka_unit_test(test_write_after_load),
        cmocka_unit_test(test_padded_vocabulary),
        cmocka_unit_test(test_tp2_pp2),
        cmocka_unit_test(test_bf16_data_parallel),
        cmocka_unit_test(test_hf_checkpoint_resumes),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
