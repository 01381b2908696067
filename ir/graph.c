/* graph.c: the tables behind dtypes, splits, parts and attributes; building a
 * graph; and ir_verify, the invariants every pass must leave intact. */
#include "ir.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tables -------------------------------------------------------------------- */

static const struct {
    const char *name;
    int bytes;
} dtypes[] = {
#define X(id, name, bytes) {name, bytes},
    IR_DTYPES(X)
#undef X
};

const char *ir_dtype_name(enum ir_dtype t) { return dtypes[t].name; }
int ir_dtype_bytes(enum ir_dtype t) { return dtypes[t].bytes; }
bool ir_dtype_is_float(enum ir_dtype t) { return t != IR_DTYPE_I32; }

int ir_dtype_parse(const char *s)
{
    for (int i = 0; i < IR_DTYPE_COUNT; i++)
        if (!strcmp(dtypes[i].name, s))
            return i;
    return -1;
}

static const char *split_names[] = {
#define X(id, name) name,
    IR_SPLITS(X)
#undef X
};

const char *ir_split_name(enum ir_split s) { return split_names[s]; }

int ir_split_parse(const char *s)
{
    for (int i = 0; i < IR_SPLIT_COUNT; i++)
        if (!strcmp(split_names[i], s))
            return i;
    return -1;
}

static const char *part_names[] = {
#define X(id, name) name,
    IR_PARTS(X)
#undef X
};

const char *ir_part_name(enum ir_part p) { return part_names[p]; }

static const struct {
    const char *name;
    enum ir_attr_type type;
} attrs[] = {
#define X(id, name, type) {name, IR_ATTR_TYPE_##type},
    IR_ATTRS(X)
#undef X
};

const char *ir_attr_name(enum ir_attr_id a) { return attrs[a].name; }
enum ir_attr_type ir_attr_type(enum ir_attr_id a) { return attrs[a].type; }

int ir_attr_parse_name(const char *s)
{
    for (int i = 0; i < IR_ATTR_COUNT; i++)
        if (!strcmp(attrs[i].name, s))
            return i;
    return -1;
}

static const char *pdim_names[] = {
#define X(id, name) name,
    IR_PDIMS(X)
#undef X
};

const char *ir_pdim_name(enum ir_pdim p) { return pdim_names[p]; }

bool ir_shard_equal(const struct ir_shard *a, const struct ir_shard *b)
{
    return !memcmp(a->split, b->split, sizeof a->split) && !memcmp(a->stack, b->stack, sizeof a->stack) &&
           a->partial == b->partial;
}

char *ir_pdims_str(uint8_t set, char *buf, size_t n)
{
    size_t len = (size_t)snprintf(buf, n, "%s", set ? "" : "-");
    for (int p = IR_PDIM_COUNT - 1; p > 0 && len < n; p--) /* the outermost first */
        if (set & IR_PDIM_BIT(p))
            len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "+" : "", pdim_names[p]);
    return buf;
}

char *ir_shard_str(const struct ir_shard *s, int rank, char *buf, size_t n)
{
    char a[64], b[64];
    size_t len = (size_t)snprintf(buf, n, "(");
    for (int k = 0; k < rank && len < n; k++) {
        if (s->stack[k] && s->split[k])
            len += (size_t)snprintf(buf + len, n - len, "%s%s all %s", k ? ", " : "", ir_pdims_str(s->split[k], a, sizeof a),
                                    ir_pdims_str(s->stack[k], b, sizeof b));
        else if (s->stack[k])
            len += (size_t)snprintf(buf + len, n - len, "%sall %s", k ? ", " : "", ir_pdims_str(s->stack[k], b, sizeof b));
        else
            len += (size_t)snprintf(buf + len, n - len, "%s%s", k ? ", " : "", ir_pdims_str(s->split[k], a, sizeof a));
    }
    if (len < n)
        len += (size_t)snprintf(buf + len, n - len, ")");
    for (int p = 1; p < IR_PDIM_COUNT && len < n; p++)
        if (s->partial & IR_PDIM_BIT(p))
            len += (size_t)snprintf(buf + len, n - len, " partial %s", pdim_names[p]);
    return buf;
}

/* ---- shapes -------------------------------------------------------------------- */

int64_t ir_shape_numel(const struct ir_shape *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->rank; i++)
        if (__builtin_mul_overflow(n, s->ax[i].size, &n))
            return -1;
    return n;
}

char *ir_axis_str(const struct ir_axis *a, char *buf, size_t n)
{
    char num[32];
    snprintf(num, sizeof num, "%" PRId64, a->size);
    if (a->label && strcmp(a->label, num))
        snprintf(buf, n, "%s=%s", a->label, num);
    else
        snprintf(buf, n, "%s", num);
    return buf;
}

char *ir_shape_str(const struct ir_shape *s, char *buf, size_t n)
{
    size_t len = 0;
    len += (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < s->rank && len < n; i++) {
        char ax[128];
        len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? ", " : "", ir_axis_str(&s->ax[i], ax, sizeof ax));
    }
    if (len < n)
        snprintf(buf + len, n - len, ")");
    return buf;
}

/* ---- building ------------------------------------------------------------------ */

struct ir_graph *ir_graph_new(const char *name, const char *file)
{
    struct ir_graph *g = wf_calloc(1, sizeof *g);
    g->arena = arena_new(1 << 16);
    g->name = arena_strdup(g->arena, name ? name : "");
    g->file = arena_strdup(g->arena, file ? file : "");
    return g;
}

void ir_graph_free(struct ir_graph *g)
{
    if (!g)
        return;
    free(g->dims);
    free(g->tensors);
    free(g->ops);
    free(g->blocks);
    free(g->outputs);
    free(g->variants);
    if (g->hf) { /* the struct and its sources are in the arena */
        free(g->hf->config);
        free(g->hf->maps);
    }
    arena_free(g->arena);
    free(g);
}

int ir_graph_add_dim(struct ir_graph *g, const char *name, const char *expr, const char *flag,
                     struct ir_loc loc)
{
    WF_GROW(g->dims, g->n_dims, g->cap_dims);
    g->dims[g->n_dims] = (struct ir_dim){
        .name = arena_strdup(g->arena, name),
        .expr = arena_strdup(g->arena, expr),
        .flag = flag ? arena_strdup(g->arena, flag) : NULL,
        .loc = loc,
    };
    return g->n_dims++;
}

const struct ir_dim *ir_graph_dim(const struct ir_graph *g, const char *name)
{
    for (int i = 0; i < g->n_dims; i++)
        if (!strcmp(g->dims[i].name, name))
            return &g->dims[i];
    return NULL;
}

int ir_graph_add_tensor(struct ir_graph *g, const char *name, enum ir_tensor_kind kind,
                        enum ir_dtype dtype, const struct ir_shape *shape, struct ir_loc loc)
{
    WF_GROW(g->tensors, g->n_tensors, g->cap_tensors);
    struct ir_tensor *t = &g->tensors[g->n_tensors];
    *t = (struct ir_tensor){
        .name = arena_strdup(g->arena, name),
        .kind = kind,
        .dtype = dtype,
        .producer = -1,
        .block = -1,
        .iter = -1,
        .layer = -1,
        .loc = loc,
    };
    t->local_name = t->name;
    if (shape) {
        t->shape = *shape;
        t->has_shape = true;
    }
    return g->n_tensors++;
}

int ir_graph_add_op(struct ir_graph *g, enum ir_op_kind kind, struct ir_loc loc)
{
    WF_GROW(g->ops, g->n_ops, g->cap_ops);
    g->ops[g->n_ops] = (struct ir_op){.kind = kind, .block = -1, .iter = -1, .layer = -1, .loc = loc, .grad_of = -1};
    return g->n_ops++;
}

void ir_op_add_input(struct ir_graph *g, int op, int tensor)
{
    struct ir_op *o = &g->ops[op];
    WF_ASSERT(o->n_in < IR_MAX_IN);
    o->in[o->n_in++] = tensor;
    if (tensor >= 0)
        g->tensors[tensor].n_uses++;
}

void ir_op_add_output(struct ir_graph *g, int op, int tensor)
{
    struct ir_op *o = &g->ops[op];
    WF_ASSERT(o->n_out < IR_MAX_IN);
    o->out[o->n_out++] = tensor;
    if (tensor >= 0)
        g->tensors[tensor].producer = op;
}

int ir_graph_add_block(struct ir_graph *g, const char *name, enum ir_part part, int parent,
                       int64_t count, const char *count_expr, struct ir_loc loc)
{
    WF_GROW(g->blocks, g->n_blocks, g->cap_blocks);
    g->blocks[g->n_blocks] = (struct ir_block){
        .name = arena_strdup(g->arena, name),
        .part = part,
        .parent = parent,
        .count = count,
        .count_expr = arena_strdup(g->arena, count_expr),
        .loc = loc,
    };
    return g->n_blocks++;
}

void ir_graph_add_output(struct ir_graph *g, int tensor)
{
    WF_GROW(g->outputs, g->n_outputs, g->cap_outputs);
    g->outputs[g->n_outputs++] = tensor;
    g->tensors[tensor].n_uses++;
}

int ir_graph_loss(const struct ir_graph *g)
{
    if (g->n_outputs < 1)
        return -1;
    const struct ir_tensor *t = &g->tensors[g->outputs[0]];
    return t->shape.rank == 0 && ir_dtype_is_float(t->dtype) ? g->outputs[0] : -1;
}

/* ---- invariants ------------------------------------------------------------------ */

#define BUG(...)                                                               \
    do {                                                                       \
        diag_error(d, g->file, 0, "internal error: ir_verify: " __VA_ARGS__);  \
        return -1;                                                             \
    } while (0)

int ir_verify(const struct ir_graph *g, bool shapes_inferred, struct diag *d)
{
    for (int i = 0; i < g->n_tensors; i++) {
        const struct ir_tensor *t = &g->tensors[i];
        if (t->kind == IR_TENSOR_ACT) {
            if (t->producer < 0 || t->producer >= g->n_ops)
                BUG("tensor %s has no producer", t->name);
        } else if (t->producer != -1) {
            BUG("%s %s has a producer", t->kind == IR_TENSOR_PARAM ? "parameter" : "input", t->name);
        }
        if (t->kind != IR_TENSOR_ACT || shapes_inferred) {
            if (!t->has_shape)
                BUG("tensor %s has no shape", t->name);
            if (t->shape.rank < 0 || t->shape.rank > IR_MAX_RANK)
                BUG("tensor %s has rank %d", t->name, t->shape.rank);
            for (int k = 0; k < t->shape.rank; k++)
                if (t->shape.ax[k].size < 1)
                    BUG("tensor %s axis %d is %" PRId64, t->name, k, t->shape.ax[k].size);
        }
    }
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *op = &g->ops[i];
        const struct ir_op_info *info = ir_op_info(op->kind);
        if (op->grad_of >= 0) { /* a backward op: the mirror of its forward op */
            const struct ir_op *f = op->grad_of < i ? &g->ops[op->grad_of] : NULL;
            if (!f || f->kind != op->kind || f->grad_of >= 0 || op->n_in != f->n_out || op->n_out != f->n_in)
                BUG("op %d is not the backward of op %d", i, op->grad_of);
            for (int k = 0; k < op->n_in; k++)
                if (op->in[k] >= 0 && g->tensors[op->in[k]].producer >= i)
                    BUG("backward op %d reads a gradient before it is made", i);
            for (int k = 0; k < op->n_out; k++)
                if (op->out[k] >= 0 && g->tensors[op->out[k]].producer != i)
                    BUG("backward op %d output %d is not produced by it", i, k);
            continue;
        }
        if (op->n_in < info->in_min || op->n_in > info->in_max)
            BUG("op %d (%s) has %d inputs", i, info->name, op->n_in);
        if (op->n_out < info->out_min || op->n_out > info->out_max)
            BUG("op %d (%s) has %d outputs", i, info->name, op->n_out);
        for (int k = 0; k < op->n_in; k++) {
            int t = op->in[k];
            if (t == -1 && k >= info->in_min)
                continue;
            if (t < 0 || t >= g->n_tensors)
                BUG("op %d (%s) input %d is tensor %d", i, info->name, k, t);
            int p = g->tensors[t].producer;
            if (p >= i)
                BUG("op %d (%s) reads %s before op %d produces it", i, info->name, g->tensors[t].name, p);
        }
        for (int k = 0; k < op->n_out; k++) {
            int t = op->out[k];
            if (t < 0 || t >= g->n_tensors || g->tensors[t].producer != i)
                BUG("op %d (%s) output %d is not produced by it", i, info->name, k);
        }
        for (int a = 0; a < info->n_attrs; a++)
            if (!ir_op_attr(op, info->attrs[a].id))
                BUG("op %d (%s) lacks attribute %s", i, info->name, ir_attr_name(info->attrs[a].id));
    }
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i] < 0 || g->outputs[i] >= g->n_tensors)
            BUG("output %d is tensor %d", i, g->outputs[i]);
    return 0;
}
