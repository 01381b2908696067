/* cmd_data.c: `weft data --input FILE.jsonl --output-prefix P`: Megatron's
 * tools/preprocess_data.py, in C: JSON lines into an indexed dataset. */
#include "cli.h"
#include "data.h"
#include "json.h"
#include "tokenizer.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: weft data --input FILE.jsonl --output-prefix P [--json-keys text ...]\n"
    "                 [--tokenizer-type ByteLevel|GPT2BPETokenizer|NullTokenizer]\n"
    "                 [--vocab-file vocab.json] [--merge-file merges.txt] [--vocab-size N] [--append-eod]\n"
    "\n"
    "Make training data as Megatron's tools/preprocess_data.py makes it: each line\n"
    "of FILE.jsonl is a JSON object, a document; the text under each key (a string,\n"
    "or a list of strings: its sentences) is tokenized and written, one sequence a\n"
    "document, to P_KEY_document.bin and P_KEY_document.idx, Megatron's indexed\n"
    "dataset byte for byte (uint16 tokens below 65500 ids, else int32), which\n"
    "weft run --data-path P_KEY_document (and Megatron's --data-path) reads.\n"
    "  --json-keys K...       the keys to read (default text)\n"
    "  --tokenizer-type T     ByteLevel (default): each UTF-8 byte an id, EOD 256, 257 ids;\n"
    "                         GPT2BPETokenizer: GPT-2's byte-level BPE from --vocab-file and\n"
    "                         --merge-file, EOD <|endoftext|>;\n"
    "                         NullTokenizer: the text is ids separated by spaces, below\n"
    "                         --vocab-size N, EOD N\n"
    "  --append-eod           end each document with the EOD token\n"
    "A line that is not a JSON object, a missing key, a text that does not tokenize\n"
    "(an id out of range) exit 2 naming FILE:LINE, and leave no output files.\n";

#define MAX_KEYS 16

int cmd_data(int argc, char **argv)
{
    const char *input = NULL, *prefix = NULL, *type = "ByteLevel", *vocab_file = NULL, *merge_file = NULL;
    const char *keys[MAX_KEYS] = {"text"};
    int n_keys = 1;
    long long null_vocab = -1;
    bool eod = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "--input") && has)
            input = argv[++i];
        else if (!strcmp(a, "--output-prefix") && has)
            prefix = argv[++i];
        else if (!strcmp(a, "--tokenizer-type") && has)
            type = argv[++i];
        else if (!strcmp(a, "--vocab-file") && has)
            vocab_file = argv[++i];
        else if (!strcmp(a, "--merge-file") && has)
            merge_file = argv[++i];
        else if (!strcmp(a, "--append-eod"))
            eod = true;
        else if (!strcmp(a, "--vocab-size") && has) {
            char *end;
            null_vocab = strtoll(argv[++i], &end, 10);
            if (*end || null_vocab < 1) {
                fprintf(stderr, "weft data: --vocab-size %s: expected a count of ids above 0\n", argv[i]);
                return EXIT_BAD_INPUT;
            }
        } else if (!strcmp(a, "--json-keys") && has) {
            n_keys = 0;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) && n_keys < MAX_KEYS)
                keys[n_keys++] = argv[++i];
            if (!n_keys) {
                fprintf(stderr, "weft data: --json-keys: expected one key or more\n");
                return EXIT_BAD_INPUT;
            }
        } else {
            fprintf(stderr, "weft data: %s: unknown flag or missing value\n%s", a, usage);
            return EXIT_BAD_INPUT;
        }
    }
    if (!input || !prefix) {
        fprintf(stderr, "weft data: %s is required\n%s", input ? "--output-prefix" : "--input", usage);
        return EXIT_BAD_INPUT;
    }
    enum tokenizer_type tt;
    if (!strcmp(type, "ByteLevel"))
        tt = TOKENIZER_BYTE_LEVEL;
    else if (!strcmp(type, "GPT2BPETokenizer"))
        tt = TOKENIZER_GPT2_BPE;
    else if (!strcmp(type, "NullTokenizer"))
        tt = TOKENIZER_NULL;
    else {
        fprintf(stderr, "weft data: --tokenizer-type %s: expected ByteLevel, GPT2BPETokenizer or NullTokenizer\n", type);
        return EXIT_BAD_INPUT;
    }
    if (tt == TOKENIZER_NULL && null_vocab < 0) {
        fprintf(stderr, "weft data: --tokenizer-type NullTokenizer needs --vocab-size N (ids 0..N-1, EOD N)\n");
        return EXIT_BAD_INPUT;
    }
    struct diag d;
    diag_init(&d);
    struct tokenizer *t = tokenizer_open(tt, vocab_file, merge_file, null_vocab, &d);
    FILE *in = t ? fopen(input, "r") : NULL;
    if (t && !in)
        diag_error(&d, input, 0, "cannot read it (%s)", strerror(errno));
    if (t && eod && tokenizer_eod(t) < 0)
        diag_error(&d, vocab_file, 0, "--append-eod: the vocabulary has no \"<|endoftext|>\"");
    struct data_writer *w[MAX_KEYS] = {0};
    int dtype = t ? data_dtype_for_vocab(tokenizer_vocab(t)) : DATA_UINT16;
    for (int k = 0; k < n_keys && !d.n_errors; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s_%s_document", prefix, keys[k]);
        w[k] = data_writer_open(path, dtype, &d);
    }
    char *line = NULL, err[256];
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int64_t docs = 0, tokens[MAX_KEYS] = {0};
    struct tokenizer_ids ids = {0}, lens = {0};
    while (!d.n_errors && (len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        struct json_value *v = json_parse(line, (size_t)len, err, sizeof err);
        if (!v || v->type != JSON_OBJECT) {
            diag_error(&d, input, (int)lineno, "%s%s", v ? "expected a JSON object (a document)" : "not JSON: ", v ? "" : err);
            json_free(v);
            break;
        }
        for (int k = 0; k < n_keys && !d.n_errors; k++) {
            const struct json_value *x = json_get(v, keys[k]);
            bool list = x && x->type == JSON_ARRAY;
            if (!x || (x->type != JSON_STRING && !list)) {
                diag_error(&d, input, (int)lineno, "%s \"%s\"%s", x ? "the value of" : "no key", keys[k],
                           x ? " is no string or list of strings" : " (--json-keys)");
                break;
            }
            ids.n = lens.n = 0;
            for (int s = 0; s < (list ? x->n : 1) && !d.n_errors; s++) { /* each sentence: its ids, its length (none if empty) */
                const struct json_value *sv = list ? &x->items[s] : x;
                int64_t before = ids.n;
                if (sv->type != JSON_STRING)
                    diag_error(&d, input, (int)lineno, "\"%s\"[%d] is not a string", keys[k], s);
                else if (tokenizer_encode(t, sv->string, sv->len, &ids, err, sizeof err))
                    diag_error(&d, input, (int)lineno, "\"%s\": %s", keys[k], err);
                else if (ids.n > before) {
                    WF_GROW(lens.v, lens.n, lens.cap);
                    lens.v[lens.n++] = ids.n - before;
                }
            }
            if (d.n_errors)
                break;
            if (ids.n && eod) { /* preprocess_data.py: the EOD ends the document's last sentence */
                WF_GROW(ids.v, ids.n, ids.cap);
                ids.v[ids.n++] = tokenizer_eod(t);
                lens.v[lens.n - 1]++;
            }
            if (data_writer_add_document(w[k], ids.v, ids.n, lens.v, (int)lens.n))
                diag_error(&d, NULL, 0, "%s_%s_document.bin: writing it failed (%s)", prefix, keys[k], strerror(errno));
            tokens[k] += ids.n;
        }
        json_free(v);
        docs++;
    }
    for (int k = 0; k < n_keys; k++) {
        char path[1040];
        if (w[k] && data_writer_close(w[k], &d) == 0 && !d.n_errors)
            printf("%s: %lld documents, %lld tokens (%s, %lld ids) -> %s_%s_document.bin, .idx\n", input, (long long)docs,
                   (long long)tokens[k], dtype == DATA_UINT16 ? "uint16" : "int32", (long long)tokenizer_vocab(t), prefix, keys[k]);
        else if (w[k]) /* no half-made dataset left behind */
            for (int e = 0; e < 2; e++) {
                snprintf(path, sizeof path, "%s_%s_document.%s", prefix, keys[k], e ? "idx" : "bin");
                unlink(path);
            }
    }
    if (in)
        fclose(in);
    free(line);
    free(ids.v);
    free(lens.v);
    tokenizer_free(t);
    diag_print(&d, stderr);
    int rc = d.n_errors ? EXIT_BAD_INPUT : EXIT_OK;
    diag_free(&d);
    return rc;
}
