/* memplan.c: a role's arena (see memplan.h): layout, the overlap proof, the
 * plan's "memory.N" sections. */
#include "memplan.h"
#include "plan.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *region_names[IR_REGION_COUNT] = {
#define X(id, name) name,
    IR_REGIONS(X)
#undef X
};

const char *ir_region_name(enum ir_region r) { return r < IR_REGION_COUNT ? region_names[r] : "?"; }

static const char *what_names[IR_BUF_COUNT] = {"value", "gradient", "mask", "row statistics", "block",
                                                "exp_avg", "exp_avg_sq", "master weights", "sums of squares",
                                                "routes", "fills", "norm", "staged result",
                                                "transfer input", "restaged result", "packing scratch"};

const char *ir_buf_what_name(int what) { return what >= 0 && what < IR_BUF_COUNT ? what_names[what] : "?"; }

bool ir_buf_of_op(int what)
{
    return what == IR_BUF_MASK || what == IR_BUF_ROWSTATS || what == IR_BUF_ROUTES || what == IR_BUF_FILLS;
}

static int64_t align_up(int64_t n) { return (n + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN; }

void ir_role_memory_layout(struct ir_role_memory *m)
{
    int64_t at = 0;
    for (int k = 0; k < IR_REGION_COUNT; k++) {
        m->base[k] = at;
        at += align_up(m->size[k]);
    }
    m->total = at;
}

static bool throughout(const struct ir_buf *b) { return b->first == 0 && b->last == 0; }

bool ir_buf_meet(const struct ir_buf *a, const struct ir_buf *b)
{
    if (throughout(a) || throughout(b))
        return true;
    if (a->region == IR_REGION_WORKING && a->vstage != b->vstage)
        return false; /* steps of different virtual stages never run at once */
    return a->first <= b->last && b->first <= a->last;
}

static int by_offset(const void *x, const void *y)
{
    const struct ir_buf *a = *(const struct ir_buf *const *)x, *b = *(const struct ir_buf *const *)y;
    return (a->offset > b->offset) - (a->offset < b->offset);
}

static void describe(const struct ir_buf *b, char *out, size_t n)
{
    snprintf(out, n, "%s of %s %d%s at [%lld, +%lld) alive %d..%d", b->what < IR_BUF_COUNT ? what_names[b->what] : "?",
             ir_buf_of_op(b->what) ? "op" : "tensor", b->id,
             b->what == IR_BUF_BLOCK ? " (block)" : "", (long long)b->offset, (long long)b->bytes, b->first, b->last);
}

/* Buffers bufs[0..n) that share a space of `size` bytes: each inside it, no
 * two that meet overlapping.  Sorted by offset, a buffer can only collide
 * with those that start before it ends. */
static int check_space(const struct ir_buf *bufs, int n, int64_t size, int stage, const char *space, struct diag *d)
{
    const struct ir_buf **v = wf_calloc((size_t)n + 1, sizeof *v);
    int errors = 0;
    for (int i = 0; i < n; i++)
        v[i] = &bufs[i];
    qsort(v, (size_t)n, sizeof *v, by_offset);
    char a[160], b[160];
    for (int i = 0; i < n && errors < 8; i++) {
        if (v[i]->offset < 0 || v[i]->bytes < 0 || v[i]->offset + v[i]->bytes > size) {
            describe(v[i], a, sizeof a);
            diag_error(d, NULL, 0, "stage %d %s: %s lies outside its %lld bytes", stage, space, a, (long long)size);
            errors++;
        }
        for (int j = i + 1; j < n && v[j]->offset < v[i]->offset + v[i]->bytes; j++)
            if (v[j]->bytes > 0 && v[i]->bytes > 0 && ir_buf_meet(v[i], v[j]) && errors < 8) {
                describe(v[i], a, sizeof a);
                describe(v[j], b, sizeof b);
                diag_error(d, NULL, 0, "stage %d %s: %s and %s share bytes while both alive", stage, space, a, b);
                errors++;
            }
    }
    free(v);
    return errors;
}

int ir_memory_check(const struct ir_memory *M, struct diag *d)
{
    int errors = 0;
    for (int s = 0; s < M->n_roles; s++) {
        const struct ir_role_memory *m = &M->roles[s];
        struct ir_buf *tmp = wf_calloc((size_t)(m->n_bufs > m->n_items ? m->n_bufs : m->n_items) + 1, sizeof *tmp);
        for (int r = 0; r < IR_REGION_COUNT; r++) {
            int n = 0;
            for (int i = 0; i < m->n_bufs; i++)
                if (m->bufs[i].region == r)
                    tmp[n++] = m->bufs[i];
            errors += check_space(tmp, n, m->size[r], s, ir_region_name((enum ir_region)r), d);
        }
        for (int v = 0; v < m->n_vstages; v++) {
            int n = 0;
            for (int i = 0; i < m->n_items; i++)
                if (m->items[i].vstage == v) {
                    tmp[n] = m->items[i];
                    tmp[n].first = tmp[n].last = 0; /* a block's items live as long as it */
                    n++;
                }
            char space[64];
            snprintf(space, sizeof space, "block of virtual stage %d", v);
            errors += check_space(tmp, n, m->block_bytes[v], s, space, d);
        }
        for (int i = 0; i < m->n_bufs; i++) {
            const struct ir_buf *b = &m->bufs[i];
            if (b->what == IR_BUF_BLOCK && (b->vstage < 0 || b->vstage >= m->n_vstages || b->bytes != m->block_bytes[b->vstage])) {
                diag_error(d, NULL, 0, "stage %d: a block of micro-batch %d is not its virtual stage's size", s, b->micro);
                errors++;
            }
        }
        int64_t at = 0;
        for (int r = 0; r < IR_REGION_COUNT; r++) {
            if (m->base[r] < at || m->size[r] < 0) {
                diag_error(d, NULL, 0, "stage %d: region %s overlaps the one before it", s, ir_region_name((enum ir_region)r));
                errors++;
            }
            at = m->base[r] + m->size[r];
        }
        if (at > m->total) {
            diag_error(d, NULL, 0, "stage %d: the regions need %lld bytes, the arena has %lld", s, (long long)at,
                       (long long)m->total);
            errors++;
        }
        free(tmp);
    }
    return errors ? -1 : 0;
}

/* How many times an fp32 element's bytes a gradient's are (a role laid out
 * by hand, with no grad_bytes, has fp32 gradients). */
static int64_t state_scale(const struct ir_role_memory *m) { return m->grad_bytes == 2 ? 2 : 1; }

int64_t ir_memory_state_bytes(const struct ir_role_memory *m) { return m->size[IR_REGION_GRADS] * state_scale(m); }

int64_t ir_memory_offset(const struct ir_role_memory *m, int what, int id, int vstage, int micro)
{
    int64_t bytes;
    return ir_memory_find(m, what, id, vstage, micro, &bytes);
}

int64_t ir_memory_find(const struct ir_role_memory *m, int what, int id, int vstage, int micro, int64_t *bytes)
{
    *bytes = 0;
    if (what == IR_BUF_PACK) { /* one collective's pieces at a time */
        *bytes = m->size[IR_REGION_COMM];
        return m->base[IR_REGION_COMM];
    }
    if (what == IR_BUF_NORM) {
        *bytes = 4;
        return m->base[IR_REGION_WORKSPACE];
    }
    if (what == IR_BUF_SUMSQ) { /* one parameter's at a time, summed before the next */
        *bytes = m->size[IR_REGION_WORKSPACE] - IR_ALIGN;
        return m->base[IR_REGION_WORKSPACE] + IR_ALIGN;
    }
    if (what == IR_BUF_EXP_AVG || what == IR_BUF_EXP_AVG_SQ || what == IR_BUF_MASTER) { /* laid out like GRADS, in fp32 */
        int64_t g = ir_memory_find(m, IR_BUF_GRAD, id, -1, -1, bytes), scale = state_scale(m);
        *bytes *= scale;
        return g < 0 ? -1 : (g - m->base[IR_REGION_GRADS]) * scale + m->base[IR_REGION_OPTIMIZER] +
                                (what - IR_BUF_EXP_AVG) * ir_memory_state_bytes(m);
    }
    for (int i = 0; i < m->n_items; i++) {
        const struct ir_buf *x = &m->items[i];
        if (x->what != what || x->id != id || x->vstage != vstage)
            continue;
        for (int b = 0; b < m->n_bufs; b++)
            if (m->bufs[b].what == IR_BUF_BLOCK && m->bufs[b].vstage == vstage && m->bufs[b].micro == micro) {
                *bytes = x->bytes;
                return m->base[IR_REGION_ACTIVATIONS] + m->bufs[b].offset + x->offset;
            }
    }
    int best = -1; /* a micro-batch's own, before the step's, before the role's */
    for (int b = 0; b < m->n_bufs; b++) {
        const struct ir_buf *x = &m->bufs[b];
        if (x->what != what || x->id != id || (x->vstage != vstage && x->vstage != -1) || (x->micro != micro && x->micro != -1))
            continue;
        int rank = (x->micro == micro) * 2 + (x->vstage == vstage);
        if (best < 0 || rank > (m->bufs[best].micro == micro) * 2 + (m->bufs[best].vstage == vstage))
            best = b;
    }
    if (best < 0)
        return -1;
    *bytes = m->bufs[best].bytes;
    return m->base[m->bufs[best].region] + m->bufs[best].offset;
}

void ir_memory_free(struct ir_memory *M)
{
    for (int s = 0; s < M->n_roles; s++) {
        free(M->roles[s].bufs);
        free(M->roles[s].items);
        free(M->roles[s].block_bytes);
    }
    free(M->roles);
    memset(M, 0, sizeof *M);
}

static void put_buf(struct plan_writer *w, const struct ir_buf *b)
{
    plan_put_u8(w, b->what);
    plan_put_u8(w, b->region);
    plan_put_i32(w, b->id);
    plan_put_i32(w, b->vstage);
    plan_put_i32(w, b->micro);
    plan_put_i32(w, b->first);
    plan_put_i32(w, b->last);
    plan_put_i64(w, b->offset);
    plan_put_i64(w, b->bytes);
}

enum { BUF_RECORD = 2 + 5 * 4 + 2 * 8 };

static bool get_buf(struct plan_reader *r, struct ir_buf *b)
{
    b->what = plan_get_u8(r);
    b->region = plan_get_u8(r);
    b->id = plan_get_i32(r);
    b->vstage = plan_get_i32(r);
    b->micro = plan_get_i32(r);
    b->first = plan_get_i32(r);
    b->last = plan_get_i32(r);
    b->offset = plan_get_i64(r);
    b->bytes = plan_get_i64(r);
    return !r->bad && b->what < IR_BUF_COUNT && b->region < IR_REGION_COUNT && b->offset >= 0 && b->bytes >= 0 &&
           b->first <= b->last;
}

void ir_memory_write(struct plan_writer *w, const struct ir_memory *M)
{
    for (int s = 0; s < M->n_roles; s++) {
        const struct ir_role_memory *m = &M->roles[s];
        char name[32];
        snprintf(name, sizeof name, "memory.%d", s);
        plan_section(w, name);
        plan_put_u32(w, IR_REGION_COUNT);
        for (int r = 0; r < IR_REGION_COUNT; r++)
            plan_put_i64(w, m->size[r]);
        plan_put_i32(w, m->in_flight);
        plan_put_u32(w, (uint32_t)m->n_vstages);
        for (int v = 0; v < m->n_vstages; v++)
            plan_put_i64(w, m->block_bytes[v]);
        plan_put_u32(w, (uint32_t)m->n_items);
        for (int i = 0; i < m->n_items; i++)
            put_buf(w, &m->items[i]);
        plan_put_u32(w, (uint32_t)m->n_bufs);
        for (int i = 0; i < m->n_bufs; i++)
            put_buf(w, &m->bufs[i]);
        plan_put_i32(w, m->grad_bytes); /* 5.2 */
    }
}

static int corrupt(struct diag *d, const char *name, const char *what)
{
    diag_error(d, NULL, 0, "plan section '%s': %s: the plan is corrupted", name, what);
    return -1;
}

static int read_role(struct plan *p, int s, struct ir_role_memory *m, struct diag *d)
{
    char name[32];
    snprintf(name, sizeof name, "memory.%d", s);
    struct plan_reader r;
    if (plan_read(p, name, &r, d))
        return -1;
    if (plan_get_u32(&r) != IR_REGION_COUNT)
        return corrupt(d, name, "regions this weft does not know");
    for (int k = 0; k < IR_REGION_COUNT; k++)
        if ((m->size[k] = plan_get_i64(&r)) < 0)
            return corrupt(d, name, "a region of negative size");
    m->in_flight = plan_get_i32(&r);
    uint32_t nv = plan_get_u32(&r);
    if (r.bad || nv < 1 || nv > (uint32_t)((r.end - r.at) / 8))
        return corrupt(d, name, "impossible counts");
    m->n_vstages = (int)nv;
    m->block_bytes = wf_calloc(nv, sizeof *m->block_bytes);
    for (uint32_t v = 0; v < nv; v++)
        if ((m->block_bytes[v] = plan_get_i64(&r)) < 0)
            return corrupt(d, name, "a block of negative size");
    uint32_t ni = plan_get_u32(&r);
    if (r.bad || ni > (uint32_t)((r.end - r.at) / BUF_RECORD))
        return corrupt(d, name, "more block items than the section can hold");
    m->n_items = (int)ni;
    m->items = wf_calloc((size_t)ni + 1, sizeof *m->items);
    for (uint32_t i = 0; i < ni; i++)
        if (!get_buf(&r, &m->items[i]))
            return corrupt(d, name, "a block item out of range");
    uint32_t nb = plan_get_u32(&r);
    if (r.bad || nb > (uint32_t)((r.end - r.at) / BUF_RECORD))
        return corrupt(d, name, "more buffers than the section can hold");
    m->n_bufs = (int)nb;
    m->bufs = wf_calloc((size_t)nb + 1, sizeof *m->bufs);
    for (uint32_t i = 0; i < nb; i++)
        if (!get_buf(&r, &m->bufs[i]))
            return corrupt(d, name, "a buffer out of range");
    m->grad_bytes = r.at < r.end ? plan_get_i32(&r) : 4; /* (fields added later are read when present) */
    if (r.bad || (m->grad_bytes != 4 && m->grad_bytes != 2))
        return corrupt(d, name, "a gradient element of neither 4 nor 2 bytes");
    ir_role_memory_layout(m);
    return 0;
}

int ir_memory_read(struct plan *p, int n_stages, int stage, struct ir_memory *M, struct diag *d)
{
    memset(M, 0, sizeof *M);
    M->n_roles = n_stages;
    M->roles = wf_calloc((size_t)n_stages + 1, sizeof *M->roles);
    for (int s = 0; s < n_stages; s++)
        if ((stage < 0 || s == stage) && read_role(p, s, &M->roles[s], d)) {
            ir_memory_free(M);
            return -1;
        }
    return 0;
}
