/* data.h: Megatron's training data: the indexed dataset (.bin/.idx) and
 * the samples GPTDataset makes of it.
 *
 *   struct data_indexed D;
 *   if (data_indexed_open(&D, "data/corpus_text_document", 50257, &d)) ...  // every check at open: d names both files
 *   double split[3];
 *   data_split_parse("949,50,1", split, &d);
 *   struct data_gpt train;
 *   data_gpt_build(&train, &D, split, DATA_SPLIT_TRAIN, 1024, 8000, 1234, &d); // seq 1024, 8000 samples, seed 1234
 *   int32_t s[1025];
 *   data_gpt_sample(&train, 0, s);        // tokens s[0:1024], labels s[1:1025]
 *   data_gpt_free(&train);
 *   data_indexed_close(&D);
 *
 * The formats and the index arithmetic are Megatron-Core's
 * (megatron/core/datasets/indexed_dataset.py, gpt_dataset.py, helpers.cpp,
 * blended_megatron_dataset_builder.py), shuffled by numpy's
 * RandomState(seed) (MT19937 and its legacy shuffle), so a sample i here is
 * Megatron's sample i, token for token (tests/test_data.c holds them
 * against a fixture Megatron-Core made).
 *
 * .idx: the magic "MMIDIDX\0\0", u64 version 1, u8 dtype code, u64 sequence
 * count n, u64 document count m (documents + 1), then n int32 sequence
 * lengths, n int64 byte offsets into .bin, m int64 document boundaries (0
 * first, n last); little-endian, unaligned.  .bin: the tokens, nothing else. */
#ifndef WEFT_DATA_H
#define WEFT_DATA_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "diag.h"

/* Megatron's DType codes (indexed_dataset.py). */
enum data_dtype {
    DATA_UINT8 = 1, DATA_INT8 = 2, DATA_INT16 = 3, DATA_INT32 = 4, DATA_INT64 = 5,
    DATA_FLOAT64 = 6, DATA_FLOAT32 = 7, DATA_UINT16 = 8
};
/* Bytes a token of the code takes; 0 for a code Megatron does not have. */
int data_dtype_size(int code);
/* The code Megatron's preprocess_data.py writes a vocabulary with
 * (DType.optimal_dtype): uint16 below 65500 ids, else int32. */
int data_dtype_for_vocab(int64_t vocab);

struct data_indexed {
    char bin[1024], idx[1024]; /* the files: PREFIX.bin, PREFIX.idx */
    int dtype, elem;           /* the dtype code, its bytes */
    int64_t n_seqs, n_docs;    /* n_docs: documents + 1 boundaries */
    int32_t *lengths;          /* [n_seqs]: tokens a sequence */
    int64_t *pointers;         /* [n_seqs]: byte offsets into .bin */
    int64_t *docs;             /* [n_docs]: the first sequence of each document, then n_seqs */
    const uint8_t *tokens;     /* .bin, mapped */
    size_t bin_bytes;
};

/* Open PREFIX.bin and PREFIX.idx and check them whole: the magic, the
 * version, the dtype, that the sizes the header gives agree with the
 * .idx's length and with each other, that .bin holds exactly the tokens
 * the index points at (a shorter .bin is truncated), and that every token
 * is an id below vocab (vocab 0: no bound).  An error names both files and
 * what is wrong; returns -1 then, with nothing to close. */
int data_indexed_open(struct data_indexed *D, const char *prefix, int64_t vocab, struct diag *d);
void data_indexed_close(struct data_indexed *D);
/* Token k of sequence s (0 <= k < lengths[s]). */
int64_t data_indexed_token(const struct data_indexed *D, int64_t s, int64_t k);

/* Writing, as Megatron-Core's IndexedDatasetBuilder writes: byte for byte.
 *   struct data_writer *w = data_writer_open("out_text_document", DATA_UINT16, &d);
 *   data_writer_add_document(w, ids, n, lens, n_lens);  // a document: its sequences' lengths sum to n
 *   data_writer_close(w, &d);                            // writes the .idx; frees w */
struct data_writer;
struct data_writer *data_writer_open(const char *prefix, int dtype, struct diag *d);
int data_writer_add_document(struct data_writer *w, const int64_t *ids, int64_t n, const int64_t *lens, int n_lens);
int data_writer_close(struct data_writer *w, struct diag *d);

/* --split "969,30,1": the train, valid and test weights (Megatron's
 * parse_and_normalize_split: the numbers in it, missing ones 0, over their
 * sum).  Errors name the flag. */
int data_split_parse(const char *s, double split[3], struct diag *d);

enum data_split { DATA_SPLIT_TRAIN, DATA_SPLIT_VALID, DATA_SPLIT_TEST };

/* numpy's legacy RandomState: MT19937 seeded as RandomState(seed) seeds it. */
struct data_rng {
    uint32_t mt[624];
    int pos;
};
void data_rng_seed(struct data_rng *r, uint32_t seed);
uint32_t data_rng_next32(struct data_rng *r);
/* RandomState.shuffle of a 1-D array of n elements of `size` bytes. */
void data_rng_shuffle(struct data_rng *r, void *v, int64_t n, size_t size);

/* One split's samples, as GPTDataset builds them for a run that asks for
 * num_samples: the split's documents (its share of the sequences, bounds
 * rounded as Python rounds), as many epochs of them as those samples need,
 * the document index shuffled (the last epoch apart where it is under 80%
 * used), the sample index over it (seq + 1 tokens a sample, each sample's
 * last token the next one's first), the shuffle index over the samples. */
struct data_gpt {
    const struct data_indexed *D;
    int64_t seq;        /* tokens a sample, less the label's extra one */
    int64_t first_doc, end_doc; /* the split's sequences: [first_doc, end_doc) */
    int64_t n_samples;  /* the samples there are (at least those asked for) */
    int num_epochs;
    int32_t *doc_index; /* sequences, in epoch order, shuffled */
    int64_t n_doc_index;
    int64_t *sample_index; /* [n_samples + 1][2]: where a sample starts: a place in doc_index, an offset */
    int64_t *shuffle;      /* [n_samples] */
};

/* The split `which` of D under split weights; an error where that split
 * holds no sequences or fewer than seq + 1 tokens. */
int data_gpt_build(struct data_gpt *G, const struct data_indexed *D, const double split[3], enum data_split which, int64_t seq,
                   int64_t num_samples, uint32_t seed, struct diag *d);
void data_gpt_free(struct data_gpt *G);
/* Sample i (modulo n_samples: a split read past its end starts again) into
 * out[0..seq]: Megatron's dataset[i] tokens, then the last label. */
void data_gpt_sample(const struct data_gpt *G, int64_t i, int32_t *out);

#endif
