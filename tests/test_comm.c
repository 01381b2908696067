/* test_comm.c: the MPI communicator's deadline: a rank that stops
 * answering is named by the others, which stop within --timeout instead of
 * waiting forever.  The test runs this program again under mpirun, as two
 * ranks: rank 1 never enters the all-reduce that rank 0 waits in. */
#include "testing.h"
#include "comm.h"

#include <time.h>

enum { TIMEOUT_S = 1, SILENT_S = 30 };

static const char *self; /* this program, run again as the ranks */

/* A rank of the job (run under mpirun with WEFT_TEST_COMM_RANKS set). */
static int as_rank(void)
{
    struct diag d;
    diag_init(&d);
    struct comm *c = comm_mpi_open(NULL, NULL, TIMEOUT_S, &d);
    struct par_config pc = par_config_default();
    pc.world_size = c ? c->size : 1;
    struct rank_layout *L = rank_layout_new(&pc, false, &d);
    if (!c || !L || comm_groups(c, L, NULL, &d)) {
        diag_print(&d, stderr);
        return 1;
    }
    if (c->rank == 1) { /* stops answering: a process stopped, a node gone */
        sleep(SILENT_S);
        return 0;
    }
    float x = 1;
    if (c->ops->collective(c, IR_GROUP_DP_CP, 0, IR_COLL_ALL_REDUCE, &x, &x, 1, IR_DTYPE_F32, &d)) {
        diag_print(&d, stderr);
        fflush(NULL);
        comm_abort(c, 1);
    }
    return 0;
}

static void test_a_silent_rank_is_named(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    struct run r;
    setenv("WEFT_TEST_COMM_RANKS", "1", 1);
    const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", self, NULL};
    time_t start = time(NULL);
    run_mpi(&r, argv);
    double took = difftime(time(NULL), start);
    unsetenv("WEFT_TEST_COMM_RANKS");
    printf("    rank 0 gave up after %.0f s (deadline %d s, rank 1 silent for %d s): %s", took, TIMEOUT_S, SILENT_S,
           strstr(r.err, "rank 0") ? strstr(r.err, "rank 0") : r.err);
    assert_false(r.timed_out);
    assert_int_not_equal(r.status, 0);
    assert_true(took < SILENT_S / 2); /* it did not wait for rank 1 to come back */
    assert_non_null(strstr(r.err, "all-reduce over dp_cp (ranks 0, 1): nobody answered in 1 s (--timeout): rank 1 stopped answering"));
}

int main(int argc, char **argv)
{
    (void)argc;
    self = argv[0];
    if (getenv("WEFT_TEST_COMM_RANKS"))
        return as_rank();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_silent_rank_is_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
