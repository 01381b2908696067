/* plan.h: the plan file: everything every rank does in a step, in one file.
 *
 *   struct plan_writer *w = plan_writer_new();
 *   plan_section(w, "meta");  plan_put_str(w, "gpt2");  plan_put_u32(w, 16);
 *   plan_writer_finish(w, "gpt2.plan", &diag);          // written to a temporary, then renamed
 *
 *   struct plan *p = plan_open("gpt2.plan", &diag);     // header and section table checked
 *   struct plan_reader r;
 *   if (plan_read(p, "program.3", &r, &diag) == 0)     // this section's checksum checked now
 *       n = plan_get_u32(&r);                           // bounds-checked: r.bad on overrun
 *   plan_close(p);
 *
 * Layout (little-endian throughout):
 *   header   "WEFTPLAN", u16 major, u16 minor, u32 sections, u64 file size,
 *            u64 table offset, char compiler[32], u32 header CRC-32
 *   sections each 8-byte aligned
 *   table    per section: char name[24], u64 offset, u64 size, u32 CRC-32
 * No timestamps and no pointers: compiling twice gives the same bytes.  The
 * file is mapped, and a section's checksum is checked only when it is read,
 * so a rank reads its own stage's program without touching the others'. */
#ifndef WEFT_PLAN_H
#define WEFT_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"

#define PLAN_MAGIC "WEFTPLAN"
#define PLAN_VERSION_MAJOR 6
#define PLAN_VERSION_MINOR 0 /* 6.0: GEMM epilogues (a GEMM action may carry its group's launch; kn_launch's
                               * epilogue).  5.x: the hf section, grad_reduce_in_bf16, ddp_bucket_size */
#define PLAN_NAME_MAX 24

uint32_t plan_crc32(const void *p, size_t n);

struct plan_writer;
struct plan_writer *plan_writer_new(const char *compiler_version);
void plan_section(struct plan_writer *w, const char *name); /* later puts go here */
void plan_put_u8(struct plan_writer *w, uint8_t v);
void plan_put_u32(struct plan_writer *w, uint32_t v);
void plan_put_u64(struct plan_writer *w, uint64_t v);
void plan_put_i32(struct plan_writer *w, int32_t v);
void plan_put_i64(struct plan_writer *w, int64_t v);
void plan_put_f64(struct plan_writer *w, double v);
void plan_put_str(struct plan_writer *w, const char *s); /* u32 length, bytes */
/* Write the file (or, on error, nothing) and free the writer. */
int plan_writer_finish(struct plan_writer *w, const char *path, struct diag *d);

struct plan;
struct plan *plan_open(const char *path, struct diag *d);
/* The same over bytes in memory (kept alive by the caller until plan_close). */
struct plan *plan_open_memory(const char *name, const void *bytes, size_t size, struct diag *d);
void plan_close(struct plan *p);
const char *plan_compiler(const struct plan *p);
int plan_version_major(const struct plan *p), plan_version_minor(const struct plan *p);
int plan_n_sections(const struct plan *p);
const char *plan_section_name(const struct plan *p, int i);
uint64_t plan_section_size(const struct plan *p, int i);
uint64_t plan_section_offset(const struct plan *p, int i);
bool plan_has(const struct plan *p, const char *name);

struct plan_reader {
    const uint8_t *at, *end;
    bool bad;            /* read past the section's end: the plan is inconsistent */
    const char *section; /* for messages */
};
/* Open a section for reading after checking its CRC; errors name the section. */
int plan_read(struct plan *p, const char *name, struct plan_reader *r, struct diag *d);
uint8_t plan_get_u8(struct plan_reader *r);
uint32_t plan_get_u32(struct plan_reader *r);
uint64_t plan_get_u64(struct plan_reader *r);
int32_t plan_get_i32(struct plan_reader *r);
int64_t plan_get_i64(struct plan_reader *r);
double plan_get_f64(struct plan_reader *r);
/* A string in the mapped file, copied into buf (truncated to n-1). */
const char *plan_get_str(struct plan_reader *r, char *buf, size_t n);

#endif
