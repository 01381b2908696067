/* memory.c: the memory each rank needs, by category (see memory.h). */
#include "memory.h"
#include "util.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKSPACE_BYTES (32LL << 20)

static const char *cat_names[MEM_COUNT] = {"parameters", "gradients", "optimizer state", "activations",
                                           "communication buffers", "workspace"};

const char *mem_cat_name(enum mem_cat c) { return cat_names[c]; }

/* Views share their input's storage: the root owns the bytes. */
static int root(const struct ir_graph *g, int t)
{
    for (;;) {
        int p = g->tensors[t].producer;
        if (p < 0)
            return t;
        enum ir_op_kind k = g->ops[p].kind;
        if (k != IR_OP_SPLIT_HEADS && k != IR_OP_MERGE_HEADS && k != IR_OP_RESHAPE)
            return t;
        t = g->ops[p].in[0];
    }
}

static int64_t held_bytes(const struct partition *P, int chunk, int t)
{
    const struct ir_tensor *x = &P->g->tensors[t];
    struct ir_shape l = partition_local_shape(P, P->chunks[chunk].part, &x->shape, &P->shard[t]);
    return ir_shape_numel(&l) * partition_elem_bytes(P, x);
}

int64_t memory_chunk_activations(const struct partition *P, int chunk)
{
    const struct ir_graph *g = P->g;
    bool *kept = wf_calloc((size_t)g->n_tensors + 1, sizeof *kept);
    int64_t total = 0;
    for (int i = 0; i < g->n_ops; i++) {
        if (P->op_chunk[i] != chunk)
            continue;
        const struct ir_op *o = &g->ops[i];
        const struct ir_op_info *info = ir_op_info(o->kind);
        char words[128];
        snprintf(words, sizeof words, "%s", info->saves);
        for (char *w = strtok(words, " "); w; w = strtok(NULL, " ")) {
            if (!strcmp(w, "mask")) { /* a byte per output element */
                struct ir_shape l = partition_local_shape(P, P->chunks[chunk].part, &g->tensors[o->out[0]].shape,
                                                          &P->shard[o->out[0]]);
                total += ir_shape_numel(&l);
                continue;
            }
            if (!strcmp(w, "rowstats")) { /* two floats per row of the first input */
                const struct ir_tensor *x = &g->tensors[o->in[0]];
                struct ir_shape l = partition_local_shape(P, P->chunks[chunk].part, &x->shape, &P->shard[o->in[0]]);
                int64_t last = l.rank ? l.ax[l.rank - 1].size : 1;
                total += ir_shape_numel(&l) / (last ? last : 1) * 2 * 4;
                continue;
            }
            int t = -1;
            for (int k = 0; k < info->n_in_names && k < o->n_in; k++)
                if (!strcmp(info->in_names[k], w))
                    t = o->in[k];
            for (int k = 0; k < info->n_out_names && k < o->n_out; k++)
                if (!strcmp(info->out_names[k], w))
                    t = o->out[k];
            if (t < 0 || g->tensors[t].kind == IR_TENSOR_PARAM)
                continue; /* absent optional input, or a parameter (counted as parameters) */
            t = root(g, t);
            if (!kept[t]) {
                kept[t] = true;
                total += held_bytes(P, chunk, t);
            }
        }
    }
    free(kept);
    return total;
}

int64_t memory_chunk_working_set(const struct partition *P, int chunk)
{
    const struct ir_graph *g = P->g;
    /* Each storage root's first and last use, as positions among the
     * chunk's ops; a tensor that leaves the chunk lives to its end. */
    int *first = wf_calloc((size_t)g->n_tensors + 1, sizeof *first);
    int *last = wf_calloc((size_t)g->n_tensors + 1, sizeof *last);
    int *pos = wf_calloc((size_t)g->n_ops + 1, sizeof *pos);
    int n = 0;
    for (int i = 0; i < g->n_ops; i++)
        pos[i] = P->op_chunk[i] == chunk ? ++n : 0; /* 1-based; 0: elsewhere */
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *o = &g->ops[i];
        for (int k = 0; k < o->n_in + o->n_out; k++) {
            int t = k < o->n_in ? o->in[k] : o->out[k - o->n_in];
            if (t < 0 || g->tensors[t].kind == IR_TENSOR_PARAM)
                continue;
            int r = root(g, t), at = pos[i] ? pos[i] : n;
            if (!pos[i] && !first[r])
                continue; /* used elsewhere before (or without) this chunk */
            if (!first[r] || at < first[r])
                first[r] = at;
            if (at > last[r])
                last[r] = at;
        }
    }
    int64_t *delta = wf_calloc((size_t)n + 2, sizeof *delta);
    for (int t = 0; t < g->n_tensors; t++)
        if (first[t]) {
            int64_t b = held_bytes(P, chunk, t);
            delta[first[t]] += b;
            delta[last[t] + 1] -= b;
        }
    int64_t live = 0, peak = 0;
    for (int i = 1; i <= n; i++) {
        live += delta[i];
        peak = live > peak ? live : peak;
    }
    free(first);
    free(last);
    free(pos);
    free(delta);
    return peak;
}

void memory_plan(const struct partition *P, const struct ir_schedule *S, struct mem_report *m)
{
    memset(m, 0, sizeof *m);
    m->n_stages = S->n_stages;
    m->stages = wf_calloc((size_t)S->n_stages, sizeof *m->stages);
    /* What a forward of each chunk holds per micro-batch: what it keeps for
     * the backward; forward only, its working set, freed when it ends. */
    int64_t *chunk_act = wf_calloc((size_t)P->n_chunks, sizeof *chunk_act);
    for (int c = 0; c < P->n_chunks; c++)
        chunk_act[c] = S->forward_only ? memory_chunk_working_set(P, c) : memory_chunk_activations(P, c);
    bool bf16 = P->L->pc.bf16;
    for (int s = 0; s < S->n_stages; s++) {
        struct mem_stage *ms = &m->stages[s];
        int64_t params = partition_stage_param_elems(P, s);
        ms->bytes[MEM_PARAMS] = params * (bf16 ? 2 : 4);
        ms->bytes[MEM_GRADS] = S->forward_only ? 0 : params * 4;
        ms->bytes[MEM_OPTIMIZER] = S->forward_only ? 0 : params * (bf16 ? 12 : 8);
        /* Walk the schedule: a forward keeps its virtual stage's activations
         * until the matching backward frees them.  Chunks of one step keep
         * theirs side by side; forward only, they run one after the other
         * and the largest working set is what is held. */
        int v = S->virtual_stages;
        int64_t *per_v = wf_calloc((size_t)v, sizeof *per_v);
        for (int c = 0; c < P->n_chunks; c++)
            if (P->chunks[c].stage == s) {
                int64_t *h = &per_v[P->chunks[c].vstage];
                *h = S->forward_only ? (chunk_act[c] > *h ? chunk_act[c] : *h) : *h + chunk_act[c];
            }
        for (int k = 0; k < v; k++)
            ms->activations_per_micro += per_v[k];
        int64_t live = 0, peak = 0;
        int alive = 0, most = 0;
        const struct ir_program *prog = &S->programs[s];
        for (int i = 0; i < prog->n; i++) {
            const struct ir_ins *x = &prog->ins[i];
            if (x->kind == IR_INS_FORWARD) {
                live += per_v[x->vstage];
                alive++;
                if (live > peak) {
                    peak = live;
                    most = alive;
                }
                if (S->forward_only) { /* nothing waits for a backward */
                    live -= per_v[x->vstage];
                    alive--;
                }
            } else if (x->kind == IR_INS_BACKWARD) {
                live -= per_v[x->vstage];
                alive--;
            } else if (x->kind == IR_INS_P2P) {
                int64_t b = 0;
                for (int k = 0; k < x->n_p2p; k++)
                    b += x->p2p[k].bytes;
                ms->bytes[MEM_COMM] = b > ms->bytes[MEM_COMM] ? b : ms->bytes[MEM_COMM];
            }
        }
        free(per_v);
        ms->bytes[MEM_ACTIVATIONS] = peak;
        ms->in_flight = most;
        int64_t coll = 0; /* the largest collective's output on this stage */
        for (int x = 0; x < P->n_xfers; x++) {
            const struct part_xfer *px = &P->xfers[x];
            if (px->kind == PART_XFER_SEND || px->kind == PART_XFER_SLICE || P->chunks[px->to_chunk].stage != s)
                continue;
            int64_t b = px->kind == PART_XFER_ALL_GATHER
                            ? px->bytes * partition_degree(P, P->chunks[px->to_chunk].part, px->over)
                            : px->bytes;
            coll = b > coll ? b : coll;
        }
        ms->bytes[MEM_COMM] += coll;
        ms->bytes[MEM_WORKSPACE] = WORKSPACE_BYTES;
        for (int k = 0; k < MEM_COUNT; k++)
            ms->total += ms->bytes[k];
        if (ms->total > m->stages[m->largest].total)
            m->largest = s;
    }
    free(chunk_act);
}

int memory_check(const struct partition *P, const struct mem_report *m, int64_t limit, struct diag *d)
{
    int errors = 0;
    for (int s = 0; s < m->n_stages; s++) {
        const struct mem_stage *ms = &m->stages[s];
        if (ms->total <= limit)
            continue;
        int r = 0;
        while (r < P->L->n_ranks && P->L->ranks[r].stage != s)
            r++;
        /* Its items, largest first. */
        int order[MEM_COUNT];
        for (int k = 0; k < MEM_COUNT; k++)
            order[k] = k;
        for (int a = 0; a < MEM_COUNT; a++)
            for (int b = a + 1; b < MEM_COUNT; b++)
                if (ms->bytes[order[b]] > ms->bytes[order[a]]) {
                    int t = order[a];
                    order[a] = order[b];
                    order[b] = t;
                }
        char items[1024], x[32], y[32];
        size_t n = 0;
        for (int k = 0; k < 3; k++) {
            n += (size_t)snprintf(items + n, sizeof items - n, "%s%s %s", k ? ", " : "", mem_cat_name((enum mem_cat)order[k]),
                                  wf_bytes((double)ms->bytes[order[k]], x));
            if (order[k] == MEM_ACTIVATIONS && n < sizeof items)
                n += (size_t)snprintf(items + n, sizeof items - n, " (%d micro-batch%s in flight)", ms->in_flight,
                                      ms->in_flight == 1 ? "" : "es");
        }
        diag_error(d, NULL, 0, "--memory-limit %s: rank %d (%s stage %d, and every rank of that stage) needs %s: %s",
                   wf_bytes((double)limit, y), r, ir_part_name(P->L->ranks[r].part), s, wf_bytes((double)ms->total, x),
                   items);
        errors++;
    }
    return errors ? -1 : 0;
}

void mem_report_free(struct mem_report *m)
{
    free(m->stages);
    memset(m, 0, sizeof *m);
}

int64_t memory_parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0) || !isfinite(v))
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    static const struct {
        const char *suffix;
        double scale;
    } units[] = {{"", 1},        {"B", 1},        {"K", 1024.0},    {"KiB", 1024.0},  {"KB", 1e3},
                 {"M", 1048576.0}, {"MiB", 1048576.0}, {"MB", 1e6},     {"G", 1073741824.0},
                 {"GiB", 1073741824.0}, {"GB", 1e9}, {"T", 1099511627776.0}, {"TiB", 1099511627776.0}, {"TB", 1e12}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].suffix)) {
            double b = v * units[i].scale;
            return b < 9e18 ? (int64_t)b : -1;
        }
    return -1;
}
