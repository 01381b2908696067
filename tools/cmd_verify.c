/* cmd_verify.c: `weft verify MODEL.plan`: the proof again, from the file alone. */
#include "cli.h"
#include "actions.h"
#include "kernel.h"
#include "memplan.h"
#include "plan.h"
#include "program.h"

#include <stdio.h>

static const char usage[] =
    "usage: weft verify MODEL.plan\n\nCheck every section's checksum, then run every rank's program from the plan\n"
    "against the others: every send meets its receive, every collective its whole\n"
    "group in one order; and check every rank's memory plan: no two buffers alive\n"
    "at once share a byte; and check every action (actions.N): each GEMM's matrices,\n"
    "each kernel's slots as far as the kernel reaches for its sizes, each\n"
    "collective's payload inside its buffer.  Exit 0 if so; 2 with the ranks and\n"
    "what they wait for (or the buffers that collide, or the action), or if the\n"
    "plan is unreadable.\n";

int cmd_verify(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "verify", usage))
        return c.status;
    if (!c.model) {
        fputs(usage, stderr);
        return EXIT_BAD_INPUT;
    }
    struct diag d;
    diag_init(&d);
    struct plan *p = plan_open(c.model, &d);
    struct par_config pc;
    bool enc;
    struct rank_layout *L = NULL;
    struct ir_schedule S = {0};
    struct ir_memory M = {0};
    int rc = -1;
    /* Every section's checksum first, read or not by the proof. */
    bool intact = p != NULL;
    for (int i = 0; intact && i < plan_n_sections(p); i++) {
        struct plan_reader r;
        intact = plan_read(p, plan_section_name(p, i), &r, &d) == 0;
    }
    if (intact && ir_layout_read(p, &pc, &enc, &d) == 0 && (L = rank_layout_new(&pc, enc, &d)) &&
        ir_schedule_read(p, -1, &S, &d) == 0) {
        rc = ir_schedule_verify(&S, L, &d);
        if (rc == 0 && (rc = ir_memory_read(p, S.n_stages, -1, &M, &d)) == 0)
            rc = ir_memory_check(&M, &d);
        struct kn_set K = {0}; /* the kernels' descriptions and launches read back whole */
        if (rc == 0 && plan_has(p, "kernels"))
            rc = kn_set_read(p, &K, &d);
        struct ir_actions A; /* every action's accesses inside its buffers */
        if (rc == 0 && (rc = ir_actions_read(p, S.n_stages, -1, &A, &d)) == 0) {
            rc = ir_actions_check(&A, &M, plan_has(p, "kernels") ? &K : NULL, &S, &d);
            ir_actions_free(&A);
        }
        kn_set_free(&K);
        if (rc == 0) {
            int n = 0;
            for (int s = 0; s < S.n_stages; s++)
                n += S.programs[s].n;
            printf("%s: %d sections intact; verified on all %d ranks (%d stages, %d instructions): every send\n"
                   "meets its receive and every collective its whole group, in one order; the step cannot hang;\n"
                   "no two buffers alive at once share a byte of any rank's arena; every action's GEMM, kernel,\n"
                   "collective and zeroing stays inside its buffers\n",
                   c.model, plan_n_sections(p), L->n_ranks, S.n_stages, n);
        }
    }
    diag_print(&d, stderr);
    ir_schedule_free(&S);
    ir_memory_free(&M);
    rank_layout_free(L);
    plan_close(p);
    diag_free(&d);
    return rc ? EXIT_BAD_INPUT : EXIT_OK;
}
