/* cmd_dot.c: `weft dot MODEL.xml [layout flags] -o graph.svg`: the partitioned model as a picture. */
#include "cli.h"
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
    int rc = dot_write(P, detail, c.output, &d);
    diag_print(&d, stderr);
    diag_free(&d);
    partition_free(P);
    return rc ? EXIT_BAD_INPUT : EXIT_OK;
}
