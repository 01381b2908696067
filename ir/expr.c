/* expr.c: recursive-descent parser and checked evaluator for dimension expressions. */
#include "expr.h"
#include "arena.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

struct parser {
    struct arena *a;
    const char *text, *p;
    char *err;
    size_t n;
    int failed;
};

static struct expr *parse_sum(struct parser *ps);

static struct expr *fail(struct parser *ps, const char *fmt, const char *what)
{
    if (!ps->failed)
        snprintf(ps->err, ps->n, fmt, what, ps->text);
    ps->failed = 1;
    return NULL;
}

static struct expr *node(struct parser *ps, enum expr_kind k, struct expr *l, struct expr *r)
{
    struct expr *e = arena_alloc(ps->a, sizeof *e);
    e->kind = k;
    e->l = l;
    e->r = r;
    return e;
}

static struct expr *parse_primary(struct parser *ps)
{
    const char *p = ps->p;
    if (isdigit((unsigned char)*p)) {
        int64_t v = 0;
        while (isdigit((unsigned char)*p)) {
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
                return fail(ps, "number too large for 64 bits in '%s%s'", "");
            p++;
        }
        if (*p == '.' || *p == 'e' || *p == 'E') {
            char what[64];
            size_t len = strspn(ps->p, "0123456789.eE+-");
            snprintf(what, sizeof what, "%.*s", (int)(len < 40 ? len : 40), ps->p);
            return fail(ps, strcmp(what, ps->text) ? "'%s' is not an integer (in '%s')" : "'%s' is not an integer%.0s",
                        strcmp(what, ps->text) ? what : ps->text);
        }
        ps->p = p;
        struct expr *e = node(ps, EXPR_NUM, NULL, NULL);
        e->num = v;
        return e;
    }
    if (isalpha((unsigned char)*p) || *p == '_') {
        while (isalnum((unsigned char)*p) || *p == '_')
            p++;
        const char *name = arena_strndup(ps->a, ps->p, (size_t)(p - ps->p));
        ps->p = p;
        if (*ps->p != '(') {
            struct expr *e = node(ps, EXPR_NAME, NULL, NULL);
            e->name = name;
            return e;
        }
        enum expr_kind k;
        if (!strcmp(name, "cdiv"))
            k = EXPR_CDIV;
        else if (!strcmp(name, "min"))
            k = EXPR_MIN;
        else if (!strcmp(name, "max"))
            k = EXPR_MAX;
        else
            return fail(ps, "unknown function '%s' in '%s' (functions: cdiv, min, max)", name);
        ps->p++;
        struct expr *l = parse_sum(ps);
        if (!l)
            return NULL;
        if (*ps->p != ',')
            return fail(ps, "expected ',' in call of %s in '%s'", name);
        ps->p++;
        struct expr *r = parse_sum(ps);
        if (!r)
            return NULL;
        if (*ps->p != ')')
            return fail(ps, "expected ')' after arguments of %s in '%s'", name);
        ps->p++;
        return node(ps, k, l, r);
    }
    if (*p == '(') {
        ps->p++;
        struct expr *e = parse_sum(ps);
        if (!e)
            return NULL;
        if (*ps->p != ')')
            return fail(ps, "expected ')'%s in '%s'", "");
        ps->p++;
        return e;
    }
    if (*p == 0)
        return fail(ps, "expression ends too soon%s: '%s'", "");
    if (isspace((unsigned char)*p))
        return fail(ps, "space inside an expression%s: '%s' (spaces separate axes)", "");
    char what[8];
    snprintf(what, sizeof what, "%c", *p);
    return fail(ps, "unexpected '%s' in '%s'", what);
}

static struct expr *parse_unary(struct parser *ps)
{
    if (*ps->p == '-') {
        ps->p++;
        struct expr *e = parse_unary(ps);
        return e ? node(ps, EXPR_NEG, e, NULL) : NULL;
    }
    return parse_primary(ps);
}

static struct expr *parse_term(struct parser *ps)
{
    struct expr *l = parse_unary(ps);
    while (l && (*ps->p == '*' || *ps->p == '/' || *ps->p == '%')) {
        char op = *ps->p++;
        struct expr *r = parse_unary(ps);
        if (!r)
            return NULL;
        l = node(ps, op == '*' ? EXPR_MUL : op == '/' ? EXPR_DIV : EXPR_MOD, l, r);
    }
    return l;
}

static struct expr *parse_sum(struct parser *ps)
{
    struct expr *l = parse_term(ps);
    while (l && (*ps->p == '+' || *ps->p == '-')) {
        char op = *ps->p++;
        struct expr *r = parse_term(ps);
        if (!r)
            return NULL;
        l = node(ps, op == '+' ? EXPR_ADD : EXPR_SUB, l, r);
    }
    return l;
}

struct expr *expr_parse(struct arena *a, const char *text, char *err, size_t n)
{
    struct parser ps = {a, text, text, err, n, 0};
    if (!*text) {
        snprintf(err, n, "empty expression");
        return NULL;
    }
    struct expr *e = parse_sum(&ps);
    if (e && *ps.p) {
        char what[8];
        snprintf(what, sizeof what, "%c", *ps.p);
        return fail(&ps, isspace((unsigned char)*ps.p)
                             ? "space inside an expression%s: '%s' (spaces separate axes)"
                             : "unexpected '%s' in '%s'",
                    isspace((unsigned char)*ps.p) ? "" : what);
    }
    return e;
}

int expr_eval(const struct expr *e, expr_lookup_fn *lookup, void *ctx, int64_t *value,
              char *err, size_t n)
{
    int64_t l = 0, r = 0;
    switch (e->kind) {
    case EXPR_NUM:
        *value = e->num;
        return 0;
    case EXPR_NAME:
        return lookup(ctx, e->name, value, err, n);
    case EXPR_NEG:
        if (expr_eval(e->l, lookup, ctx, &l, err, n))
            return -1;
        if (__builtin_sub_overflow((int64_t)0, l, value))
            goto overflow;
        return 0;
    default:
        break;
    }
    if (expr_eval(e->l, lookup, ctx, &l, err, n) || expr_eval(e->r, lookup, ctx, &r, err, n))
        return -1;
    switch (e->kind) {
    case EXPR_ADD:
        if (__builtin_add_overflow(l, r, value))
            goto overflow;
        return 0;
    case EXPR_SUB:
        if (__builtin_sub_overflow(l, r, value))
            goto overflow;
        return 0;
    case EXPR_MUL:
        if (__builtin_mul_overflow(l, r, value))
            goto overflow;
        return 0;
    case EXPR_DIV:
    case EXPR_MOD:
    case EXPR_CDIV:
        if (r == 0) {
            snprintf(err, n, "division by zero (%" PRId64 " / 0)", l);
            return -1;
        }
        if (l == INT64_MIN && r == -1)
            goto overflow;
        if (e->kind == EXPR_MOD) {
            *value = l % r;
        } else if (e->kind == EXPR_DIV) {
            if (l % r) {
                snprintf(err, n, "%" PRId64 " is not divisible by %" PRId64
                         " (a dimension divides exactly; cdiv(a,b) rounds up)", l, r);
                return -1;
            }
            *value = l / r;
        } else {
            *value = l / r + ((l % r != 0) && ((l < 0) == (r < 0)));
        }
        return 0;
    case EXPR_MIN:
        *value = l < r ? l : r;
        return 0;
    case EXPR_MAX:
        *value = l > r ? l : r;
        return 0;
    default:
        break;
    }
    snprintf(err, n, "bad expression node");
    return -1;
overflow:
    snprintf(err, n, "overflows 64 bits");
    return -1;
}

void expr_each_name(const struct expr *e, void (*fn)(void *ctx, const char *name), void *ctx)
{
    if (!e)
        return;
    if (e->kind == EXPR_NAME)
        fn(ctx, e->name);
    expr_each_name(e->l, fn, ctx);
    expr_each_name(e->r, fn, ctx);
}
