/* data.c: Megatron's indexed dataset and GPTDataset's samples (data.h). */
#include "data.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
enum { HEADER = 9 + 8 + 1 + 8 + 8 };

int data_dtype_size(int code)
{
    static const int size[] = {[DATA_UINT8] = 1, [DATA_INT8] = 1, [DATA_INT16] = 2, [DATA_INT32] = 4, [DATA_INT64] = 8,
                               [DATA_FLOAT64] = 8, [DATA_FLOAT32] = 4, [DATA_UINT16] = 2};
    return code >= 1 && code <= DATA_UINT16 ? size[code] : 0;
}

int data_dtype_for_vocab(int64_t vocab) { return vocab < 65500 ? DATA_UINT16 : DATA_INT32; }

static uint64_t u64_at(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The token at byte offset `at` of .bin, as an integer (a float dtype's value, truncated). */
static int64_t token_at(const struct data_indexed *D, int64_t at)
{
    const uint8_t *p = D->tokens + at;
    switch (D->dtype) {
    case DATA_UINT8: return p[0];
    case DATA_INT8: return (int8_t)p[0];
    case DATA_INT16: { int16_t v; memcpy(&v, p, 2); return v; }
    case DATA_UINT16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case DATA_INT32: { int32_t v; memcpy(&v, p, 4); return v; }
    case DATA_INT64: { int64_t v; memcpy(&v, p, 8); return v; }
    case DATA_FLOAT32: { float v; memcpy(&v, p, 4); return (int64_t)v; }
    default: { double v; memcpy(&v, p, 8); return (int64_t)v; }
    }
}

int64_t data_indexed_token(const struct data_indexed *D, int64_t s, int64_t k)
{
    return token_at(D, D->pointers[s] + k * D->elem);
}

void data_indexed_close(struct data_indexed *D)
{
    if (D->tokens && D->bin_bytes)
        munmap((void *)D->tokens, D->bin_bytes);
    free(D->lengths);
    free(D->pointers);
    free(D->docs);
    memset(D, 0, sizeof *D);
}

/* The whole checks of data_indexed_open, on the read index and the mapped .bin. */
static int check(struct data_indexed *D, const uint8_t *ix, size_t ix_bytes, int64_t vocab, struct diag *d)
{
    const char *bin = D->bin, *idx = D->idx;
    if (ix_bytes < HEADER) {
        diag_error(d, NULL, 0, "%s: %zu bytes, shorter than an index's %d-byte header (index of %s)", idx, ix_bytes, HEADER, bin);
        return -1;
    }
    if (memcmp(ix, magic, sizeof magic)) {
        diag_error(d, NULL, 0, "%s: not a Megatron indexed dataset's index (bad magic: want \"MMIDIDX\\0\\0\"), for %s", idx, bin);
        return -1;
    }
    uint64_t version = u64_at(ix + 9);
    if (version != 1) {
        diag_error(d, NULL, 0, "%s: index version %llu, this weft reads version 1 (index of %s)", idx, (unsigned long long)version, bin);
        return -1;
    }
    D->dtype = ix[17];
    D->elem = data_dtype_size(D->dtype);
    if (!D->elem) {
        diag_error(d, NULL, 0, "%s: dtype code %d is none of Megatron's (1..8) (index of %s)", idx, D->dtype, bin);
        return -1;
    }
    uint64_t n = u64_at(ix + 18), m = u64_at(ix + 26);
    if (n > ((uint64_t)1 << 40) || m > ((uint64_t)1 << 40) || (uint64_t)HEADER + 12 * n + 8 * m != ix_bytes) {
        diag_error(d, NULL, 0, "%s: its header says %llu sequences and %llu document boundaries (%llu bytes), the file holds %zu "
                               "bytes: the sizes disagree (index of %s)", idx, (unsigned long long)n, (unsigned long long)m,
                   (unsigned long long)(HEADER + 12 * n + 8 * m), ix_bytes, bin);
        return -1;
    }
    D->n_seqs = (int64_t)n, D->n_docs = (int64_t)m;
    D->lengths = wf_calloc(n + 1, sizeof *D->lengths);
    D->pointers = wf_calloc(n + 1, sizeof *D->pointers);
    D->docs = wf_calloc(m + 1, sizeof *D->docs);
    memcpy(D->lengths, ix + HEADER, 4 * n); /* unaligned in the file: copied out */
    memcpy(D->pointers, ix + HEADER + 4 * n, 8 * n);
    memcpy(D->docs, ix + HEADER + 12 * n, 8 * m);
    if (m < 1 || D->docs[0] != 0 || D->docs[m - 1] != D->n_seqs) {
        diag_error(d, NULL, 0, "%s: the document boundaries run from %lld to %lld, not from 0 to the %lld sequences (index of %s)", idx,
                   (long long)(m ? D->docs[0] : -1), (long long)(m ? D->docs[m - 1] : -1), (long long)D->n_seqs, bin);
        return -1;
    }
    for (uint64_t k = 1; k < m; k++)
        if (D->docs[k] < D->docs[k - 1]) {
            diag_error(d, NULL, 0, "%s: document boundary %llu (%lld) is before the one before it (%lld) (index of %s)", idx,
                       (unsigned long long)k, (long long)D->docs[k], (long long)D->docs[k - 1], bin);
            return -1;
        }
    int64_t at = 0;
    for (int64_t s = 0; s < D->n_seqs; s++) {
        if (D->lengths[s] < 0 || D->pointers[s] != at) {
            diag_error(d, NULL, 0, "%s: sequence %lld: length %d at byte %lld of %s, where the sequences before it end at byte %lld",
                       idx, (long long)s, D->lengths[s], (long long)D->pointers[s], bin, (long long)at);
            return -1;
        }
        at += (int64_t)D->lengths[s] * D->elem;
    }
    if ((uint64_t)at != D->bin_bytes) {
        diag_error(d, NULL, 0, "%s: %zu bytes, where its index %s points at %lld bytes (%lld tokens of %d bytes): %s", bin, D->bin_bytes,
                   idx, (long long)at, (long long)(at / D->elem), D->elem,
                   (uint64_t)at > D->bin_bytes ? "the .bin is truncated" : "the .bin is longer than its index says");
        return -1;
    }
    for (int64_t s = 0; vocab > 0 && s < D->n_seqs; s++)
        for (int64_t k = 0; k < D->lengths[s]; k++) {
            int64_t t = data_indexed_token(D, s, k);
            if (t < 0 || t >= vocab) {
                diag_error(d, NULL, 0, "%s: token %lld of sequence %lld is id %lld, past the plan's vocabulary of %lld ids (index %s)",
                           bin, (long long)k, (long long)s, (long long)t, (long long)vocab, idx);
                return -1;
            }
        }
    return 0;
}

int data_indexed_open(struct data_indexed *D, const char *prefix, int64_t vocab, struct diag *d)
{
    memset(D, 0, sizeof *D);
    snprintf(D->bin, sizeof D->bin, "%s.bin", prefix);
    snprintf(D->idx, sizeof D->idx, "%s.idx", prefix);
    size_t ix_bytes;
    char *ix = wf_read_file(D->idx, (size_t)1 << 40, &ix_bytes);
    if (!ix) {
        diag_error(d, NULL, 0, "%s: cannot read it (%s): the index of %s", D->idx, strerror(errno), D->bin);
        return -1;
    }
    int fd = open(D->bin, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        diag_error(d, NULL, 0, "%s: cannot read it (%s), the tokens %s indexes", D->bin, strerror(errno), D->idx);
        if (fd >= 0)
            close(fd);
        free(ix);
        return -1;
    }
    D->bin_bytes = (size_t)st.st_size;
    if (D->bin_bytes) {
        void *p = mmap(NULL, D->bin_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            diag_error(d, NULL, 0, "%s: cannot map it (%s), the tokens %s indexes", D->bin, strerror(errno), D->idx);
            D->bin_bytes = 0;
        } else
            D->tokens = p;
    }
    close(fd);
    int rc = D->bin_bytes != (size_t)st.st_size ? -1 : check(D, (const uint8_t *)ix, ix_bytes, vocab, d);
    free(ix);
    if (rc)
        data_indexed_close(D);
    return rc;
}

/* Writing: IndexedDatasetBuilder's add_document and finalize. */
struct data_writer {
    FILE *bin;
    char idx[1024];
    int dtype, elem;
    int64_t n_lens, cap_lens, n_docs, cap_docs;
    int32_t *lens;
    int64_t *docs;
};

struct data_writer *data_writer_open(const char *prefix, int dtype, struct diag *d)
{
    char bin[1024];
    snprintf(bin, sizeof bin, "%s", prefix);
    char *slash = strrchr(bin, '/');
    if (slash && slash != bin) { /* the prefix's directory, made as needed */
        *slash = 0;
        wf_make_dirs(bin);
    }
    snprintf(bin, sizeof bin, "%s.bin", prefix);
    FILE *f = fopen(bin, "wb");
    if (!f) {
        diag_error(d, NULL, 0, "%s: cannot write it (%s)", bin, strerror(errno));
        return NULL;
    }
    struct data_writer *w = wf_calloc(1, sizeof *w);
    w->bin = f, w->dtype = dtype, w->elem = data_dtype_size(dtype);
    WF_ASSERT(w->elem && dtype != DATA_FLOAT32 && dtype != DATA_FLOAT64);
    snprintf(w->idx, sizeof w->idx, "%s.idx", prefix);
    WF_GROW(w->docs, w->n_docs, w->cap_docs);
    w->docs[w->n_docs++] = 0;
    return w;
}

int data_writer_add_document(struct data_writer *w, const int64_t *ids, int64_t n, const int64_t *lens, int n_lens)
{
    uint8_t buf[8];
    for (int64_t i = 0; i < n; i++) {
        uint64_t v = (uint64_t)ids[i];
        for (int b = 0; b < w->elem; b++)
            buf[b] = (uint8_t)(v >> (8 * b));
        if (fwrite(buf, (size_t)w->elem, 1, w->bin) != 1)
            return -1;
    }
    for (int k = 0; k < n_lens; k++) {
        WF_GROW(w->lens, w->n_lens, w->cap_lens);
        w->lens[w->n_lens++] = (int32_t)lens[k];
    }
    WF_GROW(w->docs, w->n_docs, w->cap_docs);
    w->docs[w->n_docs++] = w->n_lens;
    return 0;
}

static void put_u64(FILE *f, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    fwrite(b, 8, 1, f);
}

int data_writer_close(struct data_writer *w, struct diag *d)
{
    int rc = ferror(w->bin) | fclose(w->bin);
    FILE *f = rc ? NULL : fopen(w->idx, "wb");
    if (f) {
        fwrite(magic, sizeof magic, 1, f);
        put_u64(f, 1);
        fputc(w->dtype, f);
        put_u64(f, (uint64_t)w->n_lens);
        put_u64(f, (uint64_t)w->n_docs);
        for (int64_t i = 0; i < w->n_lens; i++) {
            uint32_t v = (uint32_t)w->lens[i];
            uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
            fwrite(b, 4, 1, f);
        }
        int64_t at = 0;
        for (int64_t i = 0; i < w->n_lens; i++) {
            put_u64(f, (uint64_t)at);
            at += (int64_t)w->lens[i] * w->elem;
        }
        for (int64_t i = 0; i < w->n_docs; i++)
            put_u64(f, (uint64_t)w->docs[i]);
        rc = ferror(f) | fclose(f);
    }
    if (rc || !f)
        diag_error(d, NULL, 0, "%s: writing the dataset failed (%s)", w->idx, strerror(errno));
    free(w->lens);
    free(w->docs);
    free(w);
    return rc || !f ? -1 : 0;
}

int data_split_parse(const char *s, double split[3], struct diag *d)
{
    int n = 0;
    double sum = 0;
    split[0] = split[1] = split[2] = 0;
    for (const char *p = s; *p;) { /* re.findall(r"[.0-9]+"): the runs of digits and dots */
        if (!(*p == '.' || (*p >= '0' && *p <= '9'))) {
            p++;
            continue;
        }
        char *end;
        double v = strtod(p, &end);
        size_t run = strspn(p, ".0123456789");
        if (end != p + run || n == 3) {
            diag_error(d, NULL, 0, "--split %s: expected up to three weights, train,valid,test (e.g. 969,30,1)", s);
            return -1;
        }
        split[n++] = v, p += run;
    }
    for (int k = 0; k < 3; k++)
        sum += split[k];
    if (!(sum > 0) || !isfinite(sum)) {
        diag_error(d, NULL, 0, "--split %s: the weights sum to %g; expected train,valid,test weights summing above 0", s, sum);
        return -1;
    }
    for (int k = 0; k < 3; k++)
        split[k] /= sum;
    return 0;
}

/* MT19937 (Matsumoto and Nishimura), seeded as numpy's mt19937_seed. */
void data_rng_seed(struct data_rng *r, uint32_t seed)
{
    r->mt[0] = seed;
    for (int i = 1; i < 624; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->pos = 624;
}

uint32_t data_rng_next32(struct data_rng *r)
{
    if (r->pos == 624) {
        for (int i = 0; i < 624; i++) {
            uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % 624] & 0x7fffffffu);
            r->mt[i] = r->mt[(i + 397) % 624] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
        }
        r->pos = 0;
    }
    uint32_t y = r->mt[r->pos++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* numpy's random_interval (legacy): a draw in [0, max], by masked rejection. */
static uint64_t interval(struct data_rng *r, uint64_t max)
{
    if (!max)
        return 0;
    uint64_t mask = max, v;
    for (int s = 1; s <= 32; s *= 2)
        mask |= mask >> s;
    if (max <= 0xffffffffu)
        while ((v = (data_rng_next32(r) & mask)) > max) {}
    else
        while ((v = ((uint64_t)data_rng_next32(r) << 32 | data_rng_next32(r)) & mask) > max) {}
    return v;
}

void data_rng_shuffle(struct data_rng *r, void *v, int64_t n, size_t size)
{
    uint8_t tmp[16], *p = v;
    WF_ASSERT(size <= sizeof tmp);
    for (int64_t i = n - 1; i > 0; i--) { /* numpy's _shuffle_raw: from the end, each with one at or before it */
        uint64_t j = interval(r, (uint64_t)i);
        memcpy(tmp, p + (size_t)i * size, size);
        memcpy(p + (size_t)i * size, p + j * size, size);
        memcpy(p + j * size, tmp, size);
    }
}

/* _build_document_index: epochs copies of the documents, shuffled as one. */
static void document_index(int32_t *out, int64_t first, int64_t n_docs, int epochs, struct data_rng *r)
{
    for (int e = 0; e < epochs; e++)
        for (int64_t k = 0; k < n_docs; k++)
            out[e * n_docs + k] = (int32_t)(first + k);
    data_rng_shuffle(r, out, epochs * n_docs, sizeof *out);
}

int data_gpt_build(struct data_gpt *G, const struct data_indexed *D, const double split[3], enum data_split which, int64_t seq,
                   int64_t num_samples, uint32_t seed, struct diag *d)
{
    static const char *const names[] = {"train", "valid", "test"};
    memset(G, 0, sizeof *G);
    G->D = D, G->seq = seq;
    double lo = 0, hi; /* convert_split_vector_to_split_matrix's bookends, summed as Python sums them */
    for (int k = 0; k < (int)which; k++)
        lo += split[k];
    hi = lo + split[which];
    /* int(round(x * n)): Python rounds half to even, as nearbyint does */
    G->first_doc = (int64_t)nearbyint(lo * (double)D->n_seqs), G->end_doc = (int64_t)nearbyint(hi * (double)D->n_seqs);
    int64_t n_docs = G->end_doc - G->first_doc, tokens = 0;
    for (int64_t k = G->first_doc; k < G->end_doc; k++)
        tokens += D->lengths[k];
    if (!(hi > lo) || n_docs <= 0 || tokens < seq + 1) {
        diag_error(d, NULL, 0, "%s, %s: the %s split (%.4g of the %lld sequences: %lld of them, %lld tokens) cannot make a sample of "
                               "%lld tokens; give it a larger share with --split", D->bin, D->idx, names[which], split[which],
                   (long long)D->n_seqs, (long long)n_docs, (long long)tokens, (long long)seq + 1);
        return -1;
    }
    /* _get_num_epochs: enough for num_samples of seq tokens and the extra one */
    int epochs = 1;
    for (int64_t have = tokens; have < num_samples * seq + 1; have += tokens)
        epochs++;
    G->num_epochs = epochs;
    bool separate = false;
    int64_t sans_final = 0;
    if (epochs > 1) { /* the last epoch shuffled apart where it is less than 80% used */
        sans_final = ((epochs - 1) * tokens - 1) / seq;
        int64_t from_final = num_samples - sans_final, per_epoch = (tokens - 1) / seq;
        separate = from_final < (int64_t)(0.80 * (double)per_epoch);
    }
    struct data_rng r;
    data_rng_seed(&r, seed);
    G->n_doc_index = epochs * n_docs;
    G->doc_index = wf_calloc((size_t)G->n_doc_index + 1, sizeof *G->doc_index);
    if (!separate)
        document_index(G->doc_index, G->first_doc, n_docs, epochs, &r);
    else {
        document_index(G->doc_index, G->first_doc, n_docs, epochs - 1, &r);
        document_index(G->doc_index + (epochs - 1) * n_docs, G->first_doc, n_docs, 1, &r);
    }
    /* helpers.cpp build_sample_idx, dropping the last partial sample */
    G->n_samples = ((int64_t)epochs * tokens - 1) / seq;
    G->sample_index = wf_calloc(2 * ((size_t)G->n_samples + 1), sizeof *G->sample_index);
    int64_t di = 0, off = 0;
    for (int64_t s = 1; s <= G->n_samples; s++) {
        int64_t remaining = seq + 1;
        while (remaining) {
            int64_t len = D->lengths[G->doc_index[di]] - off;
            remaining -= len;
            if (remaining <= 0) {
                off += remaining + len - 1;
                remaining = 0;
            } else if (di == G->n_doc_index - 1) {
                off = D->lengths[G->doc_index[di]] - 1;
                break;
            } else
                di++, off = 0;
        }
        G->sample_index[2 * s] = di, G->sample_index[2 * s + 1] = off;
    }
    /* _build_shuffle_index */
    G->shuffle = wf_calloc((size_t)G->n_samples + 1, sizeof *G->shuffle);
    for (int64_t i = 0; i < G->n_samples; i++)
        G->shuffle[i] = i;
    int64_t first = separate ? sans_final : G->n_samples;
    data_rng_shuffle(&r, G->shuffle, first, sizeof *G->shuffle);
    if (first < G->n_samples)
        data_rng_shuffle(&r, G->shuffle + first, G->n_samples - first, sizeof *G->shuffle);
    return 0;
}

void data_gpt_free(struct data_gpt *G)
{
    free(G->doc_index);
    free(G->sample_index);
    free(G->shuffle);
    memset(G, 0, sizeof *G);
}

void data_gpt_sample(const struct data_gpt *G, int64_t i, int32_t *out)
{
    int64_t idx = G->shuffle[(i % G->n_samples + G->n_samples) % G->n_samples];
    int64_t b = G->sample_index[2 * idx], boff = G->sample_index[2 * idx + 1];
    int64_t e = G->sample_index[2 * idx + 2], eoff = G->sample_index[2 * idx + 3];
    int64_t n = 0;
    for (int64_t k = b; k <= e; k++) { /* _query_document_sample_shuffle_indices: from b's offset to e's, and one more */
        int64_t s = G->doc_index[k], from = k == b ? boff : 0, to = k == e ? eoff + 1 : G->D->lengths[s];
        for (int64_t t = from; t < to && n <= G->seq; t++)
            out[n++] = (int32_t)data_indexed_token(G->D, s, t);
    }
    WF_ASSERT(n == G->seq + 1);
}
