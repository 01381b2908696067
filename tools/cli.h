/* cli.h: the weft command line, shared by every subcommand.
 *
 *   struct cli c;
 *   if (cli_parse(&c, argc, argv, "check", usage)) return c.status; // --help: 0; usage error: 2
 *   struct ir_graph *g = cli_load_model(&c);                      // errors printed: NULL
 *
 * Each command takes only its own flags; one table in cli.c says which
 * command takes which, and any other flag is a usage error naming the
 * commands it belongs to (or, unknown, the closest flag's name).  Megatron's
 * flag names reach the model: on a command that reads a model file, any
 * `--NAME VALUE` (or --NAME=VALUE) the tool does not know itself sets the
 * dimension whose flag="NAME"; the front end says so when no dimension of
 * the model binds that flag. */
#ifndef WEFT_CLI_H
#define WEFT_CLI_H

#include <stdbool.h>

#include "compiler.h"
#include "cost.h"
#include "layout.h"
#include "optim.h"
#include "program.h"

#define CLI_MAX_OVERRIDES 64

enum { EXIT_OK = 0, EXIT_FAILURE_RUN = 1, EXIT_BAD_INPUT = 2 };

struct cli {
    const char *cmd;
    const char *model;  /* the positional argument */
    const char *output; /* -o */
    const char *detail; /* --detail (weft dot) */
    const char *schedule; /* --pipeline-schedule */
    bool infer;           /* --mode infer (train by default) */
    struct optim_config opt; /* --lr, --clip-grad, ... (Megatron's names) */
    const char *gpu, *calibration; /* --gpu NAME, --calibration FILE (weft compile, simulate) */
    int rank;             /* --rank (weft inspect); -1: none */
    int64_t memory_limit; /* --memory-limit (weft compile); 0: none */
    const char *arch;     /* --arch (weft compile); NULL: the default */
    bool no_gemm_epilogues; /* --gemm-epilogues off (weft compile) */
    bool kernels, source; /* --kernels, --source (weft inspect) */
    bool actions;         /* --actions (weft inspect --rank R) */
    int kernel;           /* --kernel N (weft inspect); -1: none */
    bool json;
    struct fe_options fe;
    struct par_config pc;
    bool parallel_given; /* any layout flag */
    struct fe_override overrides[CLI_MAX_OVERRIDES];
    char keys[CLI_MAX_OVERRIDES][128]; /* the overrides' names */
    int status; /* exit status when cli_parse says stop */
};

/* Non-zero when the command should stop and exit with c->status: after a
 * usage error (2), or after printing `usage` for --help (0). */
int cli_parse(struct cli *c, int argc, char **argv, const char *cmd, const char *usage);
struct ir_graph *cli_load_model(struct cli *c);
/* Lay the model out by the parallel flags; errors printed: NULL. */
struct partition *cli_partition(struct cli *c);
/* The device a command costs a step on, into dev: --gpu's; else a plan's
 * own (the one it was compiled for); else --arch's (sm_90: h100, sm_80:
 * a100, cpu); else DEVICE_DEFAULT; then --calibration's constants over it.
 * Errors printed: NULL. */
const struct device *cli_device(struct cli *c, struct device *dev);
/* Whether a path is a plan file (by its magic), not a model file. */
bool cli_is_plan(const char *path);
/* The step's schedule: a plan's own, or built from --pipeline-schedule and
 * --mode; errors into d. */
int cli_schedule(const struct cli *c, const struct partition *P, struct ir_schedule *S, struct diag *d);

int cmd_check(int argc, char **argv);
int cmd_layout(int argc, char **argv);
int cmd_dot(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_compile(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_ops(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_data(int argc, char **argv);
/* Before weft run: OpenBLAS's environment, which may run weft again (argv: main's, whole). */
void cmd_run_blas_env(char **argv);

#endif
