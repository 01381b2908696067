/* simulate.c: a training step's time from the schedule and the cost model,
 * and its timeline as SVG. */
#include "simulate.h"
#include "plan.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sim_ctx {
    const struct partition *P;
    const struct device *dev;
    int n_stages, v;
    double *fwd;       /* [stage * v + vstage] */
    double *optimizer; /* [stage] */
};

static double compute(void *ctx, int stage, const struct ir_ins *ins)
{
    const struct sim_ctx *c = ctx;
    if (ins->kind == IR_INS_OPTIMIZER)
        return c->optimizer[stage];
    double t = c->fwd[stage * c->v + ins->vstage];
    return ins->kind == IR_INS_BACKWARD ? 2 * t : t;
}

static double comm(void *ctx, const struct ir_ins *ins, int k, int n, bool inter_node)
{
    const struct sim_ctx *c = ctx;
    double bw = inter_node ? c->dev->network_bytes : c->dev->link_bytes, lat = c->dev->link_latency;
    if (ins->kind == IR_INS_P2P)
        return lat + (double)ins->p2p[k].bytes / bw;
    double b = (double)ins->bytes, f = (double)(n - 1) / n;
    switch (ins->coll) {
    case IR_COLL_ALL_REDUCE:
    case IR_COLL_ALL_REDUCE_MAX: return lat + 2 * f * b / bw;
    case IR_COLL_ALL_GATHER: return lat + (n - 1) * b / bw;
    default: return lat + f * b / bw;
    }
}

static double tokens_per_micro(const struct ir_graph *g)
{
    for (int i = g->n_ops - 1; i >= 0; i--)
        if (g->ops[i].kind == IR_OP_CROSS_ENTROPY)
            return (double)ir_shape_numel(&g->tensors[g->ops[i].in[1]].shape);
    return 1;
}

/* AdamW per parameter a rank of the stage holds: read weight, gradient and
 * two moments, write weight and moments, fp32 but the gradient (bf16 under
 * --grad-reduce-in-bf16): 24 bytes and the gradient's. */
static double optimizer_seconds(const struct partition *P, int stage, const struct device *dev)
{
    return (double)partition_stage_param_elems(P, stage) * (24 + partition_grad_bytes(P)) / (dev->hbm_bytes * dev->hbm_efficiency);
}

/* A step's seconds on one rank of each stage: its GEMMs' and its other
 * kernels' (the optimizer's included), forward once and backward twice per
 * micro-batch. */
static void stage_seconds(const struct partition *P, const struct ir_schedule *S, const struct device *dev, double *gemm,
                          double *kernels)
{
    double steps = S->forward_only ? S->n_micro : 3.0 * S->n_micro;
    for (int s = 0; s < S->n_stages; s++) {
        gemm[s] = 0;
        kernels[s] = S->forward_only ? 0 : optimizer_seconds(P, s, dev);
    }
    for (int i = 0; i < P->g->n_ops; i++) {
        int s = P->chunks[P->op_chunk[i]].stage;
        (cost_op_is_gemm(P, i) ? gemm : kernels)[s] += steps * cost_op_seconds(P, i, dev);
    }
}

void simulate_fit(const struct partition *P, const struct ir_schedule *S, const struct device *dev,
                  const struct sim_measured *m, struct device *fitted)
{
    *fitted = *dev;
    double *gemm = wf_calloc((size_t)S->n_stages, sizeof *gemm), *kernels = wf_calloc((size_t)S->n_stages, sizeof *kernels);
    /* A kernel's terms all scale with k (its bytes, its FLOPs at the fp32
     * peak, attention's); a GEMM's with g, but an fp32 plan's GEMMs run at
     * the fp32 peak that k moved, and a GEMM's bytes can bound it: a few
     * rounds of rescaling converge. */
    for (int round = 0; round < 8; round++) {
        stage_seconds(P, S, fitted, gemm, kernels);
        double model_gemm = 0, model_kernels = 0;
        for (int r = 0; r < P->L->n_ranks; r++) {
            model_gemm += gemm[P->L->ranks[r].stage];
            model_kernels += kernels[P->L->ranks[r].stage];
        }
        if (m->gemm > 0 && model_gemm > 0) {
            double g = model_gemm / m->gemm;
            fitted->gemm_ceiling *= g;
            fitted->gemm_launch /= g;
        }
        if (m->kernels > 0 && model_kernels > 0) {
            double k = model_kernels / m->kernels;
            fitted->hbm_efficiency *= k;
            fitted->attention_efficiency *= k;
            fitted->fp32_flops *= k;
        }
    }
    free(gemm);
    free(kernels);
}

int simulate(const struct partition *P, const struct ir_schedule *S, const struct device *dev, struct sim_result *r,
             struct diag *d)
{
    memset(r, 0, sizeof *r);
    r->dev = *dev;
    struct sim_ctx c = {.P = P, .dev = dev, .n_stages = S->n_stages, .v = S->virtual_stages};
    c.fwd = wf_calloc((size_t)(S->n_stages * S->virtual_stages), sizeof *c.fwd);
    c.optimizer = wf_calloc((size_t)S->n_stages, sizeof *c.optimizer);
    const struct ir_graph *g = P->g;
    for (int i = 0; i < g->n_ops; i++) {
        const struct part_chunk *ch = &P->chunks[P->op_chunk[i]];
        c.fwd[ch->stage * c.v + ch->vstage] += cost_op_seconds(P, i, dev);
    }
    for (int s = 0; s < S->n_stages; s++)
        c.optimizer[s] = optimizer_seconds(P, s, dev);
    struct ir_costs costs = {compute, comm, &c, (int)dev->gpus_per_node};
    int rc = ir_schedule_run(S, P->L, &costs, &r->tl, d);
    if (rc == 0) {
        const struct ir_timeline *tl = &r->tl;
        int n = P->L->n_ranks;
        r->step_time = tl->step_time;
        double idle = 0;
        for (int q = 0; q < n; q++) {
            r->compute_time = tl->busy[q] > r->compute_time ? tl->busy[q] : r->compute_time;
            idle += ir_timeline_idle(tl, q);
            r->optimizer_time += tl->optimizer[q] / n;
            for (int k = 0; k < IR_GROUP_COUNT; k++) {
                bool tp = k == IR_GROUP_TP || k == IR_GROUP_CP || k == IR_GROUP_EP || k == IR_GROUP_EXPERT_TP;
                *(tp ? &r->tp_comm : &r->dp_comm) += tl->coll[(size_t)q * IR_GROUP_COUNT + k] / n;
            }
        }
        r->bubble = r->step_time > 0 ? idle / n / r->step_time : 0;
        double flops = 0;
        for (int i = 0; i < g->n_ops; i++)
            flops += ir_op_flops(g, &g->ops[i]);
        int replicas = P->L->pc.dp;
        r->tokens_per_step = tokens_per_micro(g) * S->n_micro * replicas;
        r->tokens_per_s = r->step_time > 0 ? r->tokens_per_step / r->step_time : 0;
        r->model_flops = (S->forward_only ? 1 : 3) * flops * S->n_micro * replicas;
        r->mfu = r->step_time > 0 ? r->model_flops / (r->step_time * n * dev->bf16_flops) : 0;
    }
    free(c.fwd);
    free(c.optimizer);
    return rc;
}

int simulate_plan(const char *path, const struct device *dev, const struct sim_measured *m, struct sim_result *r,
                  struct diag *d)
{
    memset(r, 0, sizeof *r);
    struct partition *P = partition_from_plan(path, d);
    if (!P)
        return -1;
    struct ir_schedule S;
    struct plan *p = plan_open(path, d);
    int rc = p ? ir_schedule_read(p, -1, &S, d) : -1;
    plan_close(p);
    if (rc == 0) {
        struct device fitted = *dev;
        if (m)
            simulate_fit(P, &S, dev, m, &fitted);
        rc = simulate(P, &S, &fitted, r, d);
        free(r->tl.spans); /* they point into S */
        r->tl.spans = NULL;
        r->tl.n_spans = r->tl.cap_spans = 0;
        ir_schedule_free(&S);
    }
    partition_free(P);
    return rc;
}

void sim_result_free(struct sim_result *r)
{
    ir_timeline_free(&r->tl);
}

/* ---- the timeline picture ------------------------------------------------------- */

static double nice_step(double span)
{
    double raw = span / 8, p = pow(10, floor(log10(raw)));
    return raw / p < 2 ? 2 * p : raw / p < 5 ? 5 * p : 10 * p;
}

int simulate_svg(const struct partition *P, const struct ir_schedule *S, const struct sim_result *r, const char *path,
                 struct diag *d)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        diag_error(d, path, 0, "cannot write: %s", strerror(errno));
        return -1;
    }
    const int left = 120, right = 20, top = 56, row = 30, width = 1200;
    int rows = S->n_stages, height = top + rows * row + 70;
    double scale = (width - left - right) / (r->step_time > 0 ? r->step_time : 1);
    static const char *fill[] = {[IR_INS_FORWARD] = "#4a90d9", [IR_INS_BACKWARD] = "#5cb85c", [IR_INS_P2P] = "#f0ad4e",
                                 [IR_INS_COLLECTIVE] = "#d9534f", [IR_INS_OPTIMIZER] = "#8e44ad"};
    const struct par_config *pc = &P->L->pc;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"Helvetica,Arial,sans-serif\">\n",
            width, height);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"15\">%s · %s · tp %d, pp %d, dp %d%s · %d micro-batch%s · %s</text>\n",
            left, P->g->name, ir_sched_name(S->kind), pc->tp, pc->pp, pc->dp,
            S->virtual_stages > 1 ? " (virtual stages)" : "", S->n_micro, S->n_micro == 1 ? "" : "es", r->dev.name);
    fprintf(f, "<text x=\"%d\" y=\"42\" font-size=\"12\" fill=\"#444\">step %.3f ms · bubble %.1f%% · tp comm %.1f%% · "
               "dp comm %.1f%% · %.0f tokens/s · MFU %.1f%% (predicted: GEMMs by shape, ring collectives)</text>\n",
            left, r->step_time * 1e3, 100 * r->bubble, r->step_time > 0 ? 100 * r->tp_comm / r->step_time : 0,
            r->step_time > 0 ? 100 * r->dp_comm / r->step_time : 0, r->tokens_per_s, 100 * r->mfu);
    for (int s = 0; s < rows; s++)
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"end\">stage %d</text>\n", left - 8,
                top + s * row + row / 2 + 4, s);
    for (int i = 0; i < r->tl.n_spans; i++) {
        const struct ir_span *sp = &r->tl.spans[i];
        double x = left + sp->start * scale, w = (sp->end - sp->start) * scale;
        if (w < 0.3)
            continue;
        int y = top + sp->row * row + 3, h = row - 6;
        if (sp->ins->kind == IR_INS_P2P || sp->ins->kind == IR_INS_COLLECTIVE) {
            y += h / 2 - 3; /* transfers: a thin bar under the compute */
            h = 6;
        }
        fprintf(f, "<rect x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"%s\" stroke=\"white\" stroke-width=\"0.5\"/>\n",
                x, y, w, h, fill[sp->ins->kind]);
        if ((sp->ins->kind == IR_INS_FORWARD || sp->ins->kind == IR_INS_BACKWARD) && w > 14)
            fprintf(f, "<text x=\"%.2f\" y=\"%d\" font-size=\"10\" fill=\"white\" text-anchor=\"middle\">%d</text>\n",
                    x + w / 2, y + h / 2 + 4, sp->ins->micro);
    }
    int axis = top + rows * row + 6;
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#888\"/>\n", left, axis, width - right, axis);
    double step = nice_step(r->step_time);
    for (double t = 0; t <= r->step_time * 1.0001; t += step)
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"10\" text-anchor=\"middle\" fill=\"#444\">%.3g ms</text>\n",
                left + t * scale, axis + 14, t * 1e3);
    static const char *what[] = {"forward", "backward", "send/receive", "collective", "optimizer"};
    static const enum ir_ins_kind kinds[] = {IR_INS_FORWARD, IR_INS_BACKWARD, IR_INS_P2P, IR_INS_COLLECTIVE, IR_INS_OPTIMIZER};
    for (int k = 0; k < 5; k++) {
        int x = left + k * 150;
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"10\" fill=\"%s\"/>", x, axis + 30, fill[kinds[k]]);
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">%s</text>\n", x + 20, axis + 39, what[k]);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\" fill=\"#666\">numbers: micro-batch · rows: the stages of ranks %d..</text>\n",
            left + 760, axis + 39, P->L->groups[PAR_GROUP_PP].ranks[0][0]);
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) {
        diag_error(d, path, 0, "cannot write: %s", strerror(errno));
        return -1;
    }
    return 0;
}
