/* ref.c: the reference: each op in plain loops over whole float tensors. */
#include "ref.h"
#include "kernel.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct ref {
    const struct ir_graph *g;
    uint64_t seed;
    float **f;     /* per tensor (float dtypes) */
    int32_t **i;   /* per tensor (i32) */
};

/* ---- random numbers --------------------------------------------------------------- */

double ref_normal(uint64_t seed, uint64_t stream, uint64_t index)
{
    /* Box-Muller from the element's two counters 2i and 2i+1 */
    double u1 = kn_uniform(seed, stream, 2 * index), u2 = kn_uniform(seed, stream, 2 * index + 1);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2); /* 2 pi: M_PI is not C11 */
}

/* ---- buffers ---------------------------------------------------------------------- */

static int64_t numel(const struct ir_tensor *t) { return ir_shape_numel(&t->shape); }

struct ref *ref_new(const struct ir_graph *g, uint64_t seed)
{
    struct ref *r = wf_calloc(1, sizeof *r);
    r->g = g;
    r->seed = seed;
    r->f = wf_calloc((size_t)g->n_tensors + 1, sizeof *r->f);
    r->i = wf_calloc((size_t)g->n_tensors + 1, sizeof *r->i);
    for (int t = 0; t < g->n_tensors; t++) {
        const struct ir_tensor *x = &g->tensors[t];
        size_t n = (size_t)numel(x);
        if (x->dtype == IR_DTYPE_I32) {
            r->i[t] = wf_calloc(n ? n : 1, sizeof **r->i);
            continue;
        }
        r->f[t] = wf_calloc(n ? n : 1, sizeof **r->f);
        if (x->kind != IR_TENSOR_PARAM)
            continue;
        uint64_t stream = kn_stream(x->name);
        for (size_t k = 0; k < n; k++)
            r->f[t][k] = x->init == IR_INIT_ONES ? 1.0f : x->init == IR_INIT_ZEROS ? 0.0f
                                                   : (float)(x->init_std * ref_normal(seed, stream, k));
    }
    return r;
}

void ref_free(struct ref *r)
{
    if (!r)
        return;
    for (int t = 0; t < r->g->n_tensors; t++) {
        free(r->f[t]);
        free(r->i[t]);
    }
    free(r->f);
    free(r->i);
    free(r);
}

void ref_fill_inputs(struct ref *r, uint64_t seed, int64_t int_bound)
{
    for (int t = 0; t < r->g->n_tensors; t++) {
        const struct ir_tensor *x = &r->g->tensors[t];
        if (x->kind != IR_TENSOR_INPUT)
            continue;
        uint64_t stream = kn_stream(x->name);
        for (int64_t k = 0; k < numel(x); k++) {
            if (x->dtype == IR_DTYPE_I32)
                r->i[t][k] = (int32_t)(kn_uniform(seed, stream, (uint64_t)k) * (double)int_bound);
            else
                r->f[t][k] = (float)ref_normal(seed, stream, (uint64_t)k);
        }
    }
}

float *ref_data(struct ref *r, int tensor) { return r->f[tensor]; }
int32_t *ref_ints(struct ref *r, int tensor) { return r->i[tensor]; }

/* ---- index helpers ------------------------------------------------------------------ */

/* The element of `in` that broadcasts to element o of `out` (numpy rules). */
static int64_t bcast(const struct ir_shape *out, const struct ir_shape *in, int64_t o)
{
    int64_t idx = 0, stride = 1;
    for (int k = out->rank - 1, j = in->rank - 1; k >= 0; k--, j--) {
        int64_t c = o % out->ax[k].size;
        o /= out->ax[k].size;
        if (j < 0)
            continue;
        if (in->ax[j].size != 1)
            idx += c * stride;
        stride *= in->ax[j].size;
    }
    return idx;
}

static int64_t last(const struct ir_shape *s) { return s->rank ? s->ax[s->rank - 1].size : 1; }

/* ---- the ops ------------------------------------------------------------------------- */

struct opctx {
    struct ref *r;
    const struct ir_op *op;
    const struct ir_tensor *in[IR_MAX_IN], *out[IR_MAX_OUT];
    float *fi[IR_MAX_IN], *fo[IR_MAX_OUT];
    int32_t *ii[IR_MAX_IN], *io[IR_MAX_OUT];
    struct diag *d;
};

/* Op op's tensors and their buffers (float or int), as its rules read them. */
static struct opctx context(struct ref *r, int op, struct diag *d)
{
    struct opctx c = {.r = r, .op = &r->g->ops[op], .d = d};
    for (int k = 0; k < c.op->n_in; k++)
        if (c.op->in[k] >= 0) {
            c.in[k] = &r->g->tensors[c.op->in[k]];
            c.fi[k] = r->f[c.op->in[k]];
            c.ii[k] = r->i[c.op->in[k]];
        }
    for (int k = 0; k < c.op->n_out; k++) {
        c.out[k] = &r->g->tensors[c.op->out[k]];
        c.fo[k] = r->f[c.op->out[k]];
        c.io[k] = r->i[c.op->out[k]];
    }
    return c;
}

static int fail(struct opctx *c, const char *what, int64_t value)
{
    diag_error(c->d, c->op->loc.file, c->op->loc.line, "reference: <op kind=\"%s\" out=\"%s\">: %s (%lld)",
               ir_op_info(c->op->kind)->name, c->out[0]->local_name, what, (long long)value);
    return -1;
}

static int op_embedding(struct opctx *c)
{
    int64_t rows = c->in[0]->shape.ax[0].size, h = c->in[0]->shape.ax[1].size, n = numel(c->in[1]);
    for (int64_t t = 0; t < n; t++) {
        int32_t id = c->ii[1][t];
        if (id < 0 || id >= rows)
            return fail(c, "an id outside the table", id);
        memcpy(c->fo[0] + t * h, c->fi[0] + (int64_t)id * h, (size_t)h * sizeof(float));
    }
    return 0;
}

static int op_position_embedding(struct opctx *c)
{
    memcpy(c->fo[0], c->fi[0], (size_t)numel(c->out[0]) * sizeof(float));
    return 0;
}

static int op_matmul(struct opctx *c)
{
    bool ta = ir_op_int(c->op, IR_ATTR_TRANSPOSE_A), tb = ir_op_int(c->op, IR_ATTR_TRANSPOSE_B);
    const struct ir_shape *A = &c->in[0]->shape, *B = &c->in[1]->shape, *O = &c->out[0]->shape;
    int64_t M = O->ax[O->rank - 2].size, N = O->ax[O->rank - 1].size;
    int64_t K = ta ? A->ax[A->rank - 2].size : A->ax[A->rank - 1].size;
    /* batch shapes: every axis but the last two */
    struct ir_shape ob = *O, ab = *A, bb = *B;
    ob.rank -= 2, ab.rank -= 2, bb.rank -= 2;
    int64_t batches = ir_shape_numel(&ob);
    for (int64_t z = 0; z < batches; z++) {
        const float *a = c->fi[0] + bcast(&ob, &ab, z) * M * K, *b = c->fi[1] + bcast(&ob, &bb, z) * K * N;
        float *o = c->fo[0] + z * M * N;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)(ta ? a[k * M + m] : a[m * K + k]) * (tb ? b[n * K + k] : b[k * N + n]);
                o[m * N + n] = (float)s;
            }
    }
    return 0;
}

static int op_binary(struct opctx *c, int which)
{
    const struct ir_shape *O = &c->out[0]->shape;
    for (int64_t o = 0; o < numel(c->out[0]); o++) {
        float a = c->fi[0][bcast(O, &c->in[0]->shape, o)], b = c->fi[1][bcast(O, &c->in[1]->shape, o)];
        c->fo[0][o] = which == 0 ? a + b : which == 1 ? a * b : a / (1 + expf(-a)) * b;
    }
    return 0;
}

static int op_unary(struct opctx *c)
{
    int64_t n = numel(c->out[0]);
    const float *x = c->fi[0];
    float *y = c->fo[0];
    switch (c->op->kind) {
    case IR_OP_SCALE: {
        float by = (float)ir_op_float(c->op, IR_ATTR_BY);
        for (int64_t k = 0; k < n; k++)
            y[k] = x[k] * by;
        break;
    }
    case IR_OP_GELU:
        if (ir_op_int(c->op, IR_ATTR_TANH))
            for (int64_t k = 0; k < n; k++)
                y[k] = 0.5f * x[k] * (1 + tanhf(0.7978845608028654f * (x[k] + 0.044715f * x[k] * x[k] * x[k])));
        else
            for (int64_t k = 0; k < n; k++)
                y[k] = 0.5f * x[k] * (1 + erff(x[k] * 0.7071067811865476f));
        break;
    case IR_OP_SILU:
        for (int64_t k = 0; k < n; k++)
            y[k] = x[k] / (1 + expf(-x[k]));
        break;
    case IR_OP_RELU:
        for (int64_t k = 0; k < n; k++)
            y[k] = x[k] > 0 ? x[k] : 0;
        break;
    case IR_OP_DROPOUT: {
        double p = ir_op_float(c->op, IR_ATTR_P);
        uint64_t stream = kn_stream(c->out[0]->name);
        for (int64_t k = 0; k < n; k++)
            y[k] = kn_uniform(c->r->seed, stream, (uint64_t)k) < p ? 0 : (float)(x[k] / (1 - p));
        break;
    }
    default:
        WF_ASSERT(!"not unary");
    }
    return 0;
}

static int op_bias_add(struct opctx *c)
{
    int64_t n = numel(c->out[0]), w = last(&c->out[0]->shape);
    for (int64_t k = 0; k < n; k++)
        c->fo[0][k] = c->fi[0][k] + c->fi[1][k % w];
    return 0;
}

static int op_norm(struct opctx *c)
{
    int64_t w = last(&c->in[0]->shape), rows = numel(c->in[0]) / w;
    double eps = ir_op_float(c->op, IR_ATTR_EPS);
    bool layer = c->op->kind == IR_OP_LAYERNORM;
    const float *beta = layer && c->op->n_in > 2 && c->in[2] ? c->fi[2] : NULL;
    for (int64_t r = 0; r < rows; r++) {
        const float *x = c->fi[0] + r * w;
        float *y = c->fo[0] + r * w;
        double mean = 0, var = 0;
        if (layer) {
            for (int64_t k = 0; k < w; k++)
                mean += x[k];
            mean /= (double)w;
        }
        for (int64_t k = 0; k < w; k++)
            var += (x[k] - mean) * (x[k] - mean);
        double inv = 1 / sqrt(var / (double)w + eps);
        for (int64_t k = 0; k < w; k++)
            y[k] = (float)((x[k] - mean) * inv * c->fi[1][k] + (beta ? beta[k] : 0));
    }
    return 0;
}

/* softmax of one row in place, entries with keep[k] == 0 excluded */
static void softmax_row(float *x, const bool *keep, int64_t n)
{
    double m = -INFINITY, s = 0;
    for (int64_t k = 0; k < n; k++)
        if (keep[k] && x[k] > m)
            m = x[k];
    for (int64_t k = 0; k < n; k++) {
        double e = keep[k] && m > -INFINITY ? exp(x[k] - m) : 0;
        x[k] = (float)e;
        s += e;
    }
    for (int64_t k = 0; k < n; k++)
        x[k] = s > 0 ? (float)(x[k] / s) : 0;
}

static int op_softmax(struct opctx *c)
{
    const struct ir_shape *S = &c->in[0]->shape;
    int64_t sk = last(S), sq = S->rank >= 2 ? S->ax[S->rank - 2].size : 1, rows = numel(c->in[0]) / sk;
    bool causal = ir_op_int(c->op, IR_ATTR_CAUSAL);
    bool *keep = wf_calloc((size_t)sk, sizeof *keep);
    int64_t per_batch = rows / (S->ax[0].size ? S->ax[0].size : 1);
    for (int64_t r = 0; r < rows; r++) {
        int64_t q = r % sq, b = r / per_batch;
        for (int64_t k = 0; k < sk; k++)
            keep[k] = !causal || k <= q;
        if (c->op->n_in > 1 && c->in[1]) /* padding mask (B, Sk): 0 drops a key */
            for (int64_t k = 0; k < sk; k++)
                keep[k] = keep[k] && (c->in[1]->dtype == IR_DTYPE_I32 ? c->ii[1][b * sk + k] != 0 : c->fi[1][b * sk + k] != 0);
        memcpy(c->fo[0] + r * sk, c->fi[0] + r * sk, (size_t)sk * sizeof(float));
        softmax_row(c->fo[0] + r * sk, keep, sk);
    }
    free(keep);
    return 0;
}

/* Attention's shapes and attributes, and one row of its probabilities: the
 * forward and the backward (which recomputes them, as a fused kernel that
 * keeps only the row's max and sum would) share both. */
struct attn {
    int64_t B, Hq, Sq, D, Hk, Sk, Dv;
    double scale;
    bool causal;
    const float *bias; /* (B or 1, Hq, Sq, Sk), or NULL */
    bool bias_batched;
};

static struct attn attn_of(const struct opctx *c)
{
    const struct ir_shape *Q = &c->in[0]->shape, *K = &c->in[1]->shape, *V = &c->in[2]->shape;
    struct attn a = {.B = Q->ax[0].size, .Hq = Q->ax[1].size, .Sq = Q->ax[2].size, .D = Q->ax[3].size,
                     .Hk = K->ax[1].size, .Sk = K->ax[2].size, .Dv = V->ax[3].size,
                     .scale = ir_op_float(c->op, IR_ATTR_SCALE), .causal = ir_op_int(c->op, IR_ATTR_CAUSAL)};
    if (isnan(a.scale))
        a.scale = 1 / sqrt((double)a.D);
    a.bias = c->op->n_in > 3 && c->in[3] ? c->fi[3] : NULL;
    a.bias_batched = a.bias && c->in[3]->shape.rank == 4 && c->in[3]->shape.ax[0].size > 1;
    return a;
}

/* Index of score (b, h, i, j) in the bias, and in its gradient. */
static int64_t attn_bias_at(const struct attn *a, int64_t b, int64_t h, int64_t i, int64_t j)
{
    return (((a->bias_batched ? b : 0) * a->Hq + h) * a->Sq + i) * a->Sk + j;
}

/* Row i of head h's probabilities into p; q and k point at the head's queries and keys. */
static void attn_probs(const struct attn *a, int64_t b, int64_t h, int64_t i, const float *q, const float *k, float *p,
                       bool *keep)
{
    for (int64_t j = 0; j < a->Sk; j++) {
        double s = 0;
        for (int64_t e = 0; e < a->D; e++)
            s += (double)q[i * a->D + e] * k[j * a->D + e];
        s *= a->scale;
        if (a->bias)
            s += a->bias[attn_bias_at(a, b, h, i, j)];
        p[j] = (float)s;
        keep[j] = !a->causal || j <= i;
    }
    softmax_row(p, keep, a->Sk);
}

static int op_attention(struct opctx *c)
{
    struct attn a = attn_of(c);
    float *p = wf_calloc((size_t)a.Sk, sizeof *p);
    bool *keep = wf_calloc((size_t)a.Sk, sizeof *keep);
    for (int64_t b = 0; b < a.B; b++)
        for (int64_t h = 0; h < a.Hq; h++) {
            int64_t hk = h / (a.Hq / a.Hk);
            const float *q = c->fi[0] + ((b * a.Hq + h) * a.Sq) * a.D;
            const float *k = c->fi[1] + ((b * a.Hk + hk) * a.Sk) * a.D, *v = c->fi[2] + ((b * a.Hk + hk) * a.Sk) * a.Dv;
            for (int64_t i = 0; i < a.Sq; i++) {
                attn_probs(&a, b, h, i, q, k, p, keep);
                float *o = c->fo[0] + ((b * a.Hq + h) * a.Sq + i) * a.Dv;
                for (int64_t e = 0; e < a.Dv; e++) {
                    double s = 0;
                    for (int64_t j = 0; j < a.Sk; j++)
                        s += (double)p[j] * v[j * a.Dv + e];
                    o[e] = (float)s;
                }
            }
        }
    free(p);
    free(keep);
    return 0;
}

static int op_rotary(struct opctx *c)
{
    const struct ir_shape *X = &c->in[0]->shape;
    int64_t S = X->ax[2].size, D = X->ax[3].size, half = D / 2, rows = numel(c->in[0]) / D;
    double base = ir_op_float(c->op, IR_ATTR_BASE);
    for (int64_t r = 0; r < rows; r++) {
        int64_t pos = r % S;
        const float *x = c->fi[0] + r * D;
        float *y = c->fo[0] + r * D;
        for (int64_t i = 0; i < half; i++) {
            double angle = (double)pos * pow(base, -2.0 * (double)i / (double)D), cs = cos(angle), sn = sin(angle);
            y[i] = (float)(x[i] * cs - x[i + half] * sn);
            y[i + half] = (float)(x[i + half] * cs + x[i] * sn);
        }
    }
    return 0;
}

/* Megatron's grouped layout: per group, its query heads then one head of each other output. */
static int op_split_heads(struct opctx *c)
{
    const struct ir_shape *X = &c->in[0]->shape;
    int64_t B = X->ax[0].size, S = X->ax[1].size, F = X->ax[2].size;
    int64_t H = ir_op_int(c->op, IR_ATTR_HEADS), G = ir_op_int(c->op, IR_ATTR_GROUPS);
    int n = c->op->n_out;
    if (n == 1)
        G = H;
    int64_t per = H / G, D = F / (H + (n - 1) * G), group = (per + n - 1) * D;
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++) {
            const float *x = c->fi[0] + (b * S + s) * F;
            for (int64_t g = 0; g < G; g++) {
                for (int64_t j = 0; j < per; j++) /* output 0: heads g*per .. */
                    memcpy(c->fo[0] + ((b * H + g * per + j) * S + s) * D, x + g * group + j * D, (size_t)D * sizeof(float));
                for (int o = 1; o < n; o++)
                    memcpy(c->fo[o] + ((b * G + g) * S + s) * D, x + g * group + (per + o - 1) * D, (size_t)D * sizeof(float));
            }
        }
    return 0;
}

static int op_merge_heads(struct opctx *c)
{
    const struct ir_shape *X = &c->in[0]->shape;
    int64_t B = X->ax[0].size, H = X->ax[1].size, S = X->ax[2].size, D = X->ax[3].size;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t s = 0; s < S; s++)
                memcpy(c->fo[0] + (b * S + s) * H * D + h * D, c->fi[0] + ((b * H + h) * S + s) * D, (size_t)D * sizeof(float));
    return 0;
}

static int op_concat(struct opctx *c)
{
    const struct ir_shape *O = &c->out[0]->shape;
    int ax = (int)ir_op_int(c->op, IR_ATTR_AXIS);
    ax = ax < 0 ? ax + O->rank : ax;
    int64_t outer = 1, inner = 1;
    for (int k = 0; k < ax; k++)
        outer *= O->ax[k].size;
    for (int k = ax + 1; k < O->rank; k++)
        inner *= O->ax[k].size;
    int64_t at = 0;
    for (int i = 0; i < c->op->n_in; i++) {
        int64_t len = c->in[i]->shape.ax[ax].size;
        for (int64_t o = 0; o < outer; o++)
            memcpy(c->fo[0] + (o * O->ax[ax].size + at) * inner, c->fi[i] + o * len * inner, (size_t)(len * inner) * sizeof(float));
        at += len;
    }
    return 0;
}

static int op_cross_entropy(struct opctx *c)
{
    int64_t V = last(&c->in[0]->shape), n = numel(c->in[1]), ignore = ir_op_int(c->op, IR_ATTR_IGNORE_INDEX), count = 0;
    double total = 0;
    for (int64_t t = 0; t < n; t++) {
        int32_t y = c->ii[1][t];
        if (y == ignore)
            continue;
        if (y < 0 || y >= V)
            return fail(c, "a label outside the vocabulary", y);
        const float *l = c->fi[0] + t * V;
        double m = -INFINITY, s = 0;
        for (int64_t k = 0; k < V; k++)
            m = l[k] > m ? l[k] : m;
        for (int64_t k = 0; k < V; k++)
            s += exp(l[k] - m);
        total += m + log(s) - l[y];
        count++;
    }
    c->fo[0][0] = count ? (float)(total / (double)count) : 0;
    return 0;
}

static int op_router(struct opctx *c)
{
    int64_t E = last(&c->in[0]->shape), k = ir_op_int(c->op, IR_ATTR_TOPK), rows = numel(c->in[0]) / E;
    for (int64_t r = 0; r < rows; r++) {
        const float *l = c->fi[0] + r * E;
        float *w = c->fo[0] + r * k;
        int32_t *idx = c->io[1] + r * k;
        for (int64_t j = 0; j < k; j++) { /* the j-th largest; ties to the lower index */
            int32_t best = -1;
            for (int32_t e = 0; e < E; e++) {
                bool taken = false;
                for (int64_t q = 0; q < j; q++)
                    taken |= idx[q] == e;
                if (!taken && (best < 0 || l[e] > l[best]))
                    best = e;
            }
            idx[j] = best;
        }
        double m = l[idx[0]], s = 0; /* softmax over the chosen (Mixtral) */
        for (int64_t j = 0; j < k; j++)
            s += exp(l[idx[j]] - m);
        for (int64_t j = 0; j < k; j++)
            w[j] = (float)(exp(l[idx[j]] - m) / s);
    }
    return 0;
}

/* Token t's choice j lands in slot[t*k + j] of its expert, in token order;
 * -1 when the expert is full (capacity). */
static void slots(const int32_t *idx, int64_t tokens, int64_t k, int64_t E, int64_t C, int64_t *slot)
{
    int64_t *fill = wf_calloc((size_t)E, sizeof *fill);
    for (int64_t t = 0; t < tokens * k; t++) {
        int32_t e = idx[t];
        slot[t] = e >= 0 && e < E && fill[e] < C ? fill[e]++ : -1;
    }
    free(fill);
}

static int op_dispatch(struct opctx *c)
{
    int64_t H = last(&c->in[0]->shape), k = last(&c->in[1]->shape), tokens = numel(c->in[1]) / k;
    int64_t E = c->out[0]->shape.ax[0].size, C = c->out[0]->shape.ax[1].size;
    int64_t *slot = wf_calloc((size_t)(tokens * k), sizeof *slot);
    slots(c->ii[1], tokens, k, E, C, slot);
    memset(c->fo[0], 0, (size_t)numel(c->out[0]) * sizeof(float));
    for (int64_t t = 0; t < tokens * k; t++)
        if (slot[t] >= 0)
            memcpy(c->fo[0] + (c->ii[1][t] * C + slot[t]) * H, c->fi[0] + (t / k) * H, (size_t)H * sizeof(float));
    free(slot);
    return 0;
}

static int op_combine(struct opctx *c)
{
    int64_t E = c->in[0]->shape.ax[0].size, C = c->in[0]->shape.ax[1].size, H = c->in[0]->shape.ax[2].size;
    int64_t k = last(&c->in[2]->shape), tokens = numel(c->in[2]) / k;
    int64_t *slot = wf_calloc((size_t)(tokens * k), sizeof *slot);
    slots(c->ii[2], tokens, k, E, C, slot);
    memset(c->fo[0], 0, (size_t)numel(c->out[0]) * sizeof(float));
    for (int64_t t = 0; t < tokens * k; t++)
        if (slot[t] >= 0)
            for (int64_t h = 0; h < H; h++)
                c->fo[0][(t / k) * H + h] += c->fi[1][t] * c->fi[0][(c->ii[2][t] * C + slot[t]) * H + h];
    free(slot);
    return 0;
}

static int op_relpos_bias(struct opctx *c)
{
    int64_t buckets = c->in[0]->shape.ax[0].size, H = c->in[0]->shape.ax[1].size;
    int64_t Sq = c->out[0]->shape.ax[1].size, Sk = c->out[0]->shape.ax[2].size;
    bool bi = ir_op_int(c->op, IR_ATTR_BIDIRECTIONAL);
    int64_t maxd = ir_op_int(c->op, IR_ATTR_MAX_DISTANCE);
    for (int64_t q = 0; q < Sq; q++)
        for (int64_t k = 0; k < Sk; k++) {
            int64_t b = ir_relpos_bucket(k - q, bi, buckets, maxd);
            for (int64_t h = 0; h < H; h++)
                c->fo[0][(h * Sq + q) * Sk + k] = c->fi[0][b * H + h];
        }
    return 0;
}

static int op_patchify(struct opctx *c)
{
    const struct ir_shape *X = &c->in[0]->shape;
    int64_t B = X->ax[0].size, C = X->ax[1].size, Hh = X->ax[2].size, W = X->ax[3].size, p = ir_op_int(c->op, IR_ATTR_PATCH);
    int64_t wp = W / p, n = (Hh / p) * wp, f = C * p * p;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t ch = 0; ch < C; ch++)
                for (int64_t di = 0; di < p; di++)
                    for (int64_t dj = 0; dj < p; dj++)
                        c->fo[0][(b * n + i) * f + (ch * p + di) * p + dj] =
                            c->fi[0][((b * C + ch) * Hh + (i / wp) * p + di) * W + (i % wp) * p + dj];
    return 0;
}

int ref_op(struct ref *r, int op, struct diag *d)
{
    const struct ir_op *o = &r->g->ops[op];
    if (o->grad_of >= 0) { /* a backward op: the gradients of its forward op's inputs, from scratch */
        float *gout[IR_MAX_OUT] = {0}, *gin[IR_MAX_IN] = {0};
        for (int k = 0; k < o->n_in; k++)
            gout[k] = o->in[k] >= 0 ? r->f[o->in[k]] : NULL;
        for (int k = 0; k < o->n_out; k++)
            if (o->out[k] >= 0) {
                gin[k] = r->f[o->out[k]];
                memset(gin[k], 0, (size_t)numel(&r->g->tensors[o->out[k]]) * sizeof(float));
            }
        return ref_op_backward(r, o->grad_of, gout, gin, d);
    }
    struct opctx c = context(r, op, d);
    switch (c.op->kind) {
    case IR_OP_EMBEDDING: return op_embedding(&c);
    case IR_OP_POSITION_EMBEDDING: return op_position_embedding(&c);
    case IR_OP_MATMUL: return op_matmul(&c);
    case IR_OP_ADD: return op_binary(&c, 0);
    case IR_OP_MUL: return op_binary(&c, 1);
    case IR_OP_SWIGLU: return op_binary(&c, 2);
    case IR_OP_SCALE:
    case IR_OP_GELU:
    case IR_OP_SILU:
    case IR_OP_RELU:
    case IR_OP_DROPOUT: return op_unary(&c);
    case IR_OP_BIAS_ADD: return op_bias_add(&c);
    case IR_OP_LAYERNORM:
    case IR_OP_RMSNORM: return op_norm(&c);
    case IR_OP_SOFTMAX: return op_softmax(&c);
    case IR_OP_ATTENTION: return op_attention(&c);
    case IR_OP_ROTARY: return op_rotary(&c);
    case IR_OP_SPLIT_HEADS: return op_split_heads(&c);
    case IR_OP_MERGE_HEADS: return op_merge_heads(&c);
    case IR_OP_RESHAPE:
        memcpy(c.fo[0], c.fi[0], (size_t)numel(c.out[0]) * sizeof(float));
        return 0;
    case IR_OP_CONCAT: return op_concat(&c);
    case IR_OP_CROSS_ENTROPY: return op_cross_entropy(&c);
    case IR_OP_ROUTER: return op_router(&c);
    case IR_OP_DISPATCH: return op_dispatch(&c);
    case IR_OP_COMBINE: return op_combine(&c);
    case IR_OP_RELPOS_BIAS: return op_relpos_bias(&c);
    case IR_OP_PATCHIFY: return op_patchify(&c);
    case IR_OP_COUNT: break;
    }
    WF_ASSERT(!"op kind without a reference");
    return -1;
}

int ref_forward(struct ref *r, struct diag *d)
{
    for (int i = 0; i < r->g->n_ops; i++)
        if (ref_op(r, i, d))
            return -1;
    return 0;
}

/* ---- backward: each op's vector-Jacobian product ---------------------------------- */

struct bctx {
    struct opctx f;           /* inputs and outputs, as in the forward */
    float *const *gout;
    float **gin;
};

static int back_matmul(struct bctx *b)
{
    const struct opctx *c = &b->f;
    bool ta = ir_op_int(c->op, IR_ATTR_TRANSPOSE_A), tb = ir_op_int(c->op, IR_ATTR_TRANSPOSE_B);
    const struct ir_shape *A = &c->in[0]->shape, *B = &c->in[1]->shape, *O = &c->out[0]->shape;
    int64_t M = O->ax[O->rank - 2].size, N = O->ax[O->rank - 1].size;
    int64_t K = ta ? A->ax[A->rank - 2].size : A->ax[A->rank - 1].size;
    struct ir_shape ob = *O, ab = *A, bb = *B;
    ob.rank -= 2, ab.rank -= 2, bb.rank -= 2;
    for (int64_t z = 0; z < ir_shape_numel(&ob); z++) {
        int64_t za = bcast(&ob, &ab, z), zb = bcast(&ob, &bb, z);
        const float *a = c->fi[0] + za * M * K, *bm = c->fi[1] + zb * K * N, *g = b->gout[0] + z * M * N;
        float *ga = b->gin[0] ? b->gin[0] + za * M * K : NULL, *gb = b->gin[1] ? b->gin[1] + zb * K * N : NULL;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                float go = g[m * N + n];
                for (int64_t k = 0; k < K; k++) {
                    if (ga)
                        ga[ta ? k * M + m : m * K + k] += go * (tb ? bm[n * K + k] : bm[k * N + n]);
                    if (gb)
                        gb[tb ? n * K + k : k * N + n] += go * (ta ? a[k * M + m] : a[m * K + k]);
                }
            }
    }
    return 0;
}

static int back_binary(struct bctx *b, int which)
{
    const struct opctx *c = &b->f;
    const struct ir_shape *O = &c->out[0]->shape, *A = &c->in[0]->shape, *B = &c->in[1]->shape;
    for (int64_t o = 0; o < ir_shape_numel(O); o++) {
        int64_t ia = bcast(O, A, o), ib = bcast(O, B, o);
        float g = b->gout[0][o], x = c->fi[0][ia], y = c->fi[1][ib];
        float da, db;
        if (which == 0) { /* add */
            da = g, db = g;
        } else if (which == 1) { /* mul */
            da = g * y, db = g * x;
        } else { /* swiglu: silu(x) * y */
            float s = 1 / (1 + expf(-x));
            da = g * y * (s + x * s * (1 - s)), db = g * x * s;
        }
        if (b->gin[0])
            b->gin[0][ia] += da;
        if (b->gin[1])
            b->gin[1][ib] += db;
    }
    return 0;
}

static int back_unary(struct bctx *b)
{
    const struct opctx *c = &b->f;
    int64_t n = numel(c->out[0]);
    const float *x = c->fi[0], *y = c->fo[0], *g = b->gout[0];
    float *gx = b->gin[0];
    if (!gx)
        return 0;
    for (int64_t k = 0; k < n; k++) {
        double d = 0;
        switch (c->op->kind) {
        case IR_OP_SCALE: d = ir_op_float(c->op, IR_ATTR_BY); break;
        case IR_OP_GELU:
            if (ir_op_int(c->op, IR_ATTR_TANH)) {
                double u = 0.7978845608028654 * (x[k] + 0.044715 * x[k] * x[k] * x[k]), t = tanh(u);
                d = 0.5 * (1 + t) + 0.5 * x[k] * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x[k] * x[k]);
            } else {
                d = 0.5 * (1 + erf(x[k] * 0.7071067811865476)) + x[k] * exp(-0.5 * x[k] * x[k]) * 0.3989422804014327;
            }
            break;
        case IR_OP_SILU: {
            double s = 1 / (1 + exp(-x[k]));
            d = s + x[k] * s * (1 - s);
            break;
        }
        case IR_OP_RELU: d = y[k] > 0; break;
        case IR_OP_DROPOUT: {
            double p = ir_op_float(c->op, IR_ATTR_P);
            d = kn_uniform(c->r->seed, kn_stream(c->out[0]->name), (uint64_t)k) < p ? 0 : 1 / (1 - p);
            break;
        }
        default: WF_ASSERT(!"not unary");
        }
        gx[k] += (float)(g[k] * d);
    }
    return 0;
}

static int back_norm(struct bctx *b)
{
    const struct opctx *c = &b->f;
    int64_t w = last(&c->in[0]->shape), rows = numel(c->in[0]) / w;
    double eps = ir_op_float(c->op, IR_ATTR_EPS);
    bool layer = c->op->kind == IR_OP_LAYERNORM;
    bool has_beta = layer && c->op->n_in > 2 && c->in[2];
    for (int64_t r = 0; r < rows; r++) {
        const float *x = c->fi[0] + r * w, *g = b->gout[0] + r * w, *gamma = c->fi[1];
        double mean = 0, var = 0;
        if (layer) {
            for (int64_t k = 0; k < w; k++)
                mean += x[k];
            mean /= (double)w;
        }
        for (int64_t k = 0; k < w; k++)
            var += (x[k] - mean) * (x[k] - mean);
        double inv = 1 / sqrt(var / (double)w + eps), s1 = 0, s2 = 0;
        for (int64_t k = 0; k < w; k++) {
            double xh = (x[k] - mean) * inv, dxh = g[k] * gamma[k];
            s1 += dxh;
            s2 += dxh * xh;
            if (b->gin[1])
                b->gin[1][k] += (float)(g[k] * xh);
            if (has_beta && b->gin[2])
                b->gin[2][k] += g[k];
        }
        if (!b->gin[0])
            continue;
        for (int64_t k = 0; k < w; k++) {
            double xh = (x[k] - mean) * inv, dxh = g[k] * gamma[k];
            /* layernorm: inv/w (w dxh - sum dxh - xh sum(dxh xh)); rmsnorm: inv (dxh - xh sum(dxh xh)/w) */
            double dx = layer ? inv / (double)w * ((double)w * dxh - s1 - xh * s2) : inv * (dxh - xh * s2 / (double)w);
            b->gin[0][r * w + k] += (float)dx;
        }
    }
    return 0;
}

static int back_softmax(struct bctx *b)
{
    const struct opctx *c = &b->f;
    int64_t sk = last(&c->out[0]->shape), rows = numel(c->out[0]) / sk;
    if (!b->gin[0])
        return 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *y = c->fo[0] + r * sk, *g = b->gout[0] + r * sk;
        double dot = 0;
        for (int64_t k = 0; k < sk; k++)
            dot += (double)g[k] * y[k];
        for (int64_t k = 0; k < sk; k++)
            b->gin[0][r * sk + k] += (float)(y[k] * (g[k] - dot));
    }
    return 0;
}

static int back_attention(struct bctx *b)
{
    const struct opctx *c = &b->f;
    struct attn a = attn_of(c);
    int64_t D = a.D, Dv = a.Dv, Sk = a.Sk;
    float *gbias = a.bias ? b->gin[3] : NULL;
    float *p = wf_calloc((size_t)Sk, sizeof *p);
    double *dp = wf_calloc((size_t)Sk, sizeof *dp);
    bool *keep = wf_calloc((size_t)Sk, sizeof *keep);
    for (int64_t bi = 0; bi < a.B; bi++)
        for (int64_t h = 0; h < a.Hq; h++) {
            int64_t hk = h / (a.Hq / a.Hk);
            const float *q = c->fi[0] + ((bi * a.Hq + h) * a.Sq) * D;
            const float *k = c->fi[1] + ((bi * a.Hk + hk) * Sk) * D, *v = c->fi[2] + ((bi * a.Hk + hk) * Sk) * Dv;
            for (int64_t i = 0; i < a.Sq; i++) {
                attn_probs(&a, bi, h, i, q, k, p, keep);
                const float *go = b->gout[0] + ((bi * a.Hq + h) * a.Sq + i) * Dv;
                double rowdot = 0;
                for (int64_t j = 0; j < Sk; j++) {
                    double s = 0;
                    for (int64_t e = 0; e < Dv; e++)
                        s += (double)go[e] * v[j * Dv + e];
                    dp[j] = s;
                    rowdot += s * p[j];
                    if (b->gin[2])
                        for (int64_t e = 0; e < Dv; e++)
                            b->gin[2][((bi * a.Hk + hk) * Sk + j) * Dv + e] += p[j] * go[e];
                }
                for (int64_t j = 0; j < Sk; j++) {
                    double ds = p[j] * (dp[j] - rowdot); /* gradient of the score */
                    if (gbias)
                        gbias[attn_bias_at(&a, bi, h, i, j)] += (float)ds;
                    for (int64_t e = 0; e < D; e++) {
                        if (b->gin[0])
                            b->gin[0][((bi * a.Hq + h) * a.Sq + i) * D + e] += (float)(a.scale * ds * k[j * D + e]);
                        if (b->gin[1])
                            b->gin[1][((bi * a.Hk + hk) * Sk + j) * D + e] += (float)(a.scale * ds * q[i * D + e]);
                    }
                }
            }
        }
    free(p);
    free(dp);
    free(keep);
    return 0;
}

static int back_rotary(struct bctx *b)
{
    const struct opctx *c = &b->f;
    const struct ir_shape *X = &c->in[0]->shape;
    int64_t S = X->ax[2].size, D = X->ax[3].size, half = D / 2, rows = numel(c->in[0]) / D;
    double base = ir_op_float(c->op, IR_ATTR_BASE);
    if (!b->gin[0])
        return 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *g = b->gout[0] + r * D;
        float *gx = b->gin[0] + r * D;
        for (int64_t i = 0; i < half; i++) { /* the transpose of the rotation */
            double angle = (double)(r % S) * pow(base, -2.0 * (double)i / (double)D), cs = cos(angle), sn = sin(angle);
            gx[i] += (float)(g[i] * cs + g[i + half] * sn);
            gx[i + half] += (float)(-g[i] * sn + g[i + half] * cs);
        }
    }
    return 0;
}

/* The layout ops move elements: their backward moves gradients back.  Run
 * the forward with the gradients in place of the values, in reverse. */
static int back_by_index(struct bctx *b)
{
    const struct opctx *c = &b->f;
    /* Mark every output element with its source index by running the forward
     * on an index-valued input, then scatter-add the gradients. */
    int64_t n_in = numel(c->in[0]);
    float *idx = wf_calloc((size_t)n_in, sizeof *idx);
    for (int64_t k = 0; k < n_in; k++)
        idx[k] = (float)k; /* exact below 2^24 elements: the reference is for small tensors */
    struct opctx f = *c;
    f.fi[0] = idx;
    for (int o = 0; o < c->op->n_out; o++)
        f.fo[o] = wf_calloc((size_t)numel(c->out[o]), sizeof(float));
    int rc = 0;
    switch (c->op->kind) {
    case IR_OP_SPLIT_HEADS: rc = op_split_heads(&f); break;
    case IR_OP_MERGE_HEADS: rc = op_merge_heads(&f); break;
    case IR_OP_PATCHIFY: rc = op_patchify(&f); break;
    case IR_OP_POSITION_EMBEDDING: rc = op_position_embedding(&f); break;
    default: memcpy(f.fo[0], idx, (size_t)numel(c->out[0]) * sizeof(float)); break; /* reshape */
    }
    for (int o = 0; o < c->op->n_out && b->gin[0]; o++)
        for (int64_t k = 0; k < numel(c->out[o]); k++)
            b->gin[0][(int64_t)f.fo[o][k]] += b->gout[o] ? b->gout[o][k] : 0;
    for (int o = 0; o < c->op->n_out; o++)
        free(f.fo[o]);
    free(idx);
    return rc;
}

static int backward_dispatch(struct bctx *b0, struct opctx *c, float *const *gout, float **gin);

int ref_op_backward(struct ref *r, int op, float *const *gout, float **gin, struct diag *d)
{
    struct bctx b = {.f = context(r, op, d), .gout = gout, .gin = gin};
    struct opctx *c = &b.f;
    /* An output nobody differentiates has a zero gradient. */
    float *zeros[IR_MAX_OUT] = {0};
    float *const *given = gout;
    float *filled[IR_MAX_OUT];
    for (int k = 0; k < c->op->n_out; k++) {
        filled[k] = given[k];
        if (!given[k] && c->out[k]->dtype != IR_DTYPE_I32)
            filled[k] = zeros[k] = wf_calloc((size_t)numel(c->out[k]) + 1, sizeof(float));
    }
    b.gout = gout = filled;
    int rc = backward_dispatch(&b, c, gout, gin);
    for (int k = 0; k < c->op->n_out; k++)
        free(zeros[k]);
    return rc;
}

static int backward_dispatch(struct bctx *b0, struct opctx *c, float *const *gout, float **gin)
{
    struct bctx b = *b0;
    switch (c->op->kind) {
    case IR_OP_EMBEDDING: {
        int64_t h = c->in[0]->shape.ax[1].size;
        for (int64_t t = 0; gin[0] && t < numel(c->in[1]); t++)
            for (int64_t k = 0; k < h; k++)
                gin[0][(int64_t)c->ii[1][t] * h + k] += gout[0][t * h + k];
        return 0;
    }
    case IR_OP_MATMUL: return back_matmul(&b);
    case IR_OP_ADD: return back_binary(&b, 0);
    case IR_OP_MUL: return back_binary(&b, 1);
    case IR_OP_SWIGLU: return back_binary(&b, 2);
    case IR_OP_SCALE:
    case IR_OP_GELU:
    case IR_OP_SILU:
    case IR_OP_RELU:
    case IR_OP_DROPOUT: return back_unary(&b);
    case IR_OP_BIAS_ADD: {
        int64_t w = last(&c->out[0]->shape);
        for (int64_t k = 0; k < numel(c->out[0]); k++) {
            if (gin[0])
                gin[0][k] += gout[0][k];
            if (gin[1])
                gin[1][k % w] += gout[0][k];
        }
        return 0;
    }
    case IR_OP_LAYERNORM:
    case IR_OP_RMSNORM: return back_norm(&b);
    case IR_OP_SOFTMAX: return back_softmax(&b);
    case IR_OP_ATTENTION: return back_attention(&b);
    case IR_OP_ROTARY: return back_rotary(&b);
    case IR_OP_SPLIT_HEADS:
    case IR_OP_MERGE_HEADS:
    case IR_OP_RESHAPE:
    case IR_OP_PATCHIFY:
    case IR_OP_POSITION_EMBEDDING: return back_by_index(&b);
    case IR_OP_CONCAT: {
        const struct ir_shape *O = &c->out[0]->shape;
        int ax = (int)ir_op_int(c->op, IR_ATTR_AXIS);
        ax = ax < 0 ? ax + O->rank : ax;
        int64_t outer = 1, inner = 1, at = 0;
        for (int k = 0; k < ax; k++)
            outer *= O->ax[k].size;
        for (int k = ax + 1; k < O->rank; k++)
            inner *= O->ax[k].size;
        for (int i = 0; i < c->op->n_in; i++) {
            int64_t len = c->in[i]->shape.ax[ax].size;
            for (int64_t o = 0; gin[i] && o < outer; o++)
                for (int64_t e = 0; e < len * inner; e++)
                    gin[i][o * len * inner + e] += gout[0][(o * O->ax[ax].size + at) * inner + e];
            at += len;
        }
        return 0;
    }
    case IR_OP_CROSS_ENTROPY: {
        int64_t V = last(&c->in[0]->shape), n = numel(c->in[1]), ignore = ir_op_int(c->op, IR_ATTR_IGNORE_INDEX), count = 0;
        for (int64_t t = 0; t < n; t++)
            count += c->ii[1][t] != ignore;
        for (int64_t t = 0; gin[0] && t < n; t++) {
            int32_t y = c->ii[1][t];
            if (y == ignore)
                continue;
            const float *l = c->fi[0] + t * V;
            double m = -INFINITY, s = 0;
            for (int64_t k = 0; k < V; k++)
                m = l[k] > m ? l[k] : m;
            for (int64_t k = 0; k < V; k++)
                s += exp(l[k] - m);
            for (int64_t k = 0; k < V; k++)
                gin[0][t * V + k] += (float)(gout[0][0] * (exp(l[k] - m) / s - (k == y)) / (double)count);
        }
        return 0;
    }
    case IR_OP_ROUTER: {
        int64_t E = last(&c->in[0]->shape), k = ir_op_int(c->op, IR_ATTR_TOPK), rows = numel(c->in[0]) / E;
        for (int64_t r0 = 0; gin[0] && r0 < rows; r0++) {
            const float *w = c->fo[0] + r0 * k, *g = gout[0] + r0 * k;
            const int32_t *idx = c->io[1] + r0 * k;
            double dot = 0;
            for (int64_t j = 0; j < k; j++)
                dot += (double)g[j] * w[j];
            for (int64_t j = 0; j < k; j++)
                gin[0][r0 * E + idx[j]] += (float)(w[j] * (g[j] - dot));
        }
        return 0;
    }
    case IR_OP_DISPATCH: {
        int64_t H = last(&c->in[0]->shape), kk = last(&c->in[1]->shape), tokens = numel(c->in[1]) / kk;
        int64_t E = c->out[0]->shape.ax[0].size, C = c->out[0]->shape.ax[1].size;
        int64_t *slot = wf_calloc((size_t)(tokens * kk), sizeof *slot);
        slots(c->ii[1], tokens, kk, E, C, slot);
        for (int64_t t = 0; gin[0] && t < tokens * kk; t++)
            if (slot[t] >= 0)
                for (int64_t h = 0; h < H; h++)
                    gin[0][(t / kk) * H + h] += gout[0][(c->ii[1][t] * C + slot[t]) * H + h];
        free(slot);
        return 0;
    }
    case IR_OP_COMBINE: {
        int64_t E = c->in[0]->shape.ax[0].size, C = c->in[0]->shape.ax[1].size, H = c->in[0]->shape.ax[2].size;
        int64_t kk = last(&c->in[2]->shape), tokens = numel(c->in[2]) / kk;
        int64_t *slot = wf_calloc((size_t)(tokens * kk), sizeof *slot);
        slots(c->ii[2], tokens, kk, E, C, slot);
        for (int64_t t = 0; t < tokens * kk; t++) {
            if (slot[t] < 0)
                continue;
            const float *y = c->fi[0] + (c->ii[2][t] * C + slot[t]) * H, *g = gout[0] + (t / kk) * H;
            double dw = 0;
            for (int64_t h = 0; h < H; h++) {
                dw += (double)g[h] * y[h];
                if (gin[0])
                    gin[0][(c->ii[2][t] * C + slot[t]) * H + h] += c->fi[1][t] * g[h];
            }
            if (gin[1])
                gin[1][t] += (float)dw;
        }
        free(slot);
        return 0;
    }
    case IR_OP_RELPOS_BIAS: {
        int64_t buckets = c->in[0]->shape.ax[0].size, H = c->in[0]->shape.ax[1].size;
        int64_t Sq = c->out[0]->shape.ax[1].size, Sk = c->out[0]->shape.ax[2].size;
        bool bi = ir_op_int(c->op, IR_ATTR_BIDIRECTIONAL);
        int64_t maxd = ir_op_int(c->op, IR_ATTR_MAX_DISTANCE);
        for (int64_t q = 0; gin[0] && q < Sq; q++)
            for (int64_t k = 0; k < Sk; k++) {
                int64_t bk = ir_relpos_bucket(k - q, bi, buckets, maxd);
                for (int64_t h = 0; h < H; h++)
                    gin[0][bk * H + h] += gout[0][(h * Sq + q) * Sk + k];
            }
        return 0;
    }
    case IR_OP_COUNT: break;
    }
    WF_ASSERT(!"op kind without a backward");
    return -1;
}
