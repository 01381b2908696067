/* safetensors.h: Hugging Face's safetensors files, read with every check and
 * written in place by many ranks at once.
 *
 * The format: a u64 (little-endian) header length N, N bytes of JSON
 *   {"wte": {"dtype": "F32", "shape": [512, 64], "data_offsets": [0, 131072]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * (padded with spaces so the data starts 8-byte aligned), then the data:
 * each tensor's elements row-major, little-endian, at its offsets from the
 * data's start.
 *
 *   struct st_file f;
 *   if (st_open("model.safetensors", &f, &d)) ...        // 2: the header is wrong, d names the file and tensor
 *   const struct st_tensor *t = st_find(&f, "wte");
 *   st_read_f32(&f, t, first, count, out, &d);           // any float dtype, widened
 *   st_close(&f);
 *
 * Writing: the header, and so every tensor's offsets, is known before any
 * byte of data, so each rank writes its own elements where they go:
 *
 *   struct st_writer *w = st_writer_new();
 *   int k = st_writer_add(w, "wte", ST_F32, 2, (int64_t[]){512, 64});
 *   st_writer_meta(w, "format", "pt");
 *   st_writer_finish(w);                          // offsets and header fixed; every rank computes the same
 *   st_writer_create(w, fd, path, &d);            // one rank: the file at its full size, the header written
 *   st_writer_put_f32(w, fd, path, k, first, src, count, &d);  // any rank: elements [first, first+count) of k
 *   st_writer_free(w);
 */
#ifndef WEFT_SAFETENSORS_H
#define WEFT_SAFETENSORS_H

#include "comm.h"
#include "diag.h"

#include <stdbool.h>
#include <stdint.h>

#define ST_MAX_RANK 8

enum st_dtype { ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_I64, ST_U64, ST_F64, ST_DTYPE_COUNT };

const char *st_dtype_name(enum st_dtype t); /* "F32" */
int st_dtype_bytes(enum st_dtype t);
bool st_dtype_is_float(enum st_dtype t);

struct st_tensor {
    char *name;
    enum st_dtype dtype;
    int rank;
    int64_t shape[ST_MAX_RANK];
    int64_t begin, end; /* its bytes in the data section */
};

int64_t st_tensor_elements(const struct st_tensor *t);

struct st_file {
    char *path;
    int fd;
    int64_t data_start, file_bytes;
    int n;
    struct st_tensor *tensors;
    int n_meta;
    char **meta_keys, **meta_values;
};

/* Opens and checks a file: the header's length within the file, its JSON,
 * each tensor's dtype, shape and offsets (inside the data, holding exactly
 * its elements, overlapping no other), and the metadata's values strings.
 * Returns 0, or 2 with an error naming the file (and the tensor). */
int st_open(const char *path, struct st_file *f, struct diag *d);
void st_close(struct st_file *f);
const struct st_tensor *st_find(const struct st_file *f, const char *name);
const char *st_meta(const struct st_file *f, const char *key); /* NULL where absent */
/* Elements [first, first + count) of t, row-major, widened to fp32 from
 * F32, BF16, F16 or F64.  Returns 0, or -1 with an error naming the file
 * and the tensor (another dtype, a short read). */
int st_read_f32(const struct st_file *f, const struct st_tensor *t, int64_t first, int64_t count, float *out, struct diag *d);

struct st_writer;
struct st_writer *st_writer_new(void);
void st_writer_free(struct st_writer *w);
/* A tensor, in the order added; returns its index. */
int st_writer_add(struct st_writer *w, const char *name, enum st_dtype dtype, int rank, const int64_t *shape);
void st_writer_meta(struct st_writer *w, const char *key, const char *value);
/* Fixes the offsets and the header.  Every rank that adds the same tensors
 * in the same order gets the same file layout. */
void st_writer_finish(struct st_writer *w);
int64_t st_writer_file_bytes(const struct st_writer *w);
const struct st_tensor *st_writer_tensor(const struct st_writer *w, int k);
/* The file at its full size (no data written yet: a hole) and its header.
 * path names the file in errors.  0, or -1 with an error (a full disk too). */
int st_writer_create(const struct st_writer *w, int fd, const char *path, struct diag *d);
/* Every rank's part in writing one file together: rank 0 creates path at
 * its full size with its header (st_writer_create); once every rank agrees
 * it did (comm_agree, the barrier), each opens it to write its own
 * elements.  The descriptor, or -1: on every rank where rank 0 failed, on
 * this one alone where only its open failed (d says why). */
int st_writer_open_shared(const struct st_writer *w, struct comm *c, const char *path, struct diag *d);
/* This rank's writes made durable (fsync, unless status already failed)
 * and fd closed: 0, or -1 with the error naming path and the rank. */
int st_writer_sync_close(int fd, struct comm *c, const char *path, int status, struct diag *d);
/* Elements [first, first + count) of tensor k from fp32, narrowed to its
 * dtype (F32, BF16, F16), written at their place in the file. */
int st_writer_put_f32(const struct st_writer *w, int fd, const char *path, int k, int64_t first, const float *src, int64_t count,
                      struct diag *d);

#endif
