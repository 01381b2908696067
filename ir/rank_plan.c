/* rank_plan.c: one rank's view of a plan (rank_plan.h). */
#include "rank_plan.h"
#include "plan.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_tensors(struct plan *p, struct rank_plan *R, struct diag *d)
{
    struct plan_reader r;
    if (plan_read(p, "tensors", &r, d))
        return -1;
    uint32_t n = plan_get_u32(&r);
    if (r.bad || n > (uint64_t)(r.end - r.at)) {
        diag_error(d, NULL, 0, "plan section 'tensors': %u tensors in %lld bytes: the plan is corrupted", n, (long long)(r.end - r.at));
        return -1;
    }
    R->n_tensors = (int)n;
    R->tensors = wf_calloc((size_t)n + 1, sizeof *R->tensors);
    char skip[8];
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        struct rank_tensor *t = &R->tensors[i];
        plan_get_str(&r, t->name, sizeof t->name);
        plan_get_str(&r, skip, sizeof skip); /* its name as written */
        t->kind = plan_get_u8(&r);
        t->dtype = plan_get_u8(&r);
        t->rank = plan_get_u8(&r);
        if (t->rank > IR_MAX_RANK || t->dtype >= IR_DTYPE_COUNT) {
            r.bad = true;
            break;
        }
        for (int k = 0; k < t->rank; k++) {
            t->shape[k] = plan_get_i64(&r);
            t->split[k] = plan_get_u8(&r);
            t->stack[k] = plan_get_u8(&r);
        }
        plan_get_u8(&r);  /* partial */
        plan_get_u8(&r);  /* part */
        plan_get_i32(&r); /* layer */
        t->producer = plan_get_i32(&r);
        t->init = plan_get_u8(&r);
        t->init_std = plan_get_f64(&r);
    }
    if (r.bad) {
        diag_error(d, NULL, 0, "plan section 'tensors' is shorter than its fields: the plan is corrupted");
        return -1;
    }
    return 0;
}

static int read_outputs(struct plan *p, struct rank_plan *R, struct diag *d)
{
    struct plan_reader r;
    if (plan_read(p, "outputs", &r, d))
        return -1;
    uint32_t n = plan_get_u32(&r);
    if (r.bad || n > (uint64_t)(r.end - r.at) / 4) {
        diag_error(d, NULL, 0, "plan section 'outputs' is corrupted");
        return -1;
    }
    R->n_outputs = (int)n;
    R->outputs = wf_calloc((size_t)n + 1, sizeof *R->outputs);
    for (uint32_t i = 0; i < n; i++)
        if ((R->outputs[i] = plan_get_i32(&r)) < 0 || R->outputs[i] >= R->n_tensors) {
            diag_error(d, NULL, 0, "plan section 'outputs': output %u names no tensor: the plan is corrupted", i);
            return -1;
        }
    R->labels = plan_get_i32(&r);
    if (r.bad || R->labels < -1 || R->labels >= R->n_tensors) {
        diag_error(d, NULL, 0, "plan section 'outputs': the loss's labels name no input: the plan is corrupted");
        return -1;
    }
    return 0;
}

int rank_hf_read(struct plan *p, int n_tensors, struct rank_hf *hf, struct diag *d)
{
    struct plan_reader r;
    memset(hf, 0, sizeof *hf);
    if (!plan_has(p, "hf"))
        return 0;
    if (plan_read(p, "hf", &r, d))
        return -1;
    hf->present = true;
    plan_get_str(&r, hf->model_type, sizeof hf->model_type);
    plan_get_str(&r, hf->architecture, sizeof hf->architecture);
    plan_get_str(&r, hf->optional_prefix, sizeof hf->optional_prefix);
    uint32_t n = plan_get_u32(&r);
    if (r.bad || n > (uint64_t)(r.end - r.at) / 9) /* a key takes at least 9 bytes */
        goto bad;
    hf->n_config = (int)n;
    hf->config = wf_calloc((size_t)n + 1, sizeof *hf->config);
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        plan_get_str(&r, hf->config[i].key, sizeof hf->config[i].key);
        hf->config[i].kind = plan_get_u8(&r);
        plan_get_str(&r, hf->config[i].value, sizeof hf->config[i].value);
        if (hf->config[i].kind > IR_HF_BOOL)
            r.bad = true;
    }
    n = plan_get_u32(&r);
    if (r.bad || n > (uint64_t)(r.end - r.at) / 16) /* a map takes at least 16 bytes */
        goto bad;
    hf->n_maps = (int)n;
    hf->maps = wf_calloc((size_t)n + 1, sizeof *hf->maps);
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        struct rank_hf_map *m = &hf->maps[i];
        m->tensor = plan_get_i32(&r);
        m->blocks = plan_get_i64(&r);
        uint32_t ns = plan_get_u32(&r);
        if (r.bad || m->tensor < 0 || m->tensor >= n_tensors || m->blocks < 1 || ns < 1 || ns > (uint64_t)(r.end - r.at) / 14)
            goto bad;
        m->n_sources = (int)ns;
        m->sources = wf_calloc(ns, sizeof *m->sources);
        for (uint32_t k = 0; k < ns && !r.bad; k++) {
            struct rank_hf_source *src = &m->sources[k];
            plan_get_str(&r, src->name, sizeof src->name);
            src->transpose = plan_get_u8(&r);
            src->chunks = plan_get_i64(&r);
            src->rank = plan_get_u8(&r);
            if (src->rank < 1 || src->rank > IR_MAX_RANK || src->chunks < 1 || (src->transpose && src->rank != 2))
                goto bad;
            for (int a = 0; a < src->rank; a++)
                if ((src->shape[a] = plan_get_i64(&r)) < 1)
                    goto bad;
        }
    }
    if (!r.bad)
        return 0;
bad:
    diag_error(d, NULL, 0, "plan section 'hf' is corrupted");
    return -1;
}

void rank_hf_free(struct rank_hf *hf)
{
    for (int i = 0; i < hf->n_maps; i++)
        free(hf->maps[i].sources);
    free(hf->maps);
    free(hf->config);
    memset(hf, 0, sizeof *hf);
}

int plan_meta_read(struct plan *p, struct plan_meta *m, struct diag *d)
{
    memset(m, 0, sizeof *m);
    struct plan_reader r;
    if (plan_read(p, "meta", &r, d))
        return -1;
    plan_get_str(&r, m->model, sizeof m->model);
    plan_get_str(&r, m->file, sizeof m->file);
    m->digest = plan_get_u64(&r);
    plan_get_str(&r, m->variant, sizeof m->variant);
    uint32_t n = plan_get_u32(&r);
    if (r.bad || n > (uint64_t)(r.end - r.at) / 12) { /* a dimension takes at least 12 bytes */
        diag_error(d, NULL, 0, "plan section 'meta': %u dimensions: the plan is corrupted", n);
        return -1;
    }
    m->dim_name = wf_calloc((size_t)n + 1, sizeof *m->dim_name);
    m->dim_value = wf_calloc((size_t)n + 1, sizeof *m->dim_value);
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        plan_get_str(&r, m->dim_name[i], sizeof m->dim_name[i]);
        m->dim_value[i] = plan_get_i64(&r);
    }
    m->n_dims = (int)n;
    plan_get_str(&r, m->device, sizeof m->device);
    m->step = plan_get_f64(&r);
    m->bubble = plan_get_f64(&r);
    uint32_t nd = plan_get_u32(&r);
    if (r.bad || nd > (uint64_t)(r.end - r.at) / 16) { /* a probability takes at least 16 bytes */
        diag_error(d, NULL, 0, "plan section 'meta': %u dropout probabilities: the plan is corrupted", nd);
        plan_meta_free(m);
        return -1;
    }
    m->dropout = wf_calloc((size_t)nd + 1, sizeof *m->dropout);
    for (uint32_t i = 0; i < nd && !r.bad; i++) {
        plan_get_str(&r, m->dropout[i].flag, sizeof m->dropout[i].flag);
        m->dropout[i].p = plan_get_f64(&r);
        m->dropout[i].ops = (int)plan_get_u32(&r);
    }
    m->n_dropout = (int)nd;
    m->flops_step = plan_get_f64(&r);
    if (r.bad) {
        diag_error(d, NULL, 0, "plan section 'meta' is shorter than its fields: the plan is corrupted");
        plan_meta_free(m);
        return -1;
    }
    return 0;
}

void plan_meta_free(struct plan_meta *m)
{
    free(m->dim_name);
    free(m->dim_value);
    free(m->dropout);
    memset(m, 0, sizeof *m);
}

int64_t plan_meta_dim(const struct plan_meta *m, const char *name)
{
    for (int i = 0; i < m->n_dims; i++)
        if (!strcmp(m->dim_name[i], name))
            return m->dim_value[i];
    return 0;
}

int rank_plan_load(const char *path, int rank, int world_size, struct rank_plan *R, struct diag *d)
{
    memset(R, 0, sizeof *R);
    R->rank = rank;
    struct plan *p = plan_open(path, d);
    if (!p)
        return 2;
    struct par_config pc;
    bool has_encoder;
    int rc = 2;
    if (ir_layout_read(p, &pc, &has_encoder, d))
        goto out;
    if (pc.world_size != world_size) {
        diag_error(d, NULL, 0, "%s was compiled for %d ranks; this run has %d (mpirun -np %d)", path, pc.world_size, world_size,
                   pc.world_size);
        goto out;
    }
    if (!(R->L = rank_layout_new(&pc, has_encoder, d)))
        goto out;
    R->coords = R->L->ranks[rank];
    R->stage = R->coords.stage;
    if (read_tensors(p, R, d) || read_outputs(p, R, d) || rank_hf_read(p, R->n_tensors, &R->hf, d) || plan_meta_read(p, &R->meta, d) || ir_schedule_read(p, R->stage, &R->schedule, d) ||
        ir_memory_read(p, R->schedule.n_stages, R->stage, &R->memory, d) ||
        (plan_has(p, "actions.0") ? ir_actions_read(p, R->schedule.n_stages, R->stage, &R->actions, d)
                                  : (diag_error(d, NULL, 0, "%s has no actions: compile the plan again with this weft", path), -1)) ||
        kn_set_read(p, &R->kernels, d))
        goto out;
    R->vocab = plan_meta_dim(&R->meta, "vocab");
    R->train = plan_has(p, "optimizer");
    if (R->train && optim_read(p, &R->opt, d))
        goto out;
    rc = 0;
out:
    plan_close(p);
    return rc;
}

void rank_plan_free(struct rank_plan *R)
{
    rank_layout_free(R->L);
    free(R->tensors);
    free(R->outputs);
    plan_meta_free(&R->meta);
    rank_hf_free(&R->hf);
    ir_schedule_free(&R->schedule);
    ir_memory_free(&R->memory);
    ir_actions_free(&R->actions);
    kn_set_free(&R->kernels);
    memset(R, 0, sizeof *R);
}
