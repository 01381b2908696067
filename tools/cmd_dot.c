/* cmd_dot.c: `weft dot MODEL.xml [layout flags] -o graph.svg`: the partitioned model as a picture. */
#include "cli.h"
#include "fuse.h"
#include "plan.h"
#include "dot.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: weft dot MODEL.xml [layout flags...] [--detail layer|op] -o FILE.{svg,png,dot}\n"
    "       weft dot MODEL.plan [--detail layer|op] -o FILE.{svg,png,dot}\n"
    "\n"
    "Draw the model as weft partitions it: a cluster per pipeline stage, a node per\n"
    "layer (runs of alike layers folded) or per op, with the shape each rank holds,\n"
    "and every transfer: pipeline sends between stages, and the collectives each\n"
    "layer runs (on the edges with --detail op), with their group and bytes.\n"
    "With --detail op, the ops one fused kernel runs are boxed under its name.\n"
    "Layout flags are weft layout's (--world-size, --tp, --pp, ...).\n";

int cmd_dot(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "dot", usage))
        return c.status;
    enum dot_detail detail = DOT_DETAIL_LAYER;
    if (c.detail) {
        if (!strcmp(c.detail, "op"))
            detail = DOT_DETAIL_OP;
        else if (strcmp(c.detail, "layer")) {
            fprintf(stderr, "weft dot: --detail %s: expected layer or op\n", c.detail);
            return EXIT_BAD_INPUT;
        }
    }
    if (!c.output) {
        fprintf(stderr, "weft dot: -o FILE is needed (.svg, .png or .dot)\n");
        return EXIT_BAD_INPUT;
    }
    struct partition *P = cli_partition(&c);
    if (!P)
        return c.status;
    struct diag d;
    diag_init(&d);
    /* the kernels a plan holds, or those the fusion pass makes of the model */
    struct kn_set K = {0};
    int rc = 0;
    if (detail == DOT_DETAIL_OP) {
        struct plan *p = cli_is_plan(c.model) ? plan_open(c.model, &d) : NULL;
        struct optim_config opt = optim_config_default();
        if (p)
            rc = kn_set_read(p, &K, &d);
        else
            fuse(P, &opt, &K);
        plan_close(p);
    }
    if (rc == 0)
        rc = dot_write(P, &K, detail, c.output, &d);
    kn_set_free(&K);
    diag_print(&d, stderr);
    diag_free(&d);
    partition_free(P);
    return rc ? EXIT_BAD_INPUT : EXIT_OK;
}
