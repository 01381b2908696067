/* test_schedule.c: pipeline schedules are built as Megatron runs them, every
 * one verifies on every rank, and a corrupted one is caught with a diagnosis
 * that says which ranks wait for what. */
#include "testing.h"

#include "cost.h"
#include "schedule.h"
#include "simulate.h"

#include <math.h>

struct built {
    struct partition *P;
    struct ir_schedule S;
};

static void build_mode(struct built *b, const char *file, const char *variant, struct par_config pc, int kind,
                       bool forward_only)
{
    struct fe_options opt = {.variant = variant};
    struct diag d;
    diag_init(&d);
    b->P = partition_model(file, &opt, &pc, &d);
    if (!b->P)
        fail_msg("%s: %s", file, diag_first_error(&d));
    if (schedule_build(b->P, kind < 0 ? schedule_default(b->P) : (enum ir_sched_kind)kind, forward_only, &b->S, &d))
        fail_msg("%s: %s", file, diag_first_error(&d));
    diag_free(&d);
}

static void build(struct built *b, const char *file, const char *variant, struct par_config pc, int kind)
{
    build_mode(b, file, variant, pc, kind, false);
}

static void unbuild(struct built *b)
{
    ir_schedule_free(&b->S);
    partition_free(b->P);
}

static const char *verify(struct built *b, struct diag *d)
{
    diag_init(d);
    static char text[8192];
    text[0] = 0;
    if (ir_schedule_verify(&b->S, b->P->L, d) == 0)
        return NULL;
    size_t n = 0;
    for (int i = 0; i < d->n && n < sizeof text; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%s\n", d->v[i].msg);
    return text;
}

static void test_every_model_and_schedule(void **state)
{
    (void)state;
    static const struct {
        const char *file, *variant;
        int world, tp, pp, etp, epp, gbs, per_virtual;
    } cfg[] = {
        {"models/gpt2.xml", NULL, 16, 2, 4, 0, -1, 16, 0},  {"models/gpt2.xml", NULL, 8, 1, 4, 0, -1, 16, 1},
        {"models/llama2.xml", "tiny", 8, 2, 2, 0, -1, 8, 0}, {"models/gpt2.xml", NULL, 16, 2, 4, 0, -1, 16, 1},
        {"models/mixtral.xml", "tiny", 8, 2, 2, 0, -1, 4, 0}, {"models/t5.xml", "tiny", 10, 2, 2, 1, 1, 8, 0},
        {"models/t5.xml", "tiny", 4, 2, 1, 0, -1, 4, 0},     {"models/llava.xml", "tiny", 12, 2, 2, 1, 2, 8, 0},
        {"models/llava.xml", "tiny", 16, 2, 2, 2, 2, 8, 0},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        struct par_config pc = par_config_default();
        pc.world_size = cfg[i].world, pc.tp = cfg[i].tp, pc.pp = cfg[i].pp, pc.etp = cfg[i].etp, pc.epp = cfg[i].epp;
        pc.global_batch = cfg[i].gbs, pc.layers_per_virtual_stage = cfg[i].per_virtual;
        int kinds[3] = {IR_SCHED_GPIPE, IR_SCHED_1F1B, -1}, nk = cfg[i].per_virtual ? 1 : 2;
        if (cfg[i].per_virtual)
            kinds[0] = IR_SCHED_INTERLEAVED;
        for (int k = 0; k < 2 * nk; k++) {
            bool forward_only = k >= nk; /* --mode infer */
            struct built b;
            build_mode(&b, cfg[i].file, cfg[i].variant, pc, kinds[k % nk], forward_only);
            struct diag d;
            const char *why = verify(&b, &d);
            if (why)
                fail_msg("%s under %s%s (config %zu) hangs:\n%s", cfg[i].file, ir_sched_name(b.S.kind),
                         forward_only ? " forward only" : "", i, why);
            diag_free(&d);
            /* Forward only: each stage runs every micro-batch's forward of
             * each virtual stage, and nothing of a backward or an update. */
            for (int s = 0; forward_only && s < b.S.n_stages; s++) {
                int forwards = 0;
                for (int x = 0; x < b.S.programs[s].n; x++) {
                    const struct ir_ins *ins = &b.S.programs[s].ins[x];
                    assert_true(ins->kind != IR_INS_BACKWARD && ins->kind != IR_INS_OPTIMIZER);
                    forwards += ins->kind == IR_INS_FORWARD;
                    for (int q = 0; ins->kind == IR_INS_P2P && q < ins->n_p2p; q++)
                        assert_false(ins->p2p[q].grad);
                    assert_false(ins->kind == IR_INS_COLLECTIVE && (ins->group == IR_GROUP_DP_CP || ins->group == IR_GROUP_TIED));
                }
                assert_int_equal(forwards, b.S.n_micro * b.S.virtual_stages);
            }
            unbuild(&b);
        }
    }
}

/* Megatron's warmup: 1F1B stage s of p runs min(p - s - 1, m) forwards first. */
static void test_warmup_counts(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 4, pc.global_batch = 8;
    struct built b;
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B);
    for (int s = 0; s < 4; s++) {
        int forwards = 0;
        for (int i = 0; i < b.S.programs[s].n; i++) {
            if (b.S.programs[s].ins[i].kind == IR_INS_BACKWARD)
                break;
            forwards += b.S.programs[s].ins[i].kind == IR_INS_FORWARD;
        }
        assert_int_equal(forwards, 4 - s - 1 + 1); /* the warmup, then the first steady forward */
    }
    unbuild(&b);
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_GPIPE);
    int forwards = 0;
    for (int i = 0; i < b.S.programs[0].n && b.S.programs[0].ins[i].kind != IR_INS_BACKWARD; i++)
        forwards += b.S.programs[0].ins[i].kind == IR_INS_FORWARD;
    assert_int_equal(forwards, 8);
    unbuild(&b);
}

static int find(const struct ir_program *p, enum ir_ins_kind kind, int from)
{
    for (int i = from; i < p->n; i++)
        if (p->ins[i].kind == kind)
            return i;
    return -1;
}

static void expect_caught(struct built *b, const char *what, const char *f1, const char *f2)
{
    struct diag d;
    const char *why = verify(b, &d);
    if (!why) {
        fail_msg("%s: the corrupted schedule verified", what);
        return; /* fail_msg does not return; the compiler cannot tell */
    }
    printf("    %s:\n%s", what, why);
    if (!strstr(why, f1) || (f2 && !strstr(why, f2)))
        fail_msg("%s: the diagnosis lacks \"%s\"%s%s", what, f1, f2 ? " or " : "", f2 ? f2 : "");
    diag_free(&d);
}

static void test_corrupted(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 8, pc.tp = 2, pc.pp = 4, pc.global_batch = 4;
    struct built b;

    /* A swapped pair: stage 1 runs its second transfer group before its first. */
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B);
    struct ir_program *p = &b.S.programs[1];
    int a = find(p, IR_INS_P2P, 0), c = find(p, IR_INS_P2P, a + 1);
    struct ir_ins t = p->ins[a];
    p->ins[a] = p->ins[c];
    p->ins[c] = t;
    expect_caught(&b, "swapped pair", "it hangs", "waiting for rank");
    unbuild(&b);

    /* A missing receive: stage 2 never receives its first activation. */
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B);
    p = &b.S.programs[2];
    a = find(p, IR_INS_P2P, 0);
    assert_false(p->ins[a].p2p[0].send);
    p->ins[a].n_p2p = 0;
    expect_caught(&b, "missing receive", "stage 1, instruction", "but stage 2 never receives it");
    unbuild(&b);

    /* A lost step: stage 3 runs micro-batch 0's forward where its backward
     * belongs, so the forward runs twice and the backward never. */
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B);
    p = &b.S.programs[3];
    a = find(p, IR_INS_BACKWARD, 0);
    assert_int_equal(p->ins[a].micro, 0);
    p->ins[a].kind = IR_INS_FORWARD;
    expect_caught(&b, "lost step", "forward of virtual stage 0, micro-batch 0 run twice", NULL);
    unbuild(&b);

    /* A forward-only step that still updates its parameters. */
    build_mode(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B, true);
    ir_program_push(&b.S.programs[2], &(struct ir_ins){.kind = IR_INS_OPTIMIZER});
    expect_caught(&b, "update in inference", "stage 2 updates its parameters 1 time in a forward-only step", NULL);
    unbuild(&b);

    /* A collective on the wrong group: stage 0's first tensor-parallel
     * all-reduce goes to the model-parallel group, which spans every stage. */
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B);
    p = &b.S.programs[0];
    a = find(p, IR_INS_COLLECTIVE, 0);
    assert_int_equal(p->ins[a].group, IR_GROUP_TP);
    p->ins[a].group = IR_GROUP_MP;
    expect_caught(&b, "collective on the wrong group", "over mp", NULL);
    unbuild(&b);

    /* Collectives out of order: the first stage sums the tied embedding after
     * the gradient norm, the last stage before. */
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B);
    p = &b.S.programs[0];
    int tied = -1, norm = -1;
    for (int i = 0; i < p->n; i++) {
        if (p->ins[i].kind == IR_INS_COLLECTIVE && p->ins[i].group == IR_GROUP_TIED)
            tied = i;
        if (p->ins[i].kind == IR_INS_COLLECTIVE && p->ins[i].group == IR_GROUP_MP)
            norm = i;
    }
    assert_true(tied >= 0 && norm >= 0);
    t = p->ins[tied];
    p->ins[tied] = p->ins[norm];
    p->ins[norm] = t;
    expect_caught(&b, "collectives out of order", "it hangs", "over tied");
    unbuild(&b);

    /* A collective over a group the rank is not in: an encoder rank has no
     * expert groups.  (The plan fuzzer found the verifier spinning on this.) */
    struct par_config pe = par_config_default();
    pe.world_size = 10, pe.tp = 2, pe.pp = 2, pe.etp = 1, pe.epp = 1, pe.global_batch = 4;
    build(&b, "models/t5.xml", "tiny", pe, IR_SCHED_1F1B);
    p = &b.S.programs[0];
    a = find(p, IR_INS_COLLECTIVE, 0);
    assert_true(a >= 0);
    p->ins[a].group = IR_GROUP_EP;
    expect_caught(&b, "a group the rank is not in", "the rank is in no ep group", NULL);
    unbuild(&b);

    /* A size that differs between a send and its receive. */
    build(&b, "models/gpt2.xml", NULL, pc, IR_SCHED_1F1B);
    p = &b.S.programs[1];
    a = find(p, IR_INS_P2P, 0);
    p->ins[a].p2p[0].bytes += 4;
    expect_caught(&b, "sizes differ", "sizes differ", NULL);
    unbuild(&b);
}

/* Equal stages, free transfers: forward 1/v, backward 2/v per virtual stage. */
static double equal_compute(void *ctx, int stage, const struct ir_ins *ins)
{
    (void)stage;
    double v = *(const int *)ctx;
    return ins->kind == IR_INS_FORWARD ? 1 / v : ins->kind == IR_INS_BACKWARD ? 2 / v : 0;
}

static double free_comm(void *ctx, const struct ir_ins *ins, int k, int n, bool inter)
{
    (void)ctx, (void)ins, (void)k, (void)n, (void)inter;
    return 0;
}

/* The bubble as simulate.h counts it: the ranks' mean idle time (waiting on
 * other stages, and after finishing) over the step. */
static double timeline_bubble(const struct ir_timeline *tl, int n_ranks)
{
    double idle = 0;
    for (int r = 0; r < n_ranks; r++)
        idle += ir_timeline_idle(tl, r);
    return idle / n_ranks / tl->step_time;
}

static double bubble(struct built *b)
{
    int v = b->S.virtual_stages;
    struct ir_costs costs = {equal_compute, free_comm, &v, 8};
    struct ir_timeline tl;
    struct diag d;
    diag_init(&d);
    assert_int_equal(ir_schedule_run(&b->S, b->P->L, &costs, &tl, &d), 0);
    double x = timeline_bubble(&tl, b->P->L->n_ranks);
    ir_timeline_free(&tl);
    diag_free(&d);
    return x;
}

/* Gradient reduction over data-parallel ranks: Megatron's buckets of at
 * least max(40M, 1M x dp) elements, each chunk's issued right after the
 * last micro-batch's backward of that chunk, holding every local parameter
 * once, in fp32. */
static void test_grad_buckets(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 2, pc.micro_batch = 4, pc.global_batch = 8;
    struct built b;
    build(&b, "models/gpt2.xml", NULL, pc, -1);
    const struct ir_program *p = &b.S.programs[0];
    int64_t sum = 0;
    int n = 0, last_backward = -1, first_bucket = -1;
    for (int i = 0; i < p->n; i++) {
        const struct ir_ins *x = &p->ins[i];
        if (x->kind == IR_INS_BACKWARD)
            last_backward = i;
        if (x->kind == IR_INS_COLLECTIVE && x->group == IR_GROUP_DP_CP) {
            first_bucket = first_bucket < 0 ? i : first_bucket;
            sum += x->bytes;
            n++;
            if (i + 1 < p->n && p->ins[i + 1].kind == IR_INS_COLLECTIVE)
                assert_true(x->bytes >= 40000000LL * 4); /* all but the last bucket are full */
        }
    }
    assert_int_equal(sum, 4 * partition_stage_param_elems(b.P, 0));
    assert_int_equal(n, 4); /* 124M parameters (+ vocabulary padding): three full buckets and a rest */
    assert_int_equal(first_bucket, last_backward + 1);
    unbuild(&b);

    /* Interleaved: each virtual stage's buckets follow its own last backward,
     * while the backward of the others goes on. */
    pc = par_config_default();
    pc.world_size = 8, pc.tp = 2, pc.pp = 2, pc.global_batch = 8, pc.layers_per_virtual_stage = 3;
    build(&b, "models/gpt2.xml", NULL, pc, -1);
    for (int s = 0; s < b.S.n_stages; s++) {
        p = &b.S.programs[s];
        int reductions = 0, after = -1;
        for (int i = 0; i < p->n; i++) {
            const struct ir_ins *x = &p->ins[i];
            if (x->kind == IR_INS_BACKWARD)
                after = x->micro == b.S.n_micro - 1 ? i : -1;
            if (x->kind == IR_INS_COLLECTIVE && x->group == IR_GROUP_DP_CP) {
                assert_true(after >= 0); /* after a last micro-batch's backward, not anywhere else */
                reductions++;
            }
        }
        assert_int_equal(reductions, b.S.virtual_stages); /* one bucket per virtual stage here */
    }
    unbuild(&b);
}

/* With sequence parallelism the norms' and row-parallel biases' gradients
 * are partial over tp; they accumulate over the micro-batches and are
 * all-reduced once, in one collective, after the last backward, as Megatron
 * coalesces them.  Activation gradients still move in every backward. */
static void test_param_grads_once(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 2, pc.tp = 2, pc.sequence_parallel = true, pc.micro_batch = 1, pc.global_batch = 4;
    struct built b;
    build(&b, "models/gpt2.xml", "tiny", pc, -1);
    int64_t expect = 0;
    for (int x = 0; x < b.P->n_xfers; x++) {
        const struct part_xfer *px = &b.P->xfers[x];
        if (px->grad && px->kind == PART_XFER_ALL_REDUCE && b.P->g->tensors[px->tensor].kind == IR_TENSOR_PARAM)
            expect += ir_shape_numel(&px->shape) * 4;
    }
    assert_true(expect > 0);
    const struct ir_program *p = &b.S.programs[0];
    int all_reduces = 0, gathers = 0, micro = -1;
    for (int i = 0; i < p->n; i++) {
        const struct ir_ins *x = &p->ins[i];
        if (x->kind == IR_INS_BACKWARD)
            micro = x->micro;
        if (x->kind == IR_INS_FORWARD)
            micro = -1;
        if (micro < 0 || x->kind != IR_INS_COLLECTIVE || x->group != IR_GROUP_TP)
            continue;
        if (x->coll == IR_COLL_ALL_REDUCE) {
            assert_int_equal(micro, b.S.n_micro - 1);
            assert_int_equal(x->bytes, expect);
            all_reduces++;
        }
        gathers += x->coll == IR_COLL_ALL_GATHER;
    }
    assert_int_equal(b.S.n_micro, 4);
    assert_int_equal(all_reduces, 1);
    assert_true(gathers > 0 && gathers % 4 == 0); /* the activations' gathers: in every micro-batch's backward */
    unbuild(&b);
}

/* The tied embedding's gradient is summed shard by shard where its holders
 * shard it alike (GPT-2's first and last stages), and whole where they do
 * not (T5's table at etp 1 < tp 2). */
static void test_tied_bytes(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 8, pc.tp = 2, pc.pp = 4, pc.global_batch = 4;
    struct built b;
    build(&b, "models/gpt2.xml", NULL, pc, -1);
    const int64_t V = 50432, H = 768; /* 50,257 padded to a multiple of 128 x tp */
    int found = 0;
    for (int i = 0; i < b.S.programs[0].n; i++) {
        const struct ir_ins *x = &b.S.programs[0].ins[i];
        if (x->kind == IR_INS_COLLECTIVE && x->group == IR_GROUP_TIED) {
            assert_int_equal(x->bytes, V / 2 * H * 4);
            found++;
        }
    }
    assert_int_equal(found, 1);
    unbuild(&b);
    pc = par_config_default();
    pc.world_size = 10, pc.tp = 2, pc.pp = 2, pc.etp = 1, pc.epp = 1, pc.global_batch = 8;
    build(&b, "models/t5.xml", NULL, pc, -1);
    found = 0;
    for (int i = 0; i < b.S.programs[0].n; i++) {
        const struct ir_ins *x = &b.S.programs[0].ins[i];
        if (x->kind == IR_INS_COLLECTIVE && x->group == IR_GROUP_TIED) {
            assert_int_equal(x->bytes, 32256LL * 512 * 4); /* the whole table */
            found++;
        }
    }
    assert_int_equal(found, 1);
    unbuild(&b);
}

/* The bubble of the classic analysis (Narayanan et al. 2021, section 2.2):
 * with equal stages and free transfers every stage idles p-1 forward and
 * backward pairs of its chunks (1/v of its layers each) while computing m v
 * of them, so the bubble is (p-1)/(v m + p - 1) of the step: (p-1)/m of the
 * compute, as the paper writes it, for GPipe and 1F1B; (p-1)/(v m) with
 * v virtual stages. */
static void test_bubble(void **state)
{
    (void)state;
    static const struct {
        int kind, pp, m, per_virtual; /* 12 layers */
    } cases[] = {
        {IR_SCHED_GPIPE, 4, 8, 0}, {IR_SCHED_1F1B, 4, 8, 0}, {IR_SCHED_1F1B, 2, 16, 0}, {IR_SCHED_1F1B, 6, 12, 0},
        {IR_SCHED_INTERLEAVED, 4, 8, 1}, {IR_SCHED_INTERLEAVED, 2, 8, 2}, {IR_SCHED_INTERLEAVED, 3, 6, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct par_config pc = par_config_default();
        pc.pp = cases[i].pp, pc.global_batch = cases[i].m, pc.layers_per_virtual_stage = cases[i].per_virtual;
        struct built b;
        build(&b, "models/gpt2.xml", NULL, pc, cases[i].kind);
        int v = b.S.virtual_stages, p = cases[i].pp, m = cases[i].m;
        double want = (double)(p - 1) / (v * m + p - 1), got = bubble(&b);
        printf("    %s pp %d m %d v %d: bubble %.6f, want (p-1)/(v*m+p-1) = %.6f\n", ir_sched_name(b.S.kind), p, m, v, got, want);
        if (fabs(got - want) > 1e-9)
            fail_msg("%s pp %d m %d v %d: bubble %.6f, want %.6f", ir_sched_name(b.S.kind), p, m, v, got, want);
        unbuild(&b);
    }
}

/* No pipeline, no bubble: one rank, and data or tensor parallel ranks that
 * are all at one stage, wait on no other stage (the old count, "not
 * computing", called 51% of a step at pp 1 and 99% on one rank bubble).
 * Their collectives are reported apart. */
static void test_no_pipeline_no_bubble(void **state)
{
    (void)state;
    static const struct {
        int world, tp;
    } cfg[] = {{1, 1}, {2, 1}, {2, 2}};
    for (size_t i = 0; i < WF_COUNT(cfg); i++) {
        struct par_config pc = par_config_default();
        pc.world_size = cfg[i].world, pc.tp = cfg[i].tp, pc.global_batch = 8;
        struct built b;
        build(&b, "models/gpt2.xml", "tiny", pc, -1);
        struct sim_result r;
        struct diag d;
        diag_init(&d);
        assert_int_equal(simulate(b.P, &b.S, device_find("h100"), &r, &d), 0);
        printf("    %d rank%s, tp %d: bubble %g, tp comm %.3g ms, dp comm %.3g ms\n", cfg[i].world, cfg[i].world == 1 ? "" : "s",
               cfg[i].tp, r.bubble, r.tp_comm * 1e3, r.dp_comm * 1e3);
        assert_true(r.bubble == 0);
        assert_true(cfg[i].tp > 1 ? r.tp_comm > 0 : r.tp_comm == 0);
        assert_true(cfg[i].world > 1 ? r.dp_comm > 0 : r.dp_comm == 0); /* the norm's sum over tp counts as one */
        sim_result_free(&r);
        diag_free(&d);
        unbuild(&b);
    }
}

/* Equal stages, free transfers, and data-parallel reductions of A seconds. */
#define REDUCTION_SECONDS 10.0
static double reduction_comm(void *ctx, const struct ir_ins *ins, int k, int n, bool inter)
{
    (void)ctx, (void)k, (void)n, (void)inter;
    return ins->kind == IR_INS_COLLECTIVE && ins->group == IR_GROUP_DP_CP ? REDUCTION_SECONDS : 0;
}

static double timed_step(struct built *b, double *bubble_out)
{
    int v = 1;
    struct ir_costs costs = {equal_compute, reduction_comm, &v, 8};
    struct ir_timeline tl;
    struct diag d;
    diag_init(&d);
    if (ir_schedule_run(&b->S, b->P->L, &costs, &tl, &d))
        fail_msg("%s", diag_first_error(&d));
    double t = tl.step_time;
    *bubble_out = timeline_bubble(&tl, b->P->L->n_ranks);
    ir_timeline_free(&tl);
    diag_free(&d);
    return t;
}

/* The order before: a stage's gradient reductions, then its last backward's
 * sends (the P2P right after the last backward moved behind them). */
static void reductions_first(struct ir_program *p)
{
    int last = -1;
    for (int i = 0; i < p->n; i++)
        last = p->ins[i].kind == IR_INS_BACKWARD ? i : last;
    assert_true(last >= 0 && last + 2 < p->n && p->ins[last + 1].kind == IR_INS_P2P);
    int end = last + 2;
    while (end < p->n && p->ins[end].kind == IR_INS_COLLECTIVE && p->ins[end].group == IR_GROUP_DP_CP)
        end++;
    assert_true(end > last + 2); /* the reductions follow the sends */
    struct ir_ins sends = p->ins[last + 1];
    memmove(&p->ins[last + 1], &p->ins[last + 2], (size_t)(end - last - 2) * sizeof *p->ins);
    p->ins[end - 1] = sends;
}

/* Megatron's end of 1F1B: the last backward's send_backward, then the
 * gradients' reductions (schedules.py: the cool-down loop, then
 * finalize_model_grads).  Two stages, two replicas, forward 1, backward 2,
 * a reduction A, transfers free: stage 0's last backward starts when stage
 * 1's ends, at 3(m+1) - 2, so the step ends at 3(m+1) + A, stage 0's own
 * reduction last.  Reductions before the send made stage 0 wait for stage
 * 1's: 3(m+1) + 2A. */
static void test_cooldown_sends_before_reductions(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 4, pc.pp = 2, pc.global_batch = 8;
    struct built b;
    build(&b, "models/gpt2.xml", "tiny", pc, IR_SCHED_1F1B);
    int m = b.S.n_micro;
    for (int s = 0; s < 2; s++) { /* one bucket a stage (tiny): one reduction of A */
        int buckets = 0;
        for (int i = 0; i < b.S.programs[s].n; i++)
            buckets += b.S.programs[s].ins[i].kind == IR_INS_COLLECTIVE && b.S.programs[s].ins[i].group == IR_GROUP_DP_CP;
        assert_int_equal(buckets, 1);
    }
    double now_bubble, before_bubble;
    double now = timed_step(&b, &now_bubble);
    reductions_first(&b.S.programs[1]);
    struct diag d;
    const char *why = verify(&b, &d);
    if (why)
        fail_msg("the order before hangs:\n%s", why);
    diag_free(&d);
    double before = timed_step(&b, &before_bubble);
    printf("    pp 2, dp 2, m %d: step %g (sends first), %g (reductions first); bubble %.4f, %.4f\n", m, now, before, now_bubble,
           before_bubble);
    assert_true(fabs(now - (3.0 * (m + 1) + REDUCTION_SECONDS)) < 1e-9);
    assert_true(fabs(before - (3.0 * (m + 1) + 2 * REDUCTION_SECONDS)) < 1e-9);
    assert_true(now_bubble < before_bubble);
    unbuild(&b);
}

/* The GEMM model by hand: H100, bf16, 4096^3: each dimension's factor
 * 4096/(4096+128) = 32/33, so 0.75 x (32/33)^3 = 0.683863 of 989 TFLOP/s;
 * 2 x 4096^3 FLOPs take 203.21 us, plus the 3 us launch: 206.21 us.  A
 * tile of 128 along every dimension runs at 0.75 / 8 = 0.09375. */
static void test_gemm_model(void **state)
{
    (void)state;
    const struct device *h100 = device_find("h100");
    assert_true(fabs(device_gemm_efficiency(h100, 4096, 4096, 4096) - 0.683863) < 1e-6);
    assert_true(fabs(device_gemm_seconds(h100, true, 4096, 4096, 4096) - 206.21e-6) < 0.01e-6);
    assert_true(fabs(device_gemm_efficiency(h100, 128, 128, 128) - 0.09375) < 1e-12);
    /* skinny GEMMs are slower per FLOP, and the fp32 plan's are at 67 TFLOP/s */
    double big = device_gemm_seconds(h100, true, 8192, 8192, 8192) / (2.0 * 8192 * 8192 * 8192);
    double skinny = device_gemm_seconds(h100, true, 8192, 64, 8192) / (2.0 * 8192 * 64 * 8192);
    assert_true(skinny > 2 * big);
    double fp32 = 3e-6 + 2.0 * 4096 * 4096 * 4096 / (67e12 * 0.683863);
    assert_true(fabs(device_gemm_seconds(h100, false, 4096, 4096, 4096) / fp32 - 1) < 1e-5);
}

/* Mixtral 8x7B on 64 H100s (pp 8, so 4 layers a stage and dp 8; bf16;
 * 256 sequences a step in micro-batches of 1).  Expert parallelism divides
 * the experts, not the tokens each expert sees: the ep all-to-all brings a
 * rank's experts the rows of every rank of its group, so a rank's expert
 * matmuls do the same work at any ep.  A layer's three expert matmuls (w1
 * and w3: rows x hidden -> ffn, w2: ffn -> hidden) over all 8 experts'
 * capacity cdiv(4096 x 2, 8) = 1024 rows each: 3 x 2 x 8 x 1024 x 4096 x
 * 14336 FLOPs, times 4 layers a stage, at ep 1, 4 and 8.  MFU then stays
 * below 100%; with the experts' buffer sized for one rank's tokens it was
 * 123% at ep 4 and 168% at ep 8. */
static void test_expert_parallel_mfu(void **state)
{
    (void)state;
    const double want = 4 * 3 * 2.0 * 8 * 1024 * 4096 * 14336;
    static const int eps[] = {1, 4, 8};
    for (size_t i = 0; i < WF_COUNT(eps); i++) {
        struct par_config pc = par_config_default();
        pc.world_size = 64, pc.pp = 8, pc.ep = eps[i], pc.bf16 = true, pc.micro_batch = 1, pc.global_batch = 256;
        struct built b;
        build(&b, "models/mixtral.xml", NULL, pc, -1);
        const struct ir_graph *g = b.P->g;
        for (int stage = 0; stage < 8; stage++) {
            double experts = 0;
            for (int op = 0; op < g->n_ops; op++) {
                const char *out = g->tensors[g->ops[op].out[0]].local_name;
                if (g->ops[op].kind == IR_OP_MATMUL && b.P->chunks[b.P->op_chunk[op]].stage == stage &&
                    (!strcmp(out, "g") || !strcmp(out, "u") || !strcmp(out, "ye")))
                    experts += cost_op_flops(b.P, op);
            }
            if (experts != want)
                fail_msg("ep %d, stage %d: the experts' matmuls do %.4g FLOPs a micro-batch on a rank, want %.4g", eps[i], stage,
                         experts, want);
        }
        struct sim_result r;
        struct diag d;
        diag_init(&d);
        if (simulate(b.P, &b.S, device_find("h100"), &r, &d))
            fail_msg("ep %d: %s", eps[i], diag_first_error(&d));
        printf("    mixtral 8x7B, 64 ranks, pp 8, ep %d: step %.1f ms, MFU %.1f%%\n", eps[i], r.step_time * 1e3, 100 * r.mfu);
        assert_true(r.mfu > 0 && r.mfu < 1);
        sim_result_free(&r);
        diag_free(&d);
        unbuild(&b);
    }
}

/* The number after the first `key` in text (a JSON key and its ": "). */
static double json_number_after(const char *text, const char *key)
{
    const char *at = strstr(text, key);
    if (!at)
        fail_msg("no %s in: %s", key, text);
    return strtod(at + strlen(key), NULL);
}

#define run_ok(r, ...) run_ok_((r), (const char *const[]){__VA_ARGS__})
static const char *run_ok_(struct run *r, const char *const *argv)
{
    run_weftv(r, argv);
    if (r->status)
        fail_msg("weft %s: exit %d: %s", argv[0], r->status, r->err);
    return r->out;
}

static void test_simulate_cli(void **state)
{
    (void)state;
    struct run *r = malloc(sizeof *r);
    char svg[64], dev[64];
    snprintf(svg, sizeof svg, "/tmp/weft-sim-%d.svg", (int)getpid());
    run_weft(r, "simulate", "models/gpt2.xml", "--tp", "2", "--pp", "2", "--world-size", "8", "--global-batch-size", "16",
             "--json", "-o", svg, NULL);
    if (r->status)
        fail_msg("weft simulate: %s", r->err);
    assert_non_null(strstr(r->out, "\"step_time\": "));
    assert_non_null(strstr(r->out, "\"bubble\": "));
    size_t len;
    char *text = wf_read_file(svg, 1 << 24, &len);
    unlink(svg);
    assert_non_null(text);
    assert_non_null(strstr(text, "<svg"));
    assert_non_null(strstr(text, "stage 1"));
    free(text);
    run_weft(r, "simulate", "models/gpt2.xml", "--gpu", "tpu", NULL);
    assert_int_equal(r->status, 2);
    assert_non_null(strstr(r->err, "--gpu tpu: unknown device (built in: h100, a100, cpu"));

    /* The device follows --arch: sm_80 is an A100 (312 TFLOP/s dense bf16), sm_90 an H100 (989). */
    double a100_step = json_number_after(run_ok(r, "simulate", "models/gpt2.xml", "--arch", "sm_80", "--json", NULL), "\"step_time\": ");
    assert_non_null(strstr(r->out, "\"device\": \"a100\""));
    assert_true(json_number_after(r->out, "\"bf16_tflops\": ") == 312);
    double h100_step = json_number_after(run_ok(r, "simulate", "models/gpt2.xml", "--arch", "sm_80,sm_90", "--json", NULL), "\"step_time\": ");
    assert_non_null(strstr(r->out, "\"device\": \"h100\""));
    assert_true(json_number_after(r->out, "\"bf16_tflops\": ") == 989);
    assert_true(h100_step < a100_step);
    run_weft(r, "simulate", "models/gpt2.xml", "--arch", "sm_75", NULL);
    assert_int_equal(r->status, 2);
    assert_non_null(strstr(r->err, "--arch sm_75: no built-in device for it"));

    /* A plan is costed on the device it was compiled for: --arch cpu, a CPU. */
    char plan[64];
    snprintf(plan, sizeof plan, "/tmp/weft-sim-cpu-%d.plan", (int)getpid());
    run_ok(r, "compile", "models/gpt2.xml", "--variant", "tiny", "--arch", "cpu", "-o", plan, NULL);
    assert_non_null(strstr(r->out, " on cpu, bubble "));
    run_ok(r, "simulate", plan, "--json", NULL);
    assert_non_null(strstr(r->out, "\"device\": \"cpu\""));
    run_ok(r, "simulate", plan, "--gpu", "a100", "--json", NULL);
    assert_non_null(strstr(r->out, "\"device\": \"a100\""));
    unlink(plan);

    /* A calibration file replaces a constant: half the GEMM ceiling, a slower step. */
    snprintf(dev, sizeof dev, "/tmp/weft-calibration-%d.json", (int)getpid());
    FILE *f = fopen(dev, "w");
    fputs("{\"name\": \"h100-half\", \"gemm_ceiling\": 0.375}\n", f);
    fclose(f);
    double half_step = json_number_after(run_ok(r, "simulate", "models/gpt2.xml", "--calibration", dev, "--json", NULL), "\"step_time\": ");
    assert_non_null(strstr(r->out, "\"device\": \"h100-half\""));
    assert_true(json_number_after(r->out, "\"gemm_ceiling\": ") == 0.375);
    assert_true(half_step > 1.5 * h100_step);
    /* A bad file exits 2, naming the file and what is wrong. */
    static const char *bad[][2] = {
        {"{\"gemm_ceiling\": \"high\"}", "gemm_ceiling: expected a positive number"},
        {"{\"hbm_gb\": 3350}", "unknown key 'hbm_gb' (keys: name, arch, bf16_tflops"},
        {"gemm_ceiling = 0.5", "a calibration file is one JSON object"},
    };
    for (size_t i = 0; i < WF_COUNT(bad); i++) {
        f = fopen(dev, "w");
        fputs(bad[i][0], f);
        fclose(f);
        run_weft(r, "simulate", "models/gpt2.xml", "--calibration", dev, NULL);
        assert_int_equal(r->status, 2);
        if (!strstr(r->err, dev) || !strstr(r->err, bad[i][1]))
            fail_msg("calibration %s: want '%s' naming %s, got: %s", bad[i][0], bad[i][1], dev, r->err);
    }
    run_weft(r, "run", "no.plan", "--calibration", dev, NULL); /* weft run reads it before it starts */
    assert_int_equal(r->status, 2);
    assert_non_null(strstr(r->err, dev));
    assert_non_null(strstr(r->err, "a calibration file is one JSON object"));
    unlink(dev);
    run_weft(r, "simulate", "models/gpt2.xml", "--calibration", dev, NULL);
    assert_int_equal(r->status, 2);
    assert_non_null(strstr(r->err, dev));
    free(r);
}

/* Thousands of ranks: nothing in the proof is sized by a guess at a group's
 * size.  Before, members of a group past the 1024th were never counted in,
 * so GPT-2 at dp 2048 "hung" at its gradient all-reduce. */
static void test_thousands_of_ranks(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int world, tp, pp, etp, epp, gbs;
        int dp; /* world / (tp x pp), or world / (etp x epp + tp x pp) with an encoder */
    } cfg[] = {
        {"models/gpt2.xml", 4096, 1, 1, 0, -1, 8192, 4096}, /* micro-batch 2 (tiny): one each */
        {"models/gpt2.xml", 4096, 2, 2, 0, -1, 4096, 1024}, /* two micro-batches through two stages */
        {"models/t5.xml", 3072, 2, 1, 1, 1, 2048, 1024},   /* 1024 x (1 encoder + 2 decoder ranks) */
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        struct par_config pc = par_config_default();
        pc.world_size = cfg[i].world, pc.tp = cfg[i].tp, pc.pp = cfg[i].pp, pc.etp = cfg[i].etp, pc.epp = cfg[i].epp;
        pc.global_batch = cfg[i].gbs;
        struct built b;
        build(&b, cfg[i].file, "tiny", pc, -1);
        assert_int_equal(b.P->L->n_ranks, cfg[i].world);
        assert_int_equal(b.P->L->pc.dp, cfg[i].dp);
        const struct rank_groups *dp = rank_layout_groups(b.P->L, PAR_GROUP_DP_CP);
        assert_int_equal(dp->sizes[0], cfg[i].dp); /* the gradient all-reduce's group: every replica */
        struct diag d;
        const char *why = verify(&b, &d);
        if (why)
            fail_msg("%s on %d ranks (tp %d, pp %d) hangs:\n%s", cfg[i].file, cfg[i].world, cfg[i].tp, cfg[i].pp, why);
        diag_free(&d);
        unbuild(&b);
    }
}

/* A model whose layers read k tensors made before them: each of the k, and
 * the carried hidden state, crosses from stage 0 to stage 1, so in 1F1B's
 * steady state stage 0 posts the k + 1 activations of one micro-batch with
 * the k + 1 gradients of the one before, 2(k + 1) transfers in one group. */
static void write_skips_model(const char *path, int k)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "<model name=\"skips\" xmlns=\"urn:weft:model:1\">\n"
               "  <dim name=\"layers\" value=\"2\" flag=\"num-layers\"/><dim name=\"hidden\" value=\"8\"/>\n"
               "  <dim name=\"vocab\" value=\"16\"/><dim name=\"seq\" value=\"4\"/>\n"
               "  <dim name=\"batch\" value=\"1\" flag=\"micro-batch-size\"/>\n"
               "  <decoder>\n"
               "    <input name=\"tokens\" shape=\"batch seq\" dtype=\"i32\"/>\n"
               "    <input name=\"labels\" shape=\"batch seq\" dtype=\"i32\"/>\n"
               "    <param name=\"wte\" shape=\"vocab hidden\" split=\"vocab\"/>\n"
               "    <op kind=\"embedding\" in=\"wte tokens\" out=\"h\"/>\n");
    for (int i = 0; i < k; i++)
        fprintf(f, "    <op kind=\"scale\" in=\"h\" by=\"%d\" out=\"c%d\"/>\n", i + 2, i);
    fprintf(f, "    <repeat name=\"layer\" count=\"layers\" carry=\"h\">\n");
    for (int i = 0; i < k; i++) { /* h + c0 + ... + c(k-1), the sum running through t0, t1, ... */
        char in[16] = "h", out[16] = "h";
        if (i)
            snprintf(in, sizeof in, "t%d", i - 1);
        if (i < k - 1)
            snprintf(out, sizeof out, "t%d", i);
        fprintf(f, "      <op kind=\"add\" in=\"%s c%d\" out=\"%s\"/>\n", in, i, out);
    }
    fprintf(f, "    </repeat>\n"
               "    <op kind=\"matmul\" in=\"h wte\" transpose_b=\"true\" out=\"logits\"/>\n"
               "    <op kind=\"cross_entropy\" in=\"logits labels\" out=\"loss\"/>\n"
               "    <output name=\"loss\"/>\n"
               "  </decoder>\n</model>\n");
    fclose(f);
}

/* A P2P group holds as many transfers as the model needs (once at most 16,
 * an internal error past them); past the plan file's 255 the schedule says
 * so, naming the stage and the count. */
static void test_many_transfers(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof path, "/tmp/weft-skips-%d.xml", (int)getpid());
    struct par_config pc = par_config_default();
    pc.pp = 2, pc.global_batch = 4;
    struct fe_options opt = {0};
    struct diag d;

    write_skips_model(path, 10);
    diag_init(&d);
    struct built b;
    b.P = partition_model(path, &opt, &pc, &d);
    if (!b.P)
        fail_msg("%s", diag_first_error(&d));
    assert_int_equal(schedule_build(b.P, IR_SCHED_1F1B, false, &b.S, &d), 0);
    int most = 0;
    for (int i = 0; i < b.S.programs[0].n; i++)
        most = b.S.programs[0].ins[i].n_p2p > most ? b.S.programs[0].ins[i].n_p2p : most;
    assert_int_equal(most, 2 * (10 + 1));
    diag_free(&d);
    const char *why = verify(&b, &d);
    if (why)
        fail_msg("22 transfers a group: %s", why);
    diag_free(&d);
    unbuild(&b);

    write_skips_model(path, 130); /* 2 x 131 = 262 > 255 */
    diag_init(&d);
    b.P = partition_model(path, &opt, &pc, &d);
    unlink(path);
    if (!b.P)
        fail_msg("%s", diag_first_error(&d));
    assert_int_not_equal(schedule_build(b.P, IR_SCHED_1F1B, false, &b.S, &d), 0);
    printf("    %s\n", diag_first_error(&d));
    assert_non_null(strstr(diag_first_error(&d), "stage 0 posts 262 transfers"));
    assert_non_null(strstr(diag_first_error(&d), "at most 255"));
    diag_free(&d);
    partition_free(b.P);
}

/* The ranks of an expert-parallel group hold different experts: their
 * gradients are summed over the expert data-parallel ranks (Megatron's
 * expert_data_parallel group), never over dp x cp with the dense
 * parameters.  Tiny Mixtral (hidden 64, ffn 96, 4 experts, 2 layers; w1,
 * w3 and w2 are experts x 64 x 96 each, 238,400 parameters in all) at ep 2:
 *   experts' gradients per rank: 2 layers x 3 x (4/2 experts) x 64 x 96 = 73,728 fp32
 *   dense gradients: 238,400 - 2 x 3 x 4 x 64 x 96 = 90,944 fp32 */
static void test_expert_gradients_over_expert_dp(void **state)
{
    (void)state;
    const int64_t experts_bytes = 2 * 3 * 2 * 64 * 96 * 4, dense_bytes = (238400 - 2 * 3 * 4 * 64 * 96) * 4;
    for (int world = 2; world <= 4; world += 2) { /* expert dp 1: the experts' gradients move nowhere; expert dp 2 */
        struct par_config pc = par_config_default();
        pc.world_size = world, pc.ep = 2, pc.global_batch = 2 * world;
        struct built b;
        build(&b, "models/mixtral.xml", "tiny", pc, -1);
        int64_t by_group[IR_GROUP_COUNT] = {0};
        int norms = 0; /* the gradient norm summed over data-parallel ranks too: the experts differ across them */
        const struct ir_program *prog = &b.S.programs[0];
        for (int i = 0; i < prog->n; i++)
            if (prog->ins[i].kind == IR_INS_COLLECTIVE && prog->ins[i].tag == SCHED_TAG_NORM)
                norms += prog->ins[i].group == IR_GROUP_DP_CP;
            else if (prog->ins[i].kind == IR_INS_COLLECTIVE &&
                     (prog->ins[i].group == IR_GROUP_DP_CP || prog->ins[i].group == IR_GROUP_EXPERT_DP))
                by_group[prog->ins[i].group] += prog->ins[i].bytes;
        assert_int_equal(norms, 1);
        printf("    mixtral tiny, %d ranks at ep 2: %lld bytes over dp_cp, %lld over expert_dp\n", world,
               (long long)by_group[IR_GROUP_DP_CP], (long long)by_group[IR_GROUP_EXPERT_DP]);
        assert_int_equal(by_group[IR_GROUP_DP_CP], dense_bytes);
        assert_int_equal(by_group[IR_GROUP_EXPERT_DP], world == 2 ? 0 : experts_bytes);
        unbuild(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_model_and_schedule),
        cmocka_unit_test(test_warmup_counts),
        cmocka_unit_test(test_corrupted),
        cmocka_unit_test(test_grad_buckets),
        cmocka_unit_test(test_tied_bytes),
        cmocka_unit_test(test_param_grads_once),
        cmocka_unit_test(test_bubble),
        cmocka_unit_test(test_no_pipeline_no_bubble),
        cmocka_unit_test(test_cooldown_sends_before_reductions),
        cmocka_unit_test(test_gemm_model),
        cmocka_unit_test(test_expert_parallel_mfu),
        cmocka_unit_test(test_simulate_cli),
        cmocka_unit_test(test_thousands_of_ranks),
        cmocka_unit_test(test_many_transfers),
        cmocka_unit_test(test_expert_gradients_over_expert_dp),
    };
    int rc = cmocka_run_group_tests_name("schedule", tests, NULL, NULL);
    fe_cleanup();
    return rc;
}
