/* weft.c: the weft command: one subcommand per job (DESIGN.md). */
#include "cli.h"
#include "frontend.h"
#include "util.h"

#include <stdio.h>
#include <string.h>


static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"check", cmd_check, "validate a model file; print its dimensions, parameters and FLOPs"},
    {"compile", cmd_compile, "compile a model for a layout into one deployable plan file"},
    {"verify", cmd_verify, "prove from a plan file alone that its step cannot hang"},
    {"inspect", cmd_inspect, "show a plan: roles, memory, one rank's program (--rank)"},
    {"layout", cmd_layout, "lay a model out on ranks: coordinates, stages, layers, groups"},
    {"dot", cmd_dot, "draw the partitioned model: stages, layers or ops, transfers (.svg .png .dot)"},
    {"simulate", cmd_simulate, "predict a training step's time and bubble; draw its timeline (.svg)"},
    {"run", cmd_run, "train: run a plan on CPU ranks (synthetic data, or --data-path), under mpirun or srun"},
    {"data", cmd_data, "make training data: JSON lines into Megatron's indexed dataset (.bin, .idx)"},
    {"plot", cmd_plot, "draw a run's loss, validation loss and tokens/s from its --log (.svg .png)"},
    {"ops", cmd_ops, "list the op kinds a model file can use"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: weft COMMAND [ARGS]   (weft COMMAND --help for each)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_BAD_INPUT : EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("weft %s\n", WEFT_VERSION);
        return EXIT_OK;
    }
    if (!strcmp(argv[1], "run"))
        cmd_run_blas_env(argv);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            int rc = commands[i].run(argc - 2, argv + 2);
            fe_cleanup();
            return rc;
        }
    fprintf(stderr, "weft: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return EXIT_BAD_INPUT;
}
