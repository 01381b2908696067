/* test_comm.c: the communicators (comm.h).
 *   - the MPI communicator's deadline: a rank that stops answering is named
 *     by the others, which stop within --timeout instead of waiting forever
 *     (rank 1 never enters the all-reduce that rank 0 waits in), on host
 *     buffers and on device buffers staged through the host;
 *   - the plan's communicators (comm_splits) are the layout's groups;
 *   - a shared GPU is found in any communicator, and only there;
 *   - the staged layer gives what MPI gives on host buffers, for every
 *     collective, dtype and group and for pipeline transfers, on 2 and 4
 *     ranks, with a backend whose "device" memory only put and get touch;
 *   - comm_use_device's choice: MPI where ranks share a GPU (--comm auto),
 *     a failure naming them (--comm nccl), NCCL's bootstrap otherwise;
 *   - nccl_abi.h against nccl.h, where the toolkit has it.
 * The multi-rank tests run this program again under mpirun
 * (WEFT_TEST_COMM_RANKS names what each rank does). */
#include "testing.h"
#include "backend_impl.h"
#include "comm.h"
#include "comm_impl.h" /* comm_split_name */
#include "nccl_abi.h"

#include <time.h>

enum { TIMEOUT_S = 1, SILENT_S = 30 };

static const char *self; /* this program, run again as the ranks */

/* A backend whose "device" memory is host memory that only put and get
 * touch: what it allocates it holds, and it counts the copies. */
struct fake_gpu {
    struct backend be;
    uint8_t *held[64];
    size_t held_bytes[64];
    int n_held, copies;
    char bus_id[32];
};

static bool fake_holds(struct backend *be, const void *p)
{
    struct fake_gpu *f = (struct fake_gpu *)be;
    for (int i = 0; i < f->n_held; i++)
        if ((const uint8_t *)p >= f->held[i] && (const uint8_t *)p < f->held[i] + f->held_bytes[i])
            return true;
    return false;
}

static void *fake_alloc(struct backend *be, size_t bytes, struct diag *d)
{
    (void)d;
    struct fake_gpu *f = (struct fake_gpu *)be;
    assert_true(f->n_held < 64);
    f->held_bytes[f->n_held] = bytes;
    return f->held[f->n_held++] = calloc(1, bytes);
}

static void fake_free(struct backend *be, void *p)
{
    struct fake_gpu *f = (struct fake_gpu *)be;
    for (int i = 0; i < f->n_held; i++)
        if (f->held[i] == p)
            f->held[i] = NULL, f->held_bytes[i] = 0;
    free(p);
}

static int fake_put(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    (void)d;
    if (!fake_holds(be, dst) || fake_holds(be, src)) /* the layer passed a host buffer where a device one belongs */
        abort();
    memcpy(dst, src, bytes);
    ((struct fake_gpu *)be)->copies++;
    return 0;
}

static int fake_get(struct backend *be, void *dst, const void *src, size_t bytes, struct diag *d)
{
    (void)d;
    if (fake_holds(be, dst) || !fake_holds(be, src))
        abort();
    memcpy(dst, src, bytes);
    ((struct fake_gpu *)be)->copies++;
    return 0;
}

static int fake_gpu_of(struct backend *be, struct backend_gpu *g, struct diag *d)
{
    (void)d;
    memset(g, 0, sizeof *g);
    snprintf(g->bus_id, sizeof g->bus_id, "%s", ((struct fake_gpu *)be)->bus_id);
    return 1;
}

static int fake_poll(struct backend *be, struct diag *d)
{
    (void)be, (void)d;
    return 1;
}

static void fake_close(struct backend *be)
{
    struct fake_gpu *f = (struct fake_gpu *)be;
    for (int i = 0; i < f->n_held; i++)
        free(f->held[i]);
    free(f);
}

static const struct backend_ops fake_ops = {.alloc = fake_alloc, .free = fake_free, .put = fake_put, .get = fake_get, .close = fake_close,
                                            .holds = fake_holds, .gpu = fake_gpu_of, .poll = fake_poll};

static struct fake_gpu *fake_gpu_new(const char *bus_id)
{
    struct fake_gpu *f = calloc(1, sizeof *f);
    f->be = (struct backend){.ops = &fake_ops, .kind = BACKEND_CUDA};
    snprintf(f->bus_id, sizeof f->bus_id, "%s", bus_id);
    return f;
}

/* MPI, its groups for a layout of the world's ranks: tp 2 from 4 ranks on (so that tp, dp_cp and the world each have
 * members of their own), else tp 1 (dp_cp the world). */
static struct comm *open_world(struct rank_layout **L, double timeout)
{
    struct diag d;
    diag_init(&d);
    struct comm *c = comm_mpi_open(NULL, NULL, timeout, &d);
    struct par_config pc = par_config_default();
    pc.world_size = c ? c->size : 1;
    pc.tp = pc.world_size % 4 ? 1 : 2;
    *L = rank_layout_new(&pc, false, &d);
    if (!c || !*L || comm_groups(c, *L, NULL, &d)) {
        diag_print(&d, stderr);
        exit(1);
    }
    diag_free(&d);
    return c;
}

/* A rank that stops answering, and one waiting on it in an all-reduce
 * (through the staged layer with `staged`: a device buffer). */
static int as_silent_rank(bool staged)
{
    struct rank_layout *L;
    struct comm *c = open_world(&L, TIMEOUT_S); /* 2 ranks: dp_cp {0, 1} */
    struct diag d;
    diag_init(&d);
    struct fake_gpu *f = fake_gpu_new("0000:01:00.0"); /* every rank on one GPU: MPI, staged */
    char why[512];
    if (staged && comm_use_device(c, &f->be, COMM_AUTO, why, sizeof why, &d)) {
        diag_print(&d, stderr);
        return 1;
    }
    if (c->rank == 1) { /* stops answering: a process stopped, a node gone */
        sleep(SILENT_S);
        return 0;
    }
    float one = 1, *x = staged ? backend_alloc(&f->be, sizeof *x, &d) : &one;
    if (staged)
        backend_put(&f->be, x, &one, sizeof one, &d);
    if (c->ops->collective(c, IR_GROUP_DP_CP, 0, IR_COLL_ALL_REDUCE, x, x, 1, IR_DTYPE_F32, &d)) {
        diag_print(&d, stderr);
        fflush(NULL);
        comm_abort(c, 1);
    }
    return 0;
}

static void silent_rank_is_named(const char *mode)
{
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    struct run r;
    setenv("WEFT_TEST_COMM_RANKS", mode, 1);
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

static void test_a_silent_rank_is_named(void **state)
{
    (void)state;
    silent_rank_is_named("silent");
}

static void test_a_silent_rank_is_named_staged(void **state)
{
    (void)state;
    silent_rank_is_named("silent-staged");
}

/* The splits are the layout's groups.  8 ranks, tp 2, pp 2, dp 2, laid out
 * as DESIGN.md says (tp fastest, then dp, pp slowest): tp {0,1} {2,3} ...,
 * dp {0,2} {1,3} {4,6} {5,7}, pp {0,4} {1,5} {2,6} {3,7}; the pipeline
 * transfers' group is the pp group; a tied set at stages 0 and 1 (the
 * embedding) is the pipeline again, one at stage 1 alone the rank itself. */
static void test_splits_are_the_layout_groups(void **state)
{
    (void)state;
    struct diag d;
    diag_init(&d);
    struct par_config pc = par_config_default();
    pc.world_size = 8, pc.tp = 2, pc.pp = 2;
    struct rank_layout *L = rank_layout_new(&pc, false, &d);
    assert_non_null(L);
    uint8_t tied[2][2] = {{1, 1}, {0, 1}};
    uint8_t *rows[2] = {tied[0], tied[1]};
    struct ir_schedule S = {.n_stages = 2, .n_tied = 2, .tied_stages = rows};
    struct comm_splits T;
    comm_splits_make(&T, L, &S);
    assert_int_equal(T.n_splits, COMM_SPLIT_TIED + 2);
    int m[8], n;
    static const struct {
        int rank, split, n, members[4];
    } want[] = {
        {0, IR_GROUP_TP, 2, {0, 1}},     {3, IR_GROUP_TP, 2, {2, 3}},           {5, IR_GROUP_DP_CP, 2, {5, 7}},
        {2, IR_GROUP_DP_CP, 2, {0, 2}},  {6, COMM_SPLIT_PIPE, 2, {2, 6}},       {1, COMM_SPLIT_TIED, 2, {1, 5}},
        {5, COMM_SPLIT_TIED + 1, 1, {5}}, {1, COMM_SPLIT_TIED + 1, 0, {0}},     {4, IR_GROUP_MP, 4, {0, 1, 4, 5}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        n = comm_split_members(&T, want[i].rank, want[i].split, m);
        char name[64];
        printf("    rank %d, %s: %d members\n", want[i].rank, comm_split_name(want[i].split, name, sizeof name), n);
        assert_int_equal(n, want[i].n);
        for (int k = 0; k < n; k++)
            assert_int_equal(m[k], want[i].members[k]);
    }
    assert_int_equal(comm_split_index(&T, IR_GROUP_TIED, 1), COMM_SPLIT_TIED + 1);
    assert_int_equal(comm_split_index(&T, IR_GROUP_TIED, 2), -1);
    assert_int_equal(comm_split_index(&T, IR_GROUP_COUNT, 0), -1);
    comm_splits_free(&T);
    rank_layout_free(L);
}

/* Two ranks share a GPU where host and bus id agree and the bus id is
 * not empty; that matters only inside one communicator. */
static void test_a_shared_gpu_is_found_in_a_group(void **state)
{
    (void)state;
    struct diag d;
    diag_init(&d);
    struct par_config pc = par_config_default();
    pc.world_size = 4, pc.tp = 2; /* tp {0,1} {2,3}, dp {0,2} {1,3} */
    struct rank_layout *L = rank_layout_new(&pc, false, &d);
    struct comm_splits T;
    comm_splits_make(&T, L, NULL);
    struct comm_gpu g[4] = {{"a", "0000:01:00.0", 1}, {"a", "0000:02:00.0", 1}, {"a", "0000:03:00.0", 1}, {"a", "0000:04:00.0", 1}};
    int split = -1, a = -1, b = -1;
    assert_int_equal(comm_gpu_shared(&T, g, &split, &a, &b), 0); /* four GPUs */
    snprintf(g[2].bus_id, sizeof g[2].bus_id, "0000:01:00.0");     /* ranks 0 and 2 (dp) on one */
    assert_int_equal(comm_gpu_shared(&T, g, &split, &a, &b), 1);
    assert_int_equal(split, IR_GROUP_DP_CP);
    assert_int_equal(a, 0);
    assert_int_equal(b, 2);
    snprintf(g[2].host, sizeof g[2].host, "b"); /* the same bus id on another node: another GPU */
    assert_int_equal(comm_gpu_shared(&T, g, &split, &a, &b), 0);
    snprintf(g[3].bus_id, sizeof g[3].bus_id, "0000:02:00.0"); /* ranks 1 and 3 (dp) share GPU 2 */
    snprintf(g[2].host, sizeof g[2].host, "a");
    snprintf(g[2].bus_id, sizeof g[2].bus_id, "0000:03:00.0");
    assert_int_equal(comm_gpu_shared(&T, g, &split, &a, &b), 1);
    assert_int_equal(a, 1);
    assert_int_equal(b, 3);
    for (int r = 0; r < 4; r++) /* no GPU anywhere: nothing shared */
        g[r].bus_id[0] = 0;
    assert_int_equal(comm_gpu_shared(&T, g, &split, &a, &b), 0);
    comm_splits_free(&T);
    rank_layout_free(L);
}

/* Every collective, dtype and group, then pipeline transfers, on host
 * buffers over MPI (the reference), then on device buffers through the
 * staged layer: the bytes must agree.  Ranks share one GPU, so --comm auto
 * takes MPI and says why. */
enum { COUNT = 12 }; /* elements a call: divisible by every group's size (1, 2, 4) */

static void fill(void *buf, int dtype, int rank, int op, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = (float)((rank + 1) * (i + 1)) * (op == IR_COLL_ALL_REDUCE_MAX ? -0.5f : 0.25f) + (float)op;
        if (dtype == IR_DTYPE_F32)
            ((float *)buf)[i] = v;
        else if (dtype == IR_DTYPE_BF16)
            ((uint16_t *)buf)[i] = wf_bf16(v);
        else
            ((int32_t *)buf)[i] = (int32_t)(v * 4);
    }
}

static int as_staged_rank(void)
{
    struct rank_layout *L;
    struct comm *c = open_world(&L, 30);
    struct diag d;
    diag_init(&d);
    static const enum ir_group groups[] = {IR_GROUP_TP, IR_GROUP_DP_CP, IR_GROUP_COUNT};
    static const int dtypes[] = {IR_DTYPE_F32, IR_DTYPE_BF16, IR_DTYPE_I32};
    enum { CASES = 3 * 3 * IR_COLL_COUNT, MAX_BYTES = COUNT * 4 * 4 };
    static uint8_t want[CASES][MAX_BYTES], got[MAX_BYTES], in[MAX_BYTES], want_p2p[2][64];
    int checks = 0, bad = 0;
    struct fake_gpu *f = fake_gpu_new("0000:01:00.0");
    for (int pass = 0; pass < 2; pass++) { /* 0: MPI on host buffers; 1: the staged layer on device buffers */
        if (pass == 1) {
            char why[512] = "";
            if (comm_use_device(c, &f->be, COMM_AUTO, why, sizeof why, &d)) {
                diag_print(&d, stderr);
                return 1;
            }
            if (c->rank == 0)
                printf("took %s: %s\n", c->ops->name, why);
        }
        uint8_t *dev_in = pass ? backend_alloc(&f->be, MAX_BYTES, &d) : NULL, *dev_out = pass ? backend_alloc(&f->be, MAX_BYTES, &d) : NULL;
        int k = 0;
        for (size_t gi = 0; gi < 3; gi++)
            for (size_t ti = 0; ti < 3; ti++)
                for (int op = 0; op < IR_COLL_COUNT; op++, k++) {
                    int dtype = dtypes[ti];
                    int64_t size = groups[gi] == IR_GROUP_COUNT ? c->size : groups[gi] == IR_GROUP_TP ? L->pc.tp : c->size / L->pc.tp;
                    size_t el = (size_t)ir_dtype_bytes((enum ir_dtype)dtype);
                    size_t out = (size_t)(op == IR_COLL_ALL_GATHER ? COUNT * size : op == IR_COLL_REDUCE_SCATTER ? COUNT / size : COUNT) * el;
                    bool in_place = op == IR_COLL_ALL_REDUCE && ti == 0; /* send == recv */
                    fill(in, dtype, c->rank, op, COUNT);
                    memset(got, 0xee, sizeof got);
                    int rc;
                    if (!pass) {
                        if (in_place)
                            memcpy(got, in, COUNT * el);
                        rc = c->ops->collective(c, groups[gi], 0, (enum ir_coll)op, in_place ? got : in, got, COUNT, dtype, &d);
                        memcpy(want[k], got, out);
                    } else {
                        backend_put(&f->be, dev_in, in, COUNT * el, &d);
                        rc = c->ops->collective(c, groups[gi], 0, (enum ir_coll)op, dev_in, in_place ? dev_in : dev_out, COUNT, dtype, &d);
                        backend_get(&f->be, got, in_place ? dev_in : dev_out, out, &d);
                        checks++;
                        if (memcmp(got, want[k], out)) {
                            fprintf(stderr, "rank %d: %s of %s over %s: the staged layer's result differs from MPI's\n", c->rank,
                                    ir_coll_name((enum ir_coll)op), ir_dtype_name((enum ir_dtype)dtype), groups[gi] == IR_GROUP_COUNT ? "the world" : ir_group_name(groups[gi]));
                            bad++;
                        }
                    }
                    if (rc) {
                        diag_print(&d, stderr);
                        return 1;
                    }
                }
        /* the world's sum of (rank + 1) * (i + 1) / 4 + 0 is (i + 1) * size (size + 1) / 8: MPI's own, checked once */
        if (!pass && c->rank == 0) {
            const float *sum = (const float *)want[2 * 3 * IR_COLL_COUNT + IR_COLL_ALL_REDUCE];
            for (int i = 0; i < COUNT; i++)
                if (sum[i] != (float)(i + 1) * (float)(c->size * (c->size + 1)) / 8) {
                    fprintf(stderr, "the world's sum [%d] = %g, not %g\n", i, sum[i], (float)(i + 1) * (float)(c->size * (c->size + 1)) / 8);
                    bad++;
                }
        }
        /* a ring of pipeline transfers, two of them a pair, sizes 40 and 24 */
        uint8_t sent[2][64], recv[2][64];
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < 64; i++)
                sent[m][i] = (uint8_t)(c->rank * 16 + m * 7 + i);
        int next = (c->rank + 1) % c->size, prev = (c->rank + c->size - 1) % c->size;
        uint8_t *dev = pass ? backend_alloc(&f->be, 4 * 64, &d) : NULL;
        for (int m = 0; pass && m < 2; m++)
            backend_put(&f->be, dev + m * 64, sent[m], 64, &d);
        struct comm_msg msgs[4] = {
            {true, next, 7, pass ? dev : sent[0], 40},          {true, next, 8, pass ? dev + 64 : sent[1], 24},
            {false, prev, 8, pass ? dev + 3 * 64 : recv[1], 24}, {false, prev, 7, pass ? dev + 2 * 64 : recv[0], 40},
        };
        if (c->ops->exchange(c, 4, msgs, &d)) {
            diag_print(&d, stderr);
            return 1;
        }
        for (int m = 0; pass && m < 2; m++)
            backend_get(&f->be, recv[m], dev + (2 + m) * 64, m ? 24 : 40, &d);
        for (int m = 0; m < 2; m++)
            if (!pass)
                memcpy(want_p2p[m], recv[m], m ? 24 : 40);
            else {
                checks++;
                if (memcmp(want_p2p[m], recv[m], m ? 24 : 40)) {
                    fprintf(stderr, "rank %d: pipeline transfer %d: the staged layer's bytes differ from MPI's\n", c->rank, m);
                    bad++;
                }
            }
        if (!pass && (recv[0][0] != (uint8_t)(prev * 16) || recv[1][0] != (uint8_t)(prev * 16 + 7))) {
            fprintf(stderr, "rank %d: MPI's transfer from rank %d came wrong\n", c->rank, prev);
            bad++;
        }
    }
    /* a host buffer through the staged layer: not copied */
    int before = f->copies;
    float x = 1;
    if (c->ops->collective(c, IR_GROUP_COUNT, 0, IR_COLL_ALL_REDUCE, &x, &x, 1, IR_DTYPE_F32, &d) || x != (float)c->size ||
        f->copies != before) {
        fprintf(stderr, "rank %d: a host buffer through the staged layer: sum %g (want %d), %d copies\n", c->rank, x, c->size,
                f->copies - before);
        bad++;
    }
    printf("rank %d: %d checks, %d differ; %d copies\n", c->rank, checks, bad, f->copies);
    comm_close(c);
    fake_close(&f->be);
    rank_layout_free(L);
    return bad ? 1 : 0;
}

static void staged_matches_mpi(const char *ranks, const char *shared)
{
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    struct run r;
    setenv("WEFT_TEST_COMM_RANKS", "staged", 1);
    const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", ranks, self, NULL};
    run_mpi(&r, argv);
    unsetenv("WEFT_TEST_COMM_RANKS");
    printf("%s%s", r.out, r.err);
    assert_false(r.timed_out);
    assert_int_equal(r.status, 0);
    /* 3 groups x 3 dtypes x 5 collectives + 2 transfers, on each rank */
    assert_non_null(strstr(r.out, "rank 0: 47 checks, 0 differ"));
    char want[256];
    snprintf(want, sizeof want, "took mpi, staged through the host: ranks 0 and 1 of %s share GPU 0000:01:00.0 on ", shared);
    assert_non_null(strstr(r.out, want));
}

static void test_staged_matches_mpi_2_ranks(void **state)
{
    (void)state;
    staged_matches_mpi("2", "the dp_cp group (ranks 0, 1)"); /* tp 1 */
}

static void test_staged_matches_mpi_4_ranks(void **state)
{
    (void)state;
    staged_matches_mpi("4", "the tp group (ranks 0, 1)"); /* tp 2: tp's is the first communicator */
}

/* comm_use_device's choice on 2 ranks: "nccl-shared", --comm nccl on one
 * GPU: a failure naming the ranks, on every rank; "nccl-own", a GPU each:
 * NCCL's bootstrap (the id broadcast over MPI) then its initialisation,
 * which without a GPU fails, saying so, on every rank, within the
 * deadline. */
static int as_choosing_rank(const char *mode)
{
    struct rank_layout *L;
    struct comm *c = open_world(&L, 20); /* 2 ranks: dp_cp {0, 1} */
    struct diag d;
    diag_init(&d);
    char bus[32];
    snprintf(bus, sizeof bus, "0000:0%d:00.0", strcmp(mode, "nccl-own") ? 1 : c->rank + 1);
    struct fake_gpu *f = fake_gpu_new(bus);
    char why[512] = "";
    int rc = comm_use_device(c, &f->be, COMM_NCCL, why, sizeof why, &d);
    printf("rank %d: %s\n", c->rank, rc ? diag_first_error(&d) : c->ops->name);
    comm_close(c);
    fake_close(&f->be);
    rank_layout_free(L);
    return rc ? 1 : 0;
}

static void test_nccl_refuses_a_shared_gpu(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char why[512];
    if (!comm_nccl_available(why, sizeof why))
        SKIP_BECAUSE("%s", why); /* that refusal comes first: test_nccl_missing */
    struct run r;
    setenv("WEFT_TEST_COMM_RANKS", "nccl-shared", 1);
    const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", self, NULL};
    run_mpi(&r, argv);
    unsetenv("WEFT_TEST_COMM_RANKS");
    printf("%s", r.out);
    assert_false(r.timed_out);
    assert_int_not_equal(r.status, 0);
    for (int rank = 0; rank < 2; rank++) {
        char want[160];
        snprintf(want, sizeof want, "rank %d: ranks 0 and 1 of the dp_cp group (ranks 0, 1) share GPU 0000:01:00.0 on ", rank);
        assert_non_null(strstr(r.out, want));
    }
    assert_non_null(strstr(r.out, "and NCCL takes one GPU a rank"));
}

static void test_nccl_bootstrap_without_a_gpu(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs mpirun (Open MPI)");
    char why[512];
    if (!comm_nccl_available(why, sizeof why))
        SKIP_BECAUSE("%s", why);
    struct run r;
    setenv("WEFT_TEST_COMM_RANKS", "nccl-own", 1);
    const char *argv[] = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", self, NULL};
    time_t start = time(NULL);
    run_mpi(&r, argv);
    unsetenv("WEFT_TEST_COMM_RANKS");
    printf("%s    (%.0f s)\n", r.out, difftime(time(NULL), start));
    assert_false(r.timed_out);
    if (r.status == 0) /* a GPU after all (a device machine): NCCL took the run */
        assert_non_null(strstr(r.out, "rank 1: nccl"));
    else /* no GPU: the first communicator's initialisation (here tp's, each rank alone) fails on both, naming it; on
          * one GPU, NCCL refuses dp_cp's two ranks on it */
        for (int rank = 0; rank < 2; rank++) {
            char want[160];
            snprintf(want, sizeof want, "rank %d: rank %d (", rank, rank);
            assert_non_null(strstr(r.out, want));
            assert_non_null(strstr(r.out, "): ncclCommInitRankConfig over the "));
            assert_non_null(strstr(r.out, " group: NCCL failed: "));
        }
}

/* Without libnccl (WEFT_NCCL_LIB names none): --comm nccl says so; one rank, so no mpirun. */
static void test_nccl_missing(void **state)
{
    (void)state;
    if (!have_mpirun())
        SKIP_BECAUSE("needs Open MPI");
    setenv("WEFT_TEST_COMM_RANKS", "nccl-missing", 1);
    setenv("WEFT_NCCL_LIB", "/nonexistent/libnccl.so.2", 1);
    const char *argv[] = {self, NULL};
    struct run r;
    run_mpi(&r, argv);
    unsetenv("WEFT_NCCL_LIB");
    unsetenv("WEFT_TEST_COMM_RANKS");
    printf("%s", r.out);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "rank 0: no NCCL: /nonexistent/libnccl.so.2 not found ("));
}

/* nccl_abi.h's constants and layouts are nccl.h's: a program that
 * includes both and compares them, compiled and run here. */
static void test_nccl_abi_matches_the_header(void **state)
{
    (void)state;
    const char *cuda = getenv("CUDA_HOME");
    char header[512], inc[520];
    snprintf(header, sizeof header, "%s/include/nccl.h", cuda && *cuda ? cuda : "/usr/local/cuda");
    if (access(header, R_OK))
        SKIP_BECAUSE("no %s to compare nccl_abi.h with", header);
    snprintf(inc, sizeof inc, "-I%.*s", (int)(strlen(header) - strlen("/nccl.h")), header);
    static const char src[] =
        "#include <stddef.h>\n#include <stdio.h>\n#include <string.h>\n#include <nccl.h>\n#include \"nccl_abi.h\"\n"
        "#define SAME(a, b) _Static_assert((long long)(a) == (long long)(b), #a \" is not \" #b);\n"
        "SAME(NC_SUCCESS, ncclSuccess) SAME(NC_UNHANDLED_CUDA_ERROR, ncclUnhandledCudaError) SAME(NC_SYSTEM_ERROR, ncclSystemError)\n"
        "SAME(NC_INTERNAL_ERROR, ncclInternalError) SAME(NC_INVALID_ARGUMENT, ncclInvalidArgument)\n"
        "SAME(NC_INVALID_USAGE, ncclInvalidUsage) SAME(NC_REMOTE_ERROR, ncclRemoteError) SAME(NC_IN_PROGRESS, ncclInProgress)\n"
        "SAME(NC_SUM, ncclSum) SAME(NC_MAX, ncclMax) SAME(NC_INT8, ncclInt8) SAME(NC_INT32, ncclInt32)\n"
        "SAME(NC_FLOAT32, ncclFloat32) SAME(NC_BFLOAT16, ncclBfloat16) SAME(NC_UNIQUE_ID_BYTES, NCCL_UNIQUE_ID_BYTES)\n"
        "SAME(sizeof(nc_unique_id), sizeof(ncclUniqueId)) SAME(sizeof(nc_result), sizeof(ncclResult_t))\n"
        "SAME(sizeof(nc_config), sizeof(ncclConfig_t)) SAME(NC_CONFIG_UNDEF_INT, NCCL_CONFIG_UNDEF_INT)\n"
        "SAME(NC_VERSION_CODE(2, 28, 9), NCCL_VERSION(2, 28, 9))\n"
        "#define AT(f) SAME(offsetof(nc_config, f), offsetof(ncclConfig_t, f))\n"
        "AT(size) AT(magic) AT(version) AT(blocking) AT(cgaClusterSize) AT(minCTAs) AT(maxCTAs) AT(netName) AT(splitShare)\n"
        "AT(trafficClass) AT(commName) AT(collnetEnable) AT(CTAPolicy) AT(shrinkShare) AT(nvlsCTAs) AT(nChannelsPerNetPeer)\n"
        "AT(nvlinkCentricSched)\n"
        "int main(void) {\n"
        "    ncclConfig_t theirs = NCCL_CONFIG_INITIALIZER; nc_config ours = NC_CONFIG_INITIALIZER;\n"
        "    int bad = theirs.size != ours.size || theirs.magic != ours.magic || theirs.version != ours.version ||\n"
        "              theirs.blocking != ours.blocking || theirs.nvlinkCentricSched != ours.nvlinkCentricSched ||\n"
        "              theirs.netName != ours.netName || theirs.commName != ours.commName;\n"
        "    printf(\"nccl.h %d.%d.%d: config version %u, %zu bytes: %s\\n\", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, theirs.version,\n"
        "           sizeof theirs, bad ? \"differs\" : \"the same\");\n"
        "    return bad;\n}\n";
    char dir[] = "/tmp/weft-nccl-abi-XXXXXX", c_path[64], exe[64];
    assert_non_null(mkdtemp(dir));
    snprintf(c_path, sizeof c_path, "%s/abi.c", dir);
    snprintf(exe, sizeof exe, "%s/abi", dir);
    FILE *f = fopen(c_path, "w");
    fputs(src, f);
    fclose(f);
    struct run r;
    const char *cc = getenv("CC");
    run_prog(&r, cc && *cc ? cc : "cc", "-std=c11", "-Wall", "-Werror", inc, "-Iruntime", c_path, "-o", exe, NULL);
    printf("%s%s", r.out, r.err);
    assert_int_equal(r.status, 0);
    run_prog(&r, exe, NULL);
    printf("    %s", r.out);
    assert_int_equal(r.status, 0);
    unlink(exe), unlink(c_path), rmdir(dir);
}

int main(int argc, char **argv)
{
    (void)argc;
    self = argv[0];
    const char *mode = getenv("WEFT_TEST_COMM_RANKS");
    if (mode && (!strcmp(mode, "silent") || !strcmp(mode, "1")))
        return as_silent_rank(false);
    if (mode && !strcmp(mode, "silent-staged"))
        return as_silent_rank(true);
    if (mode && !strcmp(mode, "staged"))
        return as_staged_rank();
    if (mode)
        return as_choosing_rank(mode);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_silent_rank_is_named),
        cmocka_unit_test(test_a_silent_rank_is_named_staged),
        cmocka_unit_test(test_splits_are_the_layout_groups),
        cmocka_unit_test(test_a_shared_gpu_is_found_in_a_group),
        cmocka_unit_test(test_staged_matches_mpi_2_ranks),
        cmocka_unit_test(test_staged_matches_mpi_4_ranks),
        cmocka_unit_test(test_nccl_refuses_a_shared_gpu),
        cmocka_unit_test(test_nccl_bootstrap_without_a_gpu),
        cmocka_unit_test(test_nccl_missing),
        cmocka_unit_test(test_nccl_abi_matches_the_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
