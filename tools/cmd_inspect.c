/* cmd_inspect.c: `weft inspect MODEL.plan [--rank R] [--json]`: a plan for people. */
#include "cli.h"
#include "kernels.h"
#include "fuse.h"
#include "kernel.h"
#include "json.h"
#include "memory.h"
#include "plan.h"
#include "program.h"
#include "actions.h"
#include "rank_plan.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* One rank's arena: its regions, and what the activations hold. */
static void print_arena(const struct ir_role_memory *m)
{
    char a[32], b[32];
    printf("  arena %s, one allocation:\n", wf_bytes((double)m->total, a));
    int count[IR_REGION_COUNT] = {0}, blocks = 0;
    for (int i = 0; i < m->n_bufs; i++) {
        count[m->bufs[i].region]++;
        blocks += m->bufs[i].what == IR_BUF_BLOCK;
    }
    for (int k = 0; k < IR_REGION_COUNT; k++) {
        if (!m->size[k])
            continue; /* forward only: no gradients, no optimizer state */
        printf("    %-22s at %12lld  %10s", ir_region_name((enum ir_region)k), (long long)m->base[k],
               wf_bytes((double)m->size[k], a));
        if (k == IR_REGION_ACTIVATIONS) {
            int64_t per = 0;
            for (int v = 0; v < m->n_vstages; v++)
                per += m->block_bytes[v];
            if (blocks)
                printf("  a block of %s per micro-batch (%d items kept for the backward), at most %d alive; ",
                       wf_bytes((double)per, b), m->n_items, m->in_flight);
            printf("%s%d transfer buffers", blocks ? "" : "  ", count[k] - blocks);
        } else if (count[k])
            printf("  %d buffers", count[k]);
        printf("\n");
    }
}

/* "stages 0-3, layers 0-11": where a kernel's launches run. */
static void where_used(const struct partition *P, const struct kn_set *K, int k, char *out, size_t n)
{
    int s_lo = 1 << 30, s_hi = -1, l_lo = 1 << 30, l_hi = -1;
    bool any_ops = false;
    for (int l = 0; l < K->n_launches; l++) {
        const struct kn_launch *L = &K->launches[l];
        if (L->kernel != k)
            continue;
        any_ops |= L->n_ops > 0;
        int st = P->chunks[L->chunk].stage;
        s_lo = st < s_lo ? st : s_lo;
        s_hi = st > s_hi ? st : s_hi;
        for (int i = 0; i < L->n_ops; i++) {
            int layer = partition_op_layer(P->g, &P->g->ops[K->ops[L->first_op + i]]);
            if (layer >= 0) {
                l_lo = layer < l_lo ? layer : l_lo;
                l_hi = layer > l_hi ? layer : l_hi;
            }
        }
    }
    size_t m = (size_t)snprintf(out, n, s_lo == s_hi ? "stage %d" : "stages %d-%d", s_lo, s_hi);
    if (l_hi < 0)
        snprintf(out + m, n - m, any_ops ? ", outside the layers" : ", a launch per parameter");
    else
        snprintf(out + m, n - m, l_lo == l_hi ? ", layer %d" : ", layers %d-%d", l_lo, l_hi);
}

static void ops_fused(const struct partition *P, const struct kn_set *K, int k, char *out, size_t n)
{
    int l = 0;
    while (K->launches[l].kernel != k)
        l++;
    size_t m = 0;
    out[0] = 0;
    if (K->launches[l].when == KN_WHEN_OPTIMIZER || K->launches[l].when == KN_WHEN_NORM) {
        snprintf(out, n, K->launches[l].when == KN_WHEN_NORM ? "(gradient norm)" : "(optimizer step)");
        return;
    }
    for (int i = 0; i < K->launches[l].n_ops && m < n; i++)
        m += (size_t)snprintf(out + m, n - m, "%s%s", i ? " " : "",
                              ir_op_info(P->g->ops[K->ops[K->launches[l].first_op + i]].kind)->name);
    int epilogues = 0;
    for (int i = 0; i < K->n_launches; i++)
        epilogues += K->launches[i].kernel == k && K->launches[i].epilogue;
    if (epilogues && m < n)
        snprintf(out + m, n - m, epilogues == K->kernels[k].uses ? ", GEMM epilogue" : ", %d as GEMM epilogues", epilogues);
}

/* --kernels, --kernel N [--source]: the fused kernels a plan carries. */
static int inspect_kernels(struct plan *p, const struct cli *c, struct diag *d)
{
    struct kn_set K;
    if (kn_set_read(p, &K, d))
        return -1;
    struct partition *P = partition_read_plan(p, d);
    if (!P) {
        kn_set_free(&K);
        return -1;
    }
    int rc = 0;
    char a[32], where[128], ops[256];
    if (c->kernel >= K.n_kernels) {
        diag_error(d, NULL, 0, "--kernel %d: the plan has %d kernels (0-%d)", c->kernel, K.n_kernels, K.n_kernels - 1);
        rc = -1;
    } else if (c->kernel >= 0 && c->source) {
        const struct kn_entry *e = &K.kernels[c->kernel];
        char *src = kernels_source(e, KN_LANG_CUDA);
        fputs(src, stdout);
        free(src);
    } else if (c->kernel >= 0) {
        const struct kn_entry *e = &K.kernels[c->kernel];
        int phase[KN_MAX_NODES], first = 0;
        while (K.launches[first].kernel != c->kernel)
            first++;
        const struct kn_launch *L = &K.launches[first];
        ops_fused(P, &K, c->kernel, ops, sizeof ops);
        where_used(P, &K, c->kernel, where, sizeof where);
        if (e->kind == KN_KIND_ATTENTION)
            printf("kernel %d: %s, attention in the flash-attention manner: %s, head dims %d/%d%s%s%s; %s; on the GPU on the %s\n",
                   c->kernel,
                   e->name, e->attn.dtype == IR_DTYPE_BF16 ? "bf16" : "f32", e->attn.D, e->attn.Dv,
                   e->attn.causal ? ", causal" : "", e->attn.bias ? ", a bias" : "", e->attn.bias_grad ? " and its gradient" : "",
                   e->attn.backward ? "forward and backward" : "forward only",
                   kn_attn_mma(&e->attn) ? "tensor cores (mma.sync, FlashAttention-2's tiles)" : "CUDA cores (a thread a row)");
        else if (e->kind == KN_KIND_ROUTE)
            printf("kernel %d: %s, MoE routing: each (token, choice)'s row of its expert's buffer, by a running count over the "
                   "tokens; for %s\n", c->kernel, e->name, ops);
        else
            printf("kernel %d: %s, %d nodes in %d pass%s; fuses %s\n", c->kernel, e->name, e->k.n_nodes,
                   kn_phases(&e->k, phase), kn_phases(&e->k, phase) == 1 ? "" : "es", ops);
        printf("  launched %d time%s a step: %s; %s a launch moves on one rank\n", e->uses, e->uses == 1 ? "" : "s",
               where, wf_bytes((double)fuse_launch_bytes(P, &K, first), a));
        static const char *const attn_in[] = {"q", "k", "v", "bias"}, *const attn_out[] = {"out", "stats"},
                                 *const route_out[] = {"routes", "fills"};
        for (int io = 0; io < 2; io++)
            for (int i = 0; i < (io ? L->n_out : L->n_in); i++) {
                const struct kn_bind *b = io ? &L->out[i] : &L->in[i];
                /* a mask's, row statistics' or routing's id is their op's; the rest name a tensor */
                const struct ir_op *o = ir_buf_of_op(b->what) ? &P->g->ops[b->id] : NULL;
                char slot[32], what[96] = "";
                if (o)
                    snprintf(what, sizeof what, " (%s's %s)", ir_op_info(o->kind)->name, ir_buf_what_name(b->what));
                else if (b->xfer >= 0 && b->xfer < P->n_xfers) /* the transfer's buffer, that brings it or that it takes */
                    snprintf(what, sizeof what, " (%s%svia %s over %s)", b->what != IR_BUF_VALUE ? ir_buf_what_name(b->what) : "",
                             b->what != IR_BUF_VALUE ? ", " : "", part_xfer_name(P->xfers[b->xfer].kind),
                             ir_pdim_name(P->xfers[b->xfer].over));
                else if (b->what != IR_BUF_VALUE)
                    snprintf(what, sizeof what, " (%s)", ir_buf_what_name(b->what));
                if (e->kind == KN_KIND_ATTENTION) /* q, k, v name the buffer they are views of */
                    snprintf(slot, sizeof slot, "%-13s", io ? attn_out[i] : attn_in[i]);
                else if (e->kind == KN_KIND_ROUTE)
                    snprintf(slot, sizeof slot, "%-13s", io ? route_out[i] : "choices");
                else {
                    const struct kn_slot *sl = io ? &e->k.out[i] : &e->k.in[i];
                    snprintf(slot, sizeof slot, "%-4s %-8s", kn_dtype_name(sl->dtype), kn_access_name((enum kn_access)sl->access));
                }
                printf("  %-3s %d  %s  %s%s\n", io ? "out" : "in", i, slot, P->g->tensors[o ? o->out[0] : b->id].name, what);
            }
        for (int i = 0; i < e->n_bins; i++)
            printf("  %s_%d %s, %s\n", e->bins[i].ptx ? "compute" : "sm", e->bins[i].arch, e->bins[i].ptx ? "PTX" : "cubin",
                   wf_bytes((double)e->bins[i].size, a));
        printf("  (--source prints its CUDA C)\n");
    } else {
        char launches[96];
        printf("%s: %d kernel%s for %s; CPU object %s\n", c->model, K.n_kernels, K.n_kernels == 1 ? "" : "s",
               kn_set_launches(&K, launches, sizeof launches), wf_bytes((double)K.cpu_size, a));
        printf("  %3s  %-44s %8s %14s  %-40s %s\n", "#", "kernel", "launches", "bytes/launch", "ops fused", "where");
        for (int k = 0; k < K.n_kernels; k++) {
            int first = 0;
            while (K.launches[first].kernel != k)
                first++;
            ops_fused(P, &K, k, ops, sizeof ops);
            if (K.kernels[k].kind == KN_KIND_ATTENTION) /* which kernels the GPU runs */
                snprintf(ops + strlen(ops), sizeof ops - strlen(ops), " (%s)",
                         kn_attn_mma(&K.kernels[k].attn) ? "tensor cores" : "CUDA cores");
            where_used(P, &K, k, where, sizeof where);
            printf("  %3d  %-44s %8d %14s  %-40s %s\n", k, K.kernels[k].name, K.kernels[k].uses,
                   wf_bytes((double)fuse_launch_bytes(P, &K, first), a), ops, where);
        }
        if (K.n_kernels && K.kernels[0].n_bins) {
            printf("  binaries:");
            for (int i = 0; i < K.kernels[0].n_bins; i++)
                printf(" %s_%d", K.kernels[0].bins[i].ptx ? "compute" : "sm", K.kernels[0].bins[i].arch);
            printf(" (PTX for newer GPUs)\n");
        } else
            printf("  no GPU binaries: compiled without NVRTC\n");
    }
    partition_free(P);
    kn_set_free(&K);
    return rc;
}

static const char usage[] =
    "usage: weft inspect MODEL.plan [--rank R [--actions] | --kernels | --kernel N [--source]] [--json]\n\nShow what a plan holds: the model, the layout, each role (pipeline stage)\n"
    "with its ranks, layers and memory, the kernels, the file's sections; with\n"
    "--rank R, that rank's coordinates and program, its peers resolved, and with\n"
    "--actions what it executes: each step's GEMMs, launches, collectives; with\n"
    "--kernels, the fused kernels (ops, bytes, where used); --kernel N, one\n"
    "kernel's slots and binaries, and with --source its CUDA C.\n";

/* One action a line; a launch with its kernel's name. */
static void print_list(const char *title, const struct ir_action_list *l, const struct kn_set *K)
{
    if (title)
        printf("  %s: %d action%s\n", title, l->n, l->n == 1 ? "" : "s");
    for (int i = 0; i < l->n; i++) {
        char s[512];
        const struct ir_action *a = &l->v[i];
        printf("    %4d  %s", i, ir_action_str(a, s, sizeof s));
        if (a->kind == IR_ACT_LAUNCH && a->launch.launch >= 0 && a->launch.launch < K->n_launches)
            printf(": %s", K->kernels[K->launches[a->launch.launch].kernel].name);
        printf("\n");
    }
}

/* A stage's actions: each virtual stage's forward and backward step, the
 * optimizer's, and the program's other instructions'. */
static int print_actions(struct plan *p, const struct ir_schedule *S, int stage, struct diag *d)
{
    struct ir_actions A;
    struct kn_set K;
    if (kn_set_read(p, &K, d))
        return -1;
    if (ir_actions_read(p, S->n_stages, stage, &A, d)) {
        kn_set_free(&K);
        return -1;
    }
    const struct ir_stage_actions *st = &A.stages[stage];
    char title[64];
    for (int v = 0; v < st->n_vstages; v++) {
        snprintf(title, sizeof title, "forward step, virtual stage %d", v);
        print_list(title, &st->forward[v], &K);
        snprintf(title, sizeof title, "backward step, virtual stage %d", v);
        print_list(title, &st->backward[v], &K);
    }
    for (int i = 0; i < st->n_ins && i < S->programs[stage].n; i++) {
        if (!st->ins[i].n)
            continue;
        char ins[256];
        snprintf(title, sizeof title, "instruction %d", i);
        printf("  %s (%s):\n", title, ir_ins_str(&S->programs[stage].ins[i], ins, sizeof ins));
        print_list(NULL, &st->ins[i], &K);
    }
    ir_actions_free(&A);
    kn_set_free(&K);
    return 0;
}

int cmd_inspect(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "inspect", usage))
        return c.status;
    if (c.actions && c.rank < 0) {
        fprintf(stderr, "weft inspect: --actions shows one rank's: give --rank R\n");
        return EXIT_BAD_INPUT;
    }
    if (!c.model) {
        fputs(usage, stderr);
        return EXIT_BAD_INPUT;
    }
    struct diag d;
    diag_init(&d);
    struct plan *p = plan_open(c.model, &d);
    struct plan_meta m = {0};
    struct par_config pc;
    bool enc;
    struct rank_layout *L = NULL;
    struct ir_schedule S = {0};
    struct ir_memory mem = {0};
    struct kn_set kernels = {0};
    struct optim_config opt;
    bool has_opt = p && plan_has(p, "optimizer");
    int rc = -1;
    if (p && plan_meta_read(p, &m, &d) == 0 && ir_layout_read(p, &pc, &enc, &d) == 0 && (L = rank_layout_new(&pc, enc, &d)) &&
        ir_schedule_read(p, c.rank >= 0 && c.rank < L->n_ranks ? L->ranks[c.rank].stage : -1, &S, &d) == 0) {
        rc = ir_memory_read(p, S.n_stages, c.rank >= 0 && c.rank < L->n_ranks ? L->ranks[c.rank].stage : -1, &mem, &d);
        if (rc == 0 && has_opt)
            rc = optim_read(p, &opt, &d);
        if (rc == 0 && c.rank < 0)
            rc = kn_set_read(p, &kernels, &d);
    }
    if (rc == 0 && c.rank >= L->n_ranks) {
        diag_error(&d, NULL, 0, "--rank %d: the plan has %d ranks (0-%d)", c.rank, L->n_ranks, L->n_ranks - 1);
        rc = -1;
    }
    if (rc == 0 && (c.kernels || c.kernel >= 0) && !c.json)
        rc = inspect_kernels(p, &c, &d);
    diag_print(&d, stderr);
    if (rc == 0 && (c.kernels || c.kernel >= 0) && !c.json) {
        /* printed above */
    } else if (rc == 0 && c.json) {
        struct json j;
        json_init(&j, stdout);
        json_begin_object(&j, NULL);
        json_string(&j, "plan", c.model);
        json_string(&j, "compiler", plan_compiler(p));
        json_string(&j, "model", m.model);
        json_string(&j, "model_file", m.file);
        json_int(&j, "world_size", L->n_ranks);
        json_string(&j, "schedule", ir_sched_name(S.kind));
        json_string(&j, "mode", S.forward_only ? "infer" : "train");
        json_int(&j, "micro_batches", S.n_micro);
        json_bool(&j, "bf16", pc.bf16);
        json_bool(&j, "grad_reduce_in_bf16", pc.grad_reduce_in_bf16);
        json_double(&j, "flops_per_step", m.flops_step);
        json_begin_array(&j, "dropout"); /* the probabilities the ops use, by the flag they follow */
        for (int i = 0; i < m.n_dropout; i++) {
            json_begin_object(&j, NULL);
            if (m.dropout[i].flag[0])
                json_string(&j, "flag", m.dropout[i].flag);
            else
                json_null(&j, "flag");
            json_double(&j, "p", m.dropout[i].p);
            json_int(&j, "ops", m.dropout[i].ops);
            json_end_object(&j);
        }
        json_end_array(&j);
        if (has_opt) {
            json_begin_object(&j, "optimizer");
            json_string(&j, "kind", "adamw");
            json_double(&j, "lr", opt.lr);
            json_double(&j, "min_lr", opt.min_lr);
            json_int(&j, "lr_warmup_iters", opt.warmup_iters);
            json_int(&j, "lr_decay_iters", opt.decay_iters ? opt.decay_iters : opt.train_iters);
            json_string(&j, "lr_decay_style", optim_decay_name(opt.decay_style));
            json_double(&j, "weight_decay", opt.weight_decay);
            json_double(&j, "adam_beta1", opt.beta1);
            json_double(&j, "adam_beta2", opt.beta2);
            json_double(&j, "adam_eps", opt.eps);
            json_double(&j, "clip_grad", opt.clip_grad);
            json_end_object(&j);
        }
        json_begin_array(&j, "roles");
        for (int s = 0; s < S.n_stages; s++) {
            json_begin_object(&j, NULL);
            char role[64];
            for (int r = 0; r < L->n_ranks; r++)
                if (L->ranks[r].stage == s)
                    snprintf(role, sizeof role, "%s stage %d", ir_part_name(L->ranks[r].part), s);
            json_string(&j, "role", role);
            json_begin_array(&j, "ranks");
            for (int r = 0; r < L->n_ranks; r++)
                if (L->ranks[r].stage == s)
                    json_int(&j, NULL, r);
            json_end_array(&j);
            json_int(&j, "instructions", S.programs[s].n);
            json_int(&j, "memory_bytes", mem.roles[s].total);
            json_begin_object(&j, "memory");
            for (int k = 0; k < IR_REGION_COUNT; k++)
                json_int(&j, ir_region_name((enum ir_region)k), mem.roles[s].size[k]);
            json_end_object(&j);
            json_int(&j, "micro_batches_in_flight", mem.roles[s].in_flight);
            json_end_object(&j);
        }
        json_end_array(&j);
        json_begin_array(&j, "kernels");
        for (int k = 0; k < kernels.n_kernels; k++) {
            const struct kn_entry *e = &kernels.kernels[k];
            json_begin_object(&j, NULL);
            json_string(&j, "name", e->name);
            json_int(&j, "launches", e->uses);
            json_int(&j, "nodes", e->k.n_nodes);
            json_begin_array(&j, "archs");
            for (int b = 0; b < e->n_bins; b++) {
                char arch[32];
                snprintf(arch, sizeof arch, "%s_%d", e->bins[b].ptx ? "compute" : "sm", e->bins[b].arch);
                json_string(&j, NULL, arch);
            }
            json_end_array(&j);
            json_end_object(&j);
        }
        json_end_array(&j);
        json_end_object(&j);
        json_finish(&j);
    } else if (rc == 0 && c.rank >= 0 && c.actions) {
        rc = print_actions(p, &S, L->ranks[c.rank].stage, &d);
    } else if (rc == 0 && c.rank >= 0) {
        const struct rank_coords *rc0 = &L->ranks[c.rank];
        const struct ir_program *prog = &S.programs[rc0->stage];
        printf("rank %d of %s: %s stage %d, tp %d, cp %d, dp %d, ep %d; %d instructions\n", c.rank, c.model,
               ir_part_name(rc0->part), rc0->stage, rc0->tp, rc0->cp, rc0->dp, rc0->ep, prog->n);
        print_arena(&mem.roles[rc0->stage]);
        bool backward = false; /* a collective after a backward step moves gradients */
        for (int i = 0; i < prog->n; i++) {
            char buf[2048];
            ir_ins_str(&prog->ins[i], buf, sizeof buf);
            if (prog->ins[i].kind == IR_INS_FORWARD || prog->ins[i].kind == IR_INS_BACKWARD)
                backward = prog->ins[i].kind == IR_INS_BACKWARD;
            printf("  %4d  %s%s", i, buf, backward && prog->ins[i].kind == IR_INS_COLLECTIVE ? ", of gradients" : "");
            if (prog->ins[i].kind == IR_INS_P2P) { /* the ranks at the other ends, each once */
                int *all = wf_calloc((size_t)L->n_ranks, sizeof *all), n_all = 0;
                int *peers = wf_calloc((size_t)L->n_ranks, sizeof *peers);
                for (int k = 0; k < prog->ins[i].n_p2p; k++) {
                    int n = ir_p2p_peers(&S, L, c.rank, prog->ins[i].p2p[k].peer_chunk, peers, L->n_ranks);
                    for (int q = 0; q < n; q++) {
                        bool seen = false;
                        for (int x = 0; x < n_all; x++)
                            seen |= all[x] == peers[q];
                        if (!seen)
                            all[n_all++] = peers[q];
                    }
                }
                free(peers);
                printf("  [%s", n_all == 1 ? "peer" : "peers");
                for (int x = 0; x < n_all; x++)
                    printf(" %d", all[x]);
                printf("]");
                free(all);
            }
            printf("\n");
        }
    } else if (rc == 0) {
        char a[32], b[32];
        printf("%s: a plan of format %d.%d, written by %s\n", c.model, plan_version_major(p), plan_version_minor(p),
               plan_compiler(p));
        printf("  model     %s (%s%s%s), digest %016" PRIx64 "\n", m.model, m.file, m.variant[0] ? ", variant " : "",
               m.variant, m.digest);
        printf("  dims     ");
        for (int i = 0; i < m.n_dims; i++)
            printf(" %s=%" PRId64, m.dim_name[i], m.dim_value[i]);
        printf("\n  dropout  ");
        for (int i = 0; i < m.n_dropout; i++)
            printf("%s %s%s%s%g (%d op%s%s)", i ? "," : "", m.dropout[i].flag[0] ? "--" : "", m.dropout[i].flag[0] ? m.dropout[i].flag : "",
                   m.dropout[i].flag[0] ? " " : "", m.dropout[i].p, m.dropout[i].ops, m.dropout[i].ops == 1 ? "" : "s", m.dropout[i].flag[0] ? "" : ", bound to no flag");
        if (!m.n_dropout)
            printf(" none");
        char fl[32];
        printf("\n  FLOPs     %s a step (model FLOPs, all ranks)", wf_si(m.flops_step, "FLOP", fl));
        printf("\n  layout    %d ranks: tp %d x pp %d x dp %d, cp %d, ep %d%s\n", L->n_ranks, pc.tp, pc.pp, pc.dp, pc.cp,
               pc.ep, enc && pc.epp ? "; encoder of its own" : "");
        printf("  schedule  %s%s, %d micro-batch%s, %d stage%s; predicted %s %.3f ms on %s, bubble %.1f%%\n",
               ir_sched_name(S.kind), S.forward_only ? " forward only" : "", S.n_micro, S.n_micro == 1 ? "" : "es", S.n_stages, S.n_stages == 1 ? "" : "s", S.forward_only ? "forward pass" : "step", m.step * 1e3, m.device, 100 * m.bubble);
        printf("  precision %s\n", !pc.bf16 ? "fp32 throughout"
                                : S.forward_only ? "bf16 weights and activations"
                                : pc.grad_reduce_in_bf16 ? "bf16 weights, activations and gradients (--grad-reduce-in-bf16: accumulated and "
                                                           "reduced in bf16), fp32 master weights and optimizer state"
                                                         : "bf16 weights and activations, fp32 gradients (accumulated and reduced), "
                                                           "master weights and optimizer state");
        if (has_opt) {
            long decay = opt.decay_iters ? opt.decay_iters : opt.train_iters;
            printf("  optimizer AdamW, fp32 master weights: lr %g", opt.lr);
            if (opt.warmup_iters)
                printf(", warm-up over %ld iterations", opt.warmup_iters);
            if (opt.decay_style != OPTIM_DECAY_CONSTANT && decay)
                printf(", %s decay to %g by iteration %ld", optim_decay_name(opt.decay_style), opt.min_lr, decay);
            else if (opt.decay_style != OPTIM_DECAY_CONSTANT)
                printf(", %s decay (over --train-iters, not given: constant)", optim_decay_name(opt.decay_style));
            printf("\n            weight decay %g (none on biases and norms), betas %g/%g, eps %g; ", opt.weight_decay,
                   opt.beta1, opt.beta2, opt.eps);
            if (opt.clip_grad > 0)
                printf("gradients clipped to global norm %g\n", opt.clip_grad);
            else
                printf("no clipping\n");
        }
        printf("  roles\n");
        for (int s = 0; s < S.n_stages; s++) {
            int lo = -1, hi = -1;
            const char *part = "decoder";
            for (int r = 0; r < L->n_ranks; r++)
                if (L->ranks[r].stage == s) {
                    lo = lo < 0 ? r : lo;
                    hi = r;
                    part = ir_part_name(L->ranks[r].part);
                }
            const struct ir_role_memory *rm = &mem.roles[s];
            char flight[64] = "";
            if (!S.forward_only)
                snprintf(flight, sizeof flight, ", %d micro-batch%s in flight", rm->in_flight, rm->in_flight == 1 ? "" : "es");
            printf("    %s stage %-3d ranks %d-%d, %d instructions, %s a rank (activations %s%s)\n", part, s, lo, hi,
                   S.programs[s].n, wf_bytes((double)rm->total, a), wf_bytes((double)rm->size[IR_REGION_ACTIVATIONS], b),
                   flight);
        }
        char launches[96];
        printf("  kernels   %d fused, %s;", kernels.n_kernels, kn_set_launches(&kernels, launches, sizeof launches));
        for (int i = 0; kernels.n_kernels && i < kernels.kernels[0].n_bins; i++)
            printf(" %s_%d", kernels.kernels[0].bins[i].ptx ? "compute" : "sm", kernels.kernels[0].bins[i].arch);
        printf("%s; CPU object %s (--kernels lists them)\n  sections ",
               kernels.n_kernels && kernels.kernels[0].n_bins ? "" : " no GPU binaries", wf_bytes((double)kernels.cpu_size, a));
        for (int i = 0; i < plan_n_sections(p); i++)
            printf(" %s (%s)", plan_section_name(p, i), wf_bytes((double)plan_section_size(p, i), a));
        printf("\n");
    }
    ir_memory_free(&mem);
    kn_set_free(&kernels);
    ir_schedule_free(&S);
    rank_layout_free(L);
    plan_meta_free(&m);
    plan_close(p);
    diag_free(&d);
    return rc ? EXIT_BAD_INPUT : EXIT_OK;
}
