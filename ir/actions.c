/* actions.c: the actions sections, and a launch's arguments for a rank (actions.h). */
#include "actions.h"
#include "launch.h"
#include "plan.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const act_names[] = {
#define X(id, name) name,
    IR_ACTS(X)
#undef X
};

const char *ir_act_name(enum ir_act_kind k) { return k < IR_ACT_COUNT ? act_names[k] : "?"; }

static const char *const epilogue_names[] = {
#define X(id, name) name,
    IR_EPILOGUES(X)
#undef X
};

const char *ir_epilogue_name(enum ir_epilogue e) { return e < IR_EPI_COUNT ? epilogue_names[e] : "?"; }

void ir_action_push(struct ir_action_list *l, const struct ir_action *a)
{
    WF_GROW(l->v, l->n, l->cap);
    l->v[l->n++] = *a;
}

void ir_actions_free(struct ir_actions *A)
{
    for (int s = 0; A->stages && s < A->n_stages; s++) {
        struct ir_stage_actions *st = &A->stages[s];
        for (int v = 0; v < st->n_vstages; v++) {
            free(st->forward[v].v);
            free(st->backward[v].v);
        }
        free(st->forward);
        free(st->backward);
        for (int i = 0; i < st->n_ins; i++)
            free(st->ins[i].v);
        free(st->ins);
    }
    free(A->stages);
    memset(A, 0, sizeof *A);
}

const struct ir_action_list *ir_actions_step(const struct ir_stage_actions *s, int vstage, bool backward)
{
    if (vstage < 0 || vstage >= s->n_vstages)
        return NULL;
    return backward ? &s->backward[vstage] : &s->forward[vstage];
}

static char *ref_str(const struct ir_ref *r, char *buf, size_t n)
{
    snprintf(buf, n, "%s %d+%lld", ir_buf_what_name(r->what), r->id, (long long)r->offset);
    return buf;
}

char *ir_action_str(const struct ir_action *a, char *buf, size_t n)
{
    char x[64], y[64], z[64];
    switch (a->kind) {
    case IR_ACT_GEMM: {
        const struct ir_gemm *g = &a->gemm;
        snprintf(buf, n, "gemm %lldx(%lldx%lldx%lld)%s%s beta %g: [%s] = [%s] @ [%s]", (long long)g->batch, (long long)g->m,
                 (long long)g->n, (long long)g->k, g->ta ? " a^T" : "", g->tb ? " b^T" : "", g->beta, ref_str(&g->c, x, sizeof x),
                 ref_str(&g->a, y, sizeof y), ref_str(&g->b, z, sizeof z));
        if (g->epilogue) {
            size_t len = strlen(buf);
            len += (size_t)snprintf(buf + len, n - len, ", then %s of [%s] (launch %d)", ir_epilogue_name((enum ir_epilogue)g->epilogue),
                                    ref_str(&g->bias, x, sizeof x), a->launch.launch);
            if (g->epilogue == IR_EPI_GELU_AUX_BIAS && len < n)
                snprintf(buf + len, n - len, ", x + bias into [%s]", ref_str(&g->aux, x, sizeof x));
        }
        break;
    }
    case IR_ACT_LAUNCH: {
        size_t len = (size_t)snprintf(buf, n, "launch %d (%lld x %lld):", a->launch.launch, (long long)a->launch.args.rows,
                                      (long long)a->launch.args.cols);
        for (int i = 0; i < a->launch.n_in + a->launch.n_out && len < n; i++)
            len += (size_t)snprintf(buf + len, n - len, "%s[%s]", i == a->launch.n_in ? " -> " : " ",
                                    ref_str(i < a->launch.n_in ? &a->launch.in[i] : &a->launch.out[i - a->launch.n_in], x, sizeof x));
        break;
    }
    case IR_ACT_ZERO:
        snprintf(buf, n, "zero [%s] %lld bytes", ref_str(&a->zero, x, sizeof x), (long long)a->zero_bytes);
        break;
    case IR_ACT_COLL:
        if (a->coll.out.what == a->coll.buf.what && a->coll.out.id == a->coll.buf.id && a->coll.out.offset == a->coll.buf.offset)
            snprintf(buf, n, "%s over %s: [%s] %lld bytes", ir_coll_name((enum ir_coll)a->coll.coll),
                     ir_group_name((enum ir_group)a->coll.group), ref_str(&a->coll.buf, x, sizeof x), (long long)a->coll.bytes);
        else
            snprintf(buf, n, "%s over %s: [%s] %lld bytes -> [%s] %lld bytes", ir_coll_name((enum ir_coll)a->coll.coll),
                     ir_group_name((enum ir_group)a->coll.group), ref_str(&a->coll.buf, x, sizeof x), (long long)a->coll.bytes,
                     ref_str(&a->coll.out, y, sizeof y), (long long)a->coll.out_bytes);
        break;
    case IR_ACT_COPY: {
        const struct ir_copy *c = &a->copy;
        snprintf(buf, n, "%s [%s]%s %lldx%lldx%lld bytes (strides %lld,%lld) -> [%s]%s (strides %lld,%lld)", c->add ? "add" : "copy",
                 ref_str(&c->src, x, sizeof x), c->src_pdim ? " + the rank's piece" : "", (long long)c->planes, (long long)c->rows,
                 (long long)c->width, (long long)c->src_plane, (long long)c->src_pitch, ref_str(&c->dst, y, sizeof y),
                 c->dst_pdim ? " + the rank's piece" : "", (long long)c->dst_plane, (long long)c->dst_pitch);
        break;
    }
    case IR_ACT_LOSS:
        snprintf(buf, n, "loss: the row losses of [%s], %lld rows", ref_str(&a->loss, x, sizeof x), (long long)a->loss_rows);
        break;
    case IR_ACT_SQSUM:
        snprintf(buf, n, "sqsum: [%s], %lld rows%s", ref_str(&a->loss, x, sizeof x), (long long)a->loss_rows,
                 a->sq_only_first || a->sq_replica ? " (where this rank counts it)" : "");
        break;
    case IR_ACT_SEND:
    case IR_ACT_RECV:
        snprintf(buf, n, "%s [%s] %lld bytes %s chunk %d (micro-batch %d, tag %d)", a->kind == IR_ACT_SEND ? "send" : "receive",
                 ref_str(&a->p2p.buf, x, sizeof x), (long long)a->p2p.bytes, a->kind == IR_ACT_SEND ? "to" : "from", a->p2p.peer_chunk,
                 a->p2p.micro, a->p2p.tag);
        break;
    case IR_ACT_PENDING:
        if (a->coll.coll < IR_COLL_COUNT && a->coll.group < IR_GROUP_COUNT)
            snprintf(buf, n, "%s over %s, not lowered yet", ir_coll_name((enum ir_coll)a->coll.coll), ir_group_name((enum ir_group)a->coll.group));
        else
            snprintf(buf, n, "not lowered yet");
        break;
    default: snprintf(buf, n, "?");
    }
    if (a->awaits) {
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, " (awaits a transfer)");
    }
    return buf;
}

void ir_action_launch_args(const struct ir_launch *l, const struct par_config *pc, const struct rank_coords *rc, struct kn_args *a)
{
    *a = l->args;
    for (int i = 0; i < a->rank && i < KN_MAX_RANK; i++)
        a->off[i] = par_axis_coord(pc, rc->part, l->off_pdim[i], rc) * a->dim[i];
    for (int s = 0; s < KN_MAX_SLOTS; s++) {
        a->vin[s][0] += par_axis_coord(pc, rc->part, l->gather_pdim[0][s], rc) * a->vin[s][1];
        a->vout[s][0] += par_axis_coord(pc, rc->part, l->gather_pdim[1][s], rc) * a->vout[s][1];
    }
}

/* ---- the plan's sections -------------------------------------------------------- */

static void put_ref(struct plan_writer *w, const struct ir_ref *r)
{
    plan_put_u8(w, r->what);
    plan_put_i32(w, r->id);
    plan_put_i64(w, r->offset);
}

static void get_ref(struct plan_reader *r, struct ir_ref *x)
{
    x->what = plan_get_u8(r);
    x->id = plan_get_i32(r);
    x->offset = plan_get_i64(r);
}

static void put_i64s(struct plan_writer *w, const int64_t *v, int n)
{
    for (int i = 0; i < n; i++)
        plan_put_i64(w, v[i]);
}

static void get_i64s(struct plan_reader *r, int64_t *v, int n)
{
    for (int i = 0; i < n; i++)
        v[i] = plan_get_i64(r);
}

/* Only the axes and slots in use: a launch a few hundred bytes, not a whole kn_args. */
static void put_launch(struct plan_writer *w, const struct ir_launch *l)
{
    const struct kn_args *x = &l->args;
    plan_put_i32(w, l->launch);
    plan_put_u8(w, l->fn_first), plan_put_u8(w, l->fn_last);
    plan_put_u8(w, l->q_pos_pdim), plan_put_u8(w, l->k_pos_pdim);
    plan_put_f64(w, l->scale);
    plan_put_i64(w, x->rows), plan_put_i64(w, x->cols), plan_put_i64(w, x->rank);
    for (int i = 0; i < x->rank; i++) {
        plan_put_i64(w, x->dim[i]), plan_put_i64(w, x->stride[i]);
        plan_put_u8(w, l->off_pdim[i]);
    }
    for (int i = 0; i < 4; i++)
        plan_put_u64(w, x->stream[i]);
    plan_put_u8(w, (uint8_t)l->n_in), plan_put_u8(w, (uint8_t)l->n_out);
    for (int io = 0; io < 2; io++)
        for (int i = 0; i < (io ? l->n_out : l->n_in); i++) {
            put_ref(w, io ? &l->out[i] : &l->in[i]);
            plan_put_i64(w, io ? x->omod[i] : x->mod[i]);
            put_i64s(w, io ? x->vout[i] : x->vin[i], 6);
            plan_put_u8(w, l->gather_pdim[io][i]);
        }
    for (int i = 0; l->fn_last > KN_ATTN_FWD && i < l->n_in + l->n_out; i++)
        put_ref(w, i < l->n_in ? &l->grad_in[i] : &l->grad_out[i - l->n_in]);
}

static void put_action(struct plan_writer *w, const struct ir_action *a)
{
    plan_put_u8(w, a->kind);
    plan_put_u8(w, a->awaits);
    switch (a->kind) {
    case IR_ACT_GEMM: {
        const struct ir_gemm *g = &a->gemm;
        int64_t v[10] = {g->batch, g->m, g->n, g->k, g->lda, g->ldb, g->ldc, g->stride_a, g->stride_b, g->stride_c};
        put_i64s(w, v, 10);
        plan_put_u8(w, (uint8_t)(g->ta | g->tb << 1));
        plan_put_f64(w, g->beta);
        plan_put_u8(w, g->dtype), plan_put_u8(w, g->c_dtype);
        put_ref(w, &g->a), put_ref(w, &g->b), put_ref(w, &g->c);
        plan_put_u8(w, g->epilogue);
        if (g->epilogue) {
            plan_put_u8(w, g->gemm_in);
            put_ref(w, &g->bias), put_ref(w, &g->aux);
            put_launch(w, &a->launch);
        }
        break;
    }
    case IR_ACT_LAUNCH:
        put_launch(w, &a->launch);
        break;
    case IR_ACT_ZERO:
        put_ref(w, &a->zero);
        plan_put_i64(w, a->zero_bytes);
        break;
    case IR_ACT_SEND:
    case IR_ACT_RECV:
        plan_put_i32(w, a->p2p.peer_chunk), plan_put_i32(w, a->p2p.tag), plan_put_i32(w, a->p2p.vstage), plan_put_i32(w, a->p2p.micro);
        put_ref(w, &a->p2p.buf);
        plan_put_i64(w, a->p2p.bytes);
        break;
    case IR_ACT_COLL:
    case IR_ACT_PENDING: /* PENDING: the collective it would be (IR_COLL_COUNT: none, a pipeline transfer) */
        plan_put_i32(w, a->coll.set);
        plan_put_u8(w, a->coll.coll), plan_put_u8(w, a->coll.group), plan_put_u8(w, a->coll.dtype), plan_put_u8(w, a->coll.copies);
        put_ref(w, &a->coll.buf);
        plan_put_i64(w, a->coll.bytes);
        put_ref(w, &a->coll.out);
        plan_put_i64(w, a->coll.out_bytes);
        break;
    case IR_ACT_COPY: {
        const struct ir_copy *c = &a->copy;
        put_ref(w, &c->src), put_ref(w, &c->dst);
        int64_t v[9] = {c->planes, c->rows, c->width, c->src_plane, c->src_pitch, c->dst_plane, c->dst_pitch, c->src_step, c->dst_step};
        put_i64s(w, v, 9);
        plan_put_i32(w, c->src_coords), plan_put_i32(w, c->dst_coords);
        plan_put_u8(w, c->src_pdim), plan_put_u8(w, c->dst_pdim), plan_put_u8(w, c->add), plan_put_u8(w, c->dtype);
        break;
    }
    case IR_ACT_LOSS:
    case IR_ACT_SQSUM:
        put_ref(w, &a->loss);
        plan_put_i64(w, a->loss_rows);
        plan_put_u8(w, a->sq_only_first), plan_put_u8(w, a->sq_replica);
        break;
    }
}

static void get_launch(struct plan_reader *r, struct ir_launch *l)
{
    struct kn_args *x = &l->args;
    l->launch = plan_get_i32(r);
    l->fn_first = plan_get_u8(r), l->fn_last = plan_get_u8(r);
    l->q_pos_pdim = plan_get_u8(r), l->k_pos_pdim = plan_get_u8(r);
    l->scale = (float)plan_get_f64(r);
    x->rows = plan_get_i64(r), x->cols = plan_get_i64(r), x->rank = plan_get_i64(r);
    if (x->rank < 0 || x->rank > KN_MAX_RANK || l->fn_first > l->fn_last || l->fn_last >= KN_ATTN_FNS) {
        r->bad = true;
        return;
    }
    for (int i = 0; i < x->rank; i++) {
        x->dim[i] = plan_get_i64(r), x->stride[i] = plan_get_i64(r);
        l->off_pdim[i] = plan_get_u8(r);
    }
    for (int i = 0; i < 4; i++)
        x->stream[i] = plan_get_u64(r);
    l->n_in = plan_get_u8(r), l->n_out = plan_get_u8(r);
    if (l->n_in > KN_MAX_SLOTS || l->n_out > KN_MAX_SLOTS) {
        r->bad = true;
        return;
    }
    for (int io = 0; io < 2; io++)
        for (int i = 0; i < (io ? l->n_out : l->n_in); i++) {
            get_ref(r, io ? &l->out[i] : &l->in[i]);
            *(io ? &x->omod[i] : &x->mod[i]) = plan_get_i64(r);
            get_i64s(r, io ? x->vout[i] : x->vin[i], 6);
            l->gather_pdim[io][i] = plan_get_u8(r);
        }
    for (int i = 0; l->fn_last > KN_ATTN_FWD && i < l->n_in + l->n_out; i++)
        get_ref(r, i < l->n_in ? &l->grad_in[i] : &l->grad_out[i - l->n_in]);
}

static void get_action(struct plan_reader *r, struct ir_action *a)
{
    memset(a, 0, sizeof *a);
    a->kind = plan_get_u8(r);
    a->awaits = plan_get_u8(r);
    switch (a->kind) {
    case IR_ACT_GEMM: {
        struct ir_gemm *g = &a->gemm;
        int64_t v[10];
        get_i64s(r, v, 10);
        g->batch = v[0], g->m = v[1], g->n = v[2], g->k = v[3], g->lda = v[4], g->ldb = v[5], g->ldc = v[6];
        g->stride_a = v[7], g->stride_b = v[8], g->stride_c = v[9];
        uint8_t t = plan_get_u8(r);
        g->ta = t & 1, g->tb = (t >> 1) & 1;
        g->beta = (float)plan_get_f64(r);
        g->dtype = plan_get_u8(r), g->c_dtype = plan_get_u8(r);
        if (g->dtype >= IR_DTYPE_COUNT || g->c_dtype >= IR_DTYPE_COUNT)
            r->bad = true;
        get_ref(r, &g->a), get_ref(r, &g->b), get_ref(r, &g->c);
        g->epilogue = plan_get_u8(r);
        if (g->epilogue) {
            g->gemm_in = plan_get_u8(r);
            get_ref(r, &g->bias), get_ref(r, &g->aux);
            get_launch(r, &a->launch);
            r->bad |= g->epilogue >= IR_EPI_COUNT || g->gemm_in >= a->launch.n_in || g->batch != 1 || g->beta != 0;
        }
        break;
    }
    case IR_ACT_LAUNCH:
        get_launch(r, &a->launch);
        break;
    case IR_ACT_ZERO:
        get_ref(r, &a->zero);
        a->zero_bytes = plan_get_i64(r);
        break;
    case IR_ACT_SEND:
    case IR_ACT_RECV:
        a->p2p.peer_chunk = plan_get_i32(r), a->p2p.tag = plan_get_i32(r), a->p2p.vstage = plan_get_i32(r), a->p2p.micro = plan_get_i32(r);
        get_ref(r, &a->p2p.buf);
        a->p2p.bytes = plan_get_i64(r);
        if (a->p2p.tag < 0 || a->p2p.tag > 32767 || a->p2p.bytes < 0)
            r->bad = true;
        break;
    case IR_ACT_COLL:
    case IR_ACT_PENDING:
        a->coll.set = plan_get_i32(r);
        a->coll.coll = plan_get_u8(r), a->coll.group = plan_get_u8(r), a->coll.dtype = plan_get_u8(r), a->coll.copies = plan_get_u8(r);
        get_ref(r, &a->coll.buf);
        a->coll.bytes = plan_get_i64(r);
        get_ref(r, &a->coll.out);
        a->coll.out_bytes = plan_get_i64(r);
        if (a->kind == IR_ACT_COLL && (a->coll.coll >= IR_COLL_COUNT || a->coll.group >= IR_GROUP_COUNT || a->coll.dtype >= IR_DTYPE_COUNT))
            r->bad = true;
        break;
    case IR_ACT_COPY: {
        struct ir_copy *c = &a->copy;
        get_ref(r, &c->src), get_ref(r, &c->dst);
        int64_t v[9];
        get_i64s(r, v, 9);
        c->planes = v[0], c->rows = v[1], c->width = v[2], c->src_plane = v[3], c->src_pitch = v[4], c->dst_plane = v[5];
        c->dst_pitch = v[6], c->src_step = v[7], c->dst_step = v[8];
        c->src_coords = plan_get_i32(r), c->dst_coords = plan_get_i32(r);
        c->src_pdim = plan_get_u8(r), c->dst_pdim = plan_get_u8(r), c->add = plan_get_u8(r), c->dtype = plan_get_u8(r);
        if (c->planes < 0 || c->rows < 0 || c->width < 0 || c->src_coords < 1 || c->dst_coords < 1 || c->dtype >= IR_DTYPE_COUNT)
            r->bad = true;
        break;
    }
    case IR_ACT_LOSS:
    case IR_ACT_SQSUM:
        get_ref(r, &a->loss);
        a->loss_rows = plan_get_i64(r);
        a->sq_only_first = plan_get_u8(r), a->sq_replica = plan_get_u8(r);
        if (a->sq_replica > IR_SQ_EXPERT_DP0)
            r->bad = true;
        break;
    default: r->bad = true;
    }
}

static void put_list(struct plan_writer *w, const struct ir_action_list *l)
{
    plan_put_u32(w, (uint32_t)l->n);
    for (int i = 0; i < l->n; i++)
        put_action(w, &l->v[i]);
}

/* At most as many actions as the section has bytes (each takes more than one). */
static int get_list(struct plan_reader *r, struct ir_action_list *l)
{
    uint32_t n = plan_get_u32(r);
    if (r->bad || n > (uint64_t)(r->end - r->at))
        return r->bad = true, -1;
    for (uint32_t i = 0; i < n && !r->bad; i++) {
        struct ir_action a;
        get_action(r, &a);
        ir_action_push(l, &a);
    }
    return r->bad ? -1 : 0;
}

void ir_actions_write(struct plan_writer *w, const struct ir_actions *A)
{
    for (int s = 0; s < A->n_stages; s++) {
        char name[PLAN_NAME_MAX];
        snprintf(name, sizeof name, "actions.%d", s);
        plan_section(w, name);
        const struct ir_stage_actions *st = &A->stages[s];
        plan_put_u32(w, (uint32_t)st->n_vstages);
        for (int v = 0; v < st->n_vstages; v++) {
            put_list(w, &st->forward[v]);
            put_list(w, &st->backward[v]);
        }
        plan_put_u32(w, (uint32_t)st->n_ins);
        for (int i = 0; i < st->n_ins; i++)
            put_list(w, &st->ins[i]);
    }
}

int ir_actions_read(struct plan *p, int n_stages, int stage, struct ir_actions *A, struct diag *d)
{
    memset(A, 0, sizeof *A);
    A->n_stages = n_stages;
    A->stages = wf_calloc((size_t)n_stages + 1, sizeof *A->stages);
    for (int s = 0; s < n_stages; s++) {
        if (stage >= 0 && s != stage)
            continue;
        char name[PLAN_NAME_MAX];
        snprintf(name, sizeof name, "actions.%d", s);
        struct plan_reader r;
        if (plan_read(p, name, &r, d)) {
            ir_actions_free(A);
            return -1;
        }
        struct ir_stage_actions *st = &A->stages[s];
        uint32_t nv = plan_get_u32(&r);
        if (r.bad || nv == 0 || nv > 4096) {
            diag_error(d, NULL, 0, "plan section %s: %u virtual stages: the plan is corrupt", name, nv);
            ir_actions_free(A);
            return -1;
        }
        st->n_vstages = (int)nv;
        st->forward = wf_calloc(nv, sizeof *st->forward);
        st->backward = wf_calloc(nv, sizeof *st->backward);
        int bad = 0;
        for (uint32_t v = 0; v < nv && !bad; v++)
            bad = get_list(&r, &st->forward[v]) || get_list(&r, &st->backward[v]);
        uint32_t ni = bad ? 0 : plan_get_u32(&r);
        if (ni > (uint64_t)(r.end - r.at) / 4)
            bad = 1;
        else {
            st->n_ins = (int)ni;
            st->ins = wf_calloc((size_t)ni + 1, sizeof *st->ins);
        }
        for (uint32_t i = 0; i < (uint32_t)st->n_ins && !bad; i++)
            bad = get_list(&r, &st->ins[i]);
        if (bad || r.at != r.end) {
            diag_error(d, NULL, 0, "plan section %s: its actions do not fit its bytes: the plan is corrupt", name);
            ir_actions_free(A);
            return -1;
        }
    }
    return 0;
}

/* ---- the check ---------------------------------------------------------------- */

/* The operand's buffer, and bytes from it, inside the buffer: the buffer's bytes, or -1 if it has none or they do not fit. */
static int check_ref(const struct ir_role_memory *m, const struct ir_ref *r, int v, int micro, int64_t bytes)
{
    int64_t have, at = ir_memory_find(m, r->what, r->id, v, micro, &have);
    return at < 0 || r->offset < 0 || r->offset + bytes > have ? -1 : 0;
}

/* A payload that starts at a buffer and may run on through its neighbours
 * (a gradient bucket: the buckets' parameters lie side by side in GRADS):
 * inside the buffer's region. */
static int check_span(const struct ir_role_memory *m, const struct ir_ref *r, int v, int64_t bytes)
{
    int64_t have, at = ir_memory_find(m, r->what, r->id, v, 0, &have);
    if (at < 0 || r->offset < 0 || bytes < 0)
        return -1;
    at += r->offset;
    for (int k = 0; k < IR_REGION_COUNT; k++)
        if (at >= m->base[k] && at < m->base[k] + m->size[k])
            return at + bytes <= m->base[k] + m->size[k] ? 0 : -1;
    return -1;
}

static int check_launch(const struct ir_launch *l, const struct ir_role_memory *m, const struct kn_set *K, int v)
{
    if (!K)
        return 0;
    if (l->launch < 0 || l->launch >= K->n_launches)
        return -1;
    const struct kn_launch *L = &K->launches[l->launch];
    const struct kn_entry *e = &K->kernels[L->kernel];
    if (l->n_in != L->n_in || l->n_out != L->n_out)
        return -1;
    for (int io = 0; io < 2; io++)
        for (int s = 0; s < (io ? l->n_out : l->n_in); s++) {
            const struct ir_ref *r = io ? &l->out[s] : &l->in[s];
            int64_t bytes = 0;
            if (e->kind == KN_KIND_FUSED) { /* as far as the kernel reaches, at the widest a rank's offsets take it */
                const struct kn_slot *slot = io ? &e->k.out[s] : &e->k.in[s];
                int size = slot->dtype == KN_DTYPE_U8 ? 1 : ir_dtype_bytes((enum ir_dtype)slot->dtype);
                bytes = kn_slot_extent(&e->k, &l->args, io, s) * size;
                if (slot->access == KN_GATHER || slot->access == KN_PICK) /* a table's shard: its own rows, wherever it starts */
                    bytes = (io ? l->args.vout[s][1] : l->args.vin[s][1]) * (slot->access == KN_GATHER ? l->args.cols : 1) * size;
            }
            if (check_ref(m, r, v, 0, bytes))
                return -1;
        }
    return 0;
}

static int check_list(const struct ir_action_list *l, const struct ir_role_memory *m, const struct kn_set *K, int stage, int v,
                      const char *which, struct diag *d)
{
    for (int i = 0; i < l->n; i++) {
        const struct ir_action *a = &l->v[i];
        int bad = 0;
        const struct ir_gemm *g = &a->gemm;
        if (a->awaits)
            continue;
        int size = g->dtype == IR_DTYPE_BF16 ? 2 : 4;
        /* a GEMM's matrices: the last element of the last batch */
#define LAST(ld, rows, cols, stride) (((g->batch - 1) * (stride) + ((rows) - 1) * (ld) + (cols)))
        if (a->kind == IR_ACT_GEMM)
            bad = check_ref(m, &g->a, v, 0, LAST(g->lda, g->ta ? g->k : g->m, g->ta ? g->m : g->k, g->stride_a) * size) ||
                  check_ref(m, &g->b, v, 0, LAST(g->ldb, g->tb ? g->n : g->k, g->tb ? g->k : g->n, g->stride_b) * size) ||
                  check_ref(m, &g->c, v, 0, LAST(g->ldc, g->m, g->n, g->stride_c) * ir_dtype_bytes((enum ir_dtype)g->c_dtype)) ||
                  (g->epilogue && (check_ref(m, &g->bias, v, 0, g->n * ir_dtype_bytes((enum ir_dtype)g->c_dtype)) ||
                                   (g->epilogue == IR_EPI_GELU_AUX_BIAS &&
                                    check_ref(m, &g->aux, v, 0, LAST(g->ldc, g->m, g->n, g->stride_c) * ir_dtype_bytes((enum ir_dtype)g->c_dtype))) ||
                                   check_launch(&a->launch, m, K, v)));
#undef LAST
        else if (a->kind == IR_ACT_ZERO)
            bad = check_ref(m, &a->zero, v, 0, a->zero_bytes);
        else if (a->kind == IR_ACT_COLL)
            bad = check_span(m, &a->coll.buf, v, a->coll.bytes) || check_span(m, &a->coll.out, v, a->coll.out_bytes);
        else if (a->kind == IR_ACT_COPY) {
            const struct ir_copy *c = &a->copy;
            int64_t reach_src = c->planes && c->rows ? (c->planes - 1) * c->src_plane + (c->rows - 1) * c->src_pitch + c->width : 0,
                    reach_dst = c->planes && c->rows ? (c->planes - 1) * c->dst_plane + (c->rows - 1) * c->dst_pitch + c->width : 0;
            bad = c->src_plane < 0 || c->src_pitch < 0 || c->dst_plane < 0 || c->dst_pitch < 0 || c->src_step < 0 || c->dst_step < 0 ||
                  check_ref(m, &c->src, v, 0, (int64_t)(c->src_coords - 1) * c->src_step + reach_src) ||
                  check_ref(m, &c->dst, v, 0, (int64_t)(c->dst_coords - 1) * c->dst_step + reach_dst);
        }
        else if (a->kind == IR_ACT_SEND || a->kind == IR_ACT_RECV)
            bad = check_ref(m, &a->p2p.buf, a->p2p.vstage, a->p2p.micro, a->p2p.bytes);
        else if (a->kind == IR_ACT_LOSS || a->kind == IR_ACT_SQSUM)
            bad = check_ref(m, &a->loss, v, 0, a->loss_rows * (a->kind == IR_ACT_LOSS ? 8 : 4));
        else if (a->kind == IR_ACT_LAUNCH)
            bad = check_launch(&a->launch, m, K, v);
        else if (a->kind >= IR_ACT_COUNT)
            bad = 1;
        if (bad) {
            char s[256];
            diag_error(d, NULL, 0, "actions of stage %d, %s step of virtual stage %d, action %d (%s): an access outside its buffer",
                       stage, which, v, i, ir_action_str(a, s, sizeof s));
            return -1;
        }
    }
    return 0;
}

int ir_action_refs(const struct ir_action *a, const struct ir_ref **r)
{
    int n = 0;
    const struct ir_launch *l = NULL;
    switch (a->kind) {
    case IR_ACT_GEMM:
        r[n++] = &a->gemm.a, r[n++] = &a->gemm.b, r[n++] = &a->gemm.c;
        if (a->gemm.epilogue)
            r[n++] = &a->gemm.bias, l = &a->launch;
        if (a->gemm.epilogue == IR_EPI_GELU_AUX_BIAS)
            r[n++] = &a->gemm.aux;
        break;
    case IR_ACT_LAUNCH: l = &a->launch; break;
    case IR_ACT_ZERO: r[n++] = &a->zero; break;
    case IR_ACT_COPY: r[n++] = &a->copy.src, r[n++] = &a->copy.dst; break;
    case IR_ACT_COLL: r[n++] = &a->coll.buf, r[n++] = &a->coll.out; break;
    case IR_ACT_LOSS:
    case IR_ACT_SQSUM: r[n++] = &a->loss; break;
    case IR_ACT_SEND:
    case IR_ACT_RECV: r[n++] = &a->p2p.buf; break;
    default: break;
    }
    for (int i = 0; l && i < l->n_in + l->n_out; i++) {
        r[n++] = i < l->n_in ? &l->in[i] : &l->out[i - l->n_in];
        if (l->fn_last > KN_ATTN_FWD && i <= l->n_in) /* attention's backward: its inputs' gradients, its output's */
            r[n++] = i < l->n_in ? &l->grad_in[i] : &l->grad_out[0];
    }
    return n;
}

/* The working buffer (of virtual stage v) that r names, or -1. */
static int working_buf(const struct ir_role_memory *m, const struct ir_ref *r, int v)
{
    for (int b = 0; b < m->n_bufs; b++)
        if (m->bufs[b].region == IR_REGION_WORKING && m->bufs[b].what == r->what && m->bufs[b].id == r->id && m->bufs[b].vstage == v)
            return b;
    return -1;
}

/* The memory plan gave two working buffers the same bytes because their
 * lives do not meet: so in the step's actions (forward, then backward),
 * every action that touches one comes before every action that touches
 * the other.  That the lowering runs each op where the plan placed it is
 * what this checks: an action late for a buffer reads another's bytes. */
static int check_lives(const struct ir_stage_actions *st, const struct ir_role_memory *m, int s, int v, struct diag *d)
{
    int *first = wf_calloc((size_t)m->n_bufs + 1, sizeof *first), *last = wf_calloc((size_t)m->n_bufs + 1, sizeof *last), rc = 0;
    const struct ir_action_list *lists[2] = {&st->forward[v], &st->backward[v]};
    int t = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < lists[k]->n; i++, t++) {
            const struct ir_ref *r[IR_ACTION_REFS];
            if (lists[k]->v[i].awaits)
                continue;
            for (int j = ir_action_refs(&lists[k]->v[i], r) - 1; j >= 0; j--) {
                int b = working_buf(m, r[j], v);
                if (b >= 0 && !first[b])
                    first[b] = t + 1;
                if (b >= 0)
                    last[b] = t + 1;
            }
        }
    for (int a = 0; a < m->n_bufs && !rc; a++)
        for (int b = a + 1; b < m->n_bufs && first[a] && !rc; b++) {
            const struct ir_buf *x = &m->bufs[a], *y = &m->bufs[b];
            if (!first[b] || x->offset >= y->offset + y->bytes || y->offset >= x->offset + x->bytes || first[a] > last[b] ||
                first[b] > last[a])
                continue;
            diag_error(d, NULL, 0, "actions of stage %d, virtual stage %d: %s %d (used by actions %d to %d of the step, its forward's "
                       "then its backward's) and %s %d (%d to %d) share bytes of the working set, yet their actions interleave", s, v, ir_buf_what_name(x->what), x->id,
                       first[a] - 1, last[a] - 1, ir_buf_what_name(y->what), y->id, first[b] - 1, last[b] - 1);
            rc = -1;
        }
    free(first);
    free(last);
    return rc;
}

int ir_actions_check(const struct ir_actions *A, const struct ir_memory *M, const struct kn_set *K, const struct ir_schedule *S,
                     struct diag *d)
{
    for (int s = 0; s < A->n_stages; s++) {
        const struct ir_stage_actions *st = &A->stages[s];
        if (S && s < S->n_stages && st->n_ins != S->programs[s].n) {
            diag_error(d, NULL, 0, "actions of stage %d: %d instructions' actions for a program of %d", s, st->n_ins, S->programs[s].n);
            return -1;
        }
        for (int v = 0; v < st->n_vstages; v++)
            if (check_list(&st->forward[v], &M->roles[s], K, s, v, "forward", d) ||
                check_list(&st->backward[v], &M->roles[s], K, s, v, "backward", d) || check_lives(st, &M->roles[s], s, v, d))
                return -1;
        for (int i = 0; i < st->n_ins; i++)
            if (check_list(&st->ins[i], &M->roles[s], K, s, -1, "program", d))
                return -1;
    }
    return 0;
}
