/* test_cli.c: the weft command as a user meets it: output, JSON, exit codes. */
#include "testing.h"

#include "json.h"

#include <libxml/parser.h>
#include <math.h>

static struct run *R;

static void test_check_text(void **state)
{
    (void)state;
    run_weft(R, "check", "models/gpt2.xml", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "gpt2"));
    assert_non_null(strstr(R->out, "124,439,808"));     /* total, with separators */
    assert_non_null(strstr(R->out, "7,087,872 each"));  /* one layer */
    assert_non_null(strstr(R->out, "--num-layers"));    /* the flags that size it */
    assert_non_null(strstr(R->out, "FLOPs/token"));
    assert_non_null(strstr(R->out, "474.7 MiB in fp32, 237.4 MiB in bf16"));
    assert_string_equal(R->err, "");
}

static void test_check_json(void **state)
{
    (void)state;
    run_weft(R, "check", "models/llama2.xml", "--json", NULL);
    assert_int_equal(R->status, 0);
    assert_true(R->out[0] == '{');
    assert_non_null(strstr(R->out, "\"params\": 6738415616"));
    assert_non_null(strstr(R->out, "\"model\": \"llama2\""));
    assert_non_null(strstr(R->out, "\"parts\": [\"decoder\"]"));
    assert_non_null(strstr(R->out, "\"flops_per_token\": {\"forward\": "));
    /* one object, on one line */
    assert_ptr_equal(strchr(R->out, '\n'), R->out + strlen(R->out) - 1);
}

static void test_check_flags(void **state)
{
    (void)state;
    run_weft(R, "check", "models/gpt2.xml", "--num-layers", "48", "--hidden-size=1600", "--num-attention-heads",
             "25", "--json", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "\"params\": 1557611200"));
    run_weft(R, "check", "models/gpt2.xml", "--set", "layers=1", "--variant", "tiny", "--json", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "\"layers\": 1,"));
    assert_non_null(strstr(R->out, "\"variant\": \"tiny\""));
    /* A flag overrides the variant, which overrides the file. */
    run_weft(R, "check", "models/gpt2.xml", "--variant", "tiny", "--hidden-size", "128", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "set by --hidden-size"));
    assert_non_null(strstr(R->out, "set by variant tiny"));
}

static void test_usage_errors(void **state)
{
    (void)state;
    run_weft(R, "check", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "no model file given"));
    run_weft(R, "check", "models/gpt2.xml", "--num-layers", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--num-layers needs a value"));
    run_weft(R, "check", "models/gpt2.xml", "--set", "layers", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "expected NAME=VALUE"));
    run_weft(R, "check", "models/gpt2.xml", "models/t5.xml", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "unexpected argument 'models/t5.xml'"));
    run_weft(R, "check", "models/no-such-model.xml", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "models/no-such-model.xml: cannot read: No such file or directory"));
    run_weft(R, "frobnicate", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "unknown command 'frobnicate'"));
    run_weft(R, NULL);
    assert_int_equal(R->status, 2);
}

/* Megatron's dropout flags set the probabilities of the ops that bind them
 * (models/gpt2.xml binds --hidden-dropout on its 5 dropouts); one that no op
 * binds is an error naming it and the model file unless it is 0 (nothing
 * would drop); a probability outside [0, 1) is an error naming the flag. */
static void test_dropout_flags(void **state)
{
    (void)state;
    run_weft(R, "check", "models/gpt2.xml", "--variant", "tiny", "--hidden-dropout", "0.3", "--attention-dropout", "0", NULL);
    assert_int_equal(R->status, 0);
    run_weft(R, "check", "models/gpt2.xml", "--variant", "tiny", "--attention-dropout", "0.1", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--attention-dropout 0.1: no op of models/gpt2.xml binds this flag"));
    run_weft(R, "check", "models/llama2.xml", "--variant", "tiny", "--hidden-dropout", "0.1", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--hidden-dropout 0.1: no op of models/llama2.xml binds this flag"));
    static const char *const bad[] = {"1", "-0.1", "1.5", "nan", "x"};
    for (size_t i = 0; i < WF_COUNT(bad); i++) {
        run_weft(R, "check", "models/gpt2.xml", "--hidden-dropout", bad[i], NULL);
        assert_int_equal(R->status, 2);
        assert_non_null(strstr(R->err, "--hidden-dropout"));
        assert_non_null(strstr(R->err, "expected a probability in [0, 1)"));
    }
}

/* A plan records the dropout it uses and its model FLOPs a step; weft
 * inspect shows both.  The FLOPs: weft check's training FLOPs a token
 * times the tokens of a step (tokens_per_sample is tiny's micro-batch of 2
 * x 32; a global batch of 8 is 4 of them), two counts of one model (the
 * plan's from its pipeline chunks, check's from the whole graph). */
static void test_inspect_records(void **state)
{
    (void)state;
    char plan[] = "/tmp/weft-test-records-XXXXXX";
    close(mkstemp(plan));
    run_weft(R, "compile", "models/gpt2.xml", "--variant", "tiny", "--arch", "cpu", "--world-size", "2", "--pp", "2", "--global-batch-size",
             "8", "--hidden-dropout", "0.2", "-o", plan, NULL);
    assert_int_equal(R->status, 0);
    run_weft(R, "inspect", plan, NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "  dropout   --hidden-dropout 0.2 (5 ops)\n"));
    run_weft(R, "inspect", plan, "--json", NULL);
    assert_int_equal(R->status, 0);
    char err[128];
    struct json_value *in = json_parse(R->out, strlen(R->out), err, sizeof err);
    assert_non_null(in);
    const struct json_value *drop = json_get(in, "dropout");
    assert_true(drop && drop->type == JSON_ARRAY && drop->n == 1);
    assert_string_equal(json_get(&drop->items[0], "flag")->string, "hidden-dropout");
    assert_true(json_get(&drop->items[0], "p")->number == 0.2 && json_get(&drop->items[0], "ops")->integer == 5);
    run_weft(R, "check", "models/gpt2.xml", "--variant", "tiny", "--json", NULL);
    struct json_value *check = json_parse(R->out, strlen(R->out), err, sizeof err);
    assert_non_null(check);
    double want = json_get(json_get(check, "flops_per_token"), "training")->number * json_get(check, "tokens_per_sample")->number * 4;
    double got = json_get(in, "flops_per_step")->number;
    printf("    model FLOPs a step: %.0f (weft check: %.0f)\n", got, want);
    assert_true(fabs(got - want) <= 1e-9 * want);
    json_free(in);
    json_free(check);
    unlink(plan);
}

/* The paths of an SVG whose style strokes with color (cairo writes
 * "stroke:rgb(...)") and the most line segments (" L ") one of them has
 * (a curve broken by a gap is one path of two "M"s). */
static int svg_segments(xmlNode *n, const char *color, int *paths)
{
    int most = -1;
    for (; n; n = n->next) {
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (!strcmp((const char *)n->name, "path")) {
            xmlChar *style = xmlGetProp(n, (const xmlChar *)"style"), *d = xmlGetProp(n, (const xmlChar *)"d");
            if (style && d && strstr((const char *)style, color)) {
                int segs = 0;
                for (const char *p = (const char *)d; (p = strstr(p, " L ")); p++)
                    segs++;
                most = segs > most ? segs : most;
                ++*paths;
            }
            xmlFree(style);
            xmlFree(d);
        }
        int inner = svg_segments(n->children, color, paths);
        most = inner > most ? inner : most;
    }
    return most;
}

/* weft plot: the loss (20 points), the validation loss (4, on every fifth
 * line) and tokens/s (20) of a JSONL file drawn as an SVG that parses as
 * XML with each curve a polyline of its points (n points: n - 1 segments;
 * a null loss, a skipped iteration's, breaks the line into 10 + 9 points)
 * in its color, and as a PNG (its signature, 960 x 640 in its IHDR).  Bad
 * input names file:line and exits 2. */
static void test_plot(void **state)
{
    (void)state;
    char dir[] = "/tmp/weft-test-plot-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char jsonl[96], svg[96], png[96], bad[96];
    snprintf(jsonl, sizeof jsonl, "%s/m.jsonl", dir);
    snprintf(svg, sizeof svg, "%s/loss.svg", dir);
    snprintf(png, sizeof png, "%s/loss.png", dir);
    snprintf(bad, sizeof bad, "%s/bad.jsonl", dir);
    FILE *f = fopen(jsonl, "w");
    for (int i = 1; i <= 20; i++) {
        fprintf(f, "{\"iteration\": %d, \"loss\": ", i);
        if (i == 11)
            fprintf(f, "null");
        else
            fprintf(f, "%.9g", 2 + 4.0 / i); /* no three points on a line: cairo drops the middle one */
        fprintf(f, ", \"tokens_per_s\": %d%s", 5000 + 100 * (i % 2), i % 5 ? "" : ", \"val_loss\": ");
        if (i % 5 == 0)
            fprintf(f, "%.9g", 2.2 + 4.0 / i);
        fprintf(f, "}\n");
    }
    fclose(f);
    run_weft(R, "plot", jsonl, "-o", svg, "--title", "tiny GPT-2", NULL);
    assert_int_equal(R->status, 0);
    xmlDoc *doc = xmlReadFile(svg, NULL, XML_PARSE_NONET);
    assert_non_null(doc);
    xmlNode *root = xmlDocGetRootElement(doc);
    assert_string_equal((const char *)root->name, "svg");
    int paths = 0;
    assert_int_equal(svg_segments(root, "stroke:rgb(12.2%,46.7%,70.6%)", &paths), 9 + 8); /* loss: 1..10, then 12..20 */
    paths = 0;
    assert_int_equal(svg_segments(root, "stroke:rgb(85.1%,37.3%,0.8%)", &paths), 3);  /* validation: 4 points */
    paths = 0;
    assert_int_equal(svg_segments(root, "stroke:rgb(17.2%,62.7%,17.2%)", &paths), 19); /* tokens/s: 20 points */
    xmlFreeDoc(doc);
    run_weft(R, "plot", jsonl, "-o", png, NULL);
    assert_int_equal(R->status, 0);
    unsigned char head[24];
    f = fopen(png, "rb");
    assert_true(f && fread(head, 1, sizeof head, f) == sizeof head);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    assert_memory_equal(head, "\x89PNG\r\n\x1a\n", 8);
    assert_int_equal((head[16] << 24 | head[17] << 16 | head[18] << 8 | head[19]), 960);
    assert_int_equal((head[20] << 24 | head[21] << 16 | head[22] << 8 | head[23]), 640);
    assert_true(size > 10000 && size < 2000000);
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"{\"iteration\": 1, \"loss\": 5}\n{\"iteration\": 2, \"loss\": 4.5\n", "bad.jsonl:2: not JSON"},
        {"{\"iteration\": 1, \"lr\": 5}\n\n{\"iteration\": 2, \"loss\": null}\n", "bad.jsonl:3: no loss values"},
        {"{\"loss\": 5}\n", "bad.jsonl:1: no number \"iteration\""},
        {"{\"iteration\": 1, \"loss\": \"5\"}\n", "bad.jsonl:1: \"loss\" is not a number"},
        {"[1, 2]\n", "bad.jsonl:1: not a JSON object"},
    };
    for (size_t i = 0; i < WF_COUNT(cases); i++) {
        f = fopen(bad, "w");
        fputs(cases[i].text, f);
        fclose(f);
        run_weft(R, "plot", bad, "-o", svg, NULL);
        if (R->status != 2 || !strstr(R->err, cases[i].want))
            fail_msg("case %zu: exit %d, %s; want exit 2 and \"%s\"", i, R->status, R->err, cases[i].want);
    }
    run_weft(R, "plot", "no-such.jsonl", "-o", svg, NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "no-such.jsonl: cannot read"));
    run_weft(R, "plot", jsonl, "-o", "loss.pdf", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "expected a .svg or .png file"));
    unlink(jsonl), unlink(svg), unlink(png), unlink(bad);
    rmdir(dir);
}

static void test_help(void **state)
{
    (void)state;
    run_weft(R, "--help", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "check"));
    run_weft(R, "check", "--help", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "usage: weft check"));
    run_weft(R, "ops", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "attention"));
    assert_non_null(strstr(R->out, "in=\"q k v bias?\""));
}

/* Warnings do not fail a check: an unused parameter is worth a word, not an exit. */
static void test_warning(void **state)
{
    (void)state;
    static const char xml[] = "<model name=\"w\" xmlns=\"urn:weft:model:1\"><dim name=\"h\" value=\"4\"/>"
                              "<decoder><input name=\"x\" shape=\"h\"/><param name=\"unused\" shape=\"h\"/>"
                              "<output name=\"x\"/></decoder></model>\n";
    char path[] = "/tmp/weft-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, xml, sizeof xml - 1), (ssize_t)(sizeof xml - 1));
    close(fd);
    run_weft(R, "check", path, NULL);
    unlink(path);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->err, ":1: warning: parameter 'unused' is never used"));
}

/* weft layout sizes what it lists by the layout: a chunk's ranks and a
 * rank's chunks were once cut at 4096 and 256 (the second overran a stack
 * array; AddressSanitizer caught it, a plain build printed on). */
static void test_layout_large(void **state)
{
    (void)state;
    /* dp 8192: tiny GPT-2's micro-batch is 2, so a global batch of 16384 is
     * one micro-batch per replica; its one chunk runs on every rank. */
    run_weft(R, "layout", "models/gpt2.xml", "--variant", "tiny", "--world-size", "8192", "--global-batch-size", "16384",
             NULL);
    if (R->status)
        fail_msg("%s", R->err);
    assert_non_null(strstr(R->out, "gpt2 on 8192 ranks: tp 1 x pp 1 x dp 8192\n"));
    assert_non_null(strstr(R->out, "  0-8191\n")); /* the chunk's ranks */
    assert_non_null(strstr(R->out, "verified on all 8192 ranks"));
    /* 520 layers, one a virtual stage, over pp 2: rank p runs chunks p, p+2,
     * ..., 260 of them (Megatron's interleaving), more than 256. */
    run_weft(R, "layout", "models/gpt2.xml", "--variant", "tiny", "--num-layers", "520", "--pp", "2",
             "--num-layers-per-virtual-pipeline-stage", "1", "--micro-batch-size", "1", "--global-batch-size", "4", NULL);
    if (R->status)
        fail_msg("%s", R->err);
    assert_non_null(strstr(R->out, "260 virtual stages per pipeline rank"));
    assert_non_null(strstr(R->out, "\n  1     decoder      1    0    0    0    0  1, 3, 5, 7, 9,"));
}

/* A plan is not a model: compiling one again once wrote a training plan
 * without a backward.  The second compile must refuse and write nothing. */
static void test_compile_takes_a_model(void **state)
{
    (void)state;
    char a[64], b[64];
    snprintf(a, sizeof a, "/tmp/weft-cli-%d-a.plan", (int)getpid());
    snprintf(b, sizeof b, "/tmp/weft-cli-%d-b.plan", (int)getpid());
    run_weft(R, "compile", "models/gpt2.xml", "--variant", "tiny", "--mode", "infer", "-o", a, NULL);
    if (R->status)
        fail_msg("%s", R->err);
    run_weft(R, "compile", a, "-o", b, NULL);
    unlink(a);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "-a.plan is a plan file; weft compile takes a model file (.xml)"));
    assert_int_equal(access(b, F_OK), -1); /* nothing written */
}

/* Training differentiates the loss, the first output when it is a float
 * scalar; tests/models/no-loss.xml outputs hidden states, so it trains
 * nothing: refused in the default mode, laid out forward only. */
static void test_training_needs_a_loss(void **state)
{
    (void)state;
    char plan[64];
    snprintf(plan, sizeof plan, "/tmp/weft-cli-%d-no-loss.plan", (int)getpid());
    run_weft(R, "compile", "tests/models/no-loss.xml", "-o", plan, NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "tests/models/no-loss.xml:"));
    assert_non_null(strstr(R->err, "model 'hidden_states' has no loss to train: its first output 'h' is f32"));
    assert_non_null(strstr(R->err, "use --mode infer"));
    assert_int_equal(access(plan, F_OK), -1); /* nothing written */
    run_weft(R, "layout", "tests/models/no-loss.xml", "--mode", "infer", NULL);
    if (R->status)
        fail_msg("%s", R->err);
}

/* --ep spreads experts; GPT-2 has none (no expert split, no dispatch). */
static void test_ep_needs_experts(void **state)
{
    (void)state;
    run_weft(R, "layout", "models/gpt2.xml", "--variant", "tiny", "--world-size", "2", "--ep", "2", NULL);
    assert_int_equal(R->status, 2);
    assert_non_null(strstr(R->err, "--expert-model-parallel-size (--ep) 2: models/gpt2.xml has no experts"));
    run_weft(R, "layout", "models/mixtral.xml", "--variant", "tiny", "--world-size", "2", "--ep", "2", NULL);
    if (R->status)
        fail_msg("%s", R->err);
}

/* --grad-reduce-in-bf16 needs --bf16 (exit 2 naming both); with it the
 * plan records it, and weft inspect says so, in text and JSON. */
static void test_grad_reduce_in_bf16(void **state)
{
    (void)state;
    char plan[] = "/tmp/weft-test-grb16-XXXXXX";
    close(mkstemp(plan));
    for (int k = 0; k < 2; k++) {
        if (k)
            run_weft(R, "compile", "models/gpt2.xml", "--variant", "tiny", "--world-size", "2", "--grad-reduce-in-bf16", "--arch", "cpu",
                     "-o", plan, NULL);
        else
            run_weft(R, "layout", "models/gpt2.xml", "--variant", "tiny", "--world-size", "2", "--grad-reduce-in-bf16", NULL);
        assert_int_equal(R->status, 2);
        assert_non_null(strstr(R->err, "--grad-reduce-in-bf16 needs --bf16"));
    }
    run_weft(R, "compile", "models/gpt2.xml", "--variant", "tiny", "--world-size", "2", "--global-batch-size", "4", "--bf16",
             "--grad-reduce-in-bf16", "--arch", "cpu", "-o", plan, NULL);
    if (R->status)
        fail_msg("%s", R->err);
    run_weft(R, "inspect", plan, NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "  precision bf16 weights, activations and gradients (--grad-reduce-in-bf16: accumulated and reduced in bf16)"));
    run_weft(R, "inspect", plan, "--json", NULL);
    assert_int_equal(R->status, 0);
    assert_non_null(strstr(R->out, "\"bf16\": true, \"grad_reduce_in_bf16\": true"));
    unlink(plan);
}

/* A size of 0 is no size: --world-size 0 once meant "the smallest that fits". */
static void test_sizes_positive(void **state)
{
    (void)state;
    static const char *bad[][2] = {{"--world-size", "0"}, {"--world-size", "-4"}, {"--tp", "0"},
                                   {"--global-batch-size", "0"}, {"--micro-batch-size", "0"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_weft(R, "layout", "models/gpt2.xml", bad[i][0], bad[i][1], NULL);
        char want[96];
        snprintf(want, sizeof want, "%s %s: expected a positive integer", bad[i][0], bad[i][1]);
        assert_int_equal(R->status, 2);
        if (!strstr(R->err, want))
            fail_msg("%s %s: %s", bad[i][0], bad[i][1], R->err);
    }
    run_weft(R, "layout", "models/gpt2.xml", "--world-size=0", NULL);
    assert_int_equal(R->status, 2);
    /* --epp 0 is a layout: the encoder on the decoder's first stage */
    run_weft(R, "layout", "models/t5.xml", "--variant", "tiny", "--epp", "0", NULL);
    if (R->status)
        fail_msg("%s", R->err);
}

/* Each command takes its own flags (DESIGN.md): another command's is a
 * usage error naming whose it is; an unknown one, the closest name. */
static void test_own_flags(void **state)
{
    (void)state;
    static const struct {
        const char *args[8];
        const char *want;
    } cases[] = {
        {{"check", "models/gpt2.xml", "--memory-limit", "1G"}, "weft check: --memory-limit is a flag of weft compile, not of weft check"},
        {{"layout", "models/gpt2.xml", "--arch", "sm_90"}, "weft layout: --arch is a flag of weft compile and simulate, not of weft layout"},
        {{"layout", "models/gpt2.xml", "-o", "x.svg"}, "-o is a flag of weft compile, dot and simulate, not of weft layout"},
        {{"verify", "x.plan", "--tp", "2"}, "weft verify: --tp is a layout flag of weft check, layout, compile, dot and simulate, not of weft verify"},
        {{"simulate", "models/gpt2.xml", "--lr", "1e-3"}, "--lr is an optimizer flag of weft compile, not of weft simulate"},
        {{"dot", "models/gpt2.xml", "--json"}, "--json is a flag of weft check, layout, simulate, inspect and ops, not of weft dot"},
        {{"ops", "--rank", "1"}, "weft ops: --rank is a flag of weft inspect, not of weft ops"},
        {{"inspect", "x.plan", "--rnak", "1"}, "weft inspect: unknown flag '--rnak' (did you mean '--rank'?)"},
        {{"verify", "x.plan", "--num-layers", "2"}, "weft verify: unknown flag '--num-layers'"},
        {{"check", "models/gpt2.xml", "--json=yes"}, "--json takes no value"},
        /* a model's command: a name no dimension binds, with the closest of the model's and the command's */
        {{"layout", "models/gpt2.xml", "--tpp", "2"}, "--tpp: no dimension of models/gpt2.xml is bound to this flag (did you mean '--tp'?)"},
        {{"check", "models/gpt2.xml", "--num-layer", "4"}, "(did you mean '--num-layers'?)"},
        {{"layout", "models/gpt2.xml", "--mod", "infer"}, "(did you mean '--mode'?)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_weftv(R, cases[i].args);
        if (R->status != 2 || !strstr(R->err, cases[i].want))
            fail_msg("weft %s %s: exit %d, %s; want exit 2 and \"%s\"", cases[i].args[0], cases[i].args[2], R->status,
                     R->err, cases[i].want);
        assert_string_equal(R->out, "");
    }
    /* what stays: model flags and layout flags where a model is read, --json where reported */
    run_weft(R, "check", "models/gpt2.xml", "--num-layers", "4", "--tp", "2", "--world-size", "2", "--json", NULL);
    if (R->status)
        fail_msg("%s", R->err);
    run_weft(R, "ops", "--json", NULL);
    assert_int_equal(R->status, 0);
}

int main(void)
{
    R = malloc(sizeof *R);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_text), cmocka_unit_test(test_check_json), cmocka_unit_test(test_check_flags),
        cmocka_unit_test(test_usage_errors), cmocka_unit_test(test_help), cmocka_unit_test(test_warning),
        cmocka_unit_test(test_layout_large), cmocka_unit_test(test_compile_takes_a_model),
        cmocka_unit_test(test_training_needs_a_loss), cmocka_unit_test(test_ep_needs_experts),
        cmocka_unit_test(test_sizes_positive),
        cmocka_unit_test(test_grad_reduce_in_bf16), cmocka_unit_test(test_own_flags), cmocka_unit_test(test_dropout_flags), cmocka_unit_test(test_inspect_records),
        cmocka_unit_test(test_plot),
    };
    int rc = cmocka_run_group_tests_name("cli", tests, NULL, NULL);
    free(R);
    return rc;
}
