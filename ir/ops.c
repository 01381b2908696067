/* ops.c: each op's signature (parsed from ops.def), shape rule and FLOP count,
 * and the shape-inference pass that applies them in topological order.
 *
 * A shape rule sees the op's inputs (NULL for an absent optional one) and its
 * attributes, and either fills in the outputs' shapes and dtypes or explains,
 * naming the input, the axis and both sizes, why the inputs do not fit. */
#include "ir.h"
#include "util.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct shape_ctx {
    const struct ir_graph *g;
    const struct ir_op *op;
    const struct ir_op_info *info;
    const struct ir_tensor *in[IR_MAX_IN];
    int n_in;
    struct ir_shape out[IR_MAX_OUT];
    enum ir_dtype dtype[IR_MAX_OUT];
    int n_out;
    char why[1024];
};

typedef int shape_fn(struct shape_ctx *c);
typedef double flops_fn(const struct shape_ctx *c);

#define OP(id, name, in, out, attrs, summary, saves)                           \
    static shape_fn shape_##name;                                              \
    static flops_fn flops_##name;
#include "ops.def"
#undef OP

static const struct {
    const char *name, *in, *out, *attrs, *summary, *saves;
    shape_fn *shape;
    flops_fn *flops;
} op_rows[] = {
#define OP(id, name, in, out, attrs, summary, saves) {#name, in, out, attrs, summary, saves, shape_##name, flops_##name},
#include "ops.def"
#undef OP
};
_Static_assert(WF_COUNT(op_rows) == IR_OP_COUNT, "one row per op kind");

/* ---- op signatures --------------------------------------------------------- */

static struct ir_op_info infos[IR_OP_COUNT];
static bool infos_ready;

/* Split a space-separated spec into words stored in static storage. */
static int spec_words(const char *spec, char store[][32], int max)
{
    int n = 0;
    for (const char *p = spec; *p;) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, " ");
        WF_ASSERT(n < max && len < 32);
        memcpy(store[n], p, len);
        store[n][len] = 0;
        n++;
        p += len;
    }
    return n;
}

static void parse_io(const char *spec, const char **names, int *n_names, int *min, int *max,
                     char store[][32], int cap)
{
    int n = spec_words(spec, store, cap);
    *n_names = n;
    *min = 0;
    *max = 0;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(store[i]);
        char last = store[i][len - 1];
        if (last == '?' || last == '*')
            store[i][len - 1] = 0;
        names[i] = store[i];
        if (last == '*') {
            *max = IR_MAX_IN;
        } else {
            (*max)++;
            if (last != '?')
                *min = *max;
        }
    }
}

static void infos_init(void)
{
    static char in_store[IR_OP_COUNT][IR_MAX_IN][32], out_store[IR_OP_COUNT][IR_MAX_OUT][32];
    static char attr_store[IR_OP_COUNT][IR_MAX_ATTRS][32];
    static char saves_store[IR_OP_COUNT][IR_MAX_IN + IR_MAX_OUT + 2][32];
    for (int k = 0; k < IR_OP_COUNT; k++) {
        struct ir_op_info *info = &infos[k];
        info->name = op_rows[k].name;
        info->summary = op_rows[k].summary;
        parse_io(op_rows[k].in, info->in_names, &info->n_in_names, &info->in_min, &info->in_max,
                 in_store[k], IR_MAX_IN);
        parse_io(op_rows[k].out, info->out_names, &info->n_out_names, &info->out_min,
                 &info->out_max, out_store[k], IR_MAX_OUT);
        info->saves = op_rows[k].saves;
        info->n_saves = spec_words(op_rows[k].saves, saves_store[k], IR_MAX_IN + IR_MAX_OUT + 2);
        for (int w = 0; w < info->n_saves; w++)
            info->saves_words[w] = saves_store[k][w];
        info->n_attrs = spec_words(op_rows[k].attrs, attr_store[k], IR_MAX_ATTRS);
        for (int a = 0; a < info->n_attrs; a++) {
            char *w = attr_store[k][a];
            char *eq = strchr(w, '=');
            if (eq)
                *eq = 0;
            int id = ir_attr_parse_name(w);
            WF_ASSERT(id >= 0);
            info->attrs[a].id = (enum ir_attr_id)id;
            info->attrs[a].def = eq ? eq + 1 : NULL;
        }
    }
    infos_ready = true;
}

int ir_op_saved_tensor(const struct ir_op *o, const char *word)
{
    const struct ir_op_info *info = ir_op_info(o->kind);
    for (int k = 0; k < info->n_in_names && k < o->n_in; k++)
        if (!strcmp(info->in_names[k], word))
            return o->in[k];
    for (int k = 0; k < info->n_out_names && k < o->n_out; k++)
        if (!strcmp(info->out_names[k], word))
            return o->out[k];
    return -1;
}

bool ir_op_keeps(const struct ir_op *o, int t)
{
    const struct ir_op_info *info = ir_op_info(o->kind);
    for (int w = 0; t >= 0 && w < info->n_saves; w++)
        if (ir_op_saved_tensor(o, info->saves_words[w]) == t)
            return true;
    return false;
}

const struct ir_op_info *ir_op_info(enum ir_op_kind k)
{
    WF_ASSERT(k >= 0 && k < IR_OP_COUNT);
    if (!infos_ready)
        infos_init();
    return &infos[k];
}

int ir_op_parse_kind(const char *s)
{
    for (int k = 0; k < IR_OP_COUNT; k++)
        if (!strcmp(op_rows[k].name, s))
            return k;
    return -1;
}

const struct ir_attr *ir_op_attr(const struct ir_op *op, enum ir_attr_id id)
{
    for (int i = 0; i < op->n_attrs; i++)
        if (op->attrs[i].id == id)
            return &op->attrs[i];
    return NULL;
}

int64_t ir_relpos_bucket(int64_t rel, bool bidirectional, int64_t buckets, int64_t max_distance)
{
    int64_t ret = 0, n = -rel;
    if (bidirectional) {
        buckets /= 2;
        ret += n < 0 ? buckets : 0;
        n = n < 0 ? -n : n;
    } else {
        n = n > 0 ? n : 0;
    }
    int64_t exact = buckets / 2;
    if (n < exact)
        return ret + n;
    int64_t large = exact + (int64_t)(log((double)n / (double)exact) / log((double)max_distance / (double)exact) *
                                      (double)(buckets - exact));
    return ret + (large < buckets - 1 ? large : buckets - 1);
}

int64_t ir_op_int(const struct ir_op *op, enum ir_attr_id id)
{
    const struct ir_attr *a = ir_op_attr(op, id);
    WF_ASSERT(a);
    return a->i;
}

double ir_op_float(const struct ir_op *op, enum ir_attr_id id)
{
    const struct ir_attr *a = ir_op_attr(op, id);
    WF_ASSERT(a);
    return a->f;
}

/* ---- helpers for the rules -------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static int fail(struct shape_ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof c->why, fmt, ap);
    va_end(ap);
    return -1;
}

/* "b (qkv.w)": an input by its role and the name it was given. */
static const char *who(const struct shape_ctx *c, int i, char *buf, size_t n)
{
    snprintf(buf, n, "%s (%s)", c->info->in_names[i < c->info->n_in_names ? i : c->info->n_in_names - 1],
             c->in[i]->local_name);
    return buf;
}

static const struct ir_shape *S(const struct shape_ctx *c, int i) { return &c->in[i]->shape; }

static const struct ir_axis *axis(const struct shape_ctx *c, int i, int k)
{
    const struct ir_shape *s = S(c, i);
    return &s->ax[k < 0 ? s->rank + k : k];
}

static int need_rank(struct shape_ctx *c, int i, int lo, int hi, const char *layout)
{
    int r = S(c, i)->rank;
    if (r >= lo && r <= hi)
        return 0;
    char w[128], sh[256];
    return fail(c, "input %s has rank %d %s; it must be %s", who(c, i, w, sizeof w), r,
                ir_shape_str(S(c, i), sh, sizeof sh), layout);
}

static int need_float(struct shape_ctx *c, int i)
{
    if (ir_dtype_is_float(c->in[i]->dtype))
        return 0;
    char w[128];
    return fail(c, "input %s is %s; it must be a floating-point tensor", who(c, i, w, sizeof w),
                ir_dtype_name(c->in[i]->dtype));
}

static int need_int(struct shape_ctx *c, int i)
{
    if (c->in[i]->dtype == IR_DTYPE_I32)
        return 0;
    char w[128];
    return fail(c, "input %s is %s; it must be i32", who(c, i, w, sizeof w),
                ir_dtype_name(c->in[i]->dtype));
}

/* Axis ka of input ia must have the size of axis kb of input ib. */
static int need_same(struct shape_ctx *c, int ia, int ka, int ib, int kb, const char *what)
{
    const struct ir_axis *a = axis(c, ia, ka), *b = axis(c, ib, kb);
    if (a->size == b->size)
        return 0;
    char wa[128], wb[128], sa[96], sb[96];
    int ra = S(c, ia)->rank, rb = S(c, ib)->rank;
    return fail(c, "%s: axis %d of %s is %s but axis %d of %s is %s", what, ka < 0 ? ra + ka : ka,
                who(c, ia, wa, sizeof wa), ir_axis_str(a, sa, sizeof sa), kb < 0 ? rb + kb : kb,
                who(c, ib, wb, sizeof wb), ir_axis_str(b, sb, sizeof sb));
}

static int need_same_shape(struct shape_ctx *c, int ia, int ib)
{
    if (S(c, ia)->rank != S(c, ib)->rank) {
        char wa[128], wb[128], sa[256], sb[256];
        return fail(c, "%s %s and %s %s must have the same shape", who(c, ia, wa, sizeof wa),
                    ir_shape_str(S(c, ia), sa, sizeof sa), who(c, ib, wb, sizeof wb),
                    ir_shape_str(S(c, ib), sb, sizeof sb));
    }
    for (int k = 0; k < S(c, ia)->rank; k++)
        if (need_same(c, ia, k, ib, k, "shapes differ"))
            return -1;
    return 0;
}

static struct ir_axis mk_axis(const struct shape_ctx *c, int64_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static struct ir_axis mk_axis(const struct shape_ctx *c, int64_t size, const char *fmt, ...)
{
    struct ir_axis a = {size, NULL};
    if (fmt) {
        char buf[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        a.label = arena_strdup(c->g->arena, buf);
    }
    return a;
}

static const char *lbl(const struct ir_axis *a)
{
    return a->label ? a->label : "?";
}

/* An attribute of type DIM as an axis: its value, labelled as written. */
static struct ir_axis dim_axis(const struct shape_ctx *c, enum ir_attr_id id)
{
    const struct ir_attr *a = ir_op_attr(c->op, id);
    WF_ASSERT(a);
    return (struct ir_axis){a->i, a->label};
}

static int same_as_input(struct shape_ctx *c, int i)
{
    c->out[0] = *S(c, i);
    c->dtype[0] = c->in[i]->dtype;
    return 0;
}

static int unary_float(struct shape_ctx *c)
{
    return need_float(c, 0) ? -1 : same_as_input(c, 0);
}

/* Numpy broadcasting: right-aligned axes equal or 1. */
static int broadcast(struct shape_ctx *c, int ia, int ib)
{
    const struct ir_shape *a = S(c, ia), *b = S(c, ib);
    int r = a->rank > b->rank ? a->rank : b->rank;
    struct ir_shape o = {.rank = r};
    for (int k = 0; k < r; k++) {
        int ka = a->rank - r + k, kb = b->rank - r + k;
        const struct ir_axis *x = ka >= 0 ? &a->ax[ka] : NULL, *y = kb >= 0 ? &b->ax[kb] : NULL;
        if (x && y && x->size != y->size && x->size != 1 && y->size != 1)
            return need_same(c, ia, ka, ib, kb, "cannot broadcast");
        o.ax[k] = !y || (x && y->size == 1) ? *x : *y;
    }
    c->out[0] = o;
    c->dtype[0] = c->in[ia]->dtype;
    return 0;
}

/* ---- shape rules and FLOPs, in ops.def order --------------------------------- */

static double numel_out(const struct shape_ctx *c) { return (double)ir_shape_numel(&c->out[0]); }
static double numel_in(const struct shape_ctx *c, int i) { return (double)ir_shape_numel(S(c, i)); }
static double zero(const struct shape_ctx *c) { (void)c; return 0; }

static int shape_embedding(struct shape_ctx *c)
{
    if (need_rank(c, 0, 2, 2, "(vocab, hidden)") || need_float(c, 0) || need_int(c, 1))
        return -1;
    struct ir_shape o = *S(c, 1);
    if (o.rank + 1 > IR_MAX_RANK)
        return fail(c, "ids have too many axes");
    o.ax[o.rank++] = *axis(c, 0, 1);
    c->out[0] = o;
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_embedding(const struct shape_ctx *c) { return zero(c); }

static int shape_position_embedding(struct shape_ctx *c)
{
    if (need_rank(c, 0, 2, 2, "(positions, hidden)") || need_float(c, 0))
        return -1;
    struct ir_axis len = dim_axis(c, IR_ATTR_LENGTH);
    if (len.size > axis(c, 0, 0)->size) {
        char a[96], b[96], w[128];
        return fail(c, "length %s is longer than the %s rows of %s", ir_axis_str(&len, a, sizeof a),
                    ir_axis_str(axis(c, 0, 0), b, sizeof b), who(c, 0, w, sizeof w));
    }
    c->out[0] = (struct ir_shape){2, {len, *axis(c, 0, 1)}};
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_position_embedding(const struct shape_ctx *c) { return zero(c); }

static int shape_matmul(struct shape_ctx *c)
{
    if (need_rank(c, 0, 2, IR_MAX_RANK, "(..., M, K)") || need_rank(c, 1, 2, IR_MAX_RANK, "(..., K, N)") ||
        need_float(c, 0) || need_float(c, 1))
        return -1;
    bool ta = ir_op_int(c->op, IR_ATTR_TRANSPOSE_A), tb = ir_op_int(c->op, IR_ATTR_TRANSPOSE_B);
    int am = ta ? -1 : -2, ak = ta ? -2 : -1, bk = tb ? -1 : -2, bn = tb ? -2 : -1;
    if (need_same(c, 0, ak, 1, bk, "inner dimensions differ"))
        return -1;
    const struct ir_shape *a = S(c, 0), *b = S(c, 1);
    int ba = a->rank - 2, bb = b->rank - 2, r = ba > bb ? ba : bb;
    struct ir_shape o = {.rank = r + 2};
    for (int k = 0; k < r; k++) {
        int ka = ba - r + k, kb = bb - r + k;
        const struct ir_axis *x = ka >= 0 ? &a->ax[ka] : NULL, *y = kb >= 0 ? &b->ax[kb] : NULL;
        if (x && y && x->size != y->size && x->size != 1 && y->size != 1)
            return need_same(c, 0, ka, 1, kb, "batch dimensions differ");
        o.ax[k] = !y || (x && y->size == 1) ? *x : *y;
    }
    o.ax[r] = *axis(c, 0, am);
    o.ax[r + 1] = *axis(c, 1, bn);
    c->out[0] = o;
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_matmul(const struct shape_ctx *c)
{
    bool ta = ir_op_int(c->op, IR_ATTR_TRANSPOSE_A);
    return 2 * numel_out(c) * (double)axis(c, 0, ta ? -2 : -1)->size;
}

static int shape_add(struct shape_ctx *c)
{
    return need_float(c, 0) || need_float(c, 1) ? -1 : broadcast(c, 0, 1);
}
static double flops_add(const struct shape_ctx *c) { return numel_out(c); }

static int shape_mul(struct shape_ctx *c) { return shape_add(c); }
static double flops_mul(const struct shape_ctx *c) { return numel_out(c); }

static int shape_scale(struct shape_ctx *c) { return unary_float(c); }
static double flops_scale(const struct shape_ctx *c) { return numel_out(c); }

static int shape_bias_add(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 1, 1, 1, "(N), one value per last-axis element") ||
        need_same(c, 0, -1, 1, 0, "bias length differs from the last axis"))
        return -1;
    return same_as_input(c, 0);
}
static double flops_bias_add(const struct shape_ctx *c) { return numel_out(c); }

static int shape_gelu(struct shape_ctx *c) { return unary_float(c); }
static double flops_gelu(const struct shape_ctx *c) { return 8 * numel_out(c); }
static int shape_silu(struct shape_ctx *c) { return unary_float(c); }
static double flops_silu(const struct shape_ctx *c) { return 4 * numel_out(c); }
static int shape_relu(struct shape_ctx *c) { return unary_float(c); }
static double flops_relu(const struct shape_ctx *c) { return numel_out(c); }

static int shape_swiglu(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_float(c, 1) || need_same_shape(c, 0, 1))
        return -1;
    return same_as_input(c, 0);
}
static double flops_swiglu(const struct shape_ctx *c) { return 5 * numel_out(c); }

static int norm_rule(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 1, IR_MAX_RANK, "at least one axis"))
        return -1;
    for (int i = 1; i < c->n_in; i++)
        if (c->in[i] && (need_rank(c, i, 1, 1, "(N), one value per last-axis element") ||
                         need_same(c, 0, -1, i, 0, "norm weight length differs from the last axis")))
            return -1;
    double eps = ir_op_float(c->op, IR_ATTR_EPS);
    if (!(eps > 0))
        return fail(c, "eps must be positive, not %g", eps);
    return same_as_input(c, 0);
}
static int shape_layernorm(struct shape_ctx *c) { return norm_rule(c); }
static double flops_layernorm(const struct shape_ctx *c) { return 8 * numel_out(c); }
static int shape_rmsnorm(struct shape_ctx *c) { return norm_rule(c); }
static double flops_rmsnorm(const struct shape_ctx *c) { return 5 * numel_out(c); }

static int shape_softmax(struct shape_ctx *c)
{
    bool causal = ir_op_int(c->op, IR_ATTR_CAUSAL);
    if (need_float(c, 0) || need_rank(c, 0, causal || c->in[1] ? 2 : 1, IR_MAX_RANK,
                                      causal ? "(..., Sq, Sk) for a causal mask" : "(..., Sk)"))
        return -1;
    if (causal && need_same(c, 0, -2, 0, -1, "a causal softmax needs as many queries as keys"))
        return -1;
    if (c->in[1] && (need_rank(c, 1, 2, 2, "(B, Sk): 1 keeps a key, 0 drops it") ||
                     need_same(c, 1, 0, 0, 0, "mask batch differs") ||
                     need_same(c, 1, 1, 0, -1, "mask length differs from the keys")))
        return -1;
    return same_as_input(c, 0);
}
static double flops_softmax(const struct shape_ctx *c) { return 5 * numel_out(c); }

static int shape_attention(struct shape_ctx *c)
{
    for (int i = 0; i < 3; i++)
        if (need_float(c, i) || need_rank(c, i, 4, 4, "(batch, heads, seq, head_dim)"))
            return -1;
    if (need_same(c, 0, 0, 1, 0, "batch differs") || need_same(c, 0, 0, 2, 0, "batch differs") ||
        need_same(c, 1, 1, 2, 1, "k and v need the same heads") ||
        need_same(c, 1, 2, 2, 2, "k and v need the same length") ||
        need_same(c, 0, 3, 1, 3, "q and k need the same head_dim"))
        return -1;
    int64_t hq = axis(c, 0, 1)->size, hk = axis(c, 1, 1)->size;
    if (hq % hk) {
        char a[96], b[96];
        return fail(c, "q's %s heads are not a multiple of k's %s heads (grouped-query attention "
                    "shares each k,v head among a whole number of q heads)",
                    ir_axis_str(axis(c, 0, 1), a, sizeof a), ir_axis_str(axis(c, 1, 1), b, sizeof b));
    }
    if (ir_op_int(c->op, IR_ATTR_CAUSAL) && need_same(c, 0, 2, 1, 2, "causal attention needs as many queries as keys"))
        return -1;
    if (c->in[3]) {
        const struct ir_shape *b = S(c, 3);
        if (need_float(c, 3) || need_rank(c, 3, 3, 4, "(heads, Sq, Sk) or (batch, heads, Sq, Sk)"))
            return -1;
        int o = b->rank - 3;
        if ((o && b->ax[0].size != 1 && need_same(c, 3, 0, 0, 0, "bias batch differs")) ||
            need_same(c, 3, o, 0, 1, "bias heads differ from q's heads") ||
            need_same(c, 3, o + 1, 0, 2, "bias rows differ from the queries") ||
            need_same(c, 3, o + 2, 1, 2, "bias columns differ from the keys"))
            return -1;
    }
    double scale = ir_op_float(c->op, IR_ATTR_SCALE);
    if (!isnan(scale) && !(scale > 0))
        return fail(c, "scale must be positive, not %g", scale);
    c->out[0] = (struct ir_shape){4, {*axis(c, 0, 0), *axis(c, 0, 1), *axis(c, 0, 2), *axis(c, 2, 3)}};
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_attention(const struct shape_ctx *c)
{
    double b = (double)axis(c, 0, 0)->size, h = (double)axis(c, 0, 1)->size;
    double sq = (double)axis(c, 0, 2)->size, sk = (double)axis(c, 1, 2)->size;
    double d = (double)axis(c, 0, 3)->size, dv = (double)axis(c, 2, 3)->size;
    /* Pairs (query, key) that are computed: a causal mask skips the upper triangle. */
    double pairs = ir_op_int(c->op, IR_ATTR_CAUSAL) ? sq * (sq + 1) / 2 : sq * sk;
    return b * h * pairs * (2 * d + 2 * dv + 5);
}

static int shape_rotary(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 4, 4, "(batch, heads, seq, head_dim)"))
        return -1;
    if (axis(c, 0, 3)->size % 2) {
        char a[96];
        return fail(c, "rotary embedding rotates pairs: head_dim %s must be even",
                    ir_axis_str(axis(c, 0, 3), a, sizeof a));
    }
    double base = ir_op_float(c->op, IR_ATTR_BASE);
    if (!(base > 1))
        return fail(c, "base must be greater than 1, not %g", base);
    return same_as_input(c, 0);
}
static double flops_rotary(const struct shape_ctx *c) { return 3 * numel_out(c); }

static int shape_dropout(struct shape_ctx *c)
{
    double p = ir_op_float(c->op, IR_ATTR_P);
    if (!(p >= 0 && p < 1))
        return fail(c, "p is a probability below 1, not %g", p);
    return unary_float(c);
}
static double flops_dropout(const struct shape_ctx *c) { return 2 * numel_out(c); }

static int shape_split_heads(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 3, 3, "(batch, seq, features)"))
        return -1;
    struct ir_axis h = dim_axis(c, IR_ATTR_HEADS), g = dim_axis(c, IR_ATTR_GROUPS);
    int n = c->n_out;
    if (n > 1 && h.size % g.size)
        return fail(c, "heads %" PRId64 " are not a multiple of groups %" PRId64, h.size, g.size);
    int64_t slots = h.size + (int64_t)(n - 1) * g.size;
    const struct ir_axis *f = axis(c, 0, 2);
    if (f->size % slots) {
        char a[96];
        return fail(c, "features %s do not divide into %d output%s of heads: %s%s%s = %" PRId64
                    " head slots", ir_axis_str(f, a, sizeof a), n, n > 1 ? "s" : "", lbl(&h),
                    n > 1 ? (n == 2 ? "+" : "+2*") : "", n > 1 ? lbl(&g) : "", slots);
    }
    struct ir_axis d = n == 1 ? mk_axis(c, f->size / slots, "%s/%s", lbl(f), lbl(&h))
                              : mk_axis(c, f->size / slots, "%s/(%s+%s%s)", lbl(f), lbl(&h),
                                        n == 3 ? "2*" : "", lbl(&g));
    for (int i = 0; i < n; i++) {
        c->out[i] = (struct ir_shape){4, {*axis(c, 0, 0), i ? g : h, *axis(c, 0, 1), d}};
        c->dtype[i] = c->in[0]->dtype;
    }
    return 0;
}
static double flops_split_heads(const struct shape_ctx *c) { return zero(c); }

static int shape_merge_heads(struct shape_ctx *c)
{
    if (need_rank(c, 0, 4, 4, "(batch, heads, seq, head_dim)"))
        return -1;
    const struct ir_axis *h = axis(c, 0, 1), *d = axis(c, 0, 3);
    int64_t f;
    if (__builtin_mul_overflow(h->size, d->size, &f))
        return fail(c, "heads*head_dim overflows 64 bits");
    c->out[0] = (struct ir_shape){3, {*axis(c, 0, 0), *axis(c, 0, 2), mk_axis(c, f, "%s*%s", lbl(h), lbl(d))}};
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_merge_heads(const struct shape_ctx *c) { return zero(c); }

static int shape_reshape(struct shape_ctx *c)
{
    const struct ir_attr *a = ir_op_attr(c->op, IR_ATTR_SHAPE);
    int64_t n_in = ir_shape_numel(S(c, 0)), n_out = ir_shape_numel(a->shape);
    if (n_in != n_out) {
        char si[256], so[256];
        return fail(c, "cannot reshape %s (%" PRId64 " elements) to %s (%" PRId64 " elements)",
                    ir_shape_str(S(c, 0), si, sizeof si), n_in, ir_shape_str(a->shape, so, sizeof so), n_out);
    }
    c->out[0] = *a->shape;
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_reshape(const struct shape_ctx *c) { return zero(c); }

static int shape_concat(struct shape_ctx *c)
{
    int r = S(c, 0)->rank;
    int64_t ax = ir_op_int(c->op, IR_ATTR_AXIS);
    if (ax < -r || ax >= r)
        return fail(c, "axis %" PRId64 " is out of range for rank %d", ax, r);
    int k = (int)(ax < 0 ? ax + r : ax);
    struct ir_shape o = *S(c, 0);
    char label[256];
    snprintf(label, sizeof label, "%s", lbl(&o.ax[k]));
    for (int i = 1; i < c->n_in; i++) {
        if (S(c, i)->rank != r) {
            char w[128];
            return fail(c, "input %s has rank %d; concat needs rank %d like the first input",
                        who(c, i, w, sizeof w), S(c, i)->rank, r);
        }
        for (int j = 0; j < r; j++)
            if (j != k && need_same(c, 0, j, i, j, "inputs differ off the concat axis"))
                return -1;
        if (__builtin_add_overflow(o.ax[k].size, axis(c, i, k)->size, &o.ax[k].size))
            return fail(c, "concatenated length overflows 64 bits");
        size_t len = strlen(label);
        snprintf(label + len, sizeof label - len, "+%s", lbl(axis(c, i, k)));
    }
    o.ax[k].label = arena_strdup(c->g->arena, label);
    c->out[0] = o;
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_concat(const struct shape_ctx *c) { return zero(c); }

static int shape_cross_entropy(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 2, IR_MAX_RANK, "(..., vocab)") || need_int(c, 1))
        return -1;
    if (S(c, 1)->rank != S(c, 0)->rank - 1) {
        char w[128], s[256], l[256];
        return fail(c, "labels %s %s must have the logits' shape %s without its last (vocab) axis",
                    who(c, 1, w, sizeof w), ir_shape_str(S(c, 1), l, sizeof l),
                    ir_shape_str(S(c, 0), s, sizeof s));
    }
    for (int k = 0; k < S(c, 1)->rank; k++)
        if (need_same(c, 1, k, 0, k, "labels and logits differ"))
            return -1;
    c->out[0] = (struct ir_shape){0};
    c->dtype[0] = IR_DTYPE_F32;
    return 0;
}
static double flops_cross_entropy(const struct shape_ctx *c) { return 5 * numel_in(c, 0); }

static int shape_router(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 1, IR_MAX_RANK, "(..., experts)"))
        return -1;
    struct ir_axis k = dim_axis(c, IR_ATTR_TOPK);
    if (k.size > axis(c, 0, -1)->size) {
        char a[96], b[96];
        return fail(c, "topk %s is more than the %s experts", ir_axis_str(&k, a, sizeof a),
                    ir_axis_str(axis(c, 0, -1), b, sizeof b));
    }
    struct ir_shape o = *S(c, 0);
    o.ax[o.rank - 1] = k;
    c->out[0] = c->out[1] = o;
    c->dtype[0] = IR_DTYPE_F32;
    c->dtype[1] = IR_DTYPE_I32;
    return 0;
}
static double flops_router(const struct shape_ctx *c) { return 5 * numel_in(c, 0); }

static int shape_dispatch(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 3, 3, "(batch, seq, hidden)") || need_int(c, 1) ||
        need_rank(c, 1, 3, 3, "(batch, seq, topk)") || need_same(c, 0, 0, 1, 0, "batch differs") ||
        need_same(c, 0, 1, 1, 1, "seq differs"))
        return -1;
    c->out[0] = (struct ir_shape){3, {dim_axis(c, IR_ATTR_EXPERTS), dim_axis(c, IR_ATTR_CAPACITY), *axis(c, 0, 2)}};
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_dispatch(const struct shape_ctx *c) { return zero(c); }

static int shape_combine(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 3, 3, "(experts, capacity, hidden)") || need_float(c, 1) ||
        need_rank(c, 1, 3, 3, "(batch, seq, topk)") || need_int(c, 2) ||
        need_same_shape(c, 1, 2))
        return -1;
    c->out[0] = (struct ir_shape){3, {*axis(c, 1, 0), *axis(c, 1, 1), *axis(c, 0, 2)}};
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_combine(const struct shape_ctx *c) { return 2 * numel_out(c) * (double)axis(c, 1, 2)->size; }

static int shape_relpos_bias(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 2, 2, "(buckets, heads)"))
        return -1;
    if (ir_op_int(c->op, IR_ATTR_BIDIRECTIONAL) && axis(c, 0, 0)->size % 2) {
        char a[96];
        return fail(c, "bidirectional bias splits its buckets in two halves: %s buckets must be even",
                    ir_axis_str(axis(c, 0, 0), a, sizeof a));
    }
    c->out[0] = (struct ir_shape){3, {*axis(c, 0, 1), dim_axis(c, IR_ATTR_Q_LEN), dim_axis(c, IR_ATTR_K_LEN)}};
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_relpos_bias(const struct shape_ctx *c) { return numel_out(c); }

static int shape_patchify(struct shape_ctx *c)
{
    if (need_float(c, 0) || need_rank(c, 0, 4, 4, "(batch, channels, height, width)"))
        return -1;
    struct ir_axis p = dim_axis(c, IR_ATTR_PATCH);
    for (int k = 2; k < 4; k++)
        if (axis(c, 0, k)->size % p.size) {
            char a[96], b[96];
            return fail(c, "image %s %s is not a multiple of patch %s", k == 2 ? "height" : "width",
                        ir_axis_str(axis(c, 0, k), a, sizeof a), ir_axis_str(&p, b, sizeof b));
        }
    const struct ir_axis *ch = axis(c, 0, 1), *h = axis(c, 0, 2), *w = axis(c, 0, 3);
    int64_t n = (h->size / p.size) * (w->size / p.size), f;
    if (__builtin_mul_overflow(ch->size, p.size * p.size, &f))
        return fail(c, "patch features overflow 64 bits");
    c->out[0] = (struct ir_shape){3, {*axis(c, 0, 0), mk_axis(c, n, "(%s/%s)*(%s/%s)", lbl(h), lbl(&p), lbl(w), lbl(&p)),
                                      mk_axis(c, f, "%s*%s*%s", lbl(ch), lbl(&p), lbl(&p))}};
    c->dtype[0] = c->in[0]->dtype;
    return 0;
}
static double flops_patchify(const struct shape_ctx *c) { return zero(c); }

/* ---- the pass ------------------------------------------------------------------ */

static bool gather(const struct ir_graph *g, const struct ir_op *op, struct shape_ctx *c)
{
    memset(c, 0, sizeof *c);
    c->g = g;
    c->op = op;
    c->info = ir_op_info(op->kind);
    c->n_in = op->n_in;
    c->n_out = op->n_out;
    for (int i = 0; i < op->n_in; i++) {
        if (op->in[i] < 0)
            continue;
        c->in[i] = &g->tensors[op->in[i]];
        if (!c->in[i]->has_shape)
            return false; /* an earlier error left it unknown */
    }
    return true;
}

int ir_infer_shapes(struct ir_graph *g, struct diag *d)
{
    int errors = 0;
    struct shape_ctx c;
    for (int i = 0; i < g->n_ops; i++) {
        struct ir_op *op = &g->ops[i];
        if (!gather(g, op, &c))
            continue;
        const char *out_name = g->tensors[op->out[0]].local_name;
        if (op_rows[op->kind].shape(&c)) {
            diag_error(d, op->loc.file, op->loc.line, "<op kind=\"%s\" out=\"%s\">: %s",
                       c.info->name, out_name, c.why);
            errors++;
            continue;
        }
        for (int o = 0; o < op->n_out; o++) {
            struct ir_tensor *t = &g->tensors[op->out[o]];
            if (ir_shape_numel(&c.out[o]) < 0) {
                char s[256];
                diag_error(d, op->loc.file, op->loc.line,
                           "<op kind=\"%s\" out=\"%s\">: output %s %s has more elements than 64 bits can count",
                           c.info->name, out_name, t->local_name, ir_shape_str(&c.out[o], s, sizeof s));
                errors++;
                continue;
            }
            t->shape = c.out[o];
            t->dtype = c.dtype[o];
            t->has_shape = true;
        }
    }
    return errors ? -1 : 0;
}

double ir_op_flops(const struct ir_graph *g, const struct ir_op *op)
{
    struct shape_ctx c;
    if (!gather(g, op, &c))
        return 0;
    for (int o = 0; o < op->n_out; o++) {
        const struct ir_tensor *t = &g->tensors[op->out[o]];
        if (!t->has_shape)
            return 0;
        c.out[o] = t->shape;
    }
    return op_rows[op->kind].flops(&c);
}
