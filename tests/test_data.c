/* test_data.c: Megatron's data in weft: the indexed dataset, GPTDataset's
 * samples, weft data (byte-level and GPT-2 BPE) and weft run --data-path
 * with validation, each against what Megatron-Core itself made
 * (tests/data/, by tools/make_data_fixtures.py) or against one rank. */
#include "testing.h"
#include "data.h"
#include "json.h"

#include <math.h>

#define FIX "tests/data/"

/* Megatron-Core 0.16.1's GPTDataset samples (tests/data/samples.txt: a
 * config line, then "train I: ids" and "valid I: ids") equal weft's, token
 * for token: two seeds, sequence lengths and splits; the first config asks
 * three epochs of train (the last shuffled apart, under 80% used) and ten
 * of valid.  This covers the split's bounds, the epochs, numpy's MT19937 and
 * shuffle, the document, sample and shuffle indices. */
static void test_samples_match_megatron(void **state)
{
    (void)state;
    struct diag d;
    diag_init(&d);
    struct data_indexed D;
    if (data_indexed_open(&D, FIX "megatron_text_document", 257, &d))
        fail_msg("%s", diag_first_error(&d));
    FILE *f = fopen(FIX "samples.txt", "r");
    assert_non_null(f);
    struct data_gpt train = {0}, valid = {0};
    int64_t seq = 0;
    int checked = 0, configs = 0;
    static char line[65536];
    int32_t got[4096];
    while (fgets(line, sizeof line, f)) {
        unsigned seed;
        long long s, n_train, n_valid, i;
        char split_s[64], which[8];
        int at;
        if (sscanf(line, "config %u %lld %63s %lld %lld", &seed, &s, split_s, &n_train, &n_valid) == 5) {
            double split[3];
            data_gpt_free(&train);
            data_gpt_free(&valid);
            seq = s, configs++;
            if (data_split_parse(split_s, split, &d) || data_gpt_build(&train, &D, split, DATA_SPLIT_TRAIN, s, n_train, seed, &d) ||
                data_gpt_build(&valid, &D, split, DATA_SPLIT_VALID, s, n_valid, seed, &d))
                fail_msg("%s", diag_first_error(&d));
            printf("    seed %u seq %lld split %s: train %lld samples in %d epochs, valid %lld in %d\n", seed, s, split_s,
                   (long long)train.n_samples, train.num_epochs, (long long)valid.n_samples, valid.num_epochs);
            continue;
        }
        assert_int_equal(sscanf(line, "%7s %lld:%n", which, &i, &at), 2);
        data_gpt_sample(!strcmp(which, "train") ? &train : &valid, i, got);
        char *p = line + at;
        for (int64_t k = 0; k <= seq; k++) {
            long want = strtol(p, &p, 10);
            if (want != got[k])
                fail_msg("seed config %d, %s sample %lld, token %lld: weft %d, Megatron %ld", configs, which, i, (long long)k, got[k], want);
        }
        checked++;
    }
    fclose(f);
    printf("    %d samples of %d configs equal Megatron-Core's\n", checked, configs);
    assert_true(checked >= 80);
    data_gpt_free(&train);
    data_gpt_free(&valid);
    data_indexed_close(&D);
    diag_free(&d);
}

/* Whether two files hold the same bytes. */
static bool same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = wf_read_file(a, 1 << 26, &na), *y = wf_read_file(b, 1 << 26, &nb);
    bool same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* weft data writes the bytes Megatron-Core's IndexedDatasetBuilder wrote
 * for the same documents (byte-level, --append-eod; empty documents among
 * them: a boundary and no sequence). */
static void test_weft_data_byte_identical(void **state)
{
    (void)state;
    struct run r;
    run_weft(&r, "data", "--input", FIX "docs.jsonl", "--output-prefix", "/tmp/weft-test-data", "--append-eod", NULL);
    if (r.status)
        fail_msg("weft data exited %d: %s", r.status, r.err);
    printf("    %s", r.out);
    assert_true(same_file("/tmp/weft-test-data_text_document.bin", FIX "megatron_text_document.bin"));
    assert_true(same_file("/tmp/weft-test-data_text_document.idx", FIX "megatron_text_document.idx"));
    unlink("/tmp/weft-test-data_text_document.bin");
    unlink("/tmp/weft-test-data_text_document.idx");
}

/* GPT-2 BPE through weft data: each text's ids equal the reference's
 * (OpenAI's encoder.py, which transformers' GPT2Tokenizer agreed with when
 * the fixture was made) on accents, CJK, Hangul, emoji, Greek, Cyrillic,
 * Arabic, Devanagari, Roman numerals, whitespace runs, tabs, newlines and
 * CRLF, contractions in either case, digits and punctuation. */
static void test_bpe_matches_reference(void **state)
{
    (void)state;
    struct run r;
    run_weft(&r, "data", "--input", FIX "bpe_texts.jsonl", "--output-prefix", "/tmp/weft-test-bpe", "--tokenizer-type",
             "GPT2BPETokenizer", "--vocab-file", FIX "bpe_vocab.json", "--merge-file", FIX "bpe_merges.txt", NULL);
    if (r.status)
        fail_msg("weft data exited %d: %s", r.status, r.err);
    struct diag d;
    diag_init(&d);
    struct data_indexed D;
    if (data_indexed_open(&D, "/tmp/weft-test-bpe_text_document", 600, &d))
        fail_msg("%s", diag_first_error(&d));
    FILE *f = fopen(FIX "bpe_ids.txt", "r");
    static char line[65536];
    int64_t s = 0, total = 0;
    for (; fgets(line, sizeof line, f); s++) {
        assert_true(s < D.n_seqs);
        int64_t want[4096], m = 0;
        char *p = line, *e;
        for (long v = strtol(p, &e, 10); e != p && m < 4096; p = e, v = strtol(p, &e, 10))
            want[m++] = v;
        if (m != D.lengths[s])
            fail_msg("text %lld: weft made %d ids, the reference %lld", (long long)s + 1, D.lengths[s], (long long)m);
        for (int64_t k = 0; k < m; k++)
            if (data_indexed_token(&D, s, k) != want[k])
                fail_msg("text %lld, id %lld: weft %lld, the reference %lld", (long long)s + 1, (long long)k,
                         (long long)data_indexed_token(&D, s, k), (long long)want[k]);
        total += D.lengths[s];
    }
    fclose(f);
    assert_int_equal(s, D.n_seqs);
    printf("    %lld texts, %lld ids: as the reference\n", (long long)s, (long long)total);
    data_indexed_close(&D);
    diag_free(&d);
    unlink("/tmp/weft-test-bpe_text_document.bin");
    unlink("/tmp/weft-test-bpe_text_document.idx");
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* What preprocess_data.py writes for a NullTokenizer of 70000 ids (EOD
 * 70000: 70001 ids, past DType.optimal_dtype's 65500, so int32) and for a
 * document given as sentences (a sequence each; an empty one none, the EOD
 * ending the last): each expected value from those rules. */
static void test_weft_data_null_and_sentences(void **state)
{
    (void)state;
    write_text("/tmp/weft-test-null.jsonl", "{\"text\": \"1 2 3\"}\n{\"text\": \"69999 0\"}\n{\"text\": \"\"}\n");
    struct run r;
    run_weft(&r, "data", "--input", "/tmp/weft-test-null.jsonl", "--output-prefix", "/tmp/weft-test-null", "--tokenizer-type",
             "NullTokenizer", "--vocab-size", "70000", "--append-eod", NULL);
    if (r.status)
        fail_msg("weft data exited %d: %s", r.status, r.err);
    struct diag d;
    diag_init(&d);
    struct data_indexed D;
    if (data_indexed_open(&D, "/tmp/weft-test-null_text_document", 70001, &d))
        fail_msg("%s", diag_first_error(&d));
    assert_int_equal(D.dtype, DATA_INT32);
    assert_int_equal(D.n_seqs, 2);
    assert_int_equal(D.n_docs, 4); /* three documents, the empty one a boundary only */
    static const int64_t want[2][4] = {{1, 2, 3, 70000}, {69999, 0, 70000}};
    static const int lens[2] = {4, 3};
    for (int s = 0; s < 2; s++) {
        assert_int_equal(D.lengths[s], lens[s]);
        for (int k = 0; k < lens[s]; k++)
            assert_int_equal(data_indexed_token(&D, s, k), want[s][k]);
    }
    data_indexed_close(&D);
    write_text("/tmp/weft-test-null.jsonl", "{\"text\": [\"a b\", \"\", \"c\"]}\n");
    run_weft(&r, "data", "--input", "/tmp/weft-test-null.jsonl", "--output-prefix", "/tmp/weft-test-null", "--append-eod", NULL);
    if (r.status)
        fail_msg("weft data exited %d: %s", r.status, r.err);
    if (data_indexed_open(&D, "/tmp/weft-test-null_text_document", 257, &d))
        fail_msg("%s", diag_first_error(&d));
    assert_int_equal(D.dtype, DATA_UINT16);
    assert_int_equal(D.n_seqs, 2); /* "a b" and "c" + EOD */
    assert_int_equal(D.lengths[0], 3);
    assert_int_equal(D.lengths[1], 2);
    assert_int_equal(data_indexed_token(&D, 1, 0), 'c');
    assert_int_equal(data_indexed_token(&D, 1, 1), 256);
    data_indexed_close(&D);
    diag_free(&d);
    unlink("/tmp/weft-test-null.jsonl");
    unlink("/tmp/weft-test-null_text_document.bin");
    unlink("/tmp/weft-test-null_text_document.idx");
}

/* weft data's bad inputs: each exits 2 naming the file and line, and writes nothing. */
static void test_weft_data_bad_input(void **state)
{
    (void)state;
    static const struct {
        const char *text, *type, *expect;
    } cases[] = {
        {"{\"text\": \"fine\"}\nnot json\n", "ByteLevel", "/tmp/weft-test-bad.jsonl:2:"},
        {"{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n", "ByteLevel", "/tmp/weft-test-bad.jsonl:2: no key \"text\""},
        {"{\"text\": \"1 2 3\"}\n{\"text\": \"4 99 5\"}\n", "NullTokenizer", "/tmp/weft-test-bad.jsonl:2: \"text\": \"99\" is not a token id"},
        {"[1, 2]\n", "ByteLevel", "/tmp/weft-test-bad.jsonl:1: expected a JSON object"},
    };
    for (size_t c = 0; c < WF_COUNT(cases); c++) {
        write_text("/tmp/weft-test-bad.jsonl", cases[c].text);
        struct run r;
        run_weft(&r, "data", "--input", "/tmp/weft-test-bad.jsonl", "--output-prefix", "/tmp/weft-test-bad", "--tokenizer-type",
                 cases[c].type, "--vocab-size", "50", NULL);
        printf("    exit %d: %s", r.status, r.err);
        assert_int_equal(r.status, 2);
        assert_non_null(strstr(r.err, cases[c].expect));
        assert_int_equal(access("/tmp/weft-test-bad_text_document.bin", F_OK), -1); /* no half-made dataset */
    }
    struct run r;
    run_weft(&r, "data", "--input", "/tmp/weft-test-bad.jsonl", "--output-prefix", "/tmp/weft-test-bad", "--tokenizer-type",
             "GPT2BPETokenizer", "--vocab-file", "/tmp/weft-test-no-such-vocab.json", "--merge-file", FIX "bpe_merges.txt", NULL);
    printf("    exit %d: %s", r.status, r.err);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "/tmp/weft-test-no-such-vocab.json"));
    unlink("/tmp/weft-test-bad.jsonl");
    unlink("/tmp/weft-test-bad_text_document.bin");
    unlink("/tmp/weft-test-bad_text_document.idx");
}

/* Compile tiny GPT-2 (or another model) for CPU ranks: world ranks, a global batch of 4, lr 1e-3, and extra flags. */
static void compile_cpu_plan(const char *model, int world, const char *extra, const char *plan)
{
    char w[16], flags[256];
    snprintf(w, sizeof w, "%d", world);
    snprintf(flags, sizeof flags, "%s", extra);
    const char *args[40] = {"compile", model, "--variant", "tiny", "--world-size", w, "--global-batch-size", "4", "--lr", "1e-3",
                            "--adam-eps", "1e-4", "--arch", "cpu", "-o", plan};
    int n = 16;
    for (char *f = strtok(flags, " "); f && n < 38; f = strtok(NULL, " "))
        args[n++] = f;
    args[n] = NULL;
    struct run r;
    run_weftv(&r, args);
    if (r.status)
        fail_msg("weft compile %s %s: %s", model, extra, r.err);
}

/* Copy a file, then let `edit` change its bytes (NULL: as is); length -1 keeps the length. */
static void copy_edit(const char *from, const char *to, void (*edit)(char *, size_t *))
{
    size_t n;
    char *b = wf_read_file(from, 1 << 26, &n);
    assert_non_null(b);
    if (edit)
        edit(b, &n);
    FILE *f = fopen(to, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
    free(b);
}

static void truncate_bin(char *b, size_t *n) { (void)b, *n -= 3; }
static void bad_magic(char *b, size_t *n) { (void)n, b[0] = 'X'; }
static void version_2(char *b, size_t *n) { (void)n, b[9] = 2; }
static void big_token(char *b, size_t *n) { (void)n, b[40] = 0x58, b[41] = 0x02; } /* token 20: 600, past tiny GPT-2's 512 ids */
static void count_off(char *b, size_t *n) { (void)n, b[18]++; }                    /* one sequence more than the arrays hold */

/* weft run --data-path with a bad dataset: exit 2 before any step, the
 * error naming both files and what is wrong; a file one rank alone cannot
 * open stops every rank at once; and a plan whose inputs are not a
 * decoder's tokens and labels (T5) is refused. */
static void test_run_bad_data(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    const char *plan = "/tmp/weft-test-data-gpt2.plan";
    compile_cpu_plan("models/gpt2.xml", 1, "", plan);
    static const struct {
        void (*bin)(char *, size_t *), (*idx)(char *, size_t *);
        const char *expect;
    } cases[] = {
        {truncate_bin, NULL, "the .bin is truncated"},
        {NULL, bad_magic, "bad magic"},
        {NULL, version_2, "index version 2"},
        {big_token, NULL, "id 600, past the plan's vocabulary of 512"},
        {NULL, count_off, "the sizes disagree"},
    };
    for (size_t c = 0; c < WF_COUNT(cases); c++) {
        copy_edit(FIX "megatron_text_document.bin", "/tmp/weft-test-baddata.bin", cases[c].bin);
        copy_edit(FIX "megatron_text_document.idx", "/tmp/weft-test-baddata.idx", cases[c].idx);
        struct run r;
        run_mpi(&r, (const char *const[]){weft_bin(), "run", plan, "--steps", "1", "--data-path", "/tmp/weft-test-baddata", NULL});
        printf("    exit %d: %s", r.status, r.err);
        assert_int_equal(r.status, 2);
        assert_non_null(strstr(r.err, cases[c].expect));
        assert_non_null(strstr(r.err, "/tmp/weft-test-baddata.bin"));
        assert_non_null(strstr(r.err, "/tmp/weft-test-baddata.idx"));
        assert_null(strstr(r.out, "iteration "));
    }
    unlink("/tmp/weft-test-baddata.bin");
    unlink("/tmp/weft-test-baddata.idx");
    /* a file only rank 0 fails on (its --log): both ranks stop at once, none waits for the other */
    const char *two = "/tmp/weft-test-data-dp2.plan";
    compile_cpu_plan("models/gpt2.xml", 2, "", two);
    struct run r2;
    time_t t0 = time(NULL);
    run_mpi(&r2, (const char *const[]){"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", weft_bin(), "run", two, "--steps", "1",
                                       "--data-path", FIX "megatron_text_document", "--log", "/nonexistent/weft.jsonl", NULL});
    printf("    exit %d after %lld s: %.*s\n", r2.status, (long long)(time(NULL) - t0), (int)strcspn(r2.err, "\n"), r2.err);
    assert_int_not_equal(r2.status, 0);
    assert_false(r2.timed_out);
    assert_non_null(strstr(r2.err, "--log /nonexistent/weft.jsonl: cannot write it"));
    unlink(two);
    const char *t5 = "/tmp/weft-test-data-t5.plan";
    compile_cpu_plan("models/t5.xml", 1, "", t5);
    struct run r;
    run_mpi(&r, (const char *const[]){weft_bin(), "run", t5, "--steps", "1", "--data-path", FIX "megatron_text_document", NULL});
    printf("    exit %d: %s", r.status, r.err);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--data-path feeds a decoder's token ids and their labels"));
    unlink(t5);
    unlink(plan);
}

/* The real text for the runs: the GPL's paragraphs as JSON lines, through
 * weft data (byte-level, EOD after each). */
static const char *gpl_data(void)
{
    static const char *prefix = "/tmp/weft-test-gpl";
    size_t n;
    char *text = wf_read_file("/usr/share/common-licenses/GPL-3", 1 << 20, &n);
    if (!text)
        return NULL;
    FILE *f = fopen("/tmp/weft-test-gpl.jsonl", "w");
    for (char *p = text, *end; *p; p = end) { /* paragraphs: text up to a blank line, a JSON line each */
        end = strstr(p, "\n\n");
        end = end ? end + 2 : p + strlen(p);
        char keep = *end;
        *end = 0;
        struct json j;
        json_init(&j, f);
        json_begin_object(&j, NULL);
        json_string(&j, "text", p);
        json_end_object(&j);
        json_finish(&j);
        *end = keep;
    }
    fclose(f);
    free(text);
    struct run r;
    run_weft(&r, "data", "--input", "/tmp/weft-test-gpl.jsonl", "--output-prefix", prefix, "--append-eod", NULL);
    if (r.status)
        fail_msg("weft data exited %d: %s", r.status, r.err);
    unlink("/tmp/weft-test-gpl.jsonl");
    return "/tmp/weft-test-gpl_text_document";
}

/* mpirun -np ranks weft run plan --data-path data --steps steps [more]: the
 * logged losses, and the validation losses (NAN where none). */
static void run_data(const char *plan, int ranks, const char *data, int steps, const char *more, double *loss, double *val)
{
    char np[16], n[16], log[64], flags[128];
    snprintf(np, sizeof np, "%d", ranks);
    snprintf(n, sizeof n, "%d", steps);
    snprintf(log, sizeof log, "%s.jsonl", plan);
    snprintf(flags, sizeof flags, "%s", more);
    const char *argv[40] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np, weft_bin(), "run", plan, "--steps", n,
                            "--log", log, "--data-path", data, "--split", "949,50,1"};
    int k = 16;
    for (char *f = strtok(flags, " "); f && k < 38; f = strtok(NULL, " "))
        argv[k++] = f;
    argv[k] = NULL;
    struct run r;
    run_mpi(&r, argv);
    if (r.status)
        fail_msg("weft run %s on %d ranks exited %d: %s%s", plan, ranks, r.status, r.out, r.err);
    FILE *f = fopen(log, "r");
    char line[1024], err[128];
    for (int i = 0; i < steps; i++) {
        assert_non_null(fgets(line, sizeof line, f));
        struct json_value *v = json_parse(line, strlen(line), err, sizeof err);
        assert_non_null(v);
        const struct json_value *l = json_get(v, "loss"), *vl = json_get(v, "val_loss");
        loss[i] = l->number, val[i] = vl ? vl->number : NAN;
        json_free(v);
    }
    fclose(f);
    unlink(log);
}

/* Validation loss lines as Megatron prints them, the loss falling on real
 * text; validation leaves training alone (the same training losses with
 * and without it: no update, no state touched); 2 data-parallel ranks read
 * disjoint halves of each batch and give one rank's losses, training and
 * validation; so do 2 context-parallel ranks (each its half of every
 * sequence), 2 tensor-parallel ranks, and 2 pipeline stages (forward-only
 * validation through the stages, no hang), also with virtual stages
 * (interleaved 1F1B). */
static void test_run_on_real_text(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    const char *data = gpl_data();
    if (!data)
        SKIP_BECAUSE("no /usr/share/common-licenses/GPL-3 to train on");
    enum { STEPS = 40 };
    const char *one = "/tmp/weft-test-data-1.plan";
    compile_cpu_plan("models/gpt2.xml", 1, "", one);
    double loss[STEPS], val[STEPS], plain[STEPS], pval[STEPS];
    run_data(one, 1, data, STEPS, "--eval-interval 20 --eval-iters 2", loss, val);
    run_data(one, 1, data, STEPS, "", plain, pval);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++)
        first += loss[i] / 5, last += loss[STEPS - 1 - i] / 5;
    printf("    one rank: loss %.4f (first 5 steps) -> %.4f (last 5); validation %.4f at 20, %.4f at 40\n", first, last, val[19], val[39]);
    assert_true(last < first - 0.3);
    assert_true(val[39] < val[19] && !isnan(val[19]) && isnan(val[18]));
    for (int i = 0; i < STEPS; i++)
        if (loss[i] != plain[i])
            fail_msg("step %d: loss %.9g with validation, %.9g without: validation changed the model", i + 1, loss[i], plain[i]);
    static const struct {
        int ranks;
        const char *layout, *what;
    } layouts[] = {
        {2, "", "dp 2"},
        {2, "--cp 2", "cp 2"},
        {2, "--tp 2 --sequence-parallel", "tp 2, sequence parallel"},
        {2, "--pp 2", "pp 2"},
        {2, "--pp 2 --num-layers 4 --num-layers-per-virtual-pipeline-stage 1", "pp 2, 2 virtual stages"},
    };
    enum { N = 6 };
    for (size_t c = 0; c < WF_COUNT(layouts); c++) {
        const char *many = "/tmp/weft-test-data-n.plan";
        double l1[N], v1[N], ln[N], vn[N];
        bool deeper = strstr(layouts[c].layout, "--num-layers") != NULL;
        compile_cpu_plan("models/gpt2.xml", 1, deeper ? "--num-layers 4" : "", one);
        compile_cpu_plan("models/gpt2.xml", layouts[c].ranks, layouts[c].layout, many);
        run_data(one, 1, data, N, "--eval-interval 3 --eval-iters 2", l1, v1);
        run_data(many, layouts[c].ranks, data, N, "--eval-interval 3 --eval-iters 2", ln, vn);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double dl = fabs(ln[i] - l1[i]) / l1[i], dv = isnan(v1[i]) ? 0 : fabs(vn[i] - v1[i]) / v1[i];
            if (!(dl < 1e-5) || !(dv < 1e-5) || isnan(v1[i]) != isnan(vn[i]))
                fail_msg("%s, step %d: loss %.9g (one rank %.9g), validation %.9g (one rank %.9g)", layouts[c].what, i + 1, ln[i], l1[i],
                         vn[i], v1[i]);
            worst = fmax(worst, fmax(dl, dv));
        }
        printf("    %-24s losses and validation losses within %.1e of one rank's (validation %.4f, %.4f)\n", layouts[c].what, worst,
               vn[2], vn[5]);
        unlink(many);
    }
    unlink(one);
    unlink("/tmp/weft-test-gpl_text_document.bin");
    unlink("/tmp/weft-test-gpl_text_document.idx");
}

/* Validation runs without dropout, as Megatron evaluates: tiny GPT-2 at
 * its dropout p 0.1 and at --hidden-dropout 0 give the same validation
 * loss after a step at lr 0 (the parameters unchanged, drawn from one
 * seed), while their training losses differ (dropout applies in
 * training). */
static void test_validation_without_dropout(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    const char *data = gpl_data();
    if (!data)
        SKIP_BECAUSE("no /usr/share/common-licenses/GPL-3 to train on");
    const char *dropout[2] = {"0.1", "0"}, *plan = "/tmp/weft-test-nodrop.plan";
    double loss[2][2], val[2][2];
    for (int m = 0; m < 2; m++) {
        struct run r;
        run_weft(&r, "compile", "models/gpt2.xml", "--variant", "tiny", "--hidden-dropout", dropout[m], "--global-batch-size", "4", "--lr",
                 "0", "--arch", "cpu", "-o", plan, NULL);
        if (r.status)
            fail_msg("weft compile --hidden-dropout %s: %s", dropout[m], r.err);
        run_data(plan, 1, data, 2, "--eval-interval 1 --eval-iters 2", loss[m], val[m]);
    }
    printf("    dropout 0.1 and 0: training loss %.7f and %.7f, validation %.7f and %.7f\n", loss[0][0], loss[1][0], val[0][0], val[1][0]);
    assert_true(loss[0][0] != loss[1][0]);
    assert_true(fabs(val[0][0] - val[1][0]) < 1e-6 * val[1][0]);
    unlink(plan);
    unlink("/tmp/weft-test-gpl_text_document.bin");
    unlink("/tmp/weft-test-gpl_text_document.idx");
}

/* A run on real data resumed from its checkpoint goes on with the next
 * samples, training and validation: 6 iterations straight, validating every
 * 2, against 3 + save + load + 3 on 2 data-parallel ranks: the same losses
 * and validation losses, bit for bit. */
static void test_resume_on_real_text(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    const char *data = gpl_data();
    if (!data)
        SKIP_BECAUSE("no /usr/share/common-licenses/GPL-3 to train on");
    const char *plan = "/tmp/weft-test-resume.plan";
    compile_cpu_plan("models/gpt2.xml", 2, "", plan);
    assert_int_equal(system("rm -rf /tmp/weft-test-resume.ckpt"), 0);
    double loss[6], val[6], first[3], fval[3], second[3], sval[3];
    run_data(plan, 2, data, 6, "--eval-interval 2 --eval-iters 2", loss, val);
    run_data(plan, 2, data, 3, "--eval-interval 2 --eval-iters 2 --save /tmp/weft-test-resume.ckpt", first, fval);
    run_data(plan, 2, data, 3, "--eval-interval 2 --eval-iters 2 --load /tmp/weft-test-resume.ckpt", second, sval);
    for (int i = 0; i < 6; i++) {
        double l = i < 3 ? first[i] : second[i - 3], v = i < 3 ? fval[i] : sval[i - 3];
        if (i == 2) /* the first run's last iteration also validated at its end, as Megatron does */
            v = val[i];
        if (l != loss[i] || !(v == val[i] || (isnan(v) && isnan(val[i]))))
            fail_msg("iteration %d: loss %.9g, validation %.9g resumed; %.9g, %.9g straight", i + 1, l, v, loss[i], val[i]);
    }
    printf("    6 iterations straight = 3 + save + load + 3: losses %.6f .. %.6f, validation %.6f %.6f %.6f\n", loss[0], loss[5], val[1],
           val[3], val[5]);
    assert_int_equal(system("rm -rf /tmp/weft-test-resume.ckpt"), 0);
    unlink(plan);
    unlink("/tmp/weft-test-gpl_text_document.bin");
    unlink("/tmp/weft-test-gpl_text_document.idx");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_samples_match_megatron),
        cmocka_unit_test(test_weft_data_byte_identical),
        cmocka_unit_test(test_bpe_matches_reference),
        cmocka_unit_test(test_weft_data_null_and_sentences),
        cmocka_unit_test(test_weft_data_bad_input),
        cmocka_unit_test(test_run_bad_data),
        cmocka_unit_test(test_run_on_real_text),
        cmocka_unit_test(test_validation_without_dropout),
        cmocka_unit_test(test_resume_on_real_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
