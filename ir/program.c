/* program.c: instruction streams, and the verifier that runs them all.
 *
 * The verifier steps every rank of the layout through its stage's program
 * with rendezvous semantics: compute always proceeds; a P2P group is done
 * when each of its transfers has met its counterpart (posted by the peer at
 * the same time, same tensor, micro-batch, chunks and bytes); a collective is
 * done when every member of its group has entered the same one.  If a sweep
 * over all ranks moves nothing while some have not finished, no order of
 * events can finish them: the schedule hangs, and the waits are reported. */
#include "program.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *coll_names[] = {
#define X(id, name) name,
    IR_COLLS(X)
#undef X
};
static const char *group_names[] = {
#define X(id, name, kind) name,
    IR_GROUPS(X)
#undef X
};
static const int group_kinds[] = {
#define X(id, name, kind) kind,
    IR_GROUPS(X)
#undef X
};
static const char *sched_names[] = {
#define X(id, name) name,
    IR_SCHEDULES(X)
#undef X
};

const char *ir_coll_name(enum ir_coll c) { return coll_names[c]; }
const char *ir_group_name(enum ir_group g) { return group_names[g]; }
int ir_group_layout_kind(enum ir_group g) { return g < IR_GROUP_COUNT ? group_kinds[g] : -1; }

int ir_group_of_pdim(int pdim)
{
    switch (pdim) {
    case IR_PDIM_TP: return IR_GROUP_TP;
    case IR_PDIM_CP: return IR_GROUP_CP;
    case IR_PDIM_EP: return IR_GROUP_EP;
    case IR_PDIM_XTP: return IR_GROUP_EXPERT_TP;
    default: return -1;
    }
}
const char *ir_sched_name(enum ir_sched_kind k) { return sched_names[k]; }

int ir_sched_parse(const char *s)
{
    for (int i = 0; i < IR_SCHED_COUNT; i++)
        if (!strcmp(sched_names[i], s))
            return i;
    return -1;
}

void ir_program_push(struct ir_program *p, const struct ir_ins *ins)
{
    WF_GROW(p->ins, p->n, p->cap);
    struct ir_ins *x = &p->ins[p->n++];
    *x = *ins;
    x->p2p = NULL;
    if (ins->n_p2p > 0) {
        x->p2p = wf_calloc((size_t)ins->n_p2p, sizeof *x->p2p);
        memcpy(x->p2p, ins->p2p, (size_t)ins->n_p2p * sizeof *x->p2p);
    }
}

/* Frees what there is: a schedule a reader abandoned half built included. */
void ir_schedule_free(struct ir_schedule *S)
{
    for (int s = 0; S->programs && s < S->n_stages; s++) {
        for (int i = 0; i < S->programs[s].n; i++)
            free(S->programs[s].ins[i].p2p);
        free(S->programs[s].ins);
    }
    free(S->programs);
    free(S->chunk_stage);
    for (int t = 0; S->tied_stages && t < S->n_tied; t++)
        free(S->tied_stages[t]);
    free(S->tied_stages);
    memset(S, 0, sizeof *S);
}

char *ir_ins_str(const struct ir_ins *ins, char *buf, size_t n)
{
    size_t len = 0;
    switch (ins->kind) {
    case IR_INS_FORWARD:
    case IR_INS_BACKWARD:
        snprintf(buf, n, "%s virtual stage %d, micro-batch %d", ins->kind == IR_INS_FORWARD ? "forward" : "backward",
                 ins->vstage, ins->micro);
        break;
    case IR_INS_P2P:
        for (int i = 0; i < ins->n_p2p && len < n; i++) {
            const struct ir_p2p *p = &ins->p2p[i];
            len += (size_t)snprintf(buf + len, n - len, "%s%s %s %d of chunk %d micro-batch %d %s chunk %d (%" PRId64 " B)",
                                    i ? "; " : "", p->send ? "send" : "receive", p->grad ? "gradient" : "activation",
                                    p->tensor, p->send ? p->chunk : p->peer_chunk, p->micro, p->send ? "to" : "for",
                                    p->send ? p->peer_chunk : p->chunk, p->bytes);
        }
        break;
    case IR_INS_COLLECTIVE:
        snprintf(buf, n, "%s over %s #%d (%" PRId64 " B)", coll_names[ins->coll], group_names[ins->group], ins->tag,
                 ins->bytes);
        break;
    case IR_INS_OPTIMIZER:
        snprintf(buf, n, "optimizer step");
        break;
    }
    return buf;
}

/* Append q to out[0..n) unless it is there or out is full; the new count. */
static int add_once(int *out, int n, int max, int q)
{
    for (int i = 0; i < n; i++)
        if (out[i] == q)
            return n;
    if (n < max)
        out[n++] = q;
    return n;
}

int ir_p2p_peers(const struct ir_schedule *S, const struct rank_layout *L, int r, int chunk, int *out, int max)
{
    const struct rank_groups *pp = &L->groups[PAR_GROUP_PP];
    int stage = S->chunk_stage[chunk], n = 0;
    for (int g = 0; g < pp->n_groups; g++) {
        bool mine = false;
        for (int s = 0; s < pp->sizes[g]; s++)
            mine |= pp->ranks[g][s] == r;
        if (!mine || stage >= pp->sizes[g])
            continue;
        int q = pp->ranks[g][stage];
        n = add_once(out, n, max, q);
    }
    return n;
}

int *ir_pp_components(const struct rank_layout *L)
{
    const struct rank_groups *pp = &L->groups[PAR_GROUP_PP];
    int *component = wf_calloc((size_t)pp->n_groups + 1, sizeof *component), *first = wf_calloc((size_t)L->n_ranks + 1, sizeof *first);
    for (int g = 0; g < pp->n_groups; g++)
        component[g] = g;
    for (int r = 0; r < L->n_ranks; r++)
        first[r] = -1;
    for (bool changed = true; changed;) { /* a rank in two pipelines joins their components, the smaller index wins */
        changed = false;
        for (int g = 0; g < pp->n_groups; g++)
            for (int s = 0; s < pp->sizes[g]; s++) {
                int q = pp->ranks[g][s];
                if (first[q] < 0)
                    first[q] = g;
                int a = component[first[q]], b = component[g];
                if (a == b)
                    continue;
                int lo = a < b ? a : b;
                for (int h = 0; h < pp->n_groups; h++)
                    if (component[h] == a || component[h] == b)
                        component[h] = lo;
                changed = true;
            }
    }
    free(first);
    return component;
}

bool ir_tied_contributes(const struct rank_layout *L, const int *component, int r)
{
    const struct rank_groups *pp = &L->groups[PAR_GROUP_PP];
    int c = component[rank_layout_group_of(L, PAR_GROUP_PP, r)];
    for (int g = 0; g < pp->n_groups; g++) /* the first rank, in the groups' order, at r's stage of r's component */
        for (int s = 0; component[g] == c && s < pp->sizes[g]; s++)
            if (L->ranks[pp->ranks[g][s]].stage == L->ranks[r].stage)
                return pp->ranks[g][s] == r;
    return true;
}

/* ---- the verifier ---------------------------------------------------------------- */

struct vrank {
    int pc;
    int waits_for;                /* the rank this one waits on, for the diagnosis */
    double clock;                 /* timed runs: when the current instruction was reached */
    double done_at;               /* timed runs: when the current P2P group's transfers end */
};

struct verifier {
    const struct ir_schedule *S;
    const struct rank_layout *L;
    const struct ir_costs *costs; /* NULL: verify only */
    struct ir_timeline *tl;
    int *row;                     /* per rank: its row in the timeline, -1 if not drawn */
    struct diag *d;
    struct vrank *r;
    int **pp_of;   /* per rank: the pp groups holding it, -1 ended */
    int *component; /* per pp group: pipelines joined by a shared (encoder) rank */
    int *group_of[IR_GROUP_COUNT];
    int *leader[IR_GROUP_COUNT]; /* per group: its smallest rank, which runs the collective for all */
    /* Sized by the layout, never by a guess: a group has at most n_ranks
     * members, a rank at most max_peers peers (the pp groups holding it). */
    int max_peers, max_p2p; /* the most peers of a rank; the most transfers of a P2P group */
    int *buf, *mine; /* [n_ranks]: a group's members, or a transfer's peers */
    int *back;       /* [max_peers]: the peers of the other end */
    uint8_t *met;    /* [n_ranks][max_p2p][max_peers]: per transfer of a rank's current P2P, the peers met */
};

static uint8_t *met_of(const struct verifier *v, int r, int transfer)
{
    return v->met + ((size_t)r * (size_t)v->max_p2p + (size_t)transfer) * (size_t)v->max_peers;
}

static const struct ir_ins *cur(const struct verifier *v, int r)
{
    const struct ir_program *p = &v->S->programs[v->L->ranks[r].stage];
    return v->r[r].pc < p->n ? &p->ins[v->r[r].pc] : NULL;
}

/* The ranks at the stage of `chunk` in r's pipelines (one, or several where
 * an encoder rank feeds several decoder ranks). */
static int peers(const struct verifier *v, int r, int chunk, int *out, int max)
{
    int stage = v->S->chunk_stage[chunk], n = 0;
    const struct rank_groups *pp = &v->L->groups[PAR_GROUP_PP];
    for (int k = 0; v->pp_of[r][k] >= 0; k++) {
        int g = v->pp_of[r][k];
        if (stage >= pp->sizes[g])
            continue;
        int q = pp->ranks[g][stage];
        n = add_once(out, n, max, q);
    }
    return n;
}

static bool counterpart(const struct ir_p2p *a, const struct ir_p2p *b)
{
    return a->send != b->send && a->grad == b->grad && a->tensor == b->tensor && a->micro == b->micro &&
           a->chunk == b->peer_chunk && a->peer_chunk == b->chunk;
}

/* The members of r's group of a kind, into out. */
static int members(const struct verifier *v, int r, const struct ir_ins *ins, int *out, int max)
{
    if (ins->group == IR_GROUP_TIED) {
        const struct rank_groups *pp = &v->L->groups[PAR_GROUP_PP];
        int comp = v->component[v->pp_of[r][0]], n = 0;
        for (int g = 0; g < pp->n_groups; g++) {
            if (v->component[g] != comp)
                continue;
            for (int s = 0; s < pp->sizes[g]; s++) {
                int q = pp->ranks[g][s];
                if (!v->S->tied_stages[ins->tag][v->L->ranks[q].stage])
                    continue;
                n = add_once(out, n, max, q);
            }
        }
        return n;
    }
    const struct rank_groups *G = &v->L->groups[ir_group_layout_kind(ins->group)];
    int g = v->group_of[ins->group][r];
    int n = 0;
    for (int i = 0; g >= 0 && i < G->sizes[g] && n < max; i++)
        out[n++] = G->ranks[g][i];
    return n;
}

static void where(const struct verifier *v, int r, char *buf, size_t n)
{
    const struct rank_coords *c = &v->L->ranks[r];
    char ins[512] = "finished";
    if (cur(v, r))
        ir_ins_str(cur(v, r), ins, sizeof ins);
    snprintf(buf, n, "rank %d (%s stage %d, tp %d, dp %d) at instruction %d: %s", r, ir_part_name(c->part), c->stage,
             c->tp, c->dp, v->r[r].pc, ins);
}

static bool inter_node(const struct verifier *v, const int *ranks, int n)
{
    int per = v->costs->ranks_per_node > 0 ? v->costs->ranks_per_node : 8;
    for (int i = 1; i < n; i++)
        if (ranks[i] / per != ranks[0] / per)
            return true;
    return false;
}

static void span(struct verifier *v, int r, double start, double end, const struct ir_ins *ins)
{
    if (!v->tl || v->row[r] < 0)
        return;
    struct ir_timeline *t = v->tl;
    WF_GROW(t->spans, t->n_spans, t->cap_spans);
    t->spans[t->n_spans++] = (struct ir_span){v->row[r], start, end, ins};
}

/* Rank r finishes its current instruction at time `end`. */
static void advance(struct verifier *v, int r, double end)
{
    struct vrank *me = &v->r[r];
    const struct ir_ins *ins = cur(v, r);
    if (v->costs)
        span(v, r, me->clock, end, ins);
    me->clock = end;
    me->done_at = 0;
    me->pc++;
}

/* One step of rank r if it can make one; -1 on a definite error. */
static int step(struct verifier *v, int r, bool *moved)
{
    const struct ir_ins *ins = cur(v, r);
    struct vrank *me = &v->r[r];
    int *buf = v->buf;
    if (!ins)
        return 0;
    switch (ins->kind) {
    case IR_INS_FORWARD:
    case IR_INS_BACKWARD:
    case IR_INS_OPTIMIZER: {
        double t = v->costs ? v->costs->compute(v->costs->ctx, v->L->ranks[r].stage, ins) : 0;
        if (v->tl)
            (ins->kind == IR_INS_OPTIMIZER ? v->tl->optimizer : v->tl->busy)[r] += t;
        advance(v, r, me->clock + t);
        *moved = true;
        return 0;
    }
    case IR_INS_P2P: {
        bool done = true;
        for (int i = 0; i < ins->n_p2p; i++) {
            int np = peers(v, r, ins->p2p[i].peer_chunk, buf, v->max_peers);
            uint8_t *got = met_of(v, r, i); /* the peers met so far */
            if (np == 0) {
                char a[1024];
                where(v, r, a, sizeof a);
                diag_error(v->d, NULL, 0, "schedule: %s: no rank runs chunk %d in this rank's pipeline", a,
                           ins->p2p[i].peer_chunk);
                return -1;
            }
            for (int k = 0; k < np; k++) {
                if (got[k])
                    continue;
                int q = buf[k];
                const struct ir_ins *other = cur(v, q);
                bool met = false;
                for (int j = 0; other && other->kind == IR_INS_P2P && j < other->n_p2p && !met; j++) {
                    if (!counterpart(&ins->p2p[i], &other->p2p[j]))
                        continue;
                    if (other->p2p[j].bytes != ins->p2p[i].bytes) {
                        char a[1024], b[1024];
                        where(v, r, a, sizeof a);
                        where(v, q, b, sizeof b);
                        diag_error(v->d, NULL, 0, "schedule: sizes differ: %s; but %s", a, b);
                        return -1;
                    }
                    met = true;
                    /* mark r met in the counterpart's transfer */
                    int nb = peers(v, q, other->p2p[j].peer_chunk, v->back, v->max_peers);
                    for (int m = 0; m < nb; m++)
                        if (v->back[m] == r)
                            met_of(v, q, j)[m] = 1;
                }
                if (met) {
                    got[k] = 1;
                    *moved = true;
                    if (v->costs) { /* both have posted: the transfer runs from the later post */
                        int pair[2] = {r, q};
                        double start = me->clock > v->r[q].clock ? me->clock : v->r[q].clock;
                        double end = start + v->costs->comm(v->costs->ctx, ins, i, 2, inter_node(v, pair, 2));
                        me->done_at = end > me->done_at ? end : me->done_at;
                        v->r[q].done_at = end > v->r[q].done_at ? end : v->r[q].done_at;
                    }
                } else {
                    done = false;
                    me->waits_for = q;
                }
            }
        }
        if (done) {
            memset(met_of(v, r, 0), 0, (size_t)v->max_p2p * (size_t)v->max_peers);
            double end = me->done_at > me->clock ? me->done_at : me->clock;
            if (v->tl)
                v->tl->waiting[r] += end - me->clock;
            advance(v, r, end);
            *moved = true;
        }
        return 0;
    }
    case IR_INS_COLLECTIVE: {
        if (ins->group != IR_GROUP_TIED && v->group_of[ins->group][r] >= 0 &&
            v->leader[ins->group][v->group_of[ins->group][r]] != r)
            return 0; /* its smallest member decides for the group (without listing it) */
        int n = members(v, r, ins, buf, v->L->n_ranks);
        bool member = false;
        for (int i = 0; i < n; i++)
            member |= buf[i] == r;
        if (!member) { /* e.g. an expert collective on an encoder rank: it could never finish */
            char a[1024];
            where(v, r, a, sizeof a);
            diag_error(v->d, NULL, 0, "schedule: %s: the rank is in no %s group", a, group_names[ins->group]);
            return -1;
        }
        for (int i = 0; i < n; i++)
            if (buf[i] < r)
                return 0; /* its smallest member decides for the group */
        for (int i = 0; i < n; i++) {
            const struct ir_ins *o = cur(v, buf[i]);
            if (o && o->kind == IR_INS_COLLECTIVE && o->group == ins->group &&
                (o->tag != ins->tag || o->coll != ins->coll || o->bytes != ins->bytes)) {
                char a[1024], b[1024];
                where(v, r, a, sizeof a);
                where(v, buf[i], b, sizeof b);
                diag_error(v->d, NULL, 0, "schedule: one %s group enters different collectives: %s; but %s",
                           group_names[ins->group], a, b);
                return -1;
            }
            if (!o || o->kind != IR_INS_COLLECTIVE || o->group != ins->group) {
                me->waits_for = buf[i];
                return 0;
            }
        }
        /* Every member is here; each must see the same group, or it is not one group. */
        for (int i = 0; i < n; i++) {
            int m = members(v, buf[i], cur(v, buf[i]), v->mine, v->L->n_ranks);
            if (m != n) {
                char a[1024], b[1024];
                where(v, r, a, sizeof a);
                where(v, buf[i], b, sizeof b);
                diag_error(v->d, NULL, 0, "schedule: ranks disagree on a %s group (%d and %d members): %s; and %s",
                           group_names[ins->group], n, m, a, b);
                return -1;
            }
        }
        double start = 0, end;
        for (int i = 0; i < n; i++)
            start = v->r[buf[i]].clock > start ? v->r[buf[i]].clock : start;
        end = start + (v->costs && n > 1 ? v->costs->comm(v->costs->ctx, ins, 0, n, inter_node(v, buf, n)) : 0);
        for (int i = 0; i < n; i++) {
            if (v->tl) {
                v->tl->waiting[buf[i]] += start - v->r[buf[i]].clock;
                v->tl->coll[(size_t)buf[i] * IR_GROUP_COUNT + ins->group] += end - start;
            }
            if (v->costs) /* a member that arrived early waits: draw the collective from the common start */
                v->r[buf[i]].clock = start;
            advance(v, buf[i], end);
        }
        *moved = true;
        return 0;
    }
    }
    return 0;
}

static void diagnose(struct verifier *v)
{
    int first = -1;
    for (int r = 0; r < v->L->n_ranks && first < 0; r++)
        if (cur(v, r))
            first = r;
    char a[1024];
    diag_error(v->d, NULL, 0, "schedule: it hangs: no rank can move; the waits:");
    /* Follow who waits on whom until a rank repeats (the cycle) or 8 steps. */
    int seen[9], n = 0, r = first;
    while (r >= 0 && n < 8) {
        for (int i = 0; i < n; i++)
            if (seen[i] == r) {
                diag_note(v->d, NULL, 0, "... and so on around: rank %d waits again", r);
                return;
            }
        seen[n++] = r;
        where(v, r, a, sizeof a);
        int q = v->r[r].waits_for;
        char b[64] = "";
        if (q >= 0)
            snprintf(b, sizeof b, ", waiting for rank %d", q);
        diag_note(v->d, NULL, 0, "%s%s", a, b);
        r = cur(v, q >= 0 ? q : r) ? q : -1;
    }
}

/* Before running anything: every transfer has exactly one counterpart in
 * its peer stage's program, else say which is missing.  All transfers are
 * sorted by what they move, so a pair lands side by side. */
struct half {
    int tensor, micro, lo, hi; /* the chunk pair, lower first */
    bool grad, send;
    int stage, ins, k;
};

static int half_cmp(const void *pa, const void *pb)
{
    const struct half *a = pa, *b = pb;
#define CMP(f)                                                                 \
    if (a->f != b->f)                                                          \
        return a->f < b->f ? -1 : 1;
    CMP(tensor) CMP(micro) CMP(grad) CMP(lo) CMP(hi) CMP(send) CMP(stage) CMP(ins) CMP(k)
#undef CMP
    return 0;
}

static bool same_transfer(const struct half *a, const struct half *b)
{
    return a->tensor == b->tensor && a->micro == b->micro && a->grad == b->grad && a->lo == b->lo && a->hi == b->hi;
}

static int check_pairs(const struct ir_schedule *S, struct diag *d)
{
    int n = 0, cap = 0, errors = 0;
    struct half *h = NULL;
    for (int s = 0; s < S->n_stages; s++)
        for (int i = 0; i < S->programs[s].n; i++) {
            const struct ir_ins *ins = &S->programs[s].ins[i];
            for (int k = 0; ins->kind == IR_INS_P2P && k < ins->n_p2p; k++) {
                const struct ir_p2p *x = &ins->p2p[k];
                WF_GROW(h, n, cap);
                h[n++] = (struct half){x->tensor, x->micro, x->chunk < x->peer_chunk ? x->chunk : x->peer_chunk,
                                       x->chunk < x->peer_chunk ? x->peer_chunk : x->chunk, x->grad, x->send, s, i, k};
            }
        }
    if (n)
        qsort(h, (size_t)n, sizeof *h, half_cmp);
    for (int i = 0; i < n && errors < 8;) {
        int j = i, sends = 0, recvs = 0;
        while (j < n && same_transfer(&h[i], &h[j])) {
            sends += h[j].send;
            recvs += !h[j].send;
            j++;
        }
        if (sends != 1 || recvs != 1) {
            const struct ir_p2p *x = &S->programs[h[i].stage].ins[h[i].ins].p2p[h[i].k];
            char what[512];
            ir_ins_str(&(struct ir_ins){.kind = IR_INS_P2P, .n_p2p = 1, .p2p = (struct ir_p2p *)x}, what, sizeof what);
            int t = x->peer_chunk >= 0 && x->peer_chunk < S->n_chunks ? S->chunk_stage[x->peer_chunk] : -1;
            diag_error(d, NULL, 0, "schedule: stage %d, instruction %d: %s; but stage %d %s", h[i].stage, h[i].ins, what,
                       t, sends > 1 || recvs > 1 ? "has more than one counterpart"
                                                 : x->send ? "never receives it" : "never sends it");
            errors++;
        }
        i = j;
    }
    free(h);
    return errors ? -1 : 0;
}

/* Every stage runs the forward of each (virtual stage, micro-batch) once
 * and, when training, its backward once after it, then the optimizer once;
 * forward only, nothing else. */
static int check_steps(const struct ir_schedule *S, struct diag *d)
{
    int v = S->virtual_stages, m = S->n_micro, errors = 0;
    if (v < 1 || m < 1 || (int64_t)v * m > 1 << 24) {
        diag_error(d, NULL, 0, "schedule: %d virtual stages of %d micro-batches", v, m);
        return -1;
    }
    uint8_t *seen = wf_calloc((size_t)v * (size_t)m, 1); /* 1: forward run, 2: and backward */
    for (int s = 0; s < S->n_stages && errors < 8; s++) {
        const struct ir_program *prog = &S->programs[s];
        memset(seen, 0, (size_t)v * (size_t)m);
        int updates = 0;
        for (int i = 0; i < prog->n && errors < 8; i++) {
            const struct ir_ins *x = &prog->ins[i];
            if (x->kind == IR_INS_OPTIMIZER)
                updates++;
            if (x->kind != IR_INS_FORWARD && x->kind != IR_INS_BACKWARD)
                continue;
            bool fwd = x->kind == IR_INS_FORWARD;
            const char *wrong = x->vstage < 0 || x->vstage >= v || x->micro < 0 || x->micro >= m ? "outside the step"
                                : !fwd && S->forward_only                                   ? "in a forward-only step"
                                : fwd && seen[x->vstage * m + x->micro]                     ? "run twice"
                                : !fwd && seen[x->vstage * m + x->micro] != 1 ? "not after exactly one forward"
                                                                              : NULL;
            if (wrong) {
                diag_error(d, NULL, 0, "schedule: stage %d, instruction %d: %s of virtual stage %d, micro-batch %d %s", s,
                           i, fwd ? "forward" : "backward", x->vstage, x->micro, wrong);
                errors++;
                continue;
            }
            seen[x->vstage * m + x->micro] = fwd ? 1 : 2;
        }
        for (int k = 0; k < v * m && errors < 8; k++)
            if (seen[k] != (S->forward_only ? 1 : 2)) {
                diag_error(d, NULL, 0, "schedule: stage %d never runs the %s of virtual stage %d, micro-batch %d", s,
                           seen[k] ? "backward" : "forward", k / m, k % m);
                errors++;
            }
        if (updates != (S->forward_only ? 0 : 1) && errors < 8) {
            diag_error(d, NULL, 0, "schedule: stage %d updates its parameters %d time%s%s", s, updates,
                       updates == 1 ? "" : "s", S->forward_only ? " in a forward-only step" : "; a training step updates once");
            errors++;
        }
    }
    free(seen);
    return errors ? -1 : 0;
}

void ir_timeline_free(struct ir_timeline *t)
{
    free(t->busy);
    free(t->optimizer);
    free(t->waiting);
    free(t->coll);
    free(t->finish);
    free(t->spans);
    memset(t, 0, sizeof *t);
}

double ir_timeline_idle(const struct ir_timeline *t, int r) { return t->waiting[r] + (t->step_time - t->finish[r]); }

int ir_schedule_verify(const struct ir_schedule *S, const struct rank_layout *L, struct diag *d)
{
    return ir_schedule_run(S, L, NULL, NULL, d);
}

int ir_schedule_run(const struct ir_schedule *S, const struct rank_layout *L, const struct ir_costs *costs,
                    struct ir_timeline *tl, struct diag *d)
{
    if (check_steps(S, d) || check_pairs(S, d))
        return -1;
    struct verifier v = {.S = S, .L = L, .costs = costs, .tl = costs ? tl : NULL, .d = d,
                         .r = wf_calloc((size_t)L->n_ranks, sizeof *v.r)};
    v.row = wf_calloc((size_t)L->n_ranks, sizeof *v.row);
    for (int r = 0; r < L->n_ranks; r++)
        v.row[r] = -1;
    if (v.tl) { /* draw the first pipeline: one row per stage */
        memset(v.tl, 0, sizeof *v.tl);
        v.tl->busy = wf_calloc((size_t)L->n_ranks, sizeof *v.tl->busy);
        v.tl->optimizer = wf_calloc((size_t)L->n_ranks, sizeof *v.tl->optimizer);
        v.tl->waiting = wf_calloc((size_t)L->n_ranks, sizeof *v.tl->waiting);
        v.tl->coll = wf_calloc((size_t)L->n_ranks * IR_GROUP_COUNT, sizeof *v.tl->coll);
        v.tl->finish = wf_calloc((size_t)L->n_ranks, sizeof *v.tl->finish);
        const struct rank_groups *g0 = &L->groups[PAR_GROUP_PP];
        for (int s = 0; s < g0->sizes[0]; s++)
            v.row[g0->ranks[0][s]] = s;
    }
    const struct rank_groups *pp = &L->groups[PAR_GROUP_PP];
    v.pp_of = wf_calloc((size_t)L->n_ranks, sizeof *v.pp_of);
    int *count = wf_calloc((size_t)L->n_ranks, sizeof *count);
    for (int g = 0; g < pp->n_groups; g++)
        for (int s = 0; s < pp->sizes[g]; s++)
            count[pp->ranks[g][s]]++;
    v.max_peers = 1;
    for (int r = 0; r < L->n_ranks; r++)
        v.max_peers = count[r] > v.max_peers ? count[r] : v.max_peers;
    v.buf = wf_calloc((size_t)L->n_ranks, sizeof *v.buf);
    v.mine = wf_calloc((size_t)L->n_ranks, sizeof *v.mine);
    v.back = wf_calloc((size_t)v.max_peers, sizeof *v.back);
    v.max_p2p = 1;
    for (int s = 0; s < S->n_stages; s++)
        for (int i = 0; i < S->programs[s].n; i++)
            v.max_p2p = S->programs[s].ins[i].n_p2p > v.max_p2p ? S->programs[s].ins[i].n_p2p : v.max_p2p;
    v.met = wf_calloc((size_t)L->n_ranks * (size_t)v.max_p2p * (size_t)v.max_peers, 1);
    for (int r = 0; r < L->n_ranks; r++) {
        v.pp_of[r] = wf_calloc((size_t)count[r] + 1, sizeof **v.pp_of);
        v.pp_of[r][count[r]] = -1;
        count[r] = 0;
        v.r[r].waits_for = -1;
    }
    for (int g = 0; g < pp->n_groups; g++)
        for (int s = 0; s < pp->sizes[g]; s++) {
            int q = pp->ranks[g][s];
            v.pp_of[q][count[q]++] = g;
        }
    v.component = ir_pp_components(L);
    for (int k = 0; k < IR_GROUP_COUNT; k++) {
        if (k == IR_GROUP_TIED)
            continue;
        v.group_of[k] = wf_calloc((size_t)L->n_ranks, sizeof *v.group_of[k]);
        for (int r = 0; r < L->n_ranks; r++)
            v.group_of[k][r] = -1;
        const struct rank_groups *G = &L->groups[ir_group_layout_kind((enum ir_group)k)];
        v.leader[k] = wf_calloc((size_t)G->n_groups + 1, sizeof *v.leader[k]);
        for (int g = 0; g < G->n_groups; g++) {
            v.leader[k][g] = G->sizes[g] ? G->ranks[g][0] : -1;
            for (int i = 0; i < G->sizes[g]; i++) {
                v.group_of[k][G->ranks[g][i]] = g;
                v.leader[k][g] = G->ranks[g][i] < v.leader[k][g] ? G->ranks[g][i] : v.leader[k][g];
            }
        }
    }
    int rc = 0;
    for (;;) {
        bool moved = false, left = false;
        for (int r = 0; r < L->n_ranks && rc == 0; r++) {
            if (cur(&v, r))
                left = true;
            rc = step(&v, r, &moved);
        }
        if (rc || !left)
            break;
        if (!moved) {
            diagnose(&v);
            rc = -1;
            break;
        }
    }
    if (v.tl)
        for (int r = 0; r < L->n_ranks; r++) {
            v.tl->finish[r] = v.r[r].clock;
            v.tl->step_time = v.r[r].clock > v.tl->step_time ? v.r[r].clock : v.tl->step_time;
        }
    free(v.row);
    for (int r = 0; r < L->n_ranks; r++)
        free(v.pp_of[r]);
    for (int k = 0; k < IR_GROUP_COUNT; k++) {
        free(v.group_of[k]);
        free(v.leader[k]);
    }
    free(v.pp_of);
    free(v.buf);
    free(v.mine);
    free(v.back);
    free(v.met);
    free(v.component);
    free(count);
    free(v.r);
    return rc;
}
