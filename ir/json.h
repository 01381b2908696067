/* json.h: a streaming JSON writer for `--json` output.
 *
 *   struct json j;
 *   json_init(&j, stdout);
 *   json_begin_object(&j, NULL);
 *   json_int(&j, "params", 124439808);
 *   json_begin_array(&j, "parts");  json_string(&j, NULL, "decoder");  json_end_array(&j);
 *   json_end_object(&j);            // {"params": 124439808, "parts": ["decoder"]}
 *   json_finish(&j);                // newline
 *
 * A key is given inside objects and NULL inside arrays.  Non-finite doubles
 * are written as null, since JSON has no NaN. */
#ifndef WEFT_JSON_H
#define WEFT_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct json {
    FILE *f;
    int depth;
    bool first[64]; /* per depth: no element written yet */
};

void json_init(struct json *j, FILE *f);
void json_begin_object(struct json *j, const char *key);
void json_end_object(struct json *j);
void json_begin_array(struct json *j, const char *key);
void json_end_array(struct json *j);
void json_string(struct json *j, const char *key, const char *s);
void json_int(struct json *j, const char *key, int64_t v);
void json_double(struct json *j, const char *key, double v);
void json_bool(struct json *j, const char *key, bool v);
void json_null(struct json *j, const char *key);
void json_finish(struct json *j);

/* Reading: a whole text parsed into a tree (RFC 8259; a safetensors
 * header, a vocab.json, a JSON line).
 *
 *   char err[128];
 *   struct json_value *v = json_parse(text, len, err, sizeof err);  // NULL: err says where and what
 *   const struct json_value *s = json_get(v, "shape");             // NULL where absent or v is no object
 *   json_free(v);
 *
 * Strings are UTF-8 with their escapes resolved (a \u0000 stays in: len
 * counts it); a number keeps its double and, where its text is an integer
 * that fits, that integer exactly (is_int).  Nesting is bounded (256), so
 * a hostile text cannot exhaust the stack. */
enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json_value {
    enum json_type type;
    bool boolean, is_int;
    double number;
    int64_t integer;
    char *string;               /* JSON_STRING: NUL-terminated, len bytes */
    size_t len;
    int n;                      /* JSON_ARRAY, JSON_OBJECT: the members, in order */
    struct json_value *items;
    char **keys;                /* JSON_OBJECT: items[i]'s key */
};

struct json_value *json_parse(const char *text, size_t len, char *err, size_t err_n);
void json_free(struct json_value *v);
const struct json_value *json_get(const struct json_value *object, const char *key);

#endif
