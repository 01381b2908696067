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

#endif
