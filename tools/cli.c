/* cli.c: parse the flags every subcommand shares; load a model with them. */
#include "cli.h"
#include "partition.h"
#include "memory.h"
#include "plan.h"
#include "program.h"
#include "schedule.h"

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

int cli_parse(struct cli *c, int argc, char **argv, const char *cmd, const char *usage)
{
    bool help = false;
    memset(c, 0, sizeof *c);
    c->cmd = cmd;
    c->fe.overrides = c->overrides;
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
        if (!strcmp(a, "--json")) {
            c->json = true;
            continue;
        }
        if (!strcmp(a, "--kernels") || !strcmp(a, "--source")) {
            *(a[2] == 'k' ? &c->kernels : &c->source) = true;
            continue;
        }
        const struct par_flag *pf = a[1] == '-' ? par_flag_find(a + 2) : NULL;
        if (pf && pf->is_bool) {
            *(bool *)((char *)&c->pc + pf->offset) = true;
            c->parallel_given = true;
            continue;
        }
        /* Flags with a value: --name VALUE or --name=VALUE (and -o FILE). */
        const char *name = a + (a[1] == '-' ? 2 : 1), *eq = strchr(name, '='), *value;
        char key[128];
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        if (len >= sizeof key || len == 0)
            return usage_error(c, "bad flag '%s'%s", a, "");
        memcpy(key, name, len);
        key[len] = 0;
        if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return usage_error(c, "%s needs a value%s", a, "");
        }
        if (!strcmp(key, "o") || !strcmp(key, "output")) {
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
        } else if (!strcmp(key, "device-file")) {
            c->device_file = value;
        } else if (!strcmp(key, "detail")) {
            c->detail = value;
        } else if (!strcmp(key, "variant")) {
            c->fe.variant = value;
        } else if (a[1] != '-') {
            return usage_error(c, "unknown option '%s'%s", a, "");
        } else if (a[1] == '-' && optim_is_flag(key)) {
            char err[256];
            if (optim_flag_set(&c->opt, key, value, err, sizeof err))
                return usage_error(c, "%s%s", err, "");
            c->parallel_given = true; /* a plan's optimizer is fixed, like its layout */
        } else if (a[1] == '-' && (pf = par_flag_find(key))) {
            char *end;
            errno = 0;
            long v = strtol(value, &end, 10);
            if (!*value || *end || errno || v < 0 || v > 1 << 30)
                return usage_error(c, "--%s %s: expected a non-negative integer", key, value);
            *(int *)((char *)&c->pc + pf->offset) = (int)v;
            c->parallel_given = true; /* --micro-batch-size also sizes the model's batch: partition_model */
        } else if (c->fe.n_overrides == CLI_MAX_OVERRIDES) {
            return usage_error(c, "too many dimension flags (at most %s)%s", "64", "");
        } else if (!strcmp(key, "set")) {
            const char *e = strchr(value, '=');
            if (!e || e == value || !e[1])
                return usage_error(c, "--set %s: expected NAME=VALUE%s", value, "");
            int k = c->fe.n_overrides++;
            snprintf(c->keys[k], sizeof c->keys[k], "%.*s", (int)(e - value), value);
            c->overrides[k] = (struct fe_override){FE_SET, c->keys[k], e + 1};
        } else {
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
