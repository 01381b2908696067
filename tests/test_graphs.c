/* test_graphs.c: backend.h's segments (runtime/segments.c) and the
 * executor's (runtime/exec.c), on tests/graphed.h's recorded graphs over the
 * CPU backend: training steps replayed from graphs give the steps run call
 * by call, bit for bit, with validation between them; each segment is
 * captured once; the kernels' arguments that change from step to step
 * (dropout seeds, the learning rate, Adam's bias corrections) are set into
 * the graphs, and without that the replay goes wrong; a backend that
 * refuses capture still runs everything; a segment that keeps changing
 * stops being captured; and on four ranks (tp 2, pp 2: segments between
 * tensor-parallel all-reduces and pipeline transfers, under 1F1B) the
 * replayed run is the run.  The multi-rank test runs this program again
 * under mpirun, each process a rank (WEFT_TEST_GRAPHS_RANK). */
#include "testing.h"
#include "comm.h"
#include "exec.h"
#include "graphed.h"

enum { SEED = 4321, STEPS = 5, EVAL_AFTER = 2 };

static char plan[] = "/tmp/weft-test-graphs-XXXXXX";

/* GPT-2 tiny (dropout, a tied embedding) for one rank, two micro-batches a
 * step, the learning rate warming up over the steps (the optimizer's
 * arguments differ every step). */
static int setup(void **state)
{
    (void)state;
    close(mkstemp(plan));
    const char *args[] = {"compile", "models/gpt2.xml", "--variant", "tiny", "--global-batch-size", "2", "--micro-batch-size", "1",
                          "--lr", "1e-3", "--lr-warmup-iters", "4", "--arch", "cpu", "-o", plan, NULL};
    struct run r;
    run_weftv(&r, args);
    if (r.status) {
        fprintf(stderr, "weft compile: %s\n", r.err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(plan);
    return 0;
}

enum mode { PLAIN, GRAPHS, GRAPHS_NO_CAPTURE, GRAPHS_UPDATES_DROPPED };

struct trace {
    double loss[STEPS], norm[STEPS], eval_loss, eval_tokens;
    struct backend_graph_stats stats[STEPS];
    uint8_t *arena;
    int64_t bytes;
};

static void train(enum mode mode, struct trace *t)
{
    struct diag d;
    diag_init(&d);
    struct rank_plan R;
    if (rank_plan_load(plan, 0, 1, &R, &d))
        fail_msg("%s", diag_first_error(&d));
    struct backend *be = backend_open(BACKEND_CPU, &R.kernels, &d);
    if (mode != PLAIN) {
        be = graphed_open(be);
        graphed_set_faults(be, mode == GRAPHS_NO_CAPTURE, mode == GRAPHS_UPDATES_DROPPED);
    }
    struct exec *x = be ? exec_new_on(&R, NULL, SEED, be, &d) : NULL;
    if (!x)
        fail_msg("%s", diag_first_error(&d));
    for (int s = 0; s < STEPS; s++) {
        struct exec_stats st;
        if (exec_step(x, s, &st, &d))
            fail_msg("step %d: %s", s + 1, diag_first_error(&d));
        t->loss[s] = st.loss, t->norm[s] = st.grad_norm;
        backend_graph_stats(be, &t->stats[s]);
        if (s == EVAL_AFTER && exec_evaluate(x, NULL, 0, &t->eval_loss, &t->eval_tokens, &d))
            fail_msg("validation: %s", diag_first_error(&d));
    }
    t->bytes = exec_arena_bytes(x);
    t->arena = malloc((size_t)t->bytes);
    memcpy(t->arena, exec_arena(x), (size_t)t->bytes);
    exec_free(x);
    rank_plan_free(&R);
    diag_free(&d);
}

static bool same_run(const struct trace *a, const struct trace *b)
{
    for (int s = 0; s < STEPS; s++)
        if (a->loss[s] != b->loss[s] || a->norm[s] != b->norm[s])
            return false;
    return a->eval_loss == b->eval_loss && a->bytes == b->bytes && !memcmp(a->arena, b->arena, (size_t)a->bytes);
}

/* Replayed steps are the steps: the same losses, norms and validation, and
 * the same arena (parameters, Adam's moments, the last activations) byte
 * for byte.  The first step runs call by call, the second captures every
 * segment, and the rest replay them, none captured again. */
static void test_replayed_steps_are_the_steps(void **state)
{
    (void)state;
    struct trace plain, graphs;
    train(PLAIN, &plain);
    train(GRAPHS, &graphs);
    const struct backend_graph_stats *first = &graphs.stats[0], *second = &graphs.stats[1], *last = &graphs.stats[STEPS - 1];
    long segments = first->eager, eval = last->eager - segments; /* a validation runs once: call by call */
    printf("    %d steps, a validation after step %d: %ld segments a step, %ld graphs captured, %ld launched (%ld calls), %ld kernel "
           "nodes given new arguments; loss %.6f -> %.6f, the same as call by call\n",
           STEPS, EVAL_AFTER + 1, segments, last->captured, last->replayed, last->calls, last->updated, graphs.loss[0],
           graphs.loss[STEPS - 1]);
    assert_true(same_run(&plain, &graphs));
    assert_true(segments > 4 && first->captured == 0 && first->replayed == 0);
    assert_true(second->captured == segments && second->replayed == segments && second->eager == segments);
    assert_int_equal(last->captured, segments);
    assert_int_equal(last->replayed, (STEPS - 1) * segments);
    assert_true(eval > 0 && eval < segments);
    assert_true(last->updated > 0);
    free(plain.arena), free(graphs.arena);
}

/* Graphs replayed with their captured arguments (the updates dropped) run
 * the second step's dropout masks and learning rate again: the run goes
 * wrong, so the updates carry what a step needs. */
static void test_stale_arguments_change_the_run(void **state)
{
    (void)state;
    struct trace plain, stale;
    train(PLAIN, &plain);
    train(GRAPHS_UPDATES_DROPPED, &stale);
    printf("    updates dropped: step %d's loss %.7f against %.7f\n", STEPS, stale.loss[STEPS - 1], plain.loss[STEPS - 1]);
    for (int s = 0; s < 2; s++) /* run call by call, and captured: the same */
        assert_true(stale.loss[s] == plain.loss[s]);
    assert_false(same_run(&plain, &stale));
    free(plain.arena), free(stale.arena);
}

/* A backend that cannot capture (a call it refuses inside a capture):
 * every segment runs call by call, and the run is the same. */
static void test_refused_capture_runs_call_by_call(void **state)
{
    (void)state;
    struct trace plain, eager;
    train(PLAIN, &plain);
    train(GRAPHS_NO_CAPTURE, &eager);
    const struct backend_graph_stats *last = &eager.stats[STEPS - 1];
    long segments = eager.stats[0].eager, eval = last->eager - STEPS * segments;
    assert_true(same_run(&plain, &eager));
    assert_true(last->captured == 0 && last->replayed == 0);
    assert_true(eval > 0 && eval < segments); /* every step's segments, and the validation's, call by call */
    free(plain.arena), free(eager.arena);
}

/* A segment whose calls change every time (a zeroing that grows): captured
 * anew each time until the limit, then run call by call; its work done
 * every time.  And a segment begun inside another is an error. */
static void test_changing_segment_stops_capturing(void **state)
{
    (void)state;
    struct diag d;
    diag_init(&d);
    struct rank_plan R;
    if (rank_plan_load(plan, 0, 1, &R, &d))
        fail_msg("%s", diag_first_error(&d));
    struct backend *be = graphed_open(backend_open(BACKEND_CPU, &R.kernels, &d));
    assert_non_null(be);
    enum { ROUNDS = 9, BYTES = 8 * ROUNDS };
    uint8_t *p = backend_alloc(be, BYTES, &d), ones[BYTES];
    memset(ones, 0xff, sizeof ones);
    for (int k = 0; k < ROUNDS; k++) {
        assert_int_equal(backend_put(be, p, ones, BYTES, &d), 0);
        assert_int_equal(backend_segment_begin(be, 42, &d), 0);
        assert_int_equal(backend_zero(be, p, (size_t)(8 * (k + 1)), &d), 0);
        if (k >= 1 && k <= 5) /* held until the segment ends: a second run and later, until it runs call by call for good */
            assert_true(p[0] == 0xff);
        assert_int_equal(backend_segment_end(be, &d), 0);
        for (int i = 0; i < BYTES; i++)
            assert_int_equal(p[i], i < 8 * (k + 1) ? 0 : 0xff);
    }
    struct backend_graph_stats s;
    backend_graph_stats(be, &s);
    printf("    a segment changed %d times: %ld graphs, %ld runs call by call\n", ROUNDS - 1, s.captured, s.eager);
    assert_int_equal(s.captured, 4);
    assert_int_equal(s.eager, ROUNDS - 4);
    for (int k = 0; k < 4; k++) { /* a run that does not change, whose backend moves its scratch after its graph: captured again */
        be->moves += k == 3;
        assert_int_equal(backend_put(be, p, ones, BYTES, &d), 0);
        assert_int_equal(backend_segment_begin(be, 7, &d), 0);
        assert_int_equal(backend_zero(be, p, 8, &d), 0);
        assert_int_equal(backend_segment_end(be, &d), 0);
        assert_true(p[0] == 0 && p[8] == 0xff);
    }
    struct backend_graph_stats t;
    backend_graph_stats(be, &t);
    assert_int_equal(t.captured - s.captured, 2);
    assert_int_equal(t.replayed - s.replayed, 3);
    assert_int_equal(backend_segment_begin(be, 1, &d), 0);
    assert_int_equal(backend_segment_begin(be, 2, &d), -1);
    assert_non_null(strstr(diag_first_error(&d), "begun inside segment 1"));
    assert_int_equal(backend_segment_end(be, &d), 0);
    backend_free(be, p);
    backend_close(be);
    rank_plan_free(&R);
    diag_free(&d);
}

static const char *self;

/* A rank of a run of plan WEFT_TEST_GRAPHS_PLAN, STEPS steps on the CPU
 * backend, through graphs where mode is "graphs": rank 0 prints each
 * step's loss and the graphs' figures, and the parameters go to
 * WEFT_TEST_GRAPHS_PARAMS. */
static int as_rank(const char *mode)
{
    struct diag d;
    diag_init(&d);
    struct comm *c = comm_mpi_open(NULL, NULL, 60, &d);
    struct rank_plan R;
    struct exec *x = NULL;
    if (!c || rank_plan_load(getenv("WEFT_TEST_GRAPHS_PLAN"), c->rank, c->size, &R, &d) || comm_groups(c, R.L, &R.schedule, &d)) {
        diag_print(&d, stderr);
        return 1;
    }
    struct backend *be = backend_open(BACKEND_CPU, &R.kernels, &d);
    if (be && !strcmp(mode, "graphs"))
        be = graphed_open(be);
    if (!be || !(x = exec_new_on(&R, c, SEED, be, &d))) {
        diag_print(&d, stderr);
        comm_abort(c, 1);
    }
    for (int s = 0; s < STEPS; s++) {
        struct exec_stats st;
        if (exec_step(x, s, &st, &d)) {
            diag_print(&d, stderr);
            comm_abort(c, 1);
        }
        if (c->rank == 0)
            printf("step %d loss %.9g norm %.9g\n", s + 1, st.loss, st.grad_norm);
    }
    struct backend_graph_stats g;
    backend_graph_stats(be, &g);
    printf("rank %d: %ld captured, %ld launched, %ld updated, %ld call by call\n", c->rank, g.captured, g.replayed, g.updated, g.eager);
    FILE *f = c->rank == 0 ? fopen(getenv("WEFT_TEST_GRAPHS_PARAMS"), "wb") : NULL;
    if (exec_dump_params(x, f, &d) || (f && fclose(f))) {
        diag_print(&d, stderr);
        comm_abort(c, 1);
    }
    exec_free(x);
    rank_plan_free(&R);
    comm_close(c);
    diag_free(&d);
    return 0;
}

static void run_ranks(const char *mode, const char *plan4, const char *params, struct run *r)
{
    setenv("WEFT_TEST_GRAPHS_RANK", mode, 1);
    setenv("WEFT_TEST_GRAPHS_PLAN", plan4, 1);
    setenv("WEFT_TEST_GRAPHS_PARAMS", params, 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "4", self, NULL};
    run_mpi(r, argv);
    unsetenv("WEFT_TEST_GRAPHS_RANK");
    if (r->status)
        fail_msg("%s run on 4 ranks: status %d: %s", mode, r->status, r->err);
}

/* Four ranks, tp 2 and pp 2, two micro-batches a step: the run through
 * graphs prints the same losses and norms and ends with the same
 * parameters, byte for byte, as the run call by call; every rank
 * captured graphs and replayed them. */
static void test_four_ranks_replayed_are_the_run(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char plan4[] = "/tmp/weft-test-graphs4-XXXXXX", a[] = "/tmp/weft-test-graphs-a-XXXXXX", b[] = "/tmp/weft-test-graphs-b-XXXXXX";
    close(mkstemp(plan4)), close(mkstemp(a)), close(mkstemp(b));
    const char *args[] = {"compile", "models/gpt2.xml", "--variant", "tiny", "--world-size", "4", "--tp", "2", "--pp", "2",
                          "--global-batch-size", "2", "--micro-batch-size", "1", "--lr", "1e-3", "--lr-warmup-iters", "4",
                          "--arch", "cpu", "-o", plan4, NULL};
    struct run r, plain, graphs;
    run_weftv(&r, args);
    if (r.status)
        fail_msg("weft compile: %s", r.err);
    run_ranks("plain", plan4, a, &plain);
    run_ranks("graphs", plan4, b, &graphs);
    size_t na, nb;
    char *pa = wf_read_file(a, 1 << 26, &na), *pb = wf_read_file(b, 1 << 26, &nb);
    for (const char *p = strstr(graphs.out, "step "); p; p = strstr(p + 1, "\nstep "))
        printf("    %.*s\n", (int)strcspn(p + (*p == '\n'), "\n"), p + (*p == '\n'));
    for (const char *p = strstr(graphs.out, "rank "); p; p = strstr(p + 1, "\nrank "))
        printf("    %.*s\n", (int)strcspn(p + (*p == '\n'), "\n"), p + (*p == '\n'));
    assert_non_null(pa);
    assert_non_null(pb);
    assert_true(na == nb && na > 64 && !memcmp(pa, pb, na));
    for (int s = 1; s <= STEPS; s++) { /* rank 0's lines: the same losses and norms */
        char key[32];
        snprintf(key, sizeof key, "step %d loss", s);
        const char *x = strstr(plain.out, key), *y = strstr(graphs.out, key);
        assert_true(x && y && !strncmp(x, y, strcspn(x, "\n")));
    }
    for (int k = 0; k < 4; k++) { /* every rank replayed graphs */
        char key[32];
        snprintf(key, sizeof key, "rank %d: ", k);
        const char *line = strstr(graphs.out, key);
        long captured = 0, launched = 0;
        assert_non_null(line);
        assert_int_equal(sscanf(line + strlen(key), "%ld captured, %ld launched", &captured, &launched), 2);
        assert_true(captured > 0 && launched >= (long)(STEPS - 1) * captured);
    }
    free(pa), free(pb);
    unlink(plan4), unlink(a), unlink(b);
}

int main(int argc, char **argv)
{
    (void)argc;
    self = argv[0];
    const char *mode = getenv("WEFT_TEST_GRAPHS_RANK");
    if (mode)
        return as_rank(mode);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replayed_steps_are_the_steps),
        cmocka_unit_test(test_stale_arguments_change_the_run),
        cmocka_unit_test(test_refused_capture_runs_call_by_call),
        cmocka_unit_test(test_changing_segment_stops_capturing),
        cmocka_unit_test(test_four_ranks_replayed_are_the_run),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
