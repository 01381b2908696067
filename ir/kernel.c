/* kernel.c: building, analysing and hashing fused-kernel descriptions. */
#include "kernel.h"
#include "plan.h"
#include "util.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KN_STR_(...) #__VA_ARGS__
#define KN_STR(...) KN_STR_(__VA_ARGS__)
const char kn_args_source[] = "struct kn_args { " KN_STR(KN_ARGS_FIELDS) " };\n";
const char kn_attn_args_source[] = "struct kn_attn_args { " KN_STR(KN_ATTN_FIELDS) " };\n";

_Static_assert(KN_SLOTS_ == KN_MAX_SLOTS && KN_RANK_ == KN_MAX_RANK, "kn_args sizes");
const char kn_route_args_source[] = "struct kn_route_args { " KN_STR(KN_ROUTE_FIELDS) " };\n";
_Static_assert(offsetof(struct kn_attn_args, scale) == KN_SIZES * sizeof(int64_t), "kn_attn_args: the integers come first");
_Static_assert(offsetof(struct kn_route_args, idx) <= KN_SIZES * sizeof(int64_t), "kn_route_args: the integers come first");

static const struct {
    const char *name;
    int arity;
} ops[KN_OP_COUNT] = {
#define X(id, name, n) {name, n},
    KN_OPS(X)
#undef X
};

static const char *accesses[KN_ACCESS_COUNT] = {
#define X(id, name) name,
    KN_ACCESSES(X)
#undef X
};

const char *kn_op_name(enum kn_op op) { return op < KN_OP_COUNT ? ops[op].name : "?"; }
int kn_op_arity(enum kn_op op) { return op < KN_OP_COUNT ? ops[op].arity : 0; }
const char *kn_access_name(enum kn_access a) { return a < KN_ACCESS_COUNT ? accesses[a] : "?"; }
const char *kn_dtype_name(int dtype) { return dtype == KN_DTYPE_U8 ? "u8" : ir_dtype_name((enum ir_dtype)dtype); }

void kn_init(struct kn_kernel *k) { memset(k, 0, sizeof *k); }

int kn_input(struct kn_kernel *k, int dtype, enum kn_access access)
{
    if (k->n_in == KN_MAX_SLOTS) {
        k->full = true;
        return 0;
    }
    k->in[k->n_in] = (struct kn_slot){.dtype = (uint8_t)dtype, .access = (uint8_t)access};
    return k->n_in++;
}

int kn_output(struct kn_kernel *k, int dtype, enum kn_access access)
{
    if (k->n_out == KN_MAX_SLOTS) {
        k->full = true;
        return 0;
    }
    k->out[k->n_out] = (struct kn_slot){.dtype = (uint8_t)dtype, .access = (uint8_t)access};
    return k->n_out++;
}

int kn_arg(struct kn_kernel *k)
{
    if (k->n_args == KN_ARG_EVAL) {
        k->full = true;
        return 0;
    }
    return k->n_args++;
}

int kn_node(struct kn_kernel *k, enum kn_op op, int a, int b, int c, double imm)
{
    if (k->n_nodes == KN_MAX_NODES || k->full) {
        k->full = true;
        return -1;
    }
    k->nodes[k->n_nodes] = (struct kn_node){.op = (uint8_t)op, .a = (int16_t)a, .b = (int16_t)b, .c = (int16_t)c, .imm = imm};
    return k->n_nodes++;
}

int kn_load(struct kn_kernel *k, int slot)
{
    int n = kn_node(k, KN_LOAD, -1, -1, -1, 0);
    if (n >= 0)
        k->nodes[n].slot = (uint8_t)slot;
    return n;
}

int kn_const(struct kn_kernel *k, double v) { return kn_node(k, KN_CONST, -1, -1, -1, v); }

void kn_store_component(struct kn_kernel *k, int slot, int value, int component)
{
    int n = kn_node(k, KN_STORE, value, -1, -1, component);
    if (n >= 0)
        k->nodes[n].slot = (uint8_t)slot;
}

void kn_store(struct kn_kernel *k, int slot, int value) { kn_store_component(k, slot, value, 0); }

void kn_accum_component(struct kn_kernel *k, int slot, int value, int component)
{
    int n = kn_node(k, KN_ACCUM, value, -1, -1, component);
    if (n >= 0)
        k->nodes[n].slot = (uint8_t)slot;
}

void kn_accum(struct kn_kernel *k, int slot, int value) { kn_accum_component(k, slot, value, 0); }

int kn_load_at(struct kn_kernel *k, int slot, int index)
{
    int n = kn_node(k, KN_LOAD, index, -1, -1, 0);
    if (n >= 0)
        k->nodes[n].slot = (uint8_t)slot;
    return n;
}

void kn_accum_at(struct kn_kernel *k, int slot, int value, int index)
{
    int n = kn_node(k, KN_ACCUM, value, index, -1, 0);
    if (n >= 0)
        k->nodes[n].slot = (uint8_t)slot;
}

static bool gathers(const struct kn_kernel *k, const struct kn_node *n)
{
    return (n->op == KN_LOAD && n->slot < k->n_in && k->in[n->slot].access == KN_GATHER) ||
           (n->op == KN_ACCUM && n->slot < k->n_out && k->out[n->slot].access == KN_GATHER);
}

static bool picks(const struct kn_kernel *k, const struct kn_node *n)
{
    return n->op == KN_LOAD && n->slot < k->n_in && k->in[n->slot].access == KN_PICK;
}

int kn_operands(const struct kn_kernel *k, int i)
{
    const struct kn_node *n = &k->nodes[i];
    return kn_op_arity((enum kn_op)n->op) + (gathers(k, n) || picks(k, n));
}

bool kn_has_gather_accum(const struct kn_kernel *k)
{
    for (int i = 0; i < k->n_nodes; i++)
        if (k->nodes[i].op == KN_ACCUM && gathers(k, &k->nodes[i]))
            return true;
    return false;
}

bool kn_valid(const struct kn_kernel *k)
{
    if (k->n_in < 0 || k->n_in > KN_MAX_SLOTS || k->n_out < 0 || k->n_out > KN_MAX_SLOTS || k->n_nodes < 0 ||
        k->n_nodes > KN_MAX_NODES || k->n_args < 0 || k->n_args > 8)
        return false;
    for (int j = 0; j < k->n_in; j++)
        if (k->in[j].dtype > KN_DTYPE_U8 || k->in[j].access >= KN_ACCESS_COUNT)
            return false;
    for (int j = 0; j < k->n_out; j++)
        if (k->out[j].dtype > KN_DTYPE_U8 || k->out[j].access >= KN_ACCESS_COUNT || k->out[j].access == KN_PATCHES ||
            k->out[j].access == KN_PICK)
            return false;
    bool gather_accum = kn_has_gather_accum(k);
    int index = -1; /* the one index a gathered output is added at */
    for (int j = 0; j < k->n_nodes; j++) {
        const struct kn_node *n = &k->nodes[j];
        if (n->op >= KN_OP_COUNT)
            return false;
        if ((n->op == KN_LOAD || n->op == KN_STORE || n->op == KN_ACCUM) && n->slot >= (n->op == KN_LOAD ? k->n_in : k->n_out))
            return false;
        if ((n->op == KN_ARG && n->slot >= 8) || (n->op == KN_KEEP && n->slot >= 4))
            return false;
        int arity = kn_operands(k, j), operand[3] = {n->a, n->b, n->c};
        for (int q = 0; q < 3; q++) /* operands: earlier nodes, exactly as many as the op takes */
            if (q < arity ? operand[q] < 0 || operand[q] >= j : operand[q] != -1)
                return false;
        if (gather_accum && (n->op == KN_STORE || (n->op == KN_ACCUM && !gathers(k, n))))
            return false; /* a kernel adding into a gathered output does only that */
        if (n->op == KN_ACCUM && gathers(k, n)) {
            if (index >= 0 && n->b != index)
                return false;
            index = n->b;
        }
    }
    bool per[KN_MAX_NODES];
    kn_per_element(k, per);
    for (int j = 0; j < k->n_nodes; j++) /* a gathered row is a row's: its index is one per row */
        if (gathers(k, &k->nodes[j]) && per[k->nodes[j].op == KN_LOAD ? k->nodes[j].a : k->nodes[j].b])
            return false;
    return true;
}

bool kn_has_full_accum(const struct kn_kernel *k)
{
    for (int i = 0; i < k->n_nodes; i++)
        if (k->nodes[i].op == KN_ACCUM && k->out[k->nodes[i].slot].access == KN_FULL)
            return true;
    return false;
}

bool kn_has_column_sum(const struct kn_kernel *k)
{
    for (int i = 0; i < k->n_nodes; i++)
        if (k->nodes[i].op == KN_ACCUM && k->out[k->nodes[i].slot].access == KN_COLUMN)
            return true;
    return false;
}

void kn_per_element(const struct kn_kernel *k, bool *out)
{
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        switch (n->op) {
        case KN_LOAD: {
            enum kn_access a = (enum kn_access)k->in[n->slot].access;
            out[i] = a == KN_FULL || a == KN_COLUMN || a == KN_ROW_DIV || a == KN_HEADS || a == KN_GATHER || a == KN_ROWMAP || a == KN_PATCHES ||
                     (a == KN_PICK && n->a >= 0 && out[n->a]); /* a picked element varies as its index does */
            break;
        }
        case KN_COL:
        case KN_GCOL:
        case KN_KEEP: out[i] = true; break;
        case KN_ROWSUM:
        case KN_ROWMAX: out[i] = false; break;
        case KN_STORE:
        case KN_ACCUM: out[i] = out[n->a]; break;
        default:
            out[i] = (n->a >= 0 && out[n->a]) || (n->b >= 0 && out[n->b]) || (n->c >= 0 && out[n->c]);
        }
    }
}

int kn_phases(const struct kn_kernel *k, int *phase)
{
    int most = 0;
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        int p = 0;
        int operand[3] = {n->a, n->b, n->c};
        for (int j = 0; j < 3; j++)
            if (operand[j] >= 0 && phase[operand[j]] > p)
                p = phase[operand[j]];
        if (n->op == KN_ROWSUM || n->op == KN_ROWMAX)
            p++; /* known after the pass that computes its operand */
        phase[i] = p;
        most = p > most ? p : most;
    }
    return most + 1;
}

bool kn_has_reduction(const struct kn_kernel *k)
{
    for (int i = 0; i < k->n_nodes; i++)
        if (k->nodes[i].op == KN_ROWSUM || k->nodes[i].op == KN_ROWMAX)
            return true;
    return false;
}

/* The description's bytes without padding: slots and nodes field by field. */
uint64_t kn_hash(const struct kn_kernel *k)
{
    uint64_t h = wf_hash(&k->n_in, sizeof k->n_in, 0x6b65726e);
    h = wf_hash(&k->n_out, sizeof k->n_out, h);
    h = wf_hash(&k->n_args, sizeof k->n_args, h);
    for (int i = 0; i < k->n_in; i++)
        h = wf_hash(&k->in[i], sizeof k->in[i], h);
    for (int i = 0; i < k->n_out; i++)
        h = wf_hash(&k->out[i], sizeof k->out[i], h);
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        int16_t f[5] = {n->op, n->slot, n->a, n->b, n->c};
        h = wf_hash(f, sizeof f, h);
        h = wf_hash(&n->imm, sizeof n->imm, h);
    }
    return h;
}

uint64_t kn_entry_hash(const struct kn_entry *e)
{
    if (e->kind == KN_KIND_FUSED)
        return kn_hash(&e->k);
    const struct kn_attn *a = &e->attn;
    int32_t f[8] = {e->kind, a->dtype, a->D, a->Dv, a->causal, a->bias, a->bias_grad, a->backward};
    return wf_hash(f, sizeof f, 0x617474);
}

bool kn_equal(const struct kn_kernel *a, const struct kn_kernel *b)
{
    if (a->n_in != b->n_in || a->n_out != b->n_out || a->n_args != b->n_args || a->n_nodes != b->n_nodes ||
        memcmp(a->in, b->in, sizeof a->in[0] * (size_t)a->n_in) || memcmp(a->out, b->out, sizeof a->out[0] * (size_t)a->n_out))
        return false;
    for (int i = 0; i < a->n_nodes; i++) {
        const struct kn_node *x = &a->nodes[i], *y = &b->nodes[i];
        if (x->op != y->op || x->slot != y->slot || x->a != y->a || x->b != y->b || x->c != y->c || x->imm != y->imm)
            return false;
    }
    return true;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

double kn_uniform(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint64_t h = mix(mix(seed ^ 0x9e3779b97f4a7c15ull) ^ mix(stream) ^ mix(index * 0x2545f4914f6cdd1dull + 1));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t kn_stream(const char *name) { return wf_hash(name, strlen(name), 0x5eed); }

void kn_set_free(struct kn_set *s)
{
    for (int k = 0; k < s->n_kernels; k++)
        for (int b = 0; b < s->kernels[k].n_bins; b++)
            free(s->kernels[k].bins[b].bytes);
    free(s->launches);
    free(s->kernels);
    free(s->ops);
    free(s->op_launch);
    free(s->cpu_object);
    memset(s, 0, sizeof *s);
}

const char *kn_set_launches(const struct kn_set *s, char *buf, size_t n)
{
    int count[KN_WHEN_COUNT] = {0}, epilogues = 0, total = 0;
    for (int l = 0; l < s->n_launches; l++) {
        if (s->launches[l].epilogue) {
            epilogues++;
            continue;
        }
        count[s->launches[l].when < KN_WHEN_COUNT ? s->launches[l].when : 0]++;
        total++;
    }
    static const char *names[KN_WHEN_COUNT] = {"forward", "backward", "optimizer", "gradient-norm"};
    size_t m = 0;
    buf[0] = 0;
    for (int w = 0; w < KN_WHEN_COUNT && m < n; w++) {
        if (count[w] || w == KN_WHEN_FORWARD)
            m += (size_t)snprintf(buf + m, n - m, "%s%d %s", m ? ", " : "", count[w], names[w]);
        if (w == KN_WHEN_FORWARD && epilogues && m < n)
            m += (size_t)snprintf(buf + m, n - m, " (and %d in GEMMs' epilogues)", epilogues);
    }
    if (m < n)
        snprintf(buf + m, n - m, " launch%s", total == 1 ? "" : "es");
    return buf;
}

/* ---- the plan's "kernels" section ---------------------------------------- */

static void put_bytes(struct plan_writer *w, const void *p, size_t n)
{
    plan_put_u64(w, n);
    for (size_t i = 0; i < n; i++)
        plan_put_u8(w, ((const uint8_t *)p)[i]);
}

static void put_bind(struct plan_writer *w, const struct kn_bind *b)
{
    plan_put_u8(w, b->what);
    plan_put_i32(w, b->id);
    plan_put_i32(w, b->xfer);
    plan_put_i32(w, b->view);
}

void kn_set_write(struct plan_writer *w, const struct kn_set *s)
{
    plan_section(w, "kernels");
    plan_put_u32(w, (uint32_t)s->n_graph_ops);
    plan_put_u32(w, (uint32_t)s->n_kernels);
    for (int i = 0; i < s->n_kernels; i++) {
        const struct kn_entry *e = &s->kernels[i];
        const struct kn_kernel *k = &e->k;
        plan_put_str(w, e->name);
        plan_put_u32(w, (uint32_t)e->uses);
        plan_put_u8(w, e->kind);
        plan_put_i32(w, e->attn.dtype);
        plan_put_i32(w, e->attn.D);
        plan_put_i32(w, e->attn.Dv);
        plan_put_u8(w, (uint8_t)(e->attn.causal | e->attn.bias << 1 | e->attn.bias_grad << 2 | e->attn.backward << 3));
        plan_put_u8(w, (uint8_t)k->n_in);
        plan_put_u8(w, (uint8_t)k->n_out);
        plan_put_u8(w, (uint8_t)k->n_args);
        for (int j = 0; j < k->n_in; j++)
            plan_put_u8(w, k->in[j].dtype), plan_put_u8(w, k->in[j].access);
        for (int j = 0; j < k->n_out; j++)
            plan_put_u8(w, k->out[j].dtype), plan_put_u8(w, k->out[j].access);
        plan_put_u32(w, (uint32_t)k->n_nodes);
        for (int j = 0; j < k->n_nodes; j++) {
            const struct kn_node *n = &k->nodes[j];
            plan_put_u8(w, n->op);
            plan_put_u8(w, n->slot);
            plan_put_i32(w, n->a);
            plan_put_i32(w, n->b);
            plan_put_i32(w, n->c);
            plan_put_f64(w, n->imm);
        }
        plan_put_u8(w, (uint8_t)e->n_bins);
        for (int b = 0; b < e->n_bins; b++) {
            plan_put_i32(w, e->bins[b].arch);
            plan_put_u8(w, e->bins[b].ptx);
            put_bytes(w, e->bins[b].bytes, e->bins[b].size);
        }
    }
    plan_put_u32(w, (uint32_t)s->n_launches);
    for (int i = 0; i < s->n_launches; i++) {
        const struct kn_launch *l = &s->launches[i];
        plan_put_i32(w, l->kernel);
        plan_put_u8(w, l->when);
        plan_put_i32(w, l->chunk);
        plan_put_i32(w, l->domain);
        plan_put_u32(w, (uint32_t)l->n_ops);
        for (int j = 0; j < l->n_ops; j++)
            plan_put_i32(w, s->ops[l->first_op + j]);
        plan_put_u8(w, (uint8_t)l->n_in);
        for (int j = 0; j < l->n_in; j++)
            put_bind(w, &l->in[j]);
        plan_put_u8(w, (uint8_t)l->n_out);
        for (int j = 0; j < l->n_out; j++)
            put_bind(w, &l->out[j]);
        for (int j = 0; j < 4; j++)
            plan_put_u64(w, l->streams[j]);
        for (int j = 0; j < KN_SIZES; j++)
            plan_put_i64(w, l->sizes[j]);
        plan_put_u8(w, l->epilogue);
    }
    put_bytes(w, s->cpu_object, s->cpu_size);
}

static void *get_bytes(struct plan_reader *r, size_t *n)
{
    uint64_t len = plan_get_u64(r);
    if (r->bad || len > (uint64_t)(r->end - r->at)) {
        r->bad = true;
        *n = 0;
        return NULL;
    }
    *n = (size_t)len;
    void *p = wf_calloc(*n + 1, 1);
    memcpy(p, r->at, *n);
    r->at += *n;
    return p;
}

static bool get_bind(struct plan_reader *r, struct kn_bind *b)
{
    b->what = plan_get_u8(r);
    b->id = plan_get_i32(r);
    b->xfer = plan_get_i32(r);
    b->view = plan_get_i32(r);
    return b->what < IR_BUF_COUNT && b->id >= 0 && b->view >= 0;
}

static int bad_kernels(struct diag *d, const char *what)
{
    diag_error(d, NULL, 0, "plan section 'kernels': %s: the plan is corrupted", what);
    return -1;
}

int kn_set_read(struct plan *p, struct kn_set *s, struct diag *d)
{
    memset(s, 0, sizeof *s);
    struct plan_reader r;
    if (plan_read(p, "kernels", &r, d))
        return -1;
    uint32_t n_graph_ops = plan_get_u32(&r);
    if (r.bad || n_graph_ops > 1u << 26)
        return bad_kernels(d, "an impossible op count");
    s->n_graph_ops = (int)n_graph_ops;
    uint32_t nk = plan_get_u32(&r);
    if (r.bad || nk > (uint32_t)(r.end - r.at) / 8)
        return bad_kernels(d, "more kernels than the section can hold");
    s->kernels = wf_calloc((size_t)nk + 1, sizeof *s->kernels);
    s->n_kernels = (int)nk;
    for (uint32_t i = 0; i < nk && !r.bad; i++) {
        struct kn_entry *e = &s->kernels[i];
        struct kn_kernel *k = &e->k;
        plan_get_str(&r, e->name, sizeof e->name);
        e->uses = (int)plan_get_u32(&r);
        e->kind = plan_get_u8(&r);
        e->attn.dtype = plan_get_i32(&r);
        e->attn.D = plan_get_i32(&r);
        e->attn.Dv = plan_get_i32(&r);
        uint8_t flags = plan_get_u8(&r);
        e->attn.causal = flags & 1, e->attn.bias = flags >> 1 & 1, e->attn.bias_grad = flags >> 2 & 1, e->attn.backward = flags >> 3 & 1;
        if (e->kind >= KN_KIND_COUNT || (e->kind == KN_KIND_ATTENTION && (e->attn.D < 1 || e->attn.D > 1024 || e->attn.Dv < 1 ||
                                                                             e->attn.Dv > 1024 || (e->attn.dtype != IR_DTYPE_F32 &&
                                                                                                   e->attn.dtype != IR_DTYPE_BF16)))) {
            kn_set_free(s);
            return bad_kernels(d, "a kernel of a kind, or an attention of a size, that weft does not know");
        }
        k->n_in = plan_get_u8(&r);
        k->n_out = plan_get_u8(&r);
        k->n_args = plan_get_u8(&r);
        if (k->n_in > KN_MAX_SLOTS || k->n_out > KN_MAX_SLOTS || k->n_args > 8) {
            kn_set_free(s);
            return bad_kernels(d, "a kernel with more slots than weft allows");
        }
        for (int j = 0; j < k->n_in; j++)
            k->in[j].dtype = plan_get_u8(&r), k->in[j].access = plan_get_u8(&r);
        for (int j = 0; j < k->n_out; j++)
            k->out[j].dtype = plan_get_u8(&r), k->out[j].access = plan_get_u8(&r);
        uint32_t nn = plan_get_u32(&r);
        if (nn > KN_MAX_NODES) {
            kn_set_free(s);
            return bad_kernels(d, "a kernel with more nodes than weft allows");
        }
        k->n_nodes = (int)nn;
        for (int j = 0; j < k->n_nodes; j++) {
            struct kn_node *n = &k->nodes[j];
            n->op = plan_get_u8(&r);
            n->slot = plan_get_u8(&r);
            n->a = (int16_t)plan_get_i32(&r);
            n->b = (int16_t)plan_get_i32(&r);
            n->c = (int16_t)plan_get_i32(&r);
            n->imm = plan_get_f64(&r);
        }
        r.bad |= !kn_valid(k);
        e->n_bins = plan_get_u8(&r);
        if (e->n_bins > KN_MAX_BINS) {
            kn_set_free(s);
            return bad_kernels(d, "a kernel with more binaries than weft allows");
        }
        for (int b = 0; b < e->n_bins && !r.bad; b++) {
            e->bins[b].arch = plan_get_i32(&r);
            e->bins[b].ptx = plan_get_u8(&r);
            e->bins[b].bytes = get_bytes(&r, &e->bins[b].size);
        }
        e->hash = kn_entry_hash(e);
    }
    uint32_t nl = r.bad ? 0 : plan_get_u32(&r);
    if (r.bad || nl > (uint32_t)(r.end - r.at) / 16) {
        kn_set_free(s);
        return bad_kernels(d, "a kernel or the launch count out of range");
    }
    s->launches = wf_calloc((size_t)nl + 1, sizeof *s->launches);
    s->n_launches = (int)nl;
    int cap = 0;
    for (uint32_t i = 0; i < nl && !r.bad; i++) {
        struct kn_launch *l = &s->launches[i];
        l->kernel = plan_get_i32(&r);
        l->when = plan_get_u8(&r);
        if (l->when >= KN_WHEN_COUNT)
            r.bad = true;
        l->chunk = plan_get_i32(&r);
        l->domain = plan_get_i32(&r);
        uint32_t n = plan_get_u32(&r);
        if (r.bad || n > (uint32_t)(r.end - r.at) / 4 || l->kernel < 0 || l->kernel >= s->n_kernels) {
            r.bad = true;
            break;
        }
        l->first_op = s->n_ops;
        l->n_ops = (int)n;
        for (uint32_t j = 0; j < n; j++) {
            WF_GROW(s->ops, s->n_ops, cap);
            s->ops[s->n_ops++] = plan_get_i32(&r);
        }
        l->n_in = plan_get_u8(&r);
        for (int j = 0; j < l->n_in && j < KN_MAX_SLOTS; j++)
            r.bad |= !get_bind(&r, &l->in[j]);
        l->n_out = plan_get_u8(&r);
        for (int j = 0; j < l->n_out && j < KN_MAX_SLOTS; j++)
            r.bad |= !get_bind(&r, &l->out[j]);
        for (int j = 0; j < 4; j++)
            l->streams[j] = plan_get_u64(&r);
        for (int j = 0; j < KN_SIZES; j++)
            l->sizes[j] = plan_get_i64(&r);
        l->epilogue = plan_get_u8(&r);
        r.bad |= l->epilogue > 1 || (l->epilogue && l->when != KN_WHEN_FORWARD);
        const struct kn_entry *e = &s->kernels[l->kernel];
        r.bad |= l->n_in > KN_MAX_SLOTS || l->n_out > KN_MAX_SLOTS ||
                 (e->kind == KN_KIND_FUSED && (l->n_in != e->k.n_in || l->n_out != e->k.n_out)) ||
                 (e->kind == KN_KIND_ROUTE && (l->n_in != 1 || l->n_out < 1 || l->n_out > 2));
    }
    if (!r.bad)
        s->cpu_object = get_bytes(&r, &s->cpu_size);
    s->op_launch = wf_calloc((size_t)s->n_graph_ops + 1, sizeof *s->op_launch);
    for (int i = 0; i < s->n_graph_ops; i++)
        s->op_launch[i] = -1;
    for (int l = 0; l < s->n_launches && !r.bad; l++)
        for (int j = 0; j < s->launches[l].n_ops; j++) {
            int op = s->ops[s->launches[l].first_op + j];
            if (op < 0 || op >= s->n_graph_ops)
                r.bad = true;
            else if (s->launches[l].when == KN_WHEN_FORWARD && s->op_launch[op] < 0)
                s->op_launch[op] = l; /* its first forward launch, as fuse() sets it */
        }
    if (r.bad) {
        kn_set_free(s);
        return bad_kernels(d, "a launch out of range, or shorter than its fields");
    }
    return 0;
}
