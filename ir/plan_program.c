/* plan_program.c: the layout and the schedule in a plan file. */
#include "plan.h"
#include "program.h"
#include "util.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The fields of par_config as stored, in order; a new field goes at the end
 * (with a minor version bump). */
#define LAYOUT_FIELDS(X)                                                       \
    X(world_size) X(tp) X(pp) X(cp) X(ep) X(expert_tp) X(etp) X(epp)           \
    X(layers_per_virtual_stage) X(micro_batch) X(global_batch)                 \
    X(first_stage_layers) X(last_stage_layers) X(vocab_divisible_by) X(dp)      \
    X(expert_dp) X(encoder_world) X(decoder_world)

void ir_layout_write(struct plan_writer *w, const struct par_config *pc, bool has_encoder)
{
    plan_section(w, "layout");
#define X(f) plan_put_i32(w, pc->f);
    LAYOUT_FIELDS(X)
#undef X
    plan_put_u8(w, pc->sequence_parallel);
    plan_put_u8(w, pc->balance_pipeline);
    plan_put_u8(w, has_encoder);
    plan_put_u8(w, pc->bf16);
    plan_put_u8(w, pc->grad_reduce_in_bf16); /* 5.2 */
    plan_put_i32(w, pc->ddp_bucket_size);    /* 5.3 */
}

int ir_layout_read(struct plan *p, struct par_config *pc, bool *has_encoder, struct diag *d)
{
    struct plan_reader r;
    if (plan_read(p, "layout", &r, d))
        return -1;
    *pc = par_config_default();
#define X(f) pc->f = plan_get_i32(&r);
    LAYOUT_FIELDS(X)
#undef X
    pc->sequence_parallel = plan_get_u8(&r);
    pc->balance_pipeline = plan_get_u8(&r);
    *has_encoder = plan_get_u8(&r);
    /* Fields added later are read when present (older plans lack them). */
    pc->bf16 = r.at < r.end ? plan_get_u8(&r) : false;
    pc->grad_reduce_in_bf16 = r.at < r.end ? plan_get_u8(&r) : false;
    pc->ddp_bucket_size = r.at < r.end ? plan_get_i32(&r) : 0;
    if (r.bad) {
        diag_error(d, NULL, 0, "plan section 'layout' is shorter than its fields: the plan is corrupted");
        return -1;
    }
    /* A plan's layout is data: bound it before anything allocates by it. */
    const int most = 1 << 20;
    if (pc->world_size < 1 || pc->world_size > most || pc->tp > most || pc->pp > most || pc->cp > most ||
        pc->ep > most || pc->etp > most || pc->epp > most || pc->expert_tp > most || pc->dp > most) {
        diag_error(d, NULL, 0, "plan section 'layout': sizes out of range (world %d): the plan is corrupted",
                   pc->world_size);
        return -1;
    }
    return 0;
}

void ir_schedule_write(struct plan_writer *w, const struct ir_schedule *S)
{
    plan_section(w, "schedule");
    plan_put_u32(w, S->kind);
    plan_put_u32(w, S->forward_only);
    plan_put_u32(w, (uint32_t)S->n_stages);
    plan_put_u32(w, (uint32_t)S->n_micro);
    plan_put_u32(w, (uint32_t)S->virtual_stages);
    plan_put_u32(w, (uint32_t)S->n_chunks);
    for (int c = 0; c < S->n_chunks; c++)
        plan_put_i32(w, S->chunk_stage[c]);
    plan_put_u32(w, (uint32_t)S->n_tied);
    for (int t = 0; t < S->n_tied; t++)
        for (int s = 0; s < S->n_stages; s++)
            plan_put_u8(w, S->tied_stages[t][s]);
    for (int s = 0; s < S->n_stages; s++) {
        char name[PLAN_NAME_MAX];
        snprintf(name, sizeof name, "program.%d", s);
        plan_section(w, name);
        const struct ir_program *prog = &S->programs[s];
        plan_put_u32(w, (uint32_t)prog->n);
        for (int i = 0; i < prog->n; i++) {
            const struct ir_ins *x = &prog->ins[i];
            plan_put_u8(w, (uint8_t)x->kind);
            plan_put_i32(w, x->vstage);
            plan_put_i32(w, x->micro);
            WF_ASSERT(x->n_p2p <= IR_MAX_P2P); /* schedule_build refuses more */
            plan_put_u8(w, (uint8_t)x->n_p2p);
            for (int k = 0; k < x->n_p2p; k++) {
                const struct ir_p2p *q = &x->p2p[k];
                plan_put_u8(w, q->send);
                plan_put_u8(w, q->grad);
                plan_put_i32(w, q->tensor);
                plan_put_i32(w, q->chunk);
                plan_put_i32(w, q->peer_chunk);
                plan_put_i32(w, q->micro);
                plan_put_i64(w, q->bytes);
            }
            plan_put_u8(w, (uint8_t)x->coll);
            plan_put_u8(w, (uint8_t)x->group);
            plan_put_i32(w, x->tag);
            plan_put_i64(w, x->bytes);
        }
    }
}

static int bad(struct diag *d, const char *section, const char *what)
{
    diag_error(d, NULL, 0, "plan section '%s': %s: the plan is corrupted", section, what);
    return -1;
}

int ir_schedule_read(struct plan *p, int stage, struct ir_schedule *S, struct diag *d)
{
    memset(S, 0, sizeof *S);
    struct plan_reader r;
    if (plan_read(p, "schedule", &r, d))
        return -1;
    S->kind = (enum ir_sched_kind)plan_get_u32(&r);
    uint32_t forward_only = plan_get_u32(&r);
    S->forward_only = forward_only == 1;
    S->n_stages = (int)plan_get_u32(&r);
    S->n_micro = (int)plan_get_u32(&r);
    S->virtual_stages = (int)plan_get_u32(&r);
    S->n_chunks = (int)plan_get_u32(&r);
    if (r.bad || S->kind >= IR_SCHED_COUNT || forward_only > 1 || S->n_stages < 1 || S->n_stages > 1 << 16 || S->n_chunks < 1 ||
        S->n_chunks > 1 << 20) {
        memset(S, 0, sizeof *S);
        return bad(d, "schedule", "impossible counts");
    }
    S->chunk_stage = wf_calloc((size_t)S->n_chunks, sizeof *S->chunk_stage);
    for (int c = 0; c < S->n_chunks; c++) {
        S->chunk_stage[c] = plan_get_i32(&r);
        if (S->chunk_stage[c] < 0 || S->chunk_stage[c] >= S->n_stages)
            r.bad = true;
    }
    S->n_tied = (int)plan_get_u32(&r);
    if (r.bad || S->n_tied < 0 || S->n_tied > 1 << 16 || (int64_t)S->n_tied * S->n_stages > r.end - r.at) {
        /* each tied set is a byte per stage: no more sets than the section has bytes for */
        S->n_tied = 0;
        ir_schedule_free(S);
        return bad(d, "schedule", "a chunk's stage or the tied sets");
    }
    S->tied_stages = wf_calloc((size_t)S->n_tied + 1, sizeof *S->tied_stages);
    for (int t = 0; t < S->n_tied; t++) {
        S->tied_stages[t] = wf_calloc((size_t)S->n_stages, 1);
        for (int s = 0; s < S->n_stages; s++)
            S->tied_stages[t][s] = plan_get_u8(&r);
    }
    S->programs = wf_calloc((size_t)S->n_stages, sizeof *S->programs);
    for (int s = 0; s < S->n_stages; s++) {
        S->programs[s].stage = s;
        if (stage >= 0 && s != stage)
            continue; /* a rank reads only its own stage's program */
        char name[PLAN_NAME_MAX];
        snprintf(name, sizeof name, "program.%d", s);
        struct plan_reader q;
        if (plan_read(p, name, &q, d)) {
            ir_schedule_free(S);
            return -1;
        }
        uint32_t n = plan_get_u32(&q);
        if (n > (uint32_t)((q.end - q.at) / 10)) {
            ir_schedule_free(S);
            return bad(d, name, "more instructions than the section can hold");
        }
        struct ir_p2p xfers[IR_MAX_P2P]; /* the file's limit: n_p2p is a byte */
        for (uint32_t i = 0; i < n && !q.bad; i++) {
            struct ir_ins x = {.p2p = xfers};
            x.kind = (enum ir_ins_kind)plan_get_u8(&q);
            x.vstage = plan_get_i32(&q);
            x.micro = plan_get_i32(&q);
            x.n_p2p = plan_get_u8(&q);
            if (x.kind > IR_INS_OPTIMIZER || x.n_p2p > IR_MAX_P2P) {
                q.bad = true;
                break;
            }
            for (int k = 0; k < x.n_p2p; k++) {
                struct ir_p2p *y = &x.p2p[k];
                y->send = plan_get_u8(&q);
                y->grad = plan_get_u8(&q);
                y->tensor = plan_get_i32(&q);
                y->chunk = plan_get_i32(&q);
                y->peer_chunk = plan_get_i32(&q);
                y->micro = plan_get_i32(&q);
                y->bytes = plan_get_i64(&q);
                if (y->chunk < 0 || y->chunk >= S->n_chunks || y->peer_chunk < 0 || y->peer_chunk >= S->n_chunks)
                    q.bad = true;
            }
            x.coll = (enum ir_coll)plan_get_u8(&q);
            x.group = (enum ir_group)plan_get_u8(&q);
            x.tag = plan_get_i32(&q);
            x.bytes = plan_get_i64(&q);
            if (x.coll >= IR_COLL_COUNT || x.group >= IR_GROUP_COUNT ||
                (x.group == IR_GROUP_TIED && x.kind == IR_INS_COLLECTIVE && (x.tag < 0 || x.tag >= S->n_tied)))
                q.bad = true;
            ir_program_push(&S->programs[s], &x);
        }
        if (q.bad) {
            ir_schedule_free(S);
            return bad(d, name, "an instruction out of range");
        }
    }
    if (r.bad) {
        ir_schedule_free(S);
        return bad(d, "schedule", "shorter than its fields");
    }
    return 0;
}
