/* cmd_check.c: `weft check MODEL.xml`: validate a model, print what it is. */
#include "cli.h"
#include "json.h"
#include "partition.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: weft check MODEL.xml [--variant NAME] [--FLAG VALUE]... [--set DIM=VALUE]... [layout flags...] [--json]\n"
    "\n"
    "Validate a model file and print its parts, dimensions, parameter count\n"
    "(total and per layer), FLOPs per token and weight memory.\n"
    "  --variant NAME    apply a <variant> of the file first (e.g. tiny)\n"
    "  --FLAG VALUE      set the dimension bound to a Megatron flag (--num-layers 48)\n"
    "  --set DIM=VALUE   set any dimension by its name (--set ffn=4*hidden)\n"
    "  layout flags      weft layout's (--world-size, --tp, --pp, ...): check that layout too\n"
    "  --json            print one JSON object instead\n"
    "Exit status: 0 valid, 2 invalid (each error names file:line).\n";

static void print_json(const struct ir_graph *g, const struct model_summary *s)
{
    struct json j;
    json_init(&j, stdout);
    json_begin_object(&j, NULL);
    json_string(&j, "model", g->name);
    json_string(&j, "file", g->file);
    json_string(&j, "variant", g->variant);
    json_begin_array(&j, "parts");
    for (int p = 0; p < IR_PART_COUNT; p++)
        if (g->has_part[p])
            json_string(&j, NULL, ir_part_name((enum ir_part)p));
    json_end_array(&j);
    json_begin_object(&j, "dims");
    for (int i = 0; i < g->n_dims; i++)
        json_int(&j, g->dims[i].name, g->dims[i].value);
    json_end_object(&j);
    json_int(&j, "params", s->params);
    json_begin_object(&j, "params_by_part");
    for (int p = 0; p < IR_PART_COUNT; p++)
        if (s->params_by_part[p])
            json_int(&j, ir_part_name((enum ir_part)p), s->params_by_part[p]);
    json_end_object(&j);
    json_begin_array(&j, "blocks");
    for (int b = 0; b < s->n_blocks; b++) {
        json_begin_object(&j, NULL);
        json_string(&j, "name", s->blocks[b].name);
        json_int(&j, "count", s->blocks[b].count);
        json_int(&j, "params_each", s->blocks[b].params_per_iter);
        json_end_object(&j);
    }
    json_end_array(&j);
    json_int(&j, "tokens_per_sample", s->tokens);
    json_begin_object(&j, "flops_per_token");
    json_double(&j, "forward", s->flops_per_token_forward);
    json_double(&j, "training", s->flops_per_token_train);
    json_end_object(&j);
    json_begin_object(&j, "weight_bytes");
    json_int(&j, "fp32", s->weight_bytes_fp32);
    json_int(&j, "bf16", s->weight_bytes_bf16);
    json_end_object(&j);
    json_int(&j, "tensors", g->n_tensors);
    json_int(&j, "ops", g->n_ops);
    json_end_object(&j);
    json_finish(&j);
}

static void print_text(const struct ir_graph *g, const struct model_summary *s)
{
    char a[32], b[32], c[32];
    printf("%s  (%s%s%s)\n", g->name, g->file, g->variant ? ", variant " : "", g->variant ? g->variant : "");
    for (int p = 0; p < IR_PART_COUNT; p++) {
        if (!g->has_part[p])
            continue;
        printf("  %-12s", ir_part_name((enum ir_part)p));
        int shown = 0;
        for (int k = 0; k < g->n_blocks; k++)
            if (g->blocks[k].part == (enum ir_part)p && g->blocks[k].parent < 0)
                printf("%s%" PRId64 " x %s", shown++ ? ", " : "", g->blocks[k].count,
                       strrchr(g->blocks[k].name, '.') + 1);
        printf("%s%s params\n", shown ? ", " : "", wf_commas(s->params_by_part[p], a));
    }
    if (s->params_by_part[IR_PART_SHARED])
        printf("  %-12s%s params shared by the parts\n", "shared", wf_commas(s->params_by_part[IR_PART_SHARED], a));
    printf("\n  %-14s %13s   %s\n", "dimension", "value", "flag");
    for (int i = 0; i < g->n_dims; i++) {
        const struct ir_dim *dm = &g->dims[i];
        char flag[160] = "", note[512] = "";
        if (dm->flag)
            snprintf(flag, sizeof flag, "--%s", dm->flag);
        bool literal = strspn(dm->expr, "0123456789") == strlen(dm->expr);
        if (dm->set_by)
            snprintf(note, sizeof note, "set by %s%s%s", dm->set_by, literal ? "" : ": ", literal ? "" : dm->expr);
        else if (!literal)
            snprintf(note, sizeof note, "= %s", dm->expr);
        char line[1024];
        int len = snprintf(line, sizeof line, "  %-14s %13s   %-34s %s", dm->name, wf_commas(dm->value, a), flag, note);
        while (len > 0 && line[len - 1] == ' ')
            line[--len] = 0;
        puts(line);
    }
    printf("\n  %-14s %s\n", "parameters", wf_commas(s->params, a));
    for (int k = 0; k < s->n_blocks; k++)
        printf("  %-14s %s each, %" PRId64 " x %s\n", k ? "" : "per layer", wf_commas(s->blocks[k].params_per_iter, a),
               s->blocks[k].count, s->blocks[k].name);
    printf("  %-14s %s forward, %s training (x3), over %s tokens a sample\n", "FLOPs/token",
           wf_si(s->flops_per_token_forward, "FLOP", a), wf_si(s->flops_per_token_train, "FLOP", b),
           wf_commas(s->tokens, c));
    printf("  %-14s %s in fp32, %s in bf16\n", "weights", wf_bytes((double)s->weight_bytes_fp32, a),
           wf_bytes((double)s->weight_bytes_bf16, b));
}

int cmd_check(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "check", usage))
        return c.status;
    struct ir_graph *g = cli_load_model(&c);
    if (!g)
        return c.status;
    if (c.parallel_given) { /* also check the layout the flags describe */
        struct partition *P = cli_partition(&c);
        if (!P) {
            ir_graph_free(g);
            return c.status;
        }
        partition_free(P);
    }
    struct diag d;
    diag_init(&d);
    struct model_summary s;
    int rc = model_summarize(g, &s, &d);
    diag_print(&d, stderr);
    diag_free(&d);
    if (rc == 0) {
        if (c.json)
            print_json(g, &s);
        else
            print_text(g, &s);
    }
    ir_graph_free(g);
    return rc ? EXIT_BAD_INPUT : EXIT_OK;
}
