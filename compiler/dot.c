/* dot.c: build a cgraph graph of a partition and write it as DOT, SVG or PNG. */
#include "dot.h"
#include "util.h"

#include <graphviz/cgraph.h>
#include <graphviz/gvc.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LAYERS_SHOWN 1 /* a chunk shows its first and last layer; those between fold into one node */

static const char *part_fill[IR_PART_COUNT] = {"#f2f2f2", "#e3eefc", "#fdf0e0"};
static const char *xfer_color[PART_XFER_COUNT] = {"#1f4e9c", "#c0392b", "#1e8449", "#d35400", "#7d3c98", "#999999", "#a93226"};

static void set(void *obj, const char *name, const char *value)
{
    agsafeset(obj, (char *)name, (char *)value, (char *)""); /* cgraph 2.42 takes char * */
}

/* The item (node) an op belongs to: at layer detail a chunk's pre-layer
 * ops, each layer (or the folded middle), its post-layer ops. */
struct items {
    int n;
    int *of_op;
    struct item {
        int chunk;
        int first_layer, last_layer; /* -1: ops outside layers */
        bool post;
        double flops;
        int n_ops;
        int out_tensor; /* the last op's first output, to show its shard shape */
        int64_t xfer_bytes[PART_XFER_COUNT][IR_PDIM_COUNT];
        int xfer_count[PART_XFER_COUNT][IR_PDIM_COUNT];
        Agnode_t *node;
    } *v;
};

static int item_for(struct items *it, const struct partition *P, int op, enum dot_detail detail)
{
    const struct ir_op *o = &P->g->ops[op];
    int c = P->op_chunk[op];
    const struct part_chunk *ch = &P->chunks[c];
    int layer = -1, last = -1;
    bool post = false;
    if (detail == DOT_DETAIL_OP) {
        layer = op; /* one item per op */
        last = op;
    } else if (o->block >= 0) {
        /* the middle layers of a long chunk fold into one item */
        int l = partition_op_layer(P->g, o);
        int first = ch->first_layer, end = ch->first_layer + ch->n_layers - 1;
        if (ch->n_layers > 2 * LAYERS_SHOWN + 1 && l >= first + LAYERS_SHOWN && l <= end - LAYERS_SHOWN) {
            layer = first + LAYERS_SHOWN;
            last = end - LAYERS_SHOWN;
        } else {
            layer = last = l;
        }
    } else {
        /* ops outside layers: before them (embedding) or after them (head) */
        for (int k = op - 1; k >= 0 && P->op_chunk[k] == c; k--)
            if (P->g->ops[k].block >= 0)
                post = true;
    }
    for (int i = 0; i < it->n; i++)
        if (it->v[i].chunk == c && it->v[i].first_layer == layer && it->v[i].post == post)
            return i;
    it->v = wf_realloc(it->v, (size_t)(it->n + 1) * sizeof *it->v);
    memset(&it->v[it->n], 0, sizeof it->v[it->n]);
    it->v[it->n].chunk = c;
    it->v[it->n].first_layer = layer;
    it->v[it->n].last_layer = last;
    it->v[it->n].post = post;
    return it->n++;
}

static void ranks_text(const struct partition *P, int chunk, char *buf, size_t cap)
{
    int lo = -1, hi = -1, n = 0;
    for (int r = 0; r < P->L->n_ranks; r++)
        if (partition_rank_runs(P, r, chunk)) {
            if (lo < 0)
                lo = r;
            hi = r;
            n++;
        }
    if (n == hi - lo + 1)
        snprintf(buf, cap, n == 1 ? "rank %d" : "ranks %d-%d", lo, hi);
    else
        snprintf(buf, cap, "%d ranks from %d", n, lo);
}

static void shard_shape(const struct partition *P, int t, char *buf, size_t cap)
{
    const struct ir_tensor *x = &P->g->tensors[t];
    enum ir_part part = P->chunks[P->op_chunk[x->producer >= 0 ? x->producer : 0]].part;
    struct ir_shape l = partition_local_shape(P, part, &x->shape, &P->shard[t]);
    size_t len = (size_t)snprintf(buf, cap, "(");
    for (int k = 0; k < l.rank && len < cap; k++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%" PRId64 "%s", k ? ", " : "", l.ax[k].size,
                                P->shard[t].split[k] ? "*" : "");
    if (len < cap)
        snprintf(buf + len, cap - len, ")%s", P->shard[t].partial ? " partial" : "");
}

static void item_label(const struct partition *P, const struct item *x, enum dot_detail detail, char *buf, size_t cap)
{
    char shape[128], fl[32], by[32];
    size_t len = 0;
    const struct ir_graph *g = P->g;
    if (detail == DOT_DETAIL_OP) {
        const struct ir_op *o = &g->ops[x->first_layer];
        len += (size_t)snprintf(buf + len, cap - len, "%s\\n%s", ir_op_info(o->kind)->name, g->tensors[o->out[0]].local_name);
        for (int k = 0; k < o->n_in; k++)
            if (o->in[k] >= 0 && g->tensors[o->in[k]].kind == IR_TENSOR_PARAM)
                len += (size_t)snprintf(buf + len, cap - len, " · %s", g->tensors[o->in[k]].local_name);
    } else if (x->first_layer >= 0) {
        if (x->first_layer == x->last_layer)
            len += (size_t)snprintf(buf + len, cap - len, "layer %d", x->first_layer);
        else
            len += (size_t)snprintf(buf + len, cap - len, "layers %d-%d (%d alike)", x->first_layer, x->last_layer,
                                    x->last_layer - x->first_layer + 1);
    } else {
        len += (size_t)snprintf(buf + len, cap - len, "%s", x->post ? (P->chunks[x->chunk].part == IR_PART_ENCODER ? "output" : "head") : "embedding");
        len += (size_t)snprintf(buf + len, cap - len, " (%d ops)", x->n_ops);
    }
    shard_shape(P, x->out_tensor, shape, sizeof shape);
    len += (size_t)snprintf(buf + len, cap - len, "\\n%s per rank · %s", shape, wf_si(x->flops, "FLOP", fl));
    for (int k = 0; k < PART_XFER_COUNT; k++)
        for (int p = 0; p < IR_PDIM_COUNT; p++)
            if (x->xfer_count[k][p] && k != PART_XFER_SEND && k != PART_XFER_SLICE && len < cap)
                len += (size_t)snprintf(buf + len, cap - len, "\\n%d %s %s · %s", x->xfer_count[k][p],
                                        part_xfer_name((enum part_xfer_kind)k), ir_pdim_name((enum ir_pdim)p),
                                        wf_bytes((double)x->xfer_bytes[k][p], by));
}

/* One node: a table of the colours (an HTML-like label). */
static void legend(Agraph_t *g, const struct partition *P)
{
    char html[2048];
    size_t len = (size_t)snprintf(html, sizeof html,
                                  "<TABLE BORDER=\"0\" CELLBORDER=\"0\" CELLSPACING=\"2\"><TR><TD><B>legend</B></TD></TR>");
    for (int p = IR_PART_ENCODER; p < IR_PART_COUNT; p++)
        if (P->g->has_part[p])
            len += (size_t)snprintf(html + len, sizeof html - len, "<TR><TD BGCOLOR=\"%s\">%s</TD></TR>", part_fill[p],
                                    ir_part_name((enum ir_part)p));
    for (int k = 0; k < PART_XFER_COUNT; k++)
        len += (size_t)snprintf(html + len, sizeof html - len, "<TR><TD><FONT COLOR=\"%s\">%s</FONT></TD></TR>",
                                xfer_color[k], part_xfer_name((enum part_xfer_kind)k));
    snprintf(html + len, sizeof html - len, "<TR><TD><FONT POINT-SIZE=\"8\">* a split axis</FONT></TD></TR></TABLE>");
    Agnode_t *n = agnode(g, (char *)"legend", 1);
    agsafeset(n, (char *)"label", agstrdup_html(g, html), (char *)"");
    set(n, "shape", "box");
    set(n, "style", "dashed");
}

static Agraph_t *build(const struct partition *P, const struct kn_set *K, enum dot_detail detail, struct items *it)
{
    const struct ir_graph *g = P->g;
    Agraph_t *G = agopen((char *)g->name, Agdirected, NULL);
    set(G, "rankdir", "TB");
    set(G, "fontname", "Helvetica");
    set(G, "newrank", "true");
    char title[512];
    const struct par_config *pc = &P->L->pc;
    char enc[64] = "", ep[64] = "";
    if (P->L->has_encoder && pc->epp > 0)
        snprintf(enc, sizeof enc, "; encoder tp %d, pp %d", pc->etp, pc->epp);
    if (pc->ep > 1)
        snprintf(ep, sizeof ep, ", ep %d", pc->ep);
    snprintf(title, sizeof title, "%s on %d ranks: tp %d, pp %d, dp %d%s%s%s%s", g->name, P->L->n_ranks, pc->tp, pc->pp,
             pc->dp, pc->cp > 1 ? ", cp" : "", ep, pc->sequence_parallel ? ", sequence parallel" : "", enc);
    set(G, "label", title);
    set(G, "labelloc", "t");
    agattr(G, AGNODE, (char *)"shape", "box");
    agattr(G, AGNODE, (char *)"style", "rounded,filled");
    agattr(G, AGNODE, (char *)"fontname", "Helvetica");
    agattr(G, AGNODE, (char *)"fontsize", "10");
    agattr(G, AGNODE, (char *)"fillcolor", "white");
    agattr(G, AGEDGE, (char *)"fontname", "Helvetica");
    agattr(G, AGEDGE, (char *)"fontsize", "9");

    it->of_op = wf_calloc((size_t)g->n_ops + 1, sizeof *it->of_op);
    for (int i = 0; i < g->n_ops; i++) {
        int x = it->of_op[i] = item_for(it, P, i, detail);
        it->v[x].flops += ir_op_flops(g, &g->ops[i]);
        it->v[x].n_ops++;
        it->v[x].out_tensor = g->ops[i].out[0];
    }
    for (int i = 0; i < P->n_xfers; i++) {
        const struct part_xfer *x = &P->xfers[i];
        if (x->grad)
            continue; /* the picture is of the forward */
        struct item *m = &it->v[it->of_op[x->op]];
        bool on_edge = false; /* at op detail an input's transfer is drawn on its edge */
        for (int k = 0; detail == DOT_DETAIL_OP && k < g->ops[x->op].n_in; k++)
            on_edge |= g->ops[x->op].in[k] == x->tensor && g->tensors[x->tensor].producer >= 0;
        if (on_edge)
            continue;
        m->xfer_count[x->kind][x->over]++;
        m->xfer_bytes[x->kind][x->over] += x->bytes;
    }
    Agraph_t **clusters = wf_calloc((size_t)P->n_chunks + 1, sizeof *clusters);
    for (int c = 0; c < P->n_chunks; c++) {
        char name[32], label[256], ranks[64];
        snprintf(name, sizeof name, "cluster_%d", c);
        clusters[c] = agsubg(G, name, 1);
        ranks_text(P, c, ranks, sizeof ranks);
        const struct part_chunk *ch = &P->chunks[c];
        if (P->virtual_stages > 1 && ch->part == IR_PART_DECODER)
            snprintf(label, sizeof label, "%s stage %d, virtual stage %d · %s", ir_part_name(ch->part), ch->stage,
                     ch->vstage, ranks);
        else
            snprintf(label, sizeof label, "%s stage %d · %s", ir_part_name(ch->part), ch->stage, ranks);
        set(clusters[c], "label", label);
        set(clusters[c], "style", "filled");
        set(clusters[c], "fillcolor", part_fill[ch->part]);
        set(clusters[c], "color", "#888888");
    }
    /* at op detail, a fused forward launch's ops in a box of their own, named
     * by its kernel (by each of them, when an op takes several: the
     * vocab-parallel loss's, split around its collectives) */
    Agraph_t **launch = K && detail == DOT_DETAIL_OP ? wf_calloc((size_t)K->n_launches + 1, sizeof *launch) : NULL;
    for (int l = 0; launch && l < K->n_launches; l++) {
        const struct kn_launch *L = &K->launches[l];
        if (!L->n_ops || K->op_launch[K->ops[L->first_op]] != l)
            continue; /* the optimizer's (no op), a backward, or an op's later launch */
        char name[32], label[512] = "";
        snprintf(name, sizeof name, "cluster_launch_%d", l);
        launch[l] = agsubg(clusters[L->chunk], name, 1);
        size_t n = 0;
        for (int m = l; m < K->n_launches && K->launches[m].n_ops && K->ops[K->launches[m].first_op] == K->ops[L->first_op] && K->launches[m].when == L->when &&
                        n < sizeof label;
             m++)
            n += (size_t)snprintf(label + n, sizeof label - n, "%s%s", m > l ? " + " : "", K->kernels[K->launches[m].kernel].name);
        set(launch[l], "label", label);
        set(launch[l], "style", "dashed,rounded");
        set(launch[l], "color", "#555555");
        set(launch[l], "fontsize", "9");
    }
    for (int i = 0; i < it->n; i++) {
        char name[32], label[2048];
        snprintf(name, sizeof name, "n%d", i);
        int l = launch && detail == DOT_DETAIL_OP ? K->op_launch[it->v[i].first_layer] : -1;
        it->v[i].node = agnode(l >= 0 ? launch[l] : clusters[it->v[i].chunk], name, 1);
        item_label(P, &it->v[i], detail, label, sizeof label);
        set(it->v[i].node, "label", label);
    }
    /* Data flow between items; a transfer on the way labels the edge. */
    for (int i = 0; i < g->n_ops; i++) {
        const struct ir_op *o = &g->ops[i];
        for (int k = 0; k < o->n_in; k++) {
            int t = o->in[k];
            if (t < 0 || g->tensors[t].producer < 0)
                continue;
            int a = it->of_op[g->tensors[t].producer], b = it->of_op[i];
            if (a == b)
                continue;
            char label[256] = "", by[32];
            int kind = -1;
            size_t len = 0;
            for (int x = 0; x < P->n_xfers; x++) {
                const struct part_xfer *px = &P->xfers[x];
                bool here = !px->grad && px->tensor == t && (px->op == i || (px->kind == PART_XFER_SEND && px->to_chunk == P->op_chunk[i]));
                if (!here || (px->kind == PART_XFER_SLICE && detail != DOT_DETAIL_OP))
                    continue;
                if (detail == DOT_DETAIL_LAYER && px->kind != PART_XFER_SEND)
                    continue; /* at layer detail collectives are counted on the node */
                len += (size_t)snprintf(label + len, sizeof label - len, "%s%s%s%s %s", len ? "\\n" : "",
                                        part_xfer_name(px->kind), px->over ? " " : "", px->over ? ir_pdim_name(px->over) : "",
                                        wf_bytes((double)px->bytes, by));
                if (kind < 0 || px->kind == PART_XFER_SEND)
                    kind = px->kind;
            }
            Agedge_t *e = agedge(G, it->v[a].node, it->v[b].node, NULL, 0);
            if (e)
                continue; /* one edge per pair of items */
            e = agedge(G, it->v[a].node, it->v[b].node, NULL, 1);
            if (kind >= 0) {
                set(e, "label", label);
                set(e, "color", xfer_color[kind]);
                set(e, "fontcolor", xfer_color[kind]);
                if (kind == PART_XFER_SEND)
                    set(e, "penwidth", "2");
                if (kind == PART_XFER_SLICE)
                    set(e, "style", "dotted");
            }
        }
    }
    legend(G, P);
    free(clusters);
    free(launch);
    return G;
}

int dot_write(const struct partition *P, const struct kn_set *kernels, enum dot_detail detail, const char *path,
              struct diag *d)
{
    const char *ext = strrchr(path, '.');
    const char *format = !ext ? NULL : !strcmp(ext, ".dot") ? "dot" : !strcmp(ext, ".svg") ? "svg"
                                     : !strcmp(ext, ".png") ? "png" : NULL;
    if (!format) {
        diag_error(d, NULL, 0, "-o %s: the output's extension says its format: .dot, .svg or .png", path);
        return -1;
    }
    struct items it = {0};
    Agraph_t *G = build(P, kernels, detail, &it);
    int rc = 0;
    if (!strcmp(format, "dot")) {
        FILE *f = fopen(path, "w");
        if (!f || agwrite(G, f) != 0 || fclose(f) != 0) {
            diag_error(d, path, 0, "cannot write: %s", strerror(errno));
            rc = -1;
        }
    } else {
        GVC_t *gvc = gvContext();
        if (gvLayout(gvc, G, "dot") != 0 || gvRenderFilename(gvc, G, format, path) != 0) {
            diag_error(d, path, 0, "Graphviz could not lay out or render the graph as %s", format);
            rc = -1;
        }
        gvFreeLayout(gvc, G);
        gvFreeContext(gvc);
    }
    agclose(G);
    free(it.v);
    free(it.of_op);
    return rc;
}
