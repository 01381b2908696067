/* cmd_run.c: `weft run PLAN [--steps N] [--seed S] [--log FILE]`: train. */
#include "cli.h"
#include "exec.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: weft run PLAN [--steps N] [--seed S] [--log FILE]\n"
    "\n"
    "Run a compiled plan: every rank allocates the one arena its memory plan\n"
    "sizes, draws the parameters from the seed (by their index in the whole\n"
    "tensor, so every layout starts from the same model), and walks its\n"
    "actions: GEMMs through OpenBLAS, kernels from the plan's CPU object.\n"
    "The data are synthetic token ids from the seed.  Prints one line per\n"
    "iteration; --log FILE writes one JSON object per iteration (iteration,\n"
    "loss, lr, grad_norm, step_time, tokens_per_s).\n"
    "This weft runs plans for one rank; collectives and pipeline transfers\n"
    "(mpirun -np N) come next.\n"
    "  --steps N    iterations to run (default 10)\n"
    "  --seed S     the parameters' and the data's seed (default 1234)\n"
    "  --log FILE   the per-iteration JSON lines\n";

int cmd_run(int argc, char **argv)
{
    const char *path = NULL, *log = NULL;
    long steps = 10;
    unsigned long long seed = 1234;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return EXIT_OK;
        }
        bool has = i + 1 < argc;
        char *end = NULL;
        if (!strcmp(a, "--steps") && has) {
            steps = strtol(argv[++i], &end, 10);
            if (*end || steps < 0) {
                fprintf(stderr, "weft run: --steps %s: expected a count of iterations\n", argv[i]);
                return EXIT_BAD_INPUT;
            }
        } else if (!strcmp(a, "--seed") && has) {
            seed = strtoull(argv[++i], &end, 10);
            if (*end) {
                fprintf(stderr, "weft run: --seed %s: expected an integer\n", argv[i]);
                return EXIT_BAD_INPUT;
            }
        } else if (!strcmp(a, "--log") && has)
            log = argv[++i];
        else if (a[0] != '-' && !path)
            path = a;
        else {
            fprintf(stderr, "weft run: %s: unknown flag or missing value\n%s", a, usage);
            return EXIT_BAD_INPUT;
        }
    }
    if (!path) {
        fprintf(stderr, "weft run: no plan file given\n%s", usage);
        return EXIT_BAD_INPUT;
    }
    struct diag d;
    diag_init(&d);
    struct rank_plan R;
    int rc = rank_plan_load(path, 0, 1, &R, &d);
    struct exec *x = rc ? NULL : exec_new(&R, seed, &d);
    if (!rc && !R.train)
        diag_error(&d, NULL, 0, "%s is a forward-only plan (--mode infer): weft run trains; compile it for training", path);
    FILE *lf = NULL;
    if (x && !d.n_errors && log && !(lf = fopen(log, "w")))
        diag_error(&d, NULL, 0, "--log %s: cannot write it", log);
    if (!x || d.n_errors) {
        diag_print(&d, stderr);
        diag_free(&d);
        exec_free(x);
        rank_plan_free(&R);
        if (lf)
            fclose(lf);
        return EXIT_BAD_INPUT;
    }
    double total = 0;
    int64_t tokens = 0;
    for (long it = 0; it < steps; it++) {
        struct exec_stats st;
        if (exec_step(x, it, &st, &d)) {
            rc = EXIT_FAILURE_RUN;
            break;
        }
        total += st.seconds;
        tokens += st.tokens;
        printf("iteration %6ld/%ld | loss %.6f | lr %.3e | grad norm %.4f | %.1f ms | %.0f tokens/s\n", it + 1, steps, st.loss,
               st.lr, st.grad_norm, st.seconds * 1e3, (double)st.tokens / st.seconds);
        if (lf)
            fprintf(lf, "{\"iteration\": %ld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"step_time\": %.6f, \"tokens_per_s\": %.1f}\n",
                    it + 1, st.loss, st.lr, st.grad_norm, st.seconds, (double)st.tokens / st.seconds);
    }
    if (rc == 0 && steps) {
        char a[32], b[32];
        printf("%ld iterations in %.2f s, %.0f tokens/s; rank 0's arena %s (the plan's %s)\n", steps, total, (double)tokens / total,
               wf_bytes((double)R.memory.roles[R.stage].total, a), wf_bytes((double)R.memory.roles[R.stage].total, b));
    }
    diag_print(&d, stderr);
    diag_free(&d);
    if (lf)
        fclose(lf);
    exec_free(x);
    rank_plan_free(&R);
    return rc;
}
