/* cli.c: parse the flags every subcommand shares; load a model with them. */
#include "cli.h"
#include "partition.h"
#include "memory.h"
#include "plan.h"
#include "program.h"
#include "rank_plan.h"
#include "schedule.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>

#include <stdio.h>
#include <string.h>

static int usage_error(struct cli *c, const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "weft %s: ", c->cmd);
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n(see 'weft %s --help')\n", c->cmd);
    c->status = EXIT_BAD_INPUT;
    return -1;
}

/* Which command takes which flag: the one table.  A row is a flag (its name
 * without dashes) or a family kept in a table of its own: <layout>, the
 * parallel and batch flags (par_flags, ir/layout.c); <optimizer>, Megatron's
 * optimizer flags (ir/optim.c); <model>, any other --NAME VALUE, which sets
 * the dimension the model file binds to NAME.  A flag given to a command
 * that does not take it is a usage error; -h and --help go everywhere. */
#define MODEL_COMMANDS "check layout compile dot simulate"
enum cli_arity { CLI_VALUE, CLI_SWITCH, CLI_PER_FLAG /* a family: each flag says */ };
static const struct cli_flag {
    const char *name;
    const char *commands; /* the commands that take it, by name */
    enum cli_arity arity;
    const char *what; /* a family: what its flags are */
} cli_flags[] = {
    {"<model>", MODEL_COMMANDS, CLI_VALUE, NULL},
    {"variant", MODEL_COMMANDS, CLI_VALUE, NULL},
    {"set", MODEL_COMMANDS, CLI_VALUE, NULL},
    {"<layout>", MODEL_COMMANDS, CLI_PER_FLAG, "a layout flag"}, /* check: also checks the layout they give */
    {"pipeline-schedule", "layout compile simulate", CLI_VALUE, NULL},
    {"mode", "layout compile simulate", CLI_VALUE, NULL},
    {"<optimizer>", "compile", CLI_VALUE, "an optimizer flag"},
    {"memory-limit", "compile", CLI_VALUE, NULL},
    {"gemm-epilogues", "compile", CLI_VALUE, NULL},
    {"arch", "compile simulate", CLI_VALUE, NULL},
    {"gpu", "compile simulate", CLI_VALUE, NULL},
    {"calibration", "compile simulate", CLI_VALUE, NULL},
    {"detail", "dot", CLI_VALUE, NULL},
    {"o", "compile dot simulate", CLI_VALUE, NULL},
    {"output", "compile dot simulate", CLI_VALUE, NULL},
    {"json", "check layout simulate inspect ops", CLI_SWITCH, NULL},
    {"rank", "inspect", CLI_VALUE, NULL},
    {"kernels", "inspect", CLI_SWITCH, NULL},
    {"kernel", "inspect", CLI_VALUE, NULL},
    {"source", "inspect", CLI_SWITCH, NULL},
    {"actions", "inspect", CLI_SWITCH, NULL},
};

static const struct cli_flag *cli_flag_row(const char *name)
{
    for (size_t i = 0; i < WF_COUNT(cli_flags); i++)
        if (!strcmp(cli_flags[i].name, name))
            return &cli_flags[i];
    return NULL;
}

/* Whether the row's commands include cmd, as a whole word. */
static bool row_takes(const struct cli_flag *f, const char *cmd)
{
    size_t n = strlen(cmd);
    for (const char *p = f->commands; (p = strstr(p, cmd)); p += n)
        if ((p == f->commands || p[-1] == ' ') && (p[n] == ' ' || !p[n]))
            return true;
    return false;
}

/* Every flag name cmd takes, for a "did you mean" (-o aside: one letter). */
static void offer_flags(struct wf_suggest *s, const void *ctx)
{
    const char *cmd = ctx;
    for (size_t i = 0; i < WF_COUNT(cli_flags); i++) {
        const struct cli_flag *f = &cli_flags[i];
        if (!row_takes(f, cmd))
            continue;
        if (!strcmp(f->name, "<layout>")) {
            for (int k = 0; k < par_n_flags; k++) {
                wf_suggest_add(s, par_flags[k].name);
                if (par_flags[k].short_name)
                    wf_suggest_add(s, par_flags[k].short_name);
            }
        } else if (!strcmp(f->name, "<optimizer>")) {
            for (int k = 0; optim_flag_name(k); k++)
                wf_suggest_add(s, optim_flag_name(k));
        } else if (f->name[0] != '<' && f->name[1]) {
            wf_suggest_add(s, f->name);
        }
    }
}

/* "--arch is a flag of weft compile, not of weft layout": the flag's row is
 * not this command's (<model>: the command reads no model file). */
static int not_ours(struct cli *c, const char *shown, const char *key, const struct cli_flag *f)
{
    struct wf_suggest sg = wf_suggest_begin(key);
    offer_flags(&sg, c->cmd);
    char hint[160], owners[160];
    wf_suggest_text(&sg, "--", hint, sizeof hint);
    /* "weft compile", "weft compile and simulate", "weft layout, compile and simulate" */
    size_t n = (size_t)snprintf(owners, sizeof owners, "weft");
    int words = 0, k = 0;
    for (const char *p = f->commands; *p; p += strcspn(p, " "), p += *p == ' ')
        words++;
    for (const char *p = f->commands; *p && n < sizeof owners; k++) {
        size_t len = strcspn(p, " ");
        n += (size_t)snprintf(owners + n, sizeof owners - n, "%s%.*s", !k ? " " : k == words - 1 ? " and " : ", ",
                              (int)len, p);
        p += len + (p[len] == ' ');
    }
    fprintf(stderr, "weft %s: ", c->cmd);
    if (!strcmp(f->name, "<model>")) /* weft CMD reads no model file, so no model can bind it */
        fprintf(stderr, "unknown flag '%s'%s", shown, hint);
    else
        fprintf(stderr, "%s is %s of %s, not of weft %s", shown, f->what ? f->what : "a flag", owners, c->cmd);
    fprintf(stderr, "\n(see 'weft %s --help')\n", c->cmd);
    c->status = EXIT_BAD_INPUT;
    return -1;
}

int cli_parse(struct cli *c, int argc, char **argv, const char *cmd, const char *usage)
{
    bool help = false;
    memset(c, 0, sizeof *c);
    c->cmd = cmd;
    c->fe.overrides = c->overrides;
    c->fe.offer_flags = offer_flags;
    c->fe.offer_ctx = cmd;
    c->pc = par_config_default();
    c->rank = -1;
    c->kernel = -1;
    c->opt = optim_config_default();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !a[1]) {
            if (c->model)
                return usage_error(c, "unexpected argument '%s'%s", a, " (one model file at a time)");
            c->model = a;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help = true;
            continue;
        }
        /* --name VALUE, --name=VALUE, --switch, -o FILE */
        bool dashes = a[1] == '-';
        const char *name = a + (dashes ? 2 : 1), *eq = strchr(name, '='), *value = NULL;
        char key[128], shown[160];
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        if (len >= sizeof key || len == 0)
            return usage_error(c, "bad flag '%s'%s", a, "");
        memcpy(key, name, len);
        key[len] = 0;
        snprintf(shown, sizeof shown, "%s%s", dashes ? "--" : "-", key);
        const struct par_flag *pf = NULL;
        const struct cli_flag *f = cli_flag_row(key);
        if (f && (f->name[1] != 0) != dashes) /* -o, but --json, --tp ... */
            f = NULL;
        if (!f && dashes && (pf = par_flag_find(key)))
            f = cli_flag_row("<layout>");
        else if (!f && dashes && optim_is_flag(key))
            f = cli_flag_row("<optimizer>");
        else if (!f && dashes)
            f = cli_flag_row("<model>");
        if (!f && !dashes)
            return usage_error(c, "unknown option '%s'%s", a, "");
        if (!row_takes(f, cmd))
            return not_ours(c, shown, key, f);
        bool takes_value = f->arity == CLI_VALUE || (f->arity == CLI_PER_FLAG && !pf->is_bool);
        if (!takes_value) {
            if (eq)
                return usage_error(c, "%s takes no value%s", shown, "");
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return usage_error(c, "%s needs a value%s", a, "");
        }
        if (pf && pf->is_bool) {
            *(bool *)((char *)&c->pc + pf->offset) = true;
            c->parallel_given = true;
        } else if (pf) {
            char *end;
            errno = 0;
            long v = strtol(value, &end, 10);
            if (!*value || *end || errno || v < pf->min || v > 1 << 30) {
                fprintf(stderr, "weft %s: --%s %s: expected %s integer\n(see 'weft %s --help')\n", cmd, key, value,
                        pf->min > 0 ? "a positive" : "a non-negative", cmd);
                c->status = EXIT_BAD_INPUT;
                return -1;
            }
            *(int *)((char *)&c->pc + pf->offset) = (int)v;
            c->parallel_given = true; /* --micro-batch-size also sizes the model's batch: partition_model */
        } else if (!strcmp(key, "json")) {
            c->json = true;
        } else if (!strcmp(key, "kernels") || !strcmp(key, "source")) {
            *(key[0] == 'k' ? &c->kernels : &c->source) = true;
        } else if (!strcmp(key, "actions")) {
            c->actions = true;
        } else if (!strcmp(key, "o") || !strcmp(key, "output")) {
            c->output = value;
        } else if (!strcmp(key, "pipeline-schedule")) {
            if (ir_sched_parse(value) < 0)
                return usage_error(c, "--pipeline-schedule %s: expected gpipe, 1f1b or interleaved%s", value, "");
            c->schedule = value;
        } else if (!strcmp(key, "mode")) {
            if (strcmp(value, "train") && strcmp(value, "infer"))
                return usage_error(c, "--mode %s: expected train or infer%s", value, "");
            c->infer = !strcmp(value, "infer");
            c->parallel_given = true; /* a plan's mode is fixed, like its layout */
        } else if (!strcmp(key, "rank")) {
            char *end;
            long v = strtol(value, &end, 10);
            if (!*value || *end || v < 0 || v > 1 << 30)
                return usage_error(c, "--rank %s: expected a rank number%s", value, "");
            c->rank = (int)v;
        } else if (!strcmp(key, "memory-limit")) {
            c->memory_limit = memory_parse_size(value);
            if (c->memory_limit <= 0)
                return usage_error(c, "--memory-limit %s: expected a size such as 80GiB, 512MiB or 1e9%s", value, "");
        } else if (!strcmp(key, "gemm-epilogues")) {
            if (strcmp(value, "on") && strcmp(value, "off"))
                return usage_error(c, "--gemm-epilogues %s: expected on or off%s", value, "");
            c->no_gemm_epilogues = !strcmp(value, "off");
        } else if (!strcmp(key, "arch")) {
            c->arch = value;
        } else if (!strcmp(key, "kernel")) {
            char *end;
            long v = strtol(value, &end, 10);
            if (!*value || *end || v < 0 || v > 1 << 20)
                return usage_error(c, "--kernel %s: expected a kernel's number (weft inspect --kernels lists them)%s", value, "");
            c->kernel = (int)v;
        } else if (!strcmp(key, "gpu")) {
            c->gpu = value;
        } else if (!strcmp(key, "calibration")) {
            c->calibration = value;
        } else if (!strcmp(key, "detail")) {
            c->detail = value;
        } else if (!strcmp(key, "variant")) {
            c->fe.variant = value;
        } else if (!strcmp(f->name, "<optimizer>")) {
            char err[256];
            if (optim_flag_set(&c->opt, key, value, err, sizeof err))
                return usage_error(c, "%s%s", err, "");
            c->parallel_given = true; /* a plan's optimizer is fixed, like its layout */
        } else if (c->fe.n_overrides == CLI_MAX_OVERRIDES) {
            return usage_error(c, "too many dimension flags (at most %s)%s", "64", "");
        } else if (!strcmp(key, "set")) {
            const char *e = strchr(value, '=');
            if (!e || e == value || !e[1])
                return usage_error(c, "--set %s: expected NAME=VALUE%s", value, "");
            int k = c->fe.n_overrides++;
            snprintf(c->keys[k], sizeof c->keys[k], "%.*s", (int)(e - value), value);
            c->overrides[k] = (struct fe_override){FE_SET, c->keys[k], e + 1};
        } else { /* <model>: the model file says whether a dimension binds it */
            int k = c->fe.n_overrides++;
            memcpy(c->keys[k], key, len + 1);
            c->overrides[k] = (struct fe_override){FE_FLAG, c->keys[k], value};
        }
    }
    if (help) {
        fputs(usage, stdout);
        c->status = EXIT_OK;
        return 1;
    }
    return 0;
}

struct ir_graph *cli_load_model(struct cli *c)
{
    if (!c->model) {
        usage_error(c, "no model file given%s%s", "", "");
        return NULL;
    }
    struct diag d;
    diag_init(&d);
    struct ir_graph *g = partition_load_model(c->model, &c->fe, &c->pc, &d);
    diag_print(&d, stderr);
    diag_free(&d);
    if (!g)
        c->status = EXIT_BAD_INPUT;
    return g;
}

const struct device *cli_device(struct cli *c, struct device *dev)
{
    struct diag d;
    diag_init(&d);
    const struct device *base = NULL;
    if (c->gpu) {
        if (!(base = device_find(c->gpu)))
            diag_error(&d, NULL, 0, "--gpu %s: unknown device (built in: %s; --calibration FILE changes one's constants)", c->gpu,
                       device_names());
    } else if (c->model && cli_is_plan(c->model)) { /* the device it was compiled for */
        struct plan *p = plan_open(c->model, &d);
        struct plan_meta m;
        if (p && plan_meta_read(p, &m, &d) == 0) {
            if (!(base = device_find(m.device)))
                diag_error(&d, NULL, 0, "%s was compiled for device '%s', which is not built in (%s): name one with --gpu",
                           c->model, m.device, device_names());
            plan_meta_free(&m);
        }
        plan_close(p);
    } else if (c->arch) {
        base = device_for_archs(c->arch, &d);
    } else {
        base = device_find(DEVICE_DEFAULT);
    }
    if (base) {
        *dev = *base;
        if (c->calibration && device_calibrate(dev, c->calibration, &d))
            base = NULL;
    }
    diag_print(&d, stderr);
    diag_free(&d);
    if (!base)
        c->status = EXIT_BAD_INPUT;
    return base ? dev : NULL;
}

bool cli_is_plan(const char *path)
{
    char magic[8] = {0};
    FILE *f = fopen(path, "rb");
    bool plan = f && fread(magic, 1, 8, f) == 8 && !memcmp(magic, PLAN_MAGIC, 8);
    if (f)
        fclose(f);
    return plan;
}

int cli_schedule(const struct cli *c, const struct partition *P, struct ir_schedule *S, struct diag *d)
{
    if (cli_is_plan(c->model)) {
        struct plan *p = plan_open(c->model, d);
        int rc = p ? ir_schedule_read(p, -1, S, d) : -1;
        plan_close(p);
        return rc;
    }
    enum ir_sched_kind kind = c->schedule ? (enum ir_sched_kind)ir_sched_parse(c->schedule) : schedule_default(P);
    return schedule_build(P, kind, c->infer, S, d);
}

struct partition *cli_partition(struct cli *c)
{
    if (!c->model) {
        usage_error(c, "no model file given%s%s", "", "");
        return NULL;
    }
    struct diag d;
    diag_init(&d);
    bool plan = cli_is_plan(c->model);
    if (plan && (c->parallel_given || c->fe.n_overrides || c->fe.variant))
        diag_error(&d, NULL, 0, "%s is a compiled plan: its layout and sizes are fixed; drop the layout and model flags",
                   c->model);
    struct partition *P = d.n_errors ? NULL : plan ? partition_from_plan(c->model, &d) : partition_model(c->model, &c->fe, &c->pc, &d);
    diag_print(&d, stderr);
    diag_free(&d);
    if (!P)
        c->status = EXIT_BAD_INPUT;
    return P;
}
