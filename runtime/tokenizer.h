/* tokenizer.h: text into token ids, as Megatron's preprocess_data.py
 * tokenizes it, for `weft data`.
 *
 *   struct tokenizer *t = tokenizer_open(TOKENIZER_GPT2_BPE, "vocab.json", "merges.txt", 0, &d);
 *   struct tokenizer_ids ids = {0};
 *   tokenizer_encode(t, "Hello world", 11, &ids, err, sizeof err);   // ids.v[0..ids.n)
 *   tokenizer_eod(t);  tokenizer_vocab(t);
 *   free(ids.v);  tokenizer_free(t);
 *
 * BYTE_LEVEL: a byte is its id (0..255), EOD 256, 257 ids.
 * GPT2_BPE: GPT-2's (OpenAI's encoder.py, Megatron's GPT2BPETokenizer): the
 *   text split by GPT-2's pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
 *   ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ (matched by hand over the code points,
 *   the classes from unicode_tables.h), each piece's bytes mapped to GPT-2's
 *   printable characters and merged pairwise by the merges' ranks, lowest
 *   first; ids from vocab.json, EOD "<|endoftext|>", as many ids as vocab.json has.
 * NULL: the text is ids separated by spaces (Megatron's NullTokenizer); EOD
 *   is vocab, and vocab + 1 ids. */
#ifndef WEFT_TOKENIZER_H
#define WEFT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "diag.h"

enum tokenizer_type { TOKENIZER_BYTE_LEVEL, TOKENIZER_GPT2_BPE, TOKENIZER_NULL };

struct tokenizer;
struct tokenizer_ids {
    int64_t *v;
    int64_t n, cap;
};

/* vocab_file and merge_file for GPT2_BPE (each error names its file and
 * line); null_vocab the ids of NULL.  NULL on error. */
struct tokenizer *tokenizer_open(enum tokenizer_type type, const char *vocab_file, const char *merge_file, int64_t null_vocab,
                                 struct diag *d);
void tokenizer_free(struct tokenizer *t);
/* The ids there are, EOD included. */
int64_t tokenizer_vocab(const struct tokenizer *t);
/* EOD's id; -1 where the vocabulary has none. */
int64_t tokenizer_eod(const struct tokenizer *t);
/* Append text's ids to ids.  -1 (err says why) for a NULL tokenizer's text
 * that is not ids below its vocabulary. */
int tokenizer_encode(struct tokenizer *t, const char *text, size_t len, struct tokenizer_ids *ids, char *err, size_t err_n);

#endif
