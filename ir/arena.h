/* arena.h: memory owned in bulk, freed once.
 *
 *   struct arena *a = arena_new(1 << 16);
 *   char *name = arena_strdup(a, "decoder.layer.3.qkv.w");
 *   struct ir_shape *s = arena_alloc(a, sizeof *s);   // zeroed
 *   arena_free(a);                                    // everything above, at once
 *
 * Allocations are 16-byte aligned and zero-filled.  Out of memory is a bug-class
 * failure for a compiler (the inputs are small), so it aborts with a message. */
#ifndef WEFT_ARENA_H
#define WEFT_ARENA_H

#include <stddef.h>

struct arena;

struct arena *arena_new(size_t chunk_bytes);
void arena_free(struct arena *a);
void *arena_alloc(struct arena *a, size_t n);
char *arena_strdup(struct arena *a, const char *s);
char *arena_strndup(struct arena *a, const char *s, size_t n);
char *arena_printf(struct arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Bytes handed out so far (for reports and tests). */
size_t arena_used(const struct arena *a);

#endif
