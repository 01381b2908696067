/* kernel.c: building, analysing and hashing fused-kernel descriptions. */
#include "kernel.h"
#include "util.h"

#include <string.h>

#define KN_STR_(...) #__VA_ARGS__
#define KN_STR(...) KN_STR_(__VA_ARGS__)
const char kn_args_source[] = "struct kn_args { " KN_STR(KN_ARGS_FIELDS) " };\n";

_Static_assert(KN_SLOTS_ == KN_MAX_SLOTS && KN_RANK_ == KN_MAX_RANK, "kn_args sizes");

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
    if (k->n_args == 8) {
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

void kn_per_element(const struct kn_kernel *k, bool *out)
{
    for (int i = 0; i < k->n_nodes; i++) {
        const struct kn_node *n = &k->nodes[i];
        switch (n->op) {
        case KN_LOAD: {
            enum kn_access a = (enum kn_access)k->in[n->slot].access;
            out[i] = a == KN_FULL || a == KN_COLUMN || a == KN_ROW_DIV;
            break;
        }
        case KN_COL:
        case KN_KEEP: out[i] = true; break;
        case KN_ROWSUM:
        case KN_ROWMAX: out[i] = false; break;
        case KN_STORE: out[i] = out[n->a]; break;
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
