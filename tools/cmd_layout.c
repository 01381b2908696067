/* cmd_layout.c: `weft layout MODEL.xml --world-size N --tp ...`: which rank
 * holds what, and the groups they communicate in. */
#include "cli.h"
#include "json.h"
#include "partition.h"
#include "schedule.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: weft layout MODEL.xml [--world-size N] [--tp N] [--pp N] [--cp N] [--ep N]\n"
    "                   [--etp N] [--epp N] [--sequence-parallel] [--num-layers-per-virtual-pipeline-stage N]\n"
    "                   [--micro-batch-size N] [--global-batch-size N] [--pipeline-schedule gpipe|1f1b|interleaved]\n"
    "                   [--mode train|infer] [model flags...] [--json]\n"
    "\n"
    "Lay a model out on ranks as Megatron-Core does (tp fastest, then cp, ep, dp, pp):\n"
    "each rank's coordinates, pipeline stage and layers, and every communication group.\n"
    "The data parallel size is derived from --world-size.  Long Megatron names work too\n"
    "(--tensor-model-parallel-size ...).  Exit status 2 names the rule a layout breaks.\n";

/* "0-2, 5" from a sorted list. */
static void ranges(const int *v, int n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < n && len < cap;) {
        int j = i;
        while (j + 1 < n && v[j + 1] == v[j] + 1)
            j++;
        if (len > cap - 40) {
            snprintf(buf + len, cap - len, ", ...");
            return;
        }
        len += (size_t)(j > i ? snprintf(buf + len, cap - len, "%s%d-%d", i ? ", " : "", v[i], v[j])
                              : snprintf(buf + len, cap - len, "%s%d", i ? ", " : "", v[i]));
        i = j + 1;
    }
}

/* The chunks a rank runs: every chunk of its part and stage. */
static int rank_chunks(const struct partition *P, int r, int *out)
{
    int n = 0;
    for (int c = 0; c < P->n_chunks; c++)
        if (partition_rank_runs(P, r, c))
            out[n++] = c;
    return n;
}

static void layers_text(const struct partition *P, const int *chunks, int n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < n && len < cap; i++) {
        const struct part_chunk *ch = &P->chunks[chunks[i]];
        const char *part = P->g->has_part[IR_PART_ENCODER] ? (ch->part == IR_PART_ENCODER ? "enc " : "dec ") : "";
        if (ch->n_layers > 1)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s%d-%d", i ? ", " : "", part, ch->first_layer,
                                    ch->first_layer + ch->n_layers - 1);
        else if (ch->n_layers == 1)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s%d", i ? ", " : "", part, ch->first_layer);
        if (ch->has_embedding && len < cap)
            len += (size_t)snprintf(buf + len, cap - len, " +embedding");
        if (ch->has_head && len < cap) /* after the layers: the head and loss, or the encoder's output */
            len += (size_t)snprintf(buf + len, cap - len, ch->part == IR_PART_ENCODER ? " +output" : " +head");
    }
}

static void print_text(const struct partition *P, const struct ir_schedule *S)
{
    const struct rank_layout *L = P->L;
    const struct par_config *pc = &L->pc;
    char a[32], b[32], buf[512];
    printf("%s on %d rank%s: tp %d x pp %d x dp %d", P->g->name, L->n_ranks, L->n_ranks == 1 ? "" : "s", pc->tp, pc->pp, pc->dp);
    if (pc->cp > 1)
        printf(" x cp %d", pc->cp);
    if (pc->ep > 1)
        printf(", ep %d (expert tp %d, expert dp %d)", pc->ep, pc->expert_tp, pc->expert_dp);
    if (L->has_encoder)
        printf("; encoder tp %d x pp %d%s", pc->etp, pc->epp, pc->epp ? "" : " (on the decoder's first stage)");
    printf("\n");
    if (P->virtual_stages > 1)
        printf("  %d virtual stages per pipeline rank (interleaved 1F1B)\n", P->virtual_stages);
    printf("  %d micro-batch%s a step", P->n_micro, P->n_micro == 1 ? "" : "es");
    if (pc->sequence_parallel)
        printf(", sequence parallel");
    if (P->balanced_first)
        printf(", stages balanced by cost: --decoder-first-pipeline-num-layers %d --decoder-last-pipeline-num-layers %d",
               P->balanced_first, P->balanced_last);
    if (P->padded_vocab != P->vocab)
        printf(", vocabulary %s padded to %s (a multiple of %d x tp)", wf_commas(P->vocab, a),
               wf_commas(P->padded_vocab, b), pc->vocab_divisible_by);
    int *rk = wf_calloc((size_t)L->n_ranks, sizeof *rk);         /* a chunk's ranks */
    int *chunks = wf_calloc((size_t)P->n_chunks + 1, sizeof *chunks); /* a rank's chunks */
    printf("\n\n  %-6s %-8s %-7s %-28s %13s %10s %9s  %s\n", "chunk", "part", "stage", "layers", "params", "fwd FLOPs",
           "fwd ms", "ranks");
    for (int c = 0; c < P->n_chunks; c++) {
        const struct part_chunk *ch = &P->chunks[c];
        int one[1] = {c}, n = 0;
        layers_text(P, one, 1, buf, sizeof buf);
        for (int r = 0; r < L->n_ranks; r++)
            if (partition_rank_runs(P, r, c))
                rk[n++] = r;
        char rs[256], fl[32];
        ranges(rk, n, rs, sizeof rs);
        printf("  %-6d %-8s %-7d %-28s %13s %10s %9.3f  %s\n", c, ir_part_name(ch->part), ch->stage, buf,
               wf_commas(ch->param_bytes / 4, a), wf_si(ch->flops, "", fl), ch->seconds * 1e3, rs);
    }
    int most = 0;
    for (int s = 0; s < S->n_stages; s++)
        most = S->programs[s].n > most ? S->programs[s].n : most;
    printf("  schedule %s: up to %d instructions a stage; verified on all %d ranks: every send meets its\n"
           "  receive and every collective its whole group, in one order, so the step cannot hang\n",
           ir_sched_name(S->kind), most, L->n_ranks);
    printf("  (params and FLOPs of a whole chunk, before tensor-parallel sharding; fwd ms: one rank's forward\n"
           "   time per micro-batch on an H100 by a roofline of each op's FLOPs and bytes)\n");
    printf("\n  %-5s %-8s %5s %4s %4s %4s %4s  %s\n", "rank", "part", "stage", "tp", "cp", "dp", "ep", "layers");
    for (int r = 0; r < L->n_ranks; r++) {
        const struct rank_coords *rc = &L->ranks[r];
        int n = rank_chunks(P, r, chunks);
        layers_text(P, chunks, n, buf, sizeof buf);
        printf("  %-5d %-8s %5d %4d %4d %4d %4d  %s\n", r, ir_part_name(rc->part), rc->stage, rc->tp, rc->cp, rc->dp,
               rc->ep, buf);
    }
    free(rk);
    free(chunks);
    printf("\n  groups\n");
    for (int k = 0; k < PAR_GROUP_COUNT; k++) {
        const struct rank_groups *g = rank_layout_groups(L, (enum par_group_kind)k);
        if (k == PAR_GROUP_EP || k == PAR_GROUP_EXPERT_TP || k == PAR_GROUP_EXPERT_DP)
            if (pc->ep == 1 && pc->expert_tp == pc->tp)
                continue; /* the same as tp and dp */
        char size[32];
        if (g->group_size)
            snprintf(size, sizeof size, "%d of %d", g->n_groups, g->group_size);
        else
            snprintf(size, sizeof size, "%d", g->n_groups);
        printf("  %-10s %-10s", par_group_name((enum par_group_kind)k), size);
        for (int i = 0; i < g->n_groups && i < 8; i++) {
            printf(" {");
            for (int j = 0; j < g->sizes[i]; j++)
                printf("%s%d", j ? "," : "", g->ranks[i][j]);
            printf("}");
        }
        if (g->n_groups > 8)
            printf(" ... %d more", g->n_groups - 8);
        printf("\n");
    }
}

static void print_json(const struct partition *P, const struct ir_schedule *S)
{
    const struct rank_layout *L = P->L;
    const struct par_config *pc = &L->pc;
    struct json j;
    json_init(&j, stdout);
    json_begin_object(&j, NULL);
    json_string(&j, "model", P->g->name);
    json_int(&j, "world_size", L->n_ranks);
    static const struct {
        const char *name;
        int offset;
    } sizes[] = {{"tp", offsetof(struct par_config, tp)}, {"pp", offsetof(struct par_config, pp)},
                 {"dp", offsetof(struct par_config, dp)}, {"cp", offsetof(struct par_config, cp)},
                 {"ep", offsetof(struct par_config, ep)}, {"expert_tp", offsetof(struct par_config, expert_tp)},
                 {"expert_dp", offsetof(struct par_config, expert_dp)}, {"etp", offsetof(struct par_config, etp)},
                 {"epp", offsetof(struct par_config, epp)}};
    for (size_t i = 0; i < WF_COUNT(sizes); i++)
        json_int(&j, sizes[i].name, *(const int *)((const char *)pc + sizes[i].offset));
    json_bool(&j, "sequence_parallel", pc->sequence_parallel);
    json_int(&j, "virtual_stages", P->virtual_stages);
    json_int(&j, "micro_batches", P->n_micro);
    json_string(&j, "schedule", ir_sched_name(S->kind));
    json_bool(&j, "verified", true);
    if (P->balanced_first) {
        json_int(&j, "balanced_first_stage_layers", P->balanced_first);
        json_int(&j, "balanced_last_stage_layers", P->balanced_last);
    }
    if (P->vocab) {
        json_int(&j, "vocab", P->vocab);
        json_int(&j, "padded_vocab", P->padded_vocab);
    }
    json_begin_array(&j, "chunks");
    for (int c = 0; c < P->n_chunks; c++) {
        const struct part_chunk *ch = &P->chunks[c];
        json_begin_object(&j, NULL);
        json_string(&j, "part", ir_part_name(ch->part));
        json_int(&j, "stage", ch->stage);
        json_int(&j, "virtual_stage", ch->vstage);
        json_int(&j, "first_layer", ch->first_layer);
        json_int(&j, "layers", ch->n_layers);
        json_bool(&j, "embedding", ch->has_embedding);
        json_bool(&j, "head", ch->has_head);
        json_double(&j, "flops", ch->flops);
        json_double(&j, "forward_seconds", ch->seconds);
        json_int(&j, "param_bytes", ch->param_bytes);
        json_end_object(&j);
    }
    json_end_array(&j);
    json_begin_object(&j, "groups");
    for (int k = 0; k < PAR_GROUP_COUNT; k++) {
        const struct rank_groups *g = rank_layout_groups(L, (enum par_group_kind)k);
        json_begin_array(&j, par_group_name((enum par_group_kind)k));
        for (int i = 0; i < g->n_groups; i++) {
            json_begin_array(&j, NULL);
            for (int r = 0; r < g->sizes[i]; r++)
                json_int(&j, NULL, g->ranks[i][r]);
            json_end_array(&j);
        }
        json_end_array(&j);
    }
    json_end_object(&j);
    json_begin_array(&j, "ranks");
    int *chunks = wf_calloc((size_t)P->n_chunks + 1, sizeof *chunks); /* a rank's chunks */
    for (int r = 0; r < L->n_ranks; r++) {
        const struct rank_coords *rc = &L->ranks[r];
        char role[64];
        snprintf(role, sizeof role, "%s stage %d", ir_part_name(rc->part), rc->pp);
        json_begin_object(&j, NULL);
        json_int(&j, "rank", r);
        json_string(&j, "role", role);
        json_string(&j, "part", ir_part_name(rc->part));
        json_int(&j, "stage", rc->stage);
        json_int(&j, "tp", rc->tp);
        json_int(&j, "cp", rc->cp);
        json_int(&j, "dp", rc->dp);
        json_int(&j, "pp", rc->pp);
        json_int(&j, "ep", rc->ep);
        json_int(&j, "expert_tp", rc->expert_tp);
        json_int(&j, "expert_dp", rc->expert_dp);
        int n = rank_chunks(P, r, chunks);
        json_begin_array(&j, "chunks");
        for (int i = 0; i < n; i++)
            json_int(&j, NULL, chunks[i]);
        json_end_array(&j);
        json_end_object(&j);
    }
    free(chunks);
    json_end_array(&j);
    json_end_object(&j);
    json_finish(&j);
}

int cmd_layout(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "layout", usage))
        return c.status;
    struct partition *P = cli_partition(&c);
    if (!P)
        return c.status;
    /* Build the step's schedule and prove it cannot hang before showing anything. */
    struct diag d;
    diag_init(&d);
    struct ir_schedule S;
    int rc = cli_schedule(&c, P, &S, &d);
    if (rc == 0)
        rc = ir_schedule_verify(&S, P->L, &d);
    diag_print(&d, stderr);
    diag_free(&d);
    if (rc == 0) {
        if (c.json)
            print_json(P, &S);
        else
            print_text(P, &S);
        ir_schedule_free(&S);
    }
    partition_free(P);
    return rc ? EXIT_BAD_INPUT : EXIT_OK;
}
