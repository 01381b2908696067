/* test_checkpoint.c: weft run --save / --load (runtime/checkpoint.h).
 * A resumed run continues the uninterrupted one exactly on its own layout
 * and within float tolerance on any other; a vocabulary padded otherwise
 * loads its real rows; every bad checkpoint is refused before any step,
 * naming the file and the tensor; a run killed (-9) while it saves, or
 * whose disk fills, never leaves a checkpoint that loads half-written. */
#include "testing.h"
#include "safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <sys/resource.h>

/* Tiny GPT-2, global batch 8, with a warm-up and a cosine decay, so the
 * learning rate differs every iteration (a resumed run must take the
 * absolute iteration's).  AdamW's eps 1e-4 as test_run's matrix, so that
 * layouts agree within float tolerance. */
static void compile_gpt2(const char *plan, int ranks, const char *flags)
{
    char world[16], words[256];
    snprintf(world, sizeof world, "%d", ranks);
    snprintf(words, sizeof words, "%s", flags);
    const char *args[40] = {"compile", "models/gpt2.xml", "--variant", "tiny", "--world-size", world, "--global-batch-size", "8",
                            "--lr", "1e-3", "--lr-warmup-iters", "2", "--lr-decay-iters", "8", "--lr-decay-style", "cosine",
                            "--adam-eps", "1e-4", "--arch", "cpu", "-o", plan};
    int n = 22;
    for (char *f = strtok(words, " "); f && n < 39; f = strtok(NULL, " "))
        args[n++] = f;
    args[n] = NULL;
    struct run r;
    run_weftv(&r, args);
    if (r.status)
        fail_msg("weft compile %s: %s", flags, r.err);
}

/* mpirun -np ranks weft run plan ARGS... (NULL-terminated); the run in r. */
static void weft_run(struct run *r, int ranks, const char *plan, const char *const *args)
{
    char np[16];
    snprintf(np, sizeof np, "%d", ranks);
    const char *argv[40] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np, weft_bin(), "run", plan};
    int n = 8;
    for (int i = 0; args[i] && n < 39; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    run_mpi(r, argv);
}
#define WEFT_RUN(r, ranks, plan, ...) weft_run((r), (ranks), (plan), (const char *const[]){__VA_ARGS__, NULL})

/* The losses of a --log file by iteration (loss[it] for iteration it, 1 on);
 * the highest iteration read. */
static int read_losses(const char *log, double *loss, int max)
{
    FILE *f = fopen(log, "r");
    char line[512];
    int top = 0;
    while (f && fgets(line, sizeof line, f)) {
        const char *i = strstr(line, "\"iteration\": "), *l = strstr(line, "\"loss\": ");
        if (!i || !l || !strchr(line, '\n')) /* a line cut by a kill */
            break;
        int it = atoi(i + 13);
        if (it > 0 && it < max)
            loss[it] = strtod(l + 8, NULL), top = it > top ? it : top;
    }
    if (f)
        fclose(f);
    return top;
}

static char *slurp(const char *path, size_t *n)
{
    char *s = wf_read_file(path, (size_t)1 << 30, n);
    if (!s)
        fail_msg("%s: cannot read it", path);
    return s;
}

static bool same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    bool same = na == nb && !memcmp(x, y, na);
    free(x), free(y);
    return same;
}

static void must(int rc, const char *what)
{
    if (rc)
        fail_msg("%s failed", what);
}

static long tracker(const char *dir);

/* Plans and the uninterrupted run they are held to, made once. */
static struct {
    char dir[64], one[96], tp2pp2[96], dp2[96], pp2[96], tp2[96], bf16[96], bf16_grads[96];
    double loss[16]; /* one rank, 6 straight iterations */
} g;

static int setup(void **state)
{
    (void)state;
    snprintf(g.dir, sizeof g.dir, "/tmp/weft-test-ckpt-XXXXXX");
    if (!mkdtemp(g.dir))
        return -1;
    snprintf(g.one, sizeof g.one, "%s/one.plan", g.dir);
    snprintf(g.tp2pp2, sizeof g.tp2pp2, "%s/tp2pp2.plan", g.dir);
    snprintf(g.dp2, sizeof g.dp2, "%s/dp2.plan", g.dir);
    snprintf(g.pp2, sizeof g.pp2, "%s/pp2.plan", g.dir);
    snprintf(g.tp2, sizeof g.tp2, "%s/tp2.plan", g.dir);
    compile_gpt2(g.one, 1, "");
    compile_gpt2(g.tp2pp2, 4, "--tp 2 --pp 2");
    compile_gpt2(g.dp2, 2, "");
    compile_gpt2(g.pp2, 2, "--pp 2");
    compile_gpt2(g.tp2, 2, "--tp 2");
    snprintf(g.bf16, sizeof g.bf16, "%s/bf16.plan", g.dir);
    compile_gpt2(g.bf16, 2, "--bf16 --pp 2");
    snprintf(g.bf16_grads, sizeof g.bf16_grads, "%s/bf16grads.plan", g.dir);
    compile_gpt2(g.bf16_grads, 4, "--bf16 --grad-reduce-in-bf16 --pp 2");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g.dir);
    return system(cmd) ? -1 : 0;
}

/* 6 iterations straight against 3, a save, a load and 3 more, on one rank
 * and on tp 2 x pp 2: the same losses (as logged, 9 digits) and, after
 * the 6, the same parameters bit for bit (--dump-params): the weights,
 * AdamW's moments, the iteration (the learning rate's warm-up and decay,
 * Adam's bias correction) and the consumed samples all came back. */
static void test_resume_is_exact(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    const struct {
        const char *plan;
        int ranks;
    } cases[] = {{g.one, 1}, {g.tp2pp2, 4}, {g.bf16, 2}, /* bf16: the fp32 master weights saved, the bf16 copies rounded on load */
                 {g.bf16_grads, 4}}; /* and bf16 gradients (dp 2, the tied embedding's sum over the stages), which no step keeps */
    for (size_t c = 0; c < WF_COUNT(cases); c++) {
        char ck[128], log1[128], log2[128], p1[128], p2[128];
        snprintf(ck, sizeof ck, "%s/exact%zu", g.dir, c);
        snprintf(log1, sizeof log1, "%s/straight%zu.jsonl", g.dir, c);
        snprintf(log2, sizeof log2, "%s/resumed%zu.jsonl", g.dir, c);
        snprintf(p1, sizeof p1, "%s/straight%zu.params", g.dir, c);
        snprintf(p2, sizeof p2, "%s/resumed%zu.params", g.dir, c);
        struct run r;
        WEFT_RUN(&r, cases[c].ranks, cases[c].plan, "--steps", "6", "--log", log1, "--dump-params", p1);
        must(r.status, "the straight run");
        WEFT_RUN(&r, cases[c].ranks, cases[c].plan, "--steps", "3", "--save", ck);
        must(r.status, "the first half");
        assert_non_null(strstr(r.out, "saved checkpoint of iteration 3 to "));
        WEFT_RUN(&r, cases[c].ranks, cases[c].plan, "--steps", "3", "--load", ck, "--log", log2, "--dump-params", p2);
        if (r.status)
            fail_msg("the resumed run: %s%s", r.out, r.err);
        assert_non_null(strstr(r.out, "iteration 3, 24 samples consumed"));
        double a[16] = {0}, b[16] = {0};
        assert_int_equal(read_losses(log1, a, 16), 6);
        assert_int_equal(read_losses(log2, b, 16), 6);
        for (int i = 4; i <= 6; i++)
            if (a[i] != b[i])
                fail_msg("%d ranks: iteration %d's loss %.9g resumed, %.9g straight", cases[c].ranks, i, b[i], a[i]);
        assert_true(same_file(p1, p2));
        if (c == 0)
            memcpy(g.loss, a, sizeof g.loss);
        /* loaded and saved again at once (--steps 0): the same bytes, swapped in for the existing iter_0000003 */
        char it3[160], keep[192], again[192];
        snprintf(it3, sizeof it3, "%s/iter_0000003", ck);
        snprintf(keep, sizeof keep, "%s.model", ck);
        snprintf(again, sizeof again, "%s/model.safetensors", it3);
        assert_int_equal(rename(again, keep), 0); /* aside: the swap replaces the whole directory */
        assert_int_equal(link(keep, again), 0);
        WEFT_RUN(&r, cases[c].ranks, cases[c].plan, "--steps", "0", "--load", it3, "--save", ck);
        must(r.status, "saving a loaded checkpoint again");
        assert_true(same_file(keep, again));
        assert_int_equal(tracker(ck), 3);
        static const char *const name[] = {"1 rank", "tp 2 x pp 2", "bf16, pp 2", "bf16 grads"};
        printf("    %-12s iterations 4-6 resumed from 3 = straight (losses %.6f %.6f %.6f), parameters bit for bit\n", name[c], b[4],
               b[5], b[6]);
    }
}

/* Saved by tp 2 x pp 2 on 4 ranks, resumed on one rank, dp 2, pp 2 and
 * tp 2: each resumed loss within 1e-5 relative of the uninterrupted one
 * rank's (test_run's tolerance between layouts). */
static void test_any_layout_loads_it(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    if (g.loss[6] == 0)
        SKIP_BECAUSE("needs test_resume_is_exact's straight run");
    char ck[128];
    snprintf(ck, sizeof ck, "%s/exact1", g.dir); /* tp 2 x pp 2's, iteration 3 */
    const struct {
        const char *plan, *name;
        int ranks;
    } to[] = {{g.one, "1 rank", 1}, {g.dp2, "dp 2", 2}, {g.pp2, "pp 2", 2}, {g.tp2, "tp 2", 2}};
    for (size_t c = 0; c < WF_COUNT(to); c++) {
        char log[128];
        snprintf(log, sizeof log, "%s/cross%zu.jsonl", g.dir, c);
        struct run r;
        WEFT_RUN(&r, to[c].ranks, to[c].plan, "--steps", "3", "--load", ck, "--log", log);
        if (r.status)
            fail_msg("%s: %s%s", to[c].name, r.out, r.err);
        double b[16] = {0}, worst = 0;
        assert_int_equal(read_losses(log, b, 16), 6);
        for (int i = 4; i <= 6; i++)
            worst = fmax(worst, fabs(b[i] - g.loss[i]) / g.loss[i]);
        printf("    saved by tp 2 x pp 2, resumed on %-6s: losses 4-6 within %.1e of one rank's straight run\n", to[c].name, worst);
        assert_true(worst < 1e-5);
    }
}

/* Models with experts and with an encoder: Mixtral saved by ep 2 x tp 2
 * with sequence parallelism (4 ranks), T5 by its encoder's own stage at
 * etp 1 under tp 2 x pp 2 (5 ranks), LLaVA by pp 2 with its encoder's
 * stage (3 ranks); each resumed on one rank after 2 iterations, its
 * iterations 3 and 4 within 1e-5 of one rank's 4 straight. */
static void test_other_models_resume(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    static const struct {
        const char *model, *layout, *sizes;
        int ranks;
    } cases[] = {{"models/mixtral.xml", "--ep 2 --tp 2 --sequence-parallel", "--micro-batch-size 2", 4},
                 {"models/t5.xml", "--tp 2 --pp 2 --epp 1 --etp 1", "", 5},
                 {"models/llava.xml", "--pp 2 --epp 1", "", 3}};
    for (size_t c = 0; c < WF_COUNT(cases); c++) {
        char many[128], one[128], ck[128], log1[128], log2[128], ranks[16];
        snprintf(many, sizeof many, "%s/other%zu-many.plan", g.dir, c);
        snprintf(one, sizeof one, "%s/other%zu-one.plan", g.dir, c);
        snprintf(ck, sizeof ck, "%s/other%zu", g.dir, c);
        snprintf(log1, sizeof log1, "%s/other%zu-straight.jsonl", g.dir, c);
        snprintf(log2, sizeof log2, "%s/other%zu-resumed.jsonl", g.dir, c);
        snprintf(ranks, sizeof ranks, "%d", cases[c].ranks);
        struct run r;
        for (int k = 0; k < 2; k++) {
            const char *args[32] = {"compile", cases[c].model, "--variant", "tiny", "--world-size", k ? ranks : "1",
                                    "--global-batch-size", "8", "--lr", "1e-3", "--adam-eps", "1e-4", "--arch", "cpu", "-o",
                                    k ? many : one};
            char words[256];
            snprintf(words, sizeof words, "%s %s", k ? cases[c].layout : "", cases[c].sizes);
            int n = 16;
            for (char *f = strtok(words, " "); f && n < 31; f = strtok(NULL, " "))
                args[n++] = f;
            args[n] = NULL;
            run_weftv(&r, args);
            if (r.status)
                fail_msg("weft compile %s: %s", cases[c].model, r.err);
        }
        WEFT_RUN(&r, 1, one, "--steps", "4", "--log", log1);
        must(r.status, "the straight run");
        WEFT_RUN(&r, cases[c].ranks, many, "--steps", "2", "--save", ck);
        must(r.status, "the save");
        WEFT_RUN(&r, 1, one, "--steps", "2", "--load", ck, "--log", log2);
        if (r.status)
            fail_msg("%s resumed: %s%s", cases[c].model, r.out, r.err);
        double a[8] = {0}, b[8] = {0}, worst = 0;
        assert_int_equal(read_losses(log1, a, 8), 4);
        assert_int_equal(read_losses(log2, b, 8), 4);
        for (int i = 3; i <= 4; i++)
            worst = fmax(worst, fabs(b[i] - a[i]) / a[i]);
        printf("    %-18s saved by %d ranks %-34s resumed on 1: losses 3-4 within %.1e\n", cases[c].model, cases[c].ranks,
               cases[c].layout, worst);
        assert_true(worst < 1e-5);
    }
}

/* A file's tensor, whole, as fp32. */
static float *read_tensor(const char *path, const char *name, int64_t *n)
{
    struct st_file f;
    struct diag d;
    diag_init(&d);
    if (st_open(path, &f, &d))
        fail_msg("%s", diag_first_error(&d));
    const struct st_tensor *t = st_find(&f, name);
    assert_non_null(t);
    *n = st_tensor_elements(t);
    float *v = malloc((size_t)*n * 4 + 4);
    if (st_read_f32(&f, t, 0, *n, v, &d))
        fail_msg("%s", diag_first_error(&d));
    st_close(&f);
    diag_free(&d);
    return v;
}

/* A vocabulary of 500 unpadded (--make-vocab-size-divisible-by 1) and the
 * same padded to 512 (the default, 128 x tp): each loads the other.  From
 * 500 into 512 (and saved again, --steps 0): wte's first 500 rows and
 * their moments as saved, the 12 rows of padding zero; back into 500: the
 * first file again, bit for bit. */
static void test_vocab_padding(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char v500[128], v512[128], a[128], b[128], c[128];
    snprintf(v500, sizeof v500, "%s/v500.plan", g.dir);
    snprintf(v512, sizeof v512, "%s/v512.plan", g.dir);
    snprintf(a, sizeof a, "%s/va", g.dir), snprintf(b, sizeof b, "%s/vb", g.dir), snprintf(c, sizeof c, "%s/vc", g.dir);
    compile_gpt2(v500, 1, "--vocab-size 500 --make-vocab-size-divisible-by 1");
    compile_gpt2(v512, 2, "--vocab-size 500 --tp 2");
    struct run r;
    WEFT_RUN(&r, 1, v500, "--steps", "2", "--save", a);
    must(r.status, "vocabulary 500");
    WEFT_RUN(&r, 2, v512, "--steps", "0", "--load", a, "--save", b);
    if (r.status)
        fail_msg("500 into 512: %s%s", r.out, r.err);
    WEFT_RUN(&r, 1, v500, "--steps", "0", "--load", b, "--save", c);
    if (r.status)
        fail_msg("512 into 500: %s%s", r.out, r.err);
    static const char *const files[] = {"model.safetensors", "optimizer.safetensors"};
    static const char *const names[] = {"decoder.wte", "decoder.wte.exp_avg"};
    for (int k = 0; k < 2; k++) {
        char pa[192], pb[192], pc[192];
        snprintf(pa, sizeof pa, "%s/iter_0000002/%s", a, files[k]);
        snprintf(pb, sizeof pb, "%s/iter_0000002/%s", b, files[k]);
        snprintf(pc, sizeof pc, "%s/iter_0000002/%s", c, files[k]);
        int64_t na, nb;
        float *x = read_tensor(pa, names[k], &na), *y = read_tensor(pb, names[k], &nb);
        assert_int_equal(na, 500 * 64);
        assert_int_equal(nb, 512 * 64);
        assert_memory_equal(x, y, (size_t)na * 4);
        for (int64_t e = na; e < nb; e++)
            assert_true(y[e] == 0.0f);
        assert_true(same_file(pa, pc));
        free(x), free(y);
    }
    printf("    vocabulary 500 -> padded 512 (tp 2) -> 500: real rows kept, padding zero, back bit for bit\n");
}

/* Copies dir's iter_0000002 into bad's, rewriting model.safetensors: the
 * tensor `name` left out (how 0), its shape changed (1), or its dtype I32 (2). */
static void bad_copy(const char *from, const char *to, const char *name, int how)
{
    char cmd[512], src[256], dst[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s && cp -r %s/iter_0000002 %s/ && echo 2 > %s/latest_checkpointed_iteration.txt",
             to, to, from, to, to);
    assert_int_equal(system(cmd), 0);
    snprintf(src, sizeof src, "%s/iter_0000002/model.safetensors", from);
    snprintf(dst, sizeof dst, "%s/iter_0000002/model.safetensors", to);
    struct st_file f;
    struct diag d;
    diag_init(&d);
    must(st_open(src, &f, &d), "st_open");
    struct st_writer *w = st_writer_new();
    for (int i = 0; i < f.n_meta; i++)
        st_writer_meta(w, f.meta_keys[i], f.meta_values[i]);
    assert_true(how == 3 || st_find(&f, name)); /* the tensor to spoil is there */
    for (int i = 0; i < f.n; i++) {
        const struct st_tensor *t = &f.tensors[i];
        bool it = !strcmp(t->name, name);
        int64_t shape[ST_MAX_RANK];
        memcpy(shape, t->shape, sizeof shape);
        if (it && how == 0)
            continue;
        if (it && how == 1)
            shape[t->rank - 1] /= 2;
        st_writer_add(w, t->name, it && how == 2 ? ST_I32 : ST_F32, t->rank, shape);
    }
    st_writer_finish(w);
    int fd = open(dst, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    must(st_writer_create(w, fd, dst, &d), "st_writer_create"); /* the data a hole: the header is what is wrong */
    close(fd);
    st_writer_free(w);
    st_close(&f);
    diag_free(&d);
}

struct bad_case {
    const char *what, *plan, *load, *expect;
    int ranks;
};

/* Each bad checkpoint: weft run exits 2 before any step, and says what is
 * wrong, naming the file and the tensor; on 2 ranks too (all agree, no hang). */
static void test_bad_checkpoints(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char good[128], bad[128], llama[128], p[512];
    snprintf(good, sizeof good, "%s/good", g.dir);
    snprintf(bad, sizeof bad, "%s/bad", g.dir);
    snprintf(llama, sizeof llama, "%s/llama.plan", g.dir);
    struct run r;
    WEFT_RUN(&r, 1, g.one, "--steps", "2", "--save", good);
    must(r.status, "the good checkpoint");
    struct bad_case cases[16];
    int n = 0;
    char files[8][192];
    /* another model */
    const char *largs[] = {"compile", "models/llama2.xml", "--variant", "tiny", "--arch", "cpu", "-o", llama, NULL};
    run_weftv(&r, largs);
    must(r.status, "compiling llama2");
    cases[n++] = (struct bad_case){"another model's", llama, good, "a checkpoint of model 'gpt2', this plan's is 'llama2'", 1};
    /* a missing tensor, a shape, a dtype: model.safetensors rewritten */
    static const char *const why[] = {"tensor 'decoder.layer.0.fc.w' is missing", "tensor 'decoder.layer.0.fc.w': shape [64, 128], this plan's is [64, 256]",
                                      "tensor 'decoder.layer.0.fc.w': dtype I32 cannot be converted to fp32"};
    for (int how = 0; how < 3; how++) {
        snprintf(files[how], sizeof files[how], "%s%d", bad, how);
        bad_copy(good, files[how], "decoder.layer.0.fc.w", how);
        cases[n++] = (struct bad_case){how == 0 ? "a missing tensor" : how == 1 ? "a shape" : "a dtype", g.one, files[how], why[how], 1};
    }
    cases[n++] = (struct bad_case){"a shape, on tp 2", g.tp2, files[1], why[1], 2};
    /* a header whose offsets lie: the data cut short */
    snprintf(files[3], sizeof files[3], "%s3", bad);
    bad_copy(good, files[3], "", 3);
    snprintf(p, sizeof p, "%s/iter_0000002/model.safetensors", files[3]);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(truncate(p, sb.st_size - 4096), 0);
    cases[n++] = (struct bad_case){"offsets past the file", g.one, files[3], "lie outside the file's", 1};
    /* trackers naming nothing */
    snprintf(files[4], sizeof files[4], "%s4", bad);
    bad_copy(good, files[4], "", 3);
    snprintf(p, sizeof p, "%s/latest_checkpointed_iteration.txt", files[4]);
    FILE *f = fopen(p, "w");
    fputs("7\n", f);
    fclose(f);
    cases[n++] = (struct bad_case){"a tracker naming a missing one", g.dp2, files[4], "names iteration 7, but", 2};
    snprintf(files[5], sizeof files[5], "%s5", bad);
    bad_copy(good, files[5], "", 3);
    snprintf(p, sizeof p, "%s/latest_checkpointed_iteration.txt", files[5]);
    f = fopen(p, "w");
    fputs("release\n", f);
    fclose(f);
    cases[n++] = (struct bad_case){"a tracker naming no iteration", g.one, files[5], "names no iteration", 1};
    /* a checkpoint's model file alone is taken for Hugging Face's weights, whose names it lacks; an interrupted
     * save's directory */
    snprintf(files[6], sizeof files[6], "%s/iter_0000002/model.safetensors", good);
    cases[n++] = (struct bad_case){"a safetensors file", g.one, files[6], "which weft's 'decoder.", 1};
    snprintf(files[7], sizeof files[7], "%s/iter_0000009.tmp", good);
    snprintf(p, sizeof p, "cp -r %s/iter_0000002 %s", good, files[7]);
    assert_int_equal(system(p), 0);
    cases[n++] = (struct bad_case){"an interrupted save", g.one, files[7], "an interrupted save", 1};
    for (int i = 0; i < n; i++) {
        WEFT_RUN(&r, cases[i].ranks, cases[i].plan, "--steps", "1", "--load", cases[i].load);
        assert_false(r.timed_out);
        if (r.status != 2 || !strstr(r.err, cases[i].expect) || strstr(r.out, "iteration      1"))
            fail_msg("%s: exit %d, expected 2 and \"%s\":\n%s%s", cases[i].what, r.status, cases[i].expect, r.out, r.err);
        char *nl = strchr(r.err, '\n');
        printf("    %-30s (%d rank%s) exit 2: %.*s\n", cases[i].what, cases[i].ranks, cases[i].ranks > 1 ? "s" : " ",
               nl ? (int)(nl - r.err) : 160, r.err);
    }
}

/* The tracker's iteration in dir (-1: none). */
static long tracker(const char *dir)
{
    char p[256];
    snprintf(p, sizeof p, "%s/latest_checkpointed_iteration.txt", dir);
    size_t n;
    char *s = wf_read_file(p, 64, &n);
    long it = s ? atol(s) : -1;
    free(s);
    return it;
}

/* Whether a save's temporary remains are in dir (an *.tmp): a save under
 * way, or one interrupted. */
static bool has_tmp(const char *dir)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    bool found = false;
    while (dp && !found && (e = readdir(dp)))
        found = strlen(e->d_name) > 4 && !strcmp(e->d_name + strlen(e->d_name) - 4, ".tmp");
    if (dp)
        closedir(dp);
    return found;
}

/* A run saving every iteration, killed (SIGKILL) after a seeded random
 * delay, six times, every other kill aimed inside a save (more kills so
 * aimed where a loaded machine let the save end first, up to twelve, so
 * that at least two land inside one): each next run (--load DIR --save DIR) finds the last
 * complete checkpoint and continues it, every logged loss the one of the
 * uninterrupted run at that iteration, to the last digit logged; nothing
 * half-written is loaded (a loaded one would not continue exactly or would
 * fail its checks). */
static void test_kill_while_saving(void **state)
{
    (void)state;
    char ck[128], log[128], ref[128];
    snprintf(ck, sizeof ck, "%s/killed", g.dir);
    snprintf(ref, sizeof ref, "%s/kill-ref.jsonl", g.dir);
    enum { KILLS = 6, MAXIT = 4096 };
    double *got = calloc(MAXIT, sizeof *got), *want = calloc(MAXIT, sizeof *want);
    srand(20261207);
    int mid_save = 0, checked = 0;
    long last = 0;
    int runs = 0; /* the killed runs */
    for (int k = 0; k < KILLS || (mid_save < KILLS / 2 - 1 && k < 2 * KILLS); k++, runs++) {
        snprintf(log, sizeof log, "%s/kill%d.jsonl", g.dir, k);
        pid_t pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1), dup2(null, 2);
            execl(weft_bin(), weft_bin(), "run", g.one, "--steps", "100000", "--save", ck, "--load", ck, "--save-interval", "1",
                  "--log", log, (char *)NULL);
            _exit(127);
        }
        long before = tracker(ck);
        long delay = 500000 + (long)(rand() % 800) * 1000; /* microseconds, 0.5 to 1.3 s: MPI's start, then steps and saves */
        nanosleep(&(struct timespec){delay / 1000000, delay % 1000000 * 1000}, NULL);
        if (k % 2 || k >= KILLS) { /* every other kill inside a save: once its .tmp directory appears, 0 to 3 ms on */
            double t0 = wf_seconds();
            while (!has_tmp(ck) && wf_seconds() - t0 < 10)
                ;
            long more = rand() % 3000;
            nanosleep(&(struct timespec){0, more * 1000}, NULL);
            delay += (long)((wf_seconds() - t0) * 1e6);
        }
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        assert_true(WIFSIGNALED(st));
        mid_save += has_tmp(ck);
        long now = tracker(ck);
        assert_true(now >= before);
        int top = read_losses(log, got, MAXIT);
        for (long it = (before > 0 ? before : 0) + 1; it <= top; it++)
            if (got[it] == 0)
                fail_msg("kill %d: iteration %ld missing from the log", k, it);
        printf("    kill %d after %.2f s: the tracker at %ld (was %ld), %s\n", k + 1, (double)delay / 1e6, now, before,
               has_tmp(ck) ? "a save's .tmp directory left" : "no save under way");
        last = top > last ? top : last;
        (void)checked;
    }
    struct run r;
    snprintf(log, sizeof log, "%s/kill-last.jsonl", g.dir);
    long at = tracker(ck); /* -1 where every run was killed before its first save (a slow start): then from the seed */
    WEFT_RUN(&r, 1, g.one, "--steps", "2", "--load", ck, "--save", ck, "--log", log);
    if (r.status)
        fail_msg("the run after the kills: %s%s", r.out, r.err);
    assert_false(has_tmp(ck)); /* the next save removed what the killed ones left */
    int top = read_losses(log, got, MAXIT);
    assert_int_equal(top, (at > 0 ? at : 0) + 2);
    last = top > last ? top : last;
    char steps[24];
    snprintf(steps, sizeof steps, "%ld", last);
    WEFT_RUN(&r, 1, g.one, "--steps", steps, "--log", ref);
    must(r.status, "the uninterrupted run");
    assert_int_equal(read_losses(ref, want, MAXIT), last);
    for (int k = 0; k <= runs; k++) { /* every run's logged losses are the uninterrupted run's */
        double one[MAXIT];
        memset(one, 0, sizeof one);
        if (k < runs)
            snprintf(log, sizeof log, "%s/kill%d.jsonl", g.dir, k);
        else
            snprintf(log, sizeof log, "%s/kill-last.jsonl", g.dir);
        int t = read_losses(log, one, MAXIT);
        for (int it = 1; it <= t; it++)
            if (one[it] != 0 && one[it] != want[it])
                fail_msg("run %d: iteration %d's loss %.9g, uninterrupted %.9g", k, it, one[it], want[it]);
            else if (one[it] != 0)
                checked++;
    }
    assert_true(checked >= at + 2); /* every iteration was logged (line by line) by some run, and each checked */
    assert_true(mid_save >= KILLS / 2 - 1); /* the kills aimed at a save mostly found one (it may have just ended) */
    printf("    %d kills (%d during a save), then the last complete checkpoint (iteration %ld) resumed: %d logged losses, each the "
           "uninterrupted run's\n", runs, mid_save, at, checked);
    free(got), free(want);
}

/* A disk that fills while saving (the file size limit, RLIMIT_FSIZE, under
 * the checkpoint's size): the run says so and exits 1; the tracker still
 * names the earlier checkpoint, which still loads; nothing of the failed
 * save is left. */
static void test_full_disk(void **state)
{
    (void)state;
    char ck[128], cmd[512], plan[128];
    snprintf(ck, sizeof ck, "%s/full", g.dir);
    snprintf(plan, sizeof plan, "%s/wide.plan", g.dir);
    compile_gpt2(plan, 1, "--hidden-size 128"); /* model.safetensors 1.9 MB: well above the plan's CPU kernels */
    struct run r;
    WEFT_RUN(&r, 1, plan, "--steps", "2", "--save", ck);
    must(r.status, "the first save");
    /* 1.5 MB a file at most (ulimit -f counts 512-byte blocks in sh): the plan's CPU kernels, which weft run writes to
     * a temporary file, fit; model.safetensors does not.  PMIx's shared-memory store (Open MPI's start) would pass the
     * limit itself: its hash store instead */
    snprintf(cmd, sizeof cmd, "ulimit -f 3000 && PMIX_MCA_gds=hash exec %s run %s --steps 2 --load %s --save %s", weft_bin(), plan, ck, ck);
    const char *argv[] = {"sh", "-c", cmd, NULL};
    run_mpi(&r, argv);
    if (r.status != 1 || !strstr(r.err, "File too large") || !strstr(r.err, "checkpoint of iteration 4 not saved"))
        fail_msg("expected exit 1 naming the full file: exit %d\n%s%s", r.status, r.out, r.err);
    printf("    a full disk: exit 1; it said:\n%s", r.err);
    assert_int_equal(tracker(ck), 2);
    char p[256];
    snprintf(p, sizeof p, "%s/iter_0000004", ck);
    struct stat sb;
    assert_int_not_equal(stat(p, &sb), 0);
    assert_false(has_tmp(ck));
    WEFT_RUN(&r, 1, plan, "--steps", "1", "--load", ck);
    must(r.status, "loading the earlier checkpoint");
    printf("    the tracker still at 2, which loads; no iter_0000004, no .tmp left\n");

    /* At tp 2, the limit on rank 1 alone: rank 0 creates the files at their full size, rank 1's writes past the limit
     * fail (EFBIG) while rank 0's succeed; the ranks agree that the save failed, and both exit 1.  (Open MPI warns that
     * rank 1's shared-memory segment could not be sized under the limit, and carries on.) */
    char tp2[128];
    snprintf(tp2, sizeof tp2, "%s/wide-tp2.plan", g.dir);
    compile_gpt2(tp2, 2, "--hidden-size 128 --tp 2");
    snprintf(cmd, sizeof cmd, "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then ulimit -f 3000; fi; exec %s run %s --steps 2 --load %s --save %s",
             weft_bin(), tp2, ck, ck);
    const char *argv2[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "PMIX_MCA_gds=hash", "sh", "-c", cmd, NULL};
    run_mpi(&r, argv2);
    if (r.status != 1 || !strstr(r.err, "tensor '") || !strstr(r.err, "rank 1 on ") || !strstr(r.err, "File too large") ||
        !strstr(r.err, "checkpoint of iteration 4 not saved"))
        fail_msg("expected exit 1 with rank 1's write failing: exit %d\n%s%s", r.status, r.out, r.err);
    assert_false(r.timed_out);
    assert_int_equal(tracker(ck), 2);
    assert_int_not_equal(stat(p, &sb), 0);
    assert_false(has_tmp(ck));
    printf("    one rank's writes failing (tp 2, rank 1 limited): both exit 1, the tracker still at 2; it said:\n%s", r.err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_is_exact),
        cmocka_unit_test(test_any_layout_loads_it),
        cmocka_unit_test(test_other_models_resume),
        cmocka_unit_test(test_vocab_padding),
        cmocka_unit_test(test_bad_checkpoints),
        cmocka_unit_test(test_kill_while_saving),
        cmocka_unit_test(test_full_disk),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
