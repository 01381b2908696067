/* expr.h: integer expressions over named dimensions, as written in model files.
 *
 *   struct expr *e = expr_parse(a, "3*hidden", err, sizeof err);    // NULL: err says why
 *   int64_t v;
 *   if (expr_eval(e, lookup_dim, graph, &v, err, sizeof err)) ...   // 2304 when hidden=768
 *
 * Grammar: sum := term (('+'|'-') term)*;  term := unary (('*'|'/'|'%') unary)*;
 * unary := '-' unary | primary;  primary := INT | NAME | NAME '(' sum (',' sum)* ')'
 * | '(' sum ')'.  Functions: cdiv(a,b) (ceiling division), min(a,b), max(a,b).
 * '/' is exact: 10/4 is an error, not 2, because a dimension that silently
 * rounds (hidden/heads with 25 heads of 1600) is a bug in the making.  Every
 * operation is checked for 64-bit overflow.  Whitespace is not allowed inside
 * an expression: in a shape, spaces separate the axes. */
#ifndef WEFT_EXPR_H
#define WEFT_EXPR_H

#include <stddef.h>
#include <stdint.h>

struct arena;

enum expr_kind {
    EXPR_NUM, EXPR_NAME, EXPR_NEG,
    EXPR_ADD, EXPR_SUB, EXPR_MUL, EXPR_DIV, EXPR_MOD,
    EXPR_CDIV, EXPR_MIN, EXPR_MAX,
};

struct expr {
    enum expr_kind kind;
    int64_t num;      /* EXPR_NUM */
    const char *name; /* EXPR_NAME */
    struct expr *l, *r;
};

/* Resolve a name to its value; on failure write why into err and return -1. */
typedef int expr_lookup_fn(void *ctx, const char *name, int64_t *value, char *err, size_t n);

struct expr *expr_parse(struct arena *a, const char *text, char *err, size_t n);
int expr_eval(const struct expr *e, expr_lookup_fn *lookup, void *ctx, int64_t *value,
              char *err, size_t n);
/* Call fn for each name the expression mentions (for dependency order). */
void expr_each_name(const struct expr *e, void (*fn)(void *ctx, const char *name), void *ctx);

#endif
