/* exec.c: one rank's plan, run (exec.h). */
#include "exec.h"
#include "backend.h"
#include "launch.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct exec {
    const struct rank_plan *R;
    struct comm *comm;
    const struct ir_role_memory *m;
    const struct ir_stage_actions *acts;
    struct backend *be;
    uint8_t *arena;          /* the backend's memory: the memory plan's total, then the staging (reads_bytes) */
    int64_t arena_bytes;
    uint64_t seed;
    int loss_op;             /* the op whose row losses are the loss (its LOSS action's), or -1 */
    int64_t loss_rows;       /* per micro-batch: this rank's */
    uint8_t loss_only_first; /* the parallel dimensions over which the rows are copies (IR_PDIM_BIT) */
    bool tied_first;         /* this rank adds its tied parameters' gradients (ir_tied_contributes) */
    int max_peers;           /* the most peers a pipeline transfer can have: the pipelines this rank is in */
    int64_t micro_batch;     /* samples a micro-batch: the inputs' first axis */
    double loss_sum;
    long iteration;
    int64_t consumed;        /* training samples consumed: every global batch before this step's */
    int64_t base;            /* the first global sample of the batch being run (consumed, or a validation batch's first) */
    const struct data_gpt *data; /* where the batch's samples come from (a split's GPTDataset); NULL: synthetic */
    const struct data_gpt *train; /* the training samples (exec_set_data), or NULL */
    int tokens_in;           /* the plan's tokens input (exec_data_seq); labels are R->labels */
    bool validating;         /* in exec_evaluate: dropout off (the launches' arg[KN_ARG_EVAL]) */
    int32_t *sample;         /* one sample's tokens, seq + 1 */
    double lr;               /* this step's learning rate */
    double norm;             /* the gradients' global norm, once the updates begin; -1 before */
    double clip;             /* the factor the updates scale gradients by */
    long skipped;            /* updates skipped in this run (a non-finite norm): the schedule and Adam count the others */
    long segments;           /* the step's (or validation's) segments so far: the next one's key (run_list) */
    bool overlap;            /* collectives started and finished when an action needs their bytes (exec_set_overlap) */
    struct inflight *inflight; /* started, not finished, in the order they started */
    int n_inflight, cap_inflight;
    long started, overlapped;  /* collectives started, and those an action ran beside (exec_overlap_counts) */
    struct ir_action_list *early; /* per program instruction: a last backward with the collectives after it started
                                   * within it (hoist), or an empty list (.v NULL): none */
    bool *started_early;       /* per program instruction: its collective is started within the backward before it */
    int n_early;
    double action_seconds[IR_ACT_COUNT];
    double *kernel_seconds;  /* per kernel of the plan, over the run */
    /* What the host reads of a step (the LOSS and SQSUM actions' rows): copied in the backend, in order,
     * into the staging after the memory plan's arena, and read back together (flush_reads) when the
     * norm or the loss is needed, so a GPU waits once or twice a step, not once a parameter. */
    struct pending_read *reads;
    int n_reads, max_reads;
    int64_t reads_used, reads_bytes;  /* bytes of the staging taken this step, and its size */
    float *reads_host;                /* the staging's copy on the host */
    float norm_sum;          /* the norm's sum of squares as this rank adds it (LOSS, SQSUM), until put into the
                              * arena's norm buffer for its collectives (norm_in_arena) */
    bool norm_in_arena;
    uint8_t *host;           /* host scratch: a buffer made here before it is put (inputs, parameters) */
    int64_t host_bytes;
    float *param_host;       /* exec_param_runs' host copy of a parameter's state, until the next call */
    int64_t param_host_bytes, param_offset, param_bytes; /* ... its size, and where in the arena it came from */
};

/* Bytes [lo, hi) of the arena. */
struct span {
    int64_t lo, hi;
};

/* A collective started (comm_start) and not yet finished: the bytes it reads and writes. */
struct inflight {
    struct comm_pending p;
    struct span buf, out;
    bool overlapped; /* an action ran while it was in flight */
};

/* A LOSS or SQSUM action's rows, staged at `at` (bytes into the staging). */
struct pending_read {
    bool loss;     /* LOSS: 2 floats a row (its second the row's loss); SQSUM: 1 */
    bool counts;   /* SQSUM: this rank counts them (else it adds 0, staging nothing) */
    int64_t at, rows;
};

double exec_kernel_seconds(const struct exec *x, int kernel) { return x->kernel_seconds[kernel]; }
int64_t exec_scratch_bytes(const struct exec *x) { return backend_scratch_bytes(x->be); }
int64_t exec_arena_bytes(const struct exec *x) { return x->arena_bytes; }
struct backend *exec_backend(struct exec *x) { return x->be; }
int64_t exec_consumed_samples(const struct exec *x) { return x->consumed; }
void exec_set_consumed_samples(struct exec *x, int64_t samples) { x->consumed = samples; }
long exec_skipped_updates(const struct exec *x) { return x->skipped; }
void exec_set_skipped_updates(struct exec *x, long skipped) { x->skipped = skipped; }
int64_t exec_global_batch(const struct exec *x) { return x->micro_batch * x->R->L->pc.dp * x->R->schedule.n_micro; }


void *exec_arena(struct exec *x) { return x->arena; }
void exec_set_overlap(struct exec *x, bool on) { x->overlap = on; }
void exec_overlap_counts(const struct exec *x, long *started, long *overlapped, int *early)
{
    *started = x->started, *overlapped = x->overlapped, *early = x->overlap ? x->n_early : 0;
}

/* The host scratch, at least bytes of it; host_release gives back what a
 * parameter needed (a step's inputs need little). */
static void *host_scratch(struct exec *x, int64_t bytes)
{
    if (bytes > x->host_bytes) {
        free(x->host);
        x->host = wf_calloc((size_t)bytes, 1);
        x->host_bytes = bytes;
    }
    return x->host;
}

static void host_release(struct exec *x)
{
    free(x->host);
    x->host = NULL, x->host_bytes = 0;
    free(x->param_host);
    x->param_host = NULL, x->param_host_bytes = 0, x->param_bytes = 0;
}

int32_t exec_token(uint64_t seed, int64_t sample, int64_t pos, int64_t vocab)
{
    uint64_t stream = kn_stream("weft.synthetic");
    int64_t t = (int64_t)(kn_uniform(seed, stream, (uint64_t)sample) * (double)vocab);
    for (int64_t p = 0; p < pos; p++)
        t = (t * 5 + 3) % vocab;
    return (int32_t)t;
}

static double normal(uint64_t seed, uint64_t stream, uint64_t index)
{
    double u1 = kn_uniform(seed, stream, 2 * index), u2 = kn_uniform(seed, stream, 2 * index + 1);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Where r is, in bytes from the arena's start. */
static int64_t ref_offset(const struct exec *x, const struct ir_ref *r, int v, int micro)
{
    int64_t o = ir_memory_offset(x->m, r->what, r->id, v, micro);
    if (o < 0)
        fprintf(stderr, "weft run: no buffer for %s %d (virtual stage %d, micro-batch %d)\n", ir_buf_what_name(r->what), r->id, v, micro);
    WF_ASSERT(o >= 0); /* ir_actions_check proved it at compile time */
    return o + r->offset;
}

static void *at(struct exec *x, const struct ir_ref *r, int v, int micro) { return x->arena + ref_offset(x, r, v, micro); }

/* The whole buffer r names (its offset lies within it), as bytes of the
 * arena; empty where the role has none. */
static struct span ref_span(const struct exec *x, const struct ir_ref *r, int v, int j)
{
    int64_t bytes = 0, o = ir_memory_find(x->m, r->what, r->id, v, j, &bytes);
    return o < 0 ? (struct span){0, 0} : (struct span){o, o + bytes};
}

/* The bytes a collective names: buf (or out) and its bytes, exactly (a bucket spans many gradients). */
static struct span coll_span(const struct exec *x, const struct ir_ref *r, int64_t bytes, int v, int j)
{
    int64_t o = ref_offset(x, r, v, j);
    return (struct span){o, o + bytes};
}

static bool meets(struct span a, struct span b) { return a.lo < b.hi && b.lo < a.hi; }

enum { MAX_SPANS = IR_ACTION_REFS + 1 };

/* The buffers action i of l (micro-batch j of virtual stage v) reads or
 * writes, at most MAX_SPANS (whole buffers: a superset); their count:
 * ir_action_refs's, but a collective's payload exactly (a bucket spans
 * many gradients), every half of the exchange a pipeline transfer starts
 * and the packing scratch, and attention's backward's workspace. */
static int action_spans(const struct exec *x, const struct ir_action_list *l, int i, int v, int j, struct span *s)
{
    const struct ir_action *a = &l->v[i];
    int n = 0;
    if (a->kind == IR_ACT_COLL) {
        s[n++] = coll_span(x, &a->coll.buf, a->coll.bytes, v, j), s[n++] = coll_span(x, &a->coll.out, a->coll.out_bytes, v, j);
        return n;
    }
    if (a->kind == IR_ACT_SEND || a->kind == IR_ACT_RECV) {
        struct ir_ref pack = {.what = IR_BUF_PACK, .id = -1};
        s[n++] = ref_span(x, &pack, v, j);
        for (int k = i; k < l->n && n < MAX_SPANS && (l->v[k].kind == IR_ACT_SEND || l->v[k].kind == IR_ACT_RECV); k++)
            s[n++] = ref_span(x, &l->v[k].p2p.buf, l->v[k].p2p.vstage, l->v[k].p2p.micro);
        return n;
    }
    const struct ir_ref *r[IR_ACTION_REFS];
    int refs = ir_action_refs(a, r);
    if (!refs) { /* PENDING: never runs */
        s[n++] = (struct span){0, INT64_MAX}; /* anything */
        return n;
    }
    for (int k = 0; k < refs; k++)
        s[n++] = ref_span(x, r[k], v, j);
    if (a->kind == IR_ACT_LAUNCH && a->launch.fn_last > KN_ATTN_FWD) { /* attention's backward: the delta in the workspace */
        struct ir_ref scratch = {.what = IR_BUF_SUMSQ, .id = -1};
        s[n++] = ref_span(x, &scratch, v, j);
    }
    return n;
}

/* The in-flight collectives finished, in the order they started, up to
 * and including the one at `last`. */
static int finish_upto(struct exec *x, int last, struct diag *d)
{
    double t0 = wf_seconds();
    int rc = 0;
    for (int i = 0; i <= last; i++) {
        if (comm_finish(&x->inflight[i].p, d))
            rc = -1;
        x->overlapped += x->inflight[i].overlapped;
    }
    memmove(x->inflight, x->inflight + last + 1, (size_t)(x->n_inflight - last - 1) * sizeof *x->inflight);
    x->n_inflight -= last + 1;
    x->action_seconds[IR_ACT_COLL] += wf_seconds() - t0;
    return rc;
}

/* Every in-flight collective finished: before the host reads or writes
 * the backend's memory, or waits for it (a GPU's wait would not keep the
 * deadline). */
static int settle(struct exec *x, struct diag *d) { return x->n_inflight ? finish_upto(x, x->n_inflight - 1, d) : 0; }

/* The in-flight collectives action i of l needs finished: those whose
 * bytes it reads or writes (and the ones started before them). */
static int settle_for(struct exec *x, const struct ir_action_list *l, int i, int v, int j, struct diag *d)
{
    if (!x->n_inflight)
        return 0;
    struct span s[MAX_SPANS];
    int n = action_spans(x, l, i, v, j, s), last = -1;
    for (int f = 0; f < x->n_inflight; f++)
        for (int k = 0; k < n; k++)
            if (meets(x->inflight[f].buf, s[k]) || meets(x->inflight[f].out, s[k]))
                last = f;
    return last < 0 ? 0 : finish_upto(x, last, d);
}

/* Whether any action of l (for micro-batch j of virtual stage v) reads or
 * writes bytes of s. */
static bool list_meets(const struct exec *x, const struct ir_action_list *l, int v, int j, const struct span *s, int n_s)
{
    struct span a[MAX_SPANS];
    for (int i = 0; i < l->n; i++)
        for (int k = 0, n = action_spans(x, l, i, v, j, a); k < n; k++)
            for (int q = 0; q < n_s; q++)
                if (meets(a[k], s[q]))
                    return true;
    return false;
}

/* Megatron's --overlap-grad-reduce, derived from the actions: a collective
 * that the schedule puts after a backward (a chunk's gradient buckets
 * after its last micro-batch's) starts within that backward, right after
 * the last action that reads or writes its bytes, provided nothing between
 * there and its own place does either.  It then runs beside the rest of
 * the backward.  Only collectives over groups within the stage move (tp,
 * cp, ep, expert tp, dp, expert dp): every member of such a group runs
 * this stage's actions on this memory plan, so all decide alike, and each
 * communicator sees its collectives in one order on all its members (a
 * bucket that finishes early may now start before one the backward
 * finishes last: the tied embedding's, whose gradient its first and last
 * actions write).  The first collective that cannot move stops the ones
 * after it; one that zeroes copies or puts the norm first stays put. */
static void hoist(struct exec *x)
{
    const struct ir_program *prog = &x->R->schedule.programs[x->R->stage];
    x->early = wf_calloc((size_t)prog->n + 1, sizeof *x->early);
    x->started_early = wf_calloc((size_t)prog->n + 1, sizeof *x->started_early);
    int *moved_ins = wf_calloc((size_t)prog->n + 1, sizeof *moved_ins), *place = wf_calloc((size_t)prog->n + 1, sizeof *place);
    for (int i = 0; i < prog->n; i++) {
        if (prog->ins[i].kind != IR_INS_BACKWARD)
            continue;
        int v = prog->ins[i].vstage, j = prog->ins[i].micro, moved = 0;
        const struct ir_action_list *l = &x->acts->backward[v];
        for (int c = i + 1; c < prog->n && (prog->ins[c].kind == IR_INS_COLLECTIVE || prog->ins[c].kind == IR_INS_P2P); c++) {
            const struct ir_action_list *own = &x->acts->ins[c];
            if (prog->ins[c].kind == IR_INS_P2P || !own->n)
                continue; /* a transfer: what it touches is checked for each collective after it; or nothing at its place
                           * (a backward's own collectives, which its actions run) */
            const struct ir_coll_action *k = own->n == 1 && own->v[0].kind == IR_ACT_COLL ? &own->v[0].coll : NULL;
            if (!k || k->copies || k->buf.what == IR_BUF_NORM || k->group == IR_GROUP_MP || k->group == IR_GROUP_TIED)
                break;
            struct span s[2] = {coll_span(x, &k->buf, k->bytes, -1, -1), coll_span(x, &k->out, k->out_bytes, -1, -1)};
            struct span in_list = coll_span(x, &k->buf, k->bytes, v, j), out_in_list = coll_span(x, &k->out, k->out_bytes, v, j);
            if (in_list.lo != s[0].lo || out_in_list.lo != s[1].lo) /* its buffers are not the same seen from the backward */
                break;
            int last = -1;
            for (int a = 0; a < l->n; a++)
                if (list_meets(x, &(struct ir_action_list){.v = l->v + a, .n = 1}, v, j, s, 2))
                    last = a;
            bool between = false;
            for (int b = i + 1; b < c && !between; b++)
                between = !x->started_early[b] && list_meets(x, &x->acts->ins[b], -1, -1, s, 2);
            if (between)
                break;
            int q = moved++; /* kept in order of place, then of the program */
            for (; q > 0 && place[q - 1] > last + 1; q--)
                place[q] = place[q - 1], moved_ins[q] = moved_ins[q - 1];
            place[q] = last + 1, moved_ins[q] = c;
            x->started_early[c] = true;
        }
        if (!moved)
            continue;
        struct ir_action_list *e = &x->early[i];
        e->v = wf_calloc((size_t)(l->n + moved), sizeof *e->v);
        for (int a = 0, q = 0; a <= l->n; a++) { /* l's actions, each moved collective before the action at its place */
            while (q < moved && place[q] == a)
                e->v[e->n++] = x->acts->ins[moved_ins[q++]].v[0];
            if (a < l->n)
                e->v[e->n++] = l->v[a];
        }
        x->n_early += moved;
    }
    free(moved_ins);
    free(place);
}

/* Element e of this rank's shard of tensor t, as its index in the whole tensor. */
static int64_t whole_index(const struct exec *x, const struct rank_tensor *t, int64_t e)
{
    const struct par_config *pc = &x->R->L->pc;
    const struct rank_coords *rc = &x->R->coords;
    int64_t idx = 0, stride = 1;
    for (int k = t->rank - 1; k >= 0; k--) {
        int deg = 1;
        for (int p = 1; p < IR_PDIM_COUNT; p++)
            if (t->split[k] & IR_PDIM_BIT(p))
                deg *= par_pdim_degree(pc, rc->part, p);
        int64_t local = t->shape[k] / deg, c = e % local;
        e /= local;
        idx += (c + (int64_t)par_axis_coord(pc, rc->part, t->split[k], rc) * local) * stride;
        stride *= t->shape[k];
    }
    return idx;
}

/* Whether this rank stores tensor t's slices: the replica at 0 along each
 * parallel dimension that holds copies of them (exec_param_runs). */
static bool stores_once(const struct exec *x, const struct rank_tensor *t)
{
    uint8_t splits = 0;
    for (int k = 0; k < t->rank; k++)
        splits |= t->split[k];
    const struct rank_coords *rc = &x->R->coords;
    if (splits & IR_PDIM_BIT(IR_PDIM_EP)) /* an expert's: copies over expert data parallel alone */
        return rc->expert_dp == 0 && (rc->expert_tp == 0 || (splits & IR_PDIM_BIT(IR_PDIM_XTP)));
    for (int p = IR_PDIM_TP; p <= IR_PDIM_CP; p++)
        if (!(splits & IR_PDIM_BIT(p)) && par_pdim_coord(rc, p))
            return false;
    return rc->dp == 0;
}

int exec_param_runs(struct exec *x, int t, enum exec_state s, bool stored_once, exec_run_fn fn, void *ctx, struct diag *d)
{
    const struct rank_tensor *T = &x->R->tensors[t];
    static const enum ir_buf_what what[EXEC_STATE_COUNT] = {IR_BUF_VALUE, IR_BUF_EXP_AVG, IR_BUF_EXP_AVG_SQ};
    enum ir_buf_what w = s == EXEC_WEIGHTS && x->R->L->pc.bf16 ? IR_BUF_MASTER : what[s];
    int64_t bytes, o = T->kind == IR_TENSOR_PARAM ? ir_memory_find(x->m, w, t, -1, -1, &bytes) : -1;
    x->param_bytes = 0;
    if (o < 0 || (stored_once && !stores_once(x, T)))
        return 0;
    if (bytes > x->param_host_bytes) {
        free(x->param_host);
        x->param_host = wf_calloc((size_t)bytes, 1);
        x->param_host_bytes = bytes;
    }
    if (backend_get(x->be, x->param_host, x->arena + o, (size_t)bytes, d))
        return -1;
    x->param_offset = o, x->param_bytes = bytes;
    float *local = x->param_host;
    int64_t n = bytes / 4, row = T->rank ? T->shape[T->rank - 1] : 1;
    for (int p = 1; T->rank && p < IR_PDIM_COUNT; p++) /* the last axis's length here: a run at most */
        if (T->split[T->rank - 1] & IR_PDIM_BIT(p))
            row /= par_pdim_degree(&x->R->L->pc, x->R->coords.part, p);
    for (int64_t e = 0; e < n;) { /* rows of the last axis, joined where the whole tensor continues them */
        int64_t first = whole_index(x, T, e), count = row;
        while (e + count < n && whole_index(x, T, e + count) == first + count)
            count += row;
        int rc = fn(ctx, first, local + e, count);
        if (rc)
            return rc;
        e += count;
    }
    return 0;
}

int exec_param_store(struct exec *x, struct diag *d)
{
    return x->param_bytes ? backend_put(x->be, x->arena + x->param_offset, x->param_host, (size_t)x->param_bytes, d) : 0;
}

int exec_weights_loaded(struct exec *x, struct diag *d)
{
    if (!x->R->L->pc.bf16)
        return 0;
    for (int b = 0; b < x->m->n_bufs; b++) {
        const struct ir_buf *p = &x->m->bufs[b];
        int64_t bytes, mo = p->region == IR_REGION_PARAMS && p->what == IR_BUF_VALUE ? ir_memory_find(x->m, IR_BUF_MASTER, p->id, -1, -1, &bytes) : -1;
        if (mo < 0)
            continue;
        int64_t n = p->bytes / 2;
        float *master = host_scratch(x, n * 6);
        uint16_t *w = (uint16_t *)(master + n);
        if (backend_get(x->be, master, x->arena + mo, (size_t)n * 4, d))
            return -1;
        for (int64_t e = 0; e < n; e++)
            w[e] = wf_bf16(master[e]);
        if (backend_put(x->be, x->arena + x->m->base[IR_REGION_PARAMS] + p->offset, w, (size_t)n * 2, d))
            return -1;
    }
    host_release(x);
    return 0;
}

/* Each parameter from the seed; under bf16 its fp32 master weights too, the
 * bf16 copy rounded from them. */
static int init_params(struct exec *x, struct diag *d)
{
    for (int b = 0; b < x->m->n_bufs; b++) {
        const struct ir_buf *p = &x->m->bufs[b];
        if (p->region != IR_REGION_PARAMS || p->what != IR_BUF_VALUE)
            continue;
        const struct rank_tensor *t = &x->R->tensors[p->id];
        bool bf16 = x->R->L->pc.bf16;
        int64_t n = p->bytes / (bf16 ? 2 : 4), bytes; /* this rank's shard */
        int64_t mo = bf16 ? ir_memory_find(x->m, IR_BUF_MASTER, p->id, -1, -1, &bytes) : -1;
        int64_t at_master = (p->bytes + 15) / 16 * 16;
        uint8_t *w = host_scratch(x, at_master + (mo >= 0 ? n * 4 : 0)); /* the shard, then its master weights */
        float *master = mo >= 0 ? (float *)(void *)(w + at_master) : NULL;
        uint64_t stream = kn_stream(t->name);
        for (int64_t e = 0; e < n; e++) {
            float f = t->init == IR_INIT_ONES ? 1.0f : t->init == IR_INIT_ZEROS ? 0.0f
                    : (float)(t->init_std * normal(x->seed, stream, (uint64_t)whole_index(x, t, e)));
            if (!bf16)
                ((float *)w)[e] = f;
            else {
                ((uint16_t *)w)[e] = wf_bf16(f);
                if (master)
                    master[e] = f;
            }
        }
        if (backend_put(x->be, x->arena + x->m->base[IR_REGION_PARAMS] + p->offset, w, (size_t)n * (bf16 ? 2 : 4), d) ||
            (master && backend_put(x->be, x->arena + mo, master, (size_t)n * 4, d)))
            return -1;
    }
    host_release(x);
    return 0;
}

/* The first global sample of micro-batch j on this rank: samples are dealt
 * as Megatron's sampler deals a global batch (from the batch's first, the
 * samples consumed before it), micro-batch j of every data-parallel rank
 * in turn. */
static int64_t first_sample(const struct exec *x, int j, int64_t micro_batch)
{
    const struct par_config *pc = &x->R->L->pc;
    return x->base + ((int64_t)j * pc->dp + x->R->coords.dp) * micro_batch;
}

/* Dropout's draws for micro-batch j: keyed by its first global sample, so
 * the same samples draw the same masks whatever the layout (at one
 * micro-batch size). */
static uint64_t dropout_seed(const struct exec *x, int j)
{
    return x->seed ^ ((uint64_t)first_sample(x, j, x->micro_batch) * 0x9e3779b97f4a7c15ull); /* sample 0: the seed, as ref.c */
}

/* Micro-batch j's inputs on this rank (its samples from first_sample); the
 * loss's labels read each sample one token on.  With data (exec_set_data)
 * the tokens are sample[0:seq] of the dataset's samples and the labels
 * sample[1:seq+1]; else synthetic (exec_token). */
static int fill_inputs(struct exec *x, int v, int j, struct diag *d)
{
    if (settle(x, d))
        return -1;
    for (int t = 0; t < x->R->n_tensors; t++) {
        const struct rank_tensor *T = &x->R->tensors[t];
        int64_t bytes, o = T->kind == IR_TENSOR_INPUT ? ir_memory_find(x->m, IR_BUF_VALUE, t, v, j, &bytes) : -1;
        if (o < 0)
            continue;
        int64_t B = T->shape[0], per = 1, shift = t == x->R->labels;
        for (int k = 1; k < T->rank; k++)
            per *= T->shape[k];
        int64_t vocab = x->R->vocab ? x->R->vocab : 2, S = T->rank > 1 ? T->shape[1] : 1;
        int64_t first = first_sample(x, j, B);
        int64_t n = B * per; /* this rank's elements: the whole micro-batch's over the groups splitting it */
        for (int k = 0; k < T->rank; k++)
            for (int p = 1; p < IR_PDIM_COUNT; p++)
                if (T->split[k] & IR_PDIM_BIT(p))
                    n /= par_pdim_degree(&x->R->L->pc, x->R->coords.part, p);
        bool half = T->dtype != IR_DTYPE_I32 && bytes == n * 2; /* a float input held as bf16 */
        bool real = x->data && (t == x->tokens_in || t == x->R->labels);
        uint8_t *in = host_scratch(x, n * (half ? 2 : 4));
        int64_t have = -1; /* the sample in x->sample */
        for (int64_t e = 0; e < n; e++) { /* this rank's elements (context parallel: its piece of the sequence) */
            int64_t i = whole_index(x, T, e), b = i / per;
            if (real) {
                if (first + b != have)
                    data_gpt_sample(x->data, have = first + b, x->sample);
                ((int32_t *)(void *)in)[e] = x->sample[i % per + shift];
            } else if (T->dtype == IR_DTYPE_I32)
                ((int32_t *)(void *)in)[e] = exec_token(x->seed, first + b, i % per % S + shift, vocab);
            else if (half)
                ((uint16_t *)(void *)in)[e] = wf_bf16((float)normal(x->seed, kn_stream(T->name), (uint64_t)(first * per + i)));
            else
                ((float *)(void *)in)[e] = (float)normal(x->seed, kn_stream(T->name), (uint64_t)(first * per + i));
        }
        if (backend_put(x->be, x->arena + o, in, (size_t)(n * (half ? 2 : 4)), d))
            return -1;
    }
    return 0;
}

static int launch(struct exec *x, const struct ir_launch *il, int v, int j, struct diag *d);

/* A GEMM action; with an epilogue, in the backend's GEMM where it has it,
 * else the product written where the epilogue's launch reads it, then the
 * launch. */
static int gemm(struct exec *x, const struct ir_action *a, int v, int j, struct diag *d)
{
    const struct ir_gemm *g = &a->gemm;
    struct backend_gemm b = {.batch = g->batch, .m = g->m, .n = g->n, .k = g->k, .ta = g->ta, .tb = g->tb, .beta = g->beta,
                             .dtype = g->dtype, .c_dtype = g->c_dtype, .lda = g->lda, .ldb = g->ldb, .ldc = g->ldc,
                             .stride_a = g->stride_a, .stride_b = g->stride_b, .stride_c = g->stride_c,
                             .a = at(x, &g->a, v, j), .b = at(x, &g->b, v, j), .c = at(x, &g->c, v, j), .epilogue = g->epilogue};
    if (!g->epilogue)
        return backend_gemm(x->be, &b, d);
    b.bias = at(x, &g->bias, v, j);
    b.aux = g->epilogue == IR_EPI_GELU_AUX_BIAS ? at(x, &g->aux, v, j) : NULL;
    if (backend_gemm_epilogue(x->be, &b))
        return backend_gemm(x->be, &b, d);
    b.epilogue = IR_EPI_NONE, b.bias = NULL, b.aux = NULL;
    b.c = at(x, &a->launch.in[g->gemm_in], v, j);
    return backend_gemm(x->be, &b, d) || launch(x, &a->launch, v, j, d) ? -1 : 0;
}

/* The tokens each rank's loss gradient is over: its rows, every
 * micro-batch, every data-parallel replica and context-parallel rank.
 * Where context-parallel ranks compute the same rows (LLaVA after its
 * concat), each one's gradient is so a share, summed as the shard pass
 * says (partial over cp, shard.c). */
static double loss_tokens(const struct exec *x)
{
    const struct par_config *pc = &x->R->L->pc;
    bool tp_splits = !(x->loss_only_first & IR_PDIM_BIT(IR_PDIM_TP)); /* its rows (sequence parallel): a tp rank's share */
    return (double)x->loss_rows * x->R->schedule.n_micro * pc->dp * pc->cp * (tp_splits ? pc->tp : 1);
}

/* Whether this rank counts its rows of the loss: copies count once. */
static bool counts_loss(const struct exec *x)
{
    for (int p = 0; p < IR_PDIM_COUNT; p++)
        if ((x->loss_only_first >> p & 1) && par_pdim_coord(&x->R->coords, p))
            return false;
    return x->loss_rows > 0;
}

/* The staging: after the memory plan's arena, the loss's two sums
 * (loss_sums), then from IR_ALIGN on the rows the host reads (reads). */
static uint8_t *staging(struct exec *x) { return x->arena + (x->m->total + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN; }

/* A LOSS or SQSUM action: its rows copied into the staging, to be read
 * with the step's others (flush_reads).  A SQSUM this rank does not count
 * (a copy another rank counts) stages nothing. */
static int stage_read(struct exec *x, const struct ir_action *a, int v, int j, struct diag *d)
{
    struct pending_read r = {.loss = a->kind == IR_ACT_LOSS, .counts = true, .at = x->reads_used, .rows = a->loss_rows};
    for (int p = 0; !r.loss && p < IR_PDIM_COUNT; p++)
        if ((a->sq_only_first >> p & 1) && par_pdim_coord(&x->R->coords, p))
            r.counts = false;
    if (!r.loss && ((a->sq_replica == IR_SQ_DP0 && x->R->coords.dp) || (a->sq_replica == IR_SQ_EXPERT_DP0 && x->R->coords.expert_dp)))
        r.counts = false;
    int64_t bytes = r.counts ? r.rows * (r.loss ? 8 : 4) : 0;
    WF_ASSERT(x->n_reads < x->max_reads && x->reads_used + bytes <= x->reads_bytes); /* plan_reads counted every one */
    if (bytes && backend_copy(x->be, staging(x) + IR_ALIGN + x->reads_used, at(x, &a->loss, v, j), (size_t)bytes, d))
        return -1;
    x->reads[x->n_reads++] = r;
    x->reads_used += bytes;
    return 0;
}

/* The staged rows, read in one wait and summed in the order their actions
 * ran: a LOSS's row losses into the step's loss (not finite: the norm is
 * made NaN, so every rank that updates skips it), a SQSUM's into the norm's
 * sum of squares. */
static int flush_reads(struct exec *x, struct diag *d)
{
    if (settle(x, d))
        return -1;
    if (x->reads_used && backend_get(x->be, x->reads_host, staging(x) + IR_ALIGN, (size_t)x->reads_used, d))
        return -1;
    for (int i = 0; i < x->n_reads; i++) {
        const struct pending_read *r = &x->reads[i];
        const float *s = x->reads_host + r->at / 4;
        double sum = 0;
        if (r->loss) {
            for (int64_t k = 0; k < r->rows; k++)
                sum += s[2 * k + 1];
            x->loss_sum += sum;
            if (!isfinite(sum))
                x->norm_sum = NAN;
            continue;
        }
        WF_ASSERT(!x->norm_in_arena); /* the lowering puts every sum before the norm's collectives */
        for (int64_t k = 0; r->counts && k < r->rows; k++)
            sum += s[k];
        x->norm_sum += (float)sum;
    }
    x->n_reads = 0, x->reads_used = 0;
    return 0;
}

/* How many LOSS and SQSUM actions a step runs, and the bytes their rows
 * take: the staging's size. */
static void plan_reads(struct exec *x)
{
    const struct ir_program *prog = &x->R->schedule.programs[x->R->stage];
    for (int i = 0; i < prog->n; i++) {
        const struct ir_ins *ins = &prog->ins[i];
        const struct ir_action_list *l = ins->kind == IR_INS_FORWARD ? &x->acts->forward[ins->vstage]
                                       : ins->kind == IR_INS_BACKWARD ? &x->acts->backward[ins->vstage] : &x->acts->ins[i];
        for (int k = 0; k < l->n; k++)
            if (l->v[k].kind == IR_ACT_LOSS || l->v[k].kind == IR_ACT_SQSUM) {
                x->max_reads++;
                x->reads_bytes += l->v[k].loss_rows * (l->v[k].kind == IR_ACT_LOSS ? 8 : 4);
            }
    }
}

/* The norm's sum of squares into the arena's norm buffer, for its collectives. */
static int put_norm(struct exec *x, struct diag *d)
{
    struct ir_ref r = {.what = IR_BUF_NORM, .id = -1};
    if (x->norm_in_arena || flush_reads(x, d))
        return x->norm_in_arena ? 0 : -1;
    x->norm_in_arena = true;
    return backend_put(x->be, at(x, &r, -1, -1), &x->norm_sum, 4, d);
}

/* The gradients' global norm, read once the updates begin: every sum of
 * squares is in, summed over the model's ranks, so every rank reads the same
 * (and so agrees whether to skip the update).  A rank whose rows of the loss
 * were not finite made it NaN (flush_reads): such a loss skips the update too. */
static int read_norm(struct exec *x, struct diag *d)
{
    if (!(x->norm < 0))
        return 0;
    struct ir_ref r = {.what = IR_BUF_NORM, .id = -1};
    if (flush_reads(x, d) || (x->norm_in_arena && backend_get(x->be, &x->norm_sum, at(x, &r, -1, -1), 4, d)))
        return -1;
    x->norm = sqrt(x->norm_sum); /* NaN or infinite: the update is skipped (launch) */
    x->clip = optim_clip_coeff(&x->R->opt, x->norm);
    return 0;
}

static void float_args(struct exec *x, const struct kn_launch *L, struct kn_args *a)
{
    if (L->when == KN_WHEN_BACKWARD)
        for (int i = 0; i < L->n_in; i++)
            if (L->in[i].what == IR_BUF_ROWSTATS && L->in[i].id == x->loss_op) /* the mean over every token */
                a->arg[0] = (float)(1.0 / loss_tokens(x));
    if (L->when == KN_WHEN_OPTIMIZER) { /* after read_norm (launch) */
        long t = x->iteration - x->skipped + 1; /* Adam's step: the updates taken, this one included */
        a->arg[0] = (float)x->lr, a->arg[1] = (float)x->clip;
        a->arg[2] = (float)(1 / (1 - pow(x->R->opt.beta1, (double)t))), a->arg[3] = (float)(1 / (1 - pow(x->R->opt.beta2, (double)t)));
    }
}

static int launch(struct exec *x, const struct ir_launch *il, int v, int j, struct diag *d)
{
    const struct kn_launch *L = &x->R->kernels.launches[il->launch];
    const struct kn_entry *e = &x->R->kernels.kernels[L->kernel];
    if (L->when == KN_WHEN_OPTIMIZER && read_norm(x, d))
        return -1;
    if (L->when == KN_WHEN_OPTIMIZER && !isfinite(x->norm))
        return 0; /* a skipped update: no parameter or optimizer state changes (the optimizer's launches are all it writes) */
    if (e->kind == KN_KIND_FUSED) {
        struct kn_args a;
        ir_action_launch_args(il, &x->R->L->pc, &x->R->coords, &a);
        bool drops = false; /* a dropout's streams: only then does the seed matter (and a graph's node change with it) */
        for (int s = 0; s < (int)(sizeof a.stream / sizeof *a.stream); s++)
            drops |= a.stream[s] != 0;
        a.seed = drops ? dropout_seed(x, j) : 0;
        float_args(x, L, &a);
        a.arg[KN_ARG_EVAL] = x->validating ? 1.0f : 0.0f;
        for (int i = 0; i < L->n_in; i++)
            a.in[i] = at(x, &il->in[i], v, j);
        for (int i = 0; i < L->n_out; i++)
            a.out[i] = at(x, &il->out[i], v, j);
        return backend_fused(x->be, L->kernel, &a, d);
    }
    if (e->kind == KN_KIND_ROUTE) {
        struct kn_route_args a;
        kn_launch_route_args(L, &a);
        a.idx = at(x, &il->in[0], v, j), a.routes = at(x, &il->out[0], v, j);
        a.fills = L->n_out > 1 ? at(x, &il->out[1], v, j) : NULL;
        return backend_route(x->be, L->kernel, &a, d);
    }
    struct kn_attn_args a;
    kn_launch_attn_args(L, &a);
    a.scale = il->scale;
    const struct par_config *pc = &x->R->L->pc;
    a.q_pos0 += par_axis_coord(pc, x->R->coords.part, il->q_pos_pdim, &x->R->coords) * a.Sq;
    a.k_pos0 += par_axis_coord(pc, x->R->coords.part, il->k_pos_pdim, &x->R->coords) * a.Sk;
    a.q = at(x, &il->in[0], v, j), a.k = at(x, &il->in[1], v, j), a.v = at(x, &il->in[2], v, j);
    a.bias = e->attn.bias ? at(x, &il->in[3], v, j) : NULL;
    a.out = at(x, &il->out[0], v, j);
    a.stats = L->n_out > 1 ? at(x, &il->out[1], v, j) : NULL;
    if (il->fn_last > KN_ATTN_FWD) { /* the backward: the gradients of the same buffers, the delta in the workspace */
        a.dout = at(x, &il->grad_out[0], v, j);
        a.dq = at(x, &il->grad_in[0], v, j), a.dk = at(x, &il->grad_in[1], v, j), a.dv = at(x, &il->grad_in[2], v, j);
        a.dbias = e->attn.bias_grad ? at(x, &il->grad_in[3], v, j) : NULL;
        struct ir_ref scratch = {.what = IR_BUF_SUMSQ, .id = -1}; /* the workspace's scratch: the norm's sums use it later */
        a.delta = at(x, &scratch, v, j);
    }
    for (int f = il->fn_first; f <= il->fn_last; f++)
        if (backend_attention(x->be, L->kernel, (enum kn_attn_fn)f, &a, d))
            return -1;
    return 0;
}

static bool same_ref(const struct ir_ref *a, const struct ir_ref *b)
{
    return a->what == b->what && a->id == b->id && a->offset == b->offset;
}

/* A COPY: planes x rows of width bytes, or their elementwise sum into dst. */
static int copy(struct exec *x, const struct ir_copy *c, int v, int j, struct diag *d)
{
    const char *src = (const char *)at(x, &c->src, v, j) +
                      par_axis_coord(&x->R->L->pc, x->R->coords.part, c->src_pdim, &x->R->coords) * c->src_step;
    char *dst = (char *)at(x, &c->dst, v, j) + par_axis_coord(&x->R->L->pc, x->R->coords.part, c->dst_pdim, &x->R->coords) * c->dst_step;
    struct backend_rows r = {.dst = dst, .src = src, .planes = c->planes, .rows = c->rows, .width = c->width,
                             .src_plane = c->src_plane, .src_pitch = c->src_pitch, .dst_plane = c->dst_plane,
                             .dst_pitch = c->dst_pitch, .add = c->add, .dtype = c->dtype};
    return backend_copy_rows(x->be, &r, d);
}

/* Whether a runs on the backend alone: a run of such actions is a segment
 * (backend_segment_begin), which a GPU replays as one graph. */
static bool device_only(const struct ir_action *a)
{
    return a->kind == IR_ACT_GEMM || a->kind == IR_ACT_LAUNCH || a->kind == IR_ACT_ZERO || a->kind == IR_ACT_COPY ||
           a->kind == IR_ACT_LOSS || a->kind == IR_ACT_SQSUM;
}

static bool optimizer_launch(const struct exec *x, const struct ir_action *a)
{
    return a->kind == IR_ACT_LAUNCH && x->R->kernels.launches[a->launch.launch].when == KN_WHEN_OPTIMIZER;
}

static int run_actions(struct exec *x, const struct ir_action_list *l, int v, int j, struct diag *d);

/* l's actions for micro-batch j of virtual stage v, each run of device-only
 * ones a segment keyed by its place in the step (a validation's apart), so
 * the same run has the same key every step.  The optimizer's launches are
 * segments of their own, after the host has read the gradients' norm. */
static int run_list(struct exec *x, const struct ir_action_list *l, int v, int j, struct diag *d)
{
    int rc = 0;
    for (int first = 0, end; first < l->n && !rc; first = end) {
        const struct ir_action *a = &l->v[first];
        bool dev = device_only(a), opt = optimizer_launch(x, a);
        for (end = first + 1; end < l->n && device_only(&l->v[end]) == dev && optimizer_launch(x, &l->v[end]) == opt; end++)
            ;
        struct ir_action_list part = {.v = l->v + first, .n = end - first};
        if (!dev)
            rc = run_actions(x, &part, v, j, d);
        else if (!(opt && read_norm(x, d))) {
            rc = backend_segment_begin(x->be, (uint64_t)x->validating << 63 | (uint64_t)x->segments++, d);
            if (!rc)
                rc = run_actions(x, &part, v, j, d);
            if (backend_segment_end(x->be, d))
                rc = -1;
        } else
            rc = -1;
    }
    return rc;
}

static int run_actions(struct exec *x, const struct ir_action_list *l, int v, int j, struct diag *d)
{
    for (int i = 0; i < l->n; i++) {
        const struct ir_action *a = &l->v[i];
        if (settle_for(x, l, i, v, j, d))
            return -1;
        for (int f = 0; f < x->n_inflight; f++)
            x->inflight[f].overlapped = true;
        double t0 = wf_seconds();
        switch (a->kind) {
        case IR_ACT_GEMM:
            if (gemm(x, a, v, j, d))
                return -1;
            break;
        case IR_ACT_LAUNCH:
            if (launch(x, &a->launch, v, j, d))
                return -1;
            x->kernel_seconds[x->R->kernels.launches[a->launch.launch].kernel] += wf_seconds() - t0;
            break;
        case IR_ACT_ZERO:
            if (backend_zero(x->be, at(x, &a->zero, v, j), (size_t)a->zero_bytes, d))
                return -1;
            break;
        case IR_ACT_SEND:
        case IR_ACT_RECV: { /* this and the halves after it: one exchange.  A half with several peers (an encoder
                             * rank and the decoder's tensor-parallel ranks above it): a value goes to each; a
                             * gradient comes from each, copies of one another (whole over the decoder's tp), the
                             * first into the buffer and the others into the packing scratch */
            int n = 0, m = 0, max = x->max_peers;
            while (i + n < l->n && (l->v[i + n].kind == IR_ACT_SEND || l->v[i + n].kind == IR_ACT_RECV))
                n++;
            struct comm_msg *msgs = wf_calloc((size_t)n * (size_t)max + 1, sizeof *msgs);
            int *peers = wf_calloc((size_t)max + 1, sizeof *peers), rc = 0;
            int64_t scratch_bytes;
            struct ir_ref scratch = {.what = IR_BUF_PACK, .id = -1};
            ir_memory_find(x->m, IR_BUF_PACK, -1, v, j, &scratch_bytes);
            for (int k = 0; k < n && !rc; k++) {
                const struct ir_action *h = &l->v[i + k];
                int np = ir_p2p_peers(&x->R->schedule, x->R->L, x->R->rank, h->p2p.peer_chunk, peers, max);
                for (int q = 0; q < np && !rc; q++) {
                    bool copy = q > 0 && h->kind == IR_ACT_RECV;
                    if (copy && scratch.offset + h->p2p.bytes > scratch_bytes) {
                        diag_error(d, NULL, 0, "rank %d: a gradient's copy from rank %d (%lld bytes) does not fit the packing scratch "
                                               "(%lld): the plan is inconsistent", x->R->rank, peers[q], (long long)h->p2p.bytes,
                                   (long long)scratch_bytes);
                        rc = -1;
                        break;
                    }
                    msgs[m++] = (struct comm_msg){.send = h->kind == IR_ACT_SEND, .peer = peers[q], .tag = h->p2p.tag,
                                                  .buf = copy ? at(x, &scratch, v, j) : at(x, &h->p2p.buf, h->p2p.vstage, h->p2p.micro),
                                                  .bytes = h->p2p.bytes};
                    if (copy)
                        scratch.offset += (h->p2p.bytes + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN;
                }
            }
            if (!rc && x->comm)
                rc = x->comm->ops->exchange(x->comm, m, msgs, d);
            free(msgs);
            free(peers);
            if (rc)
                return -1;
            i += n - 1;
            break;
        }
        case IR_ACT_COLL: {
            const struct ir_coll_action *c = &a->coll;
            if (c->copies && !x->tied_first && backend_zero(x->be, at(x, &c->buf, v, j), (size_t)c->bytes, d)) /* a copy another
                                                                                                              * rank of the group adds */
                return -1;
            if (c->buf.what == IR_BUF_NORM && put_norm(x, d))
                return -1;
            int64_t count = c->bytes / ir_dtype_bytes((enum ir_dtype)c->dtype);
            x->started += x->comm != NULL;
            if (x->comm && x->overlap) { /* finished when an action needs its bytes (settle_for), or the host does */
                WF_GROW(x->inflight, x->n_inflight, x->cap_inflight);
                struct inflight *f = &x->inflight[x->n_inflight];
                f->overlapped = false;
                f->buf = coll_span(x, &c->buf, c->bytes, v, j), f->out = coll_span(x, &c->out, c->out_bytes, v, j);
                if (comm_start(x->comm, (enum ir_group)c->group, c->set, (enum ir_coll)c->coll, at(x, &c->buf, v, j),
                               at(x, &c->out, v, j), count, c->dtype, &f->p, d))
                    return -1;
                x->n_inflight++;
            } else if (x->comm && x->comm->ops->collective(x->comm, (enum ir_group)c->group, c->set, (enum ir_coll)c->coll,
                                                           at(x, &c->buf, v, j), at(x, &c->out, v, j), count, c->dtype, d))
                return -1;
            if (!x->comm && !same_ref(&c->buf, &c->out) && /* one rank: the group is itself */
                backend_copy(x->be, at(x, &c->out, v, j), at(x, &c->buf, v, j), (size_t)c->out_bytes, d))
                return -1;
            break;
        }
        case IR_ACT_COPY:
            if (copy(x, &a->copy, v, j, d))
                return -1;
            break;
        case IR_ACT_LOSS:
        case IR_ACT_SQSUM:
            if (stage_read(x, a, v, j, d))
                return -1;
            break;
        default: {
            char s[256];
            diag_error(d, NULL, 0, "rank %d: action %d (%s): weft run does not run it yet", x->R->rank, i, ir_action_str(a, s, sizeof s));
            return -1;
        }
        }
        x->action_seconds[a->kind] += wf_seconds() - t0;
    }
    return 0;
}

int exec_check(const struct rank_plan *R, const struct comm *comm, struct diag *d)
{
    const struct ir_program *prog = &R->schedule.programs[R->stage];
    const struct ir_stage_actions *acts = &R->actions.stages[R->stage];
    for (int i = 0; i < prog->n; i++) {
        const struct ir_ins *ins = &prog->ins[i];
        const struct ir_action_list *l = i >= acts->n_ins ? NULL
                                       : ins->kind == IR_INS_FORWARD ? &acts->forward[ins->vstage]
                                       : ins->kind == IR_INS_BACKWARD ? &acts->backward[ins->vstage] : &acts->ins[i];
        int pending = -1;
        for (int k = 0; l && k < l->n && pending < 0; k++)
            if (l->v[k].kind == IR_ACT_PENDING || l->v[k].awaits)
                pending = k;
        if (!l || pending >= 0) {
            char s[256];
            char a[256] = "its actions are missing";
            if (l)
                ir_action_str(&l->v[pending], a, sizeof a);
            diag_error(d, NULL, 0, "weft run: rank %d, instruction %d (%s), action %d (%s): this weft does not run it yet",
                       R->rank, i, ir_ins_str(ins, s, sizeof s), pending, a);
            return -1;
        }
    }
    if (R->L->n_ranks > 1 && !comm) {
        diag_error(d, NULL, 0, "weft run: a plan for %d ranks needs a communicator", R->L->n_ranks);
        return -1;
    }
    return 0;
}

struct exec *exec_new(const struct rank_plan *R, struct comm *comm, uint64_t seed, enum backend_kind kind, struct diag *d)
{
    if (exec_check(R, comm, d))
        return NULL;
    struct backend *be = backend_open(kind, &R->kernels, d);
    return be ? exec_new_on(R, comm, seed, be, d) : NULL;
}

struct exec *exec_new_on(const struct rank_plan *R, struct comm *comm, uint64_t seed, struct backend *be, struct diag *d)
{
    if (exec_check(R, comm, d)) {
        backend_close(be);
        return NULL;
    }
    struct exec *x = wf_calloc(1, sizeof *x);
    x->R = R, x->comm = comm, x->seed = seed, x->loss_op = -1, x->tokens_in = -1, x->be = be, x->overlap = true;
    int *component = ir_pp_components(R->L);
    x->tied_first = ir_tied_contributes(R->L, component, R->rank);
    free(component);
    const struct rank_groups *pp = &R->L->groups[PAR_GROUP_PP];
    for (int g = 0; g < pp->n_groups; g++)
        for (int k = 0; k < pp->sizes[g]; k++)
            x->max_peers += pp->ranks[g][k] == R->rank;
    x->m = &R->memory.roles[R->stage];
    x->kernel_seconds = wf_calloc((size_t)R->kernels.n_kernels + 1, sizeof *x->kernel_seconds);
    x->micro_batch = 1;
    for (int t = R->n_tensors - 1; t >= 0; t--)
        if (R->tensors[t].kind == IR_TENSOR_INPUT && R->tensors[t].rank)
            x->micro_batch = R->tensors[t].shape[0];
    x->acts = &R->actions.stages[R->stage];
    hoist(x);
    for (int v = 0; v < x->acts->n_vstages; v++)
        for (int i = 0; i < x->acts->forward[v].n; i++)
            if (x->acts->forward[v].v[i].kind == IR_ACT_LOSS)
                x->loss_op = x->acts->forward[v].v[i].loss.id, x->loss_rows = x->acts->forward[v].v[i].loss_rows,
                x->loss_only_first = x->acts->forward[v].v[i].sq_only_first;
    plan_reads(x);
    x->reads = wf_calloc((size_t)x->max_reads + 1, sizeof *x->reads);
    x->reads_host = wf_calloc((size_t)x->reads_bytes / 4 + 1, sizeof *x->reads_host);
    x->arena_bytes = (x->m->total + IR_ALIGN - 1) / IR_ALIGN * IR_ALIGN + IR_ALIGN + x->reads_bytes;
    if (!(x->arena = backend_alloc(x->be, (size_t)x->arena_bytes, d))) {
        diag_note(d, NULL, 0, "rank %d: the arena (the memory plan's %lld bytes, and %lld the executor stages its reads in) on %s",
                  R->rank, (long long)x->m->total, (long long)(x->arena_bytes - x->m->total), backend_describe(x->be));
        exec_free(x);
        return NULL;
    }
    if (backend_zero(x->be, x->arena, (size_t)x->arena_bytes, d) || init_params(x, d)) {
        exec_free(x);
        return NULL;
    }
    return x;
}

void exec_free(struct exec *x)
{
    if (!x)
        return;
    if (x->be) {
        backend_free(x->be, x->arena);
        backend_close(x->be);
    }
    free(x->kernel_seconds);
    free(x->inflight); /* after a failure: the job ends (comm_abort) with what was in flight */
    for (int i = 0; x->early && i < x->R->schedule.programs[x->R->stage].n; i++)
        free(x->early[i].v);
    free(x->early);
    free(x->started_early);
    free(x->reads);
    free(x->reads_host);
    free(x->host);
    free(x->param_host);
    free(x->sample);
    free(x);
}

/* The batch's loss, the same on every rank: the last stage's row losses
 * (each tensor-parallel rank has them all: its rank 0 counts them), summed
 * over the model's ranks and the replicas, and the tokens they came from
 * (Megatron averages its log's loss so): sum[0], sum[1]. */
static int loss_sums(struct exec *x, float sum[2], struct diag *d)
{
    const struct par_config *pc = &x->R->L->pc;
    if (flush_reads(x, d))
        return -1;
    bool counts = counts_loss(x);
    sum[0] = counts ? (float)x->loss_sum : 0, sum[1] = counts ? (float)((double)x->loss_rows * x->R->schedule.n_micro) : 0;
    bool mp = x->comm && (pc->tp * pc->pp > 1 || pc->epp > 0), dp = x->comm && pc->dp * pc->cp > 1;
    float *in_arena = (float *)(void *)staging(x); /* the communicator's buffers are the backend's */
    if (!mp && !dp)
        return 0;
    if (backend_put(x->be, in_arena, sum, 2 * sizeof *sum, d) ||
        (mp && x->comm->ops->collective(x->comm, IR_GROUP_MP, 0, IR_COLL_ALL_REDUCE, in_arena, in_arena, 2, IR_DTYPE_F32, d)) ||
        (dp && x->comm->ops->collective(x->comm, IR_GROUP_DP_CP, 0, IR_COLL_ALL_REDUCE, in_arena, in_arena, 2, IR_DTYPE_F32, d)))
        return -1;
    return backend_get(x->be, sum, in_arena, 2 * sizeof *sum, d);
}

int exec_step(struct exec *x, long iteration, struct exec_stats *st, struct diag *d)
{
    double t0 = wf_seconds();
    x->iteration = iteration;
    x->base = x->consumed, x->data = x->train;
    x->loss_sum = 0;
    x->norm = -1, x->clip = 1;
    x->lr = x->R->train ? optim_lr(&x->R->opt, iteration - x->skipped) : 0; /* Megatron's schedule steps on updates taken */
    memset(x->action_seconds, 0, sizeof x->action_seconds);
    x->n_reads = 0, x->reads_used = 0;
    x->norm_sum = 0, x->norm_in_arena = false;
    x->segments = 0;
    if (x->param_host)
        host_release(x); /* a checkpoint's, or a load's */
    if (backend_zero(x->be, x->arena + x->m->base[IR_REGION_GRADS], (size_t)x->m->size[IR_REGION_GRADS], d))
        return -1;
    const struct ir_program *prog = &x->R->schedule.programs[x->R->stage];
    for (int i = 0; i < prog->n; i++) {
        const struct ir_ins *ins = &prog->ins[i];
        int rc = 0;
        if (ins->kind == IR_INS_FORWARD)
            rc = fill_inputs(x, ins->vstage, ins->micro, d) || run_list(x, &x->acts->forward[ins->vstage], ins->vstage, ins->micro, d);
        else if (ins->kind == IR_INS_BACKWARD)
            rc = run_list(x, x->overlap && x->early[i].v ? &x->early[i] : &x->acts->backward[ins->vstage], ins->vstage, ins->micro, d);
        else if (!(x->overlap && x->started_early[i])) /* else started within the backward before it (hoist) */
            rc = run_list(x, &x->acts->ins[i], -1, -1, d);
        if (rc) {
            char s[256];
            diag_note(d, NULL, 0, "rank %d was at instruction %d of its program (%s), iteration %ld", x->R->rank, i,
                      ir_ins_str(ins, s, sizeof s), iteration + 1);
            return -1;
        }
    }
    float sum[2];
    if (loss_sums(x, sum, d))
        return -1;
    x->consumed += exec_global_batch(x);
    st->loss = sum[1] > 0 ? sum[0] / sum[1] : 0;
    if (x->R->train && read_norm(x, d))
        return -1;
    st->grad_norm = x->R->train ? x->norm : 0;
    st->skipped = x->R->train && !isfinite(st->grad_norm);
    x->skipped += st->skipped;
    st->lr = x->lr;
    st->seconds = wf_seconds() - t0;
    st->tokens = (int64_t)sum[1];
    st->samples = exec_global_batch(x);
    memcpy(st->action_seconds, x->action_seconds, sizeof st->action_seconds);
    return 0;
}

int64_t exec_data_seq(struct exec *x, struct diag *d)
{
    const struct rank_plan *R = x->R;
    int n = 0, tokens = -1;
    char names[256] = "";
    for (int t = 0; t < R->n_tensors; t++) {
        const struct rank_tensor *T = &R->tensors[t];
        if (T->kind != IR_TENSOR_INPUT)
            continue;
        size_t at = strlen(names);
        snprintf(names + at, sizeof names - at, "%s%s", n++ ? ", " : "", T->name);
        if (t != R->labels)
            tokens = t;
    }
    const struct rank_tensor *T = tokens >= 0 ? &R->tensors[tokens] : NULL, *L = R->labels >= 0 ? &R->tensors[R->labels] : NULL;
    if (n != 2 || !T || !L || T->dtype != IR_DTYPE_I32 || L->dtype != IR_DTYPE_I32 || T->rank != 2 || L->rank != 2 ||
        T->shape[0] != L->shape[0] || T->shape[1] != L->shape[1]) {
        diag_error(d, NULL, 0, "--data-path feeds a decoder's token ids and their labels (two (batch, seq) inputs of i32, the loss "
                               "reading the second); this plan (%s) takes %d input%s: %s", R->meta.model, n, n == 1 ? "" : "s", names);
        return -1;
    }
    x->tokens_in = tokens;
    return T->shape[1];
}

void exec_set_data(struct exec *x, const struct data_gpt *train)
{
    WF_ASSERT(!train || x->tokens_in >= 0); /* exec_data_seq found the plan's tokens */
    x->train = train;
    free(x->sample);
    x->sample = train ? wf_calloc((size_t)train->seq + 1, sizeof *x->sample) : NULL;
}

int exec_evaluate(struct exec *x, const struct data_gpt *valid, int64_t first, double *loss_sum, double *tokens, struct diag *d)
{
    x->base = first, x->data = valid;
    x->loss_sum = 0;
    x->n_reads = 0, x->reads_used = 0;
    x->validating = true;
    x->segments = 0;
    WF_ASSERT(!valid || x->tokens_in >= 0); /* exec_data_seq found the plan's tokens */
    if (valid && !x->sample)
        x->sample = wf_calloc((size_t)valid->seq + 1, sizeof *x->sample);
    const struct ir_program *prog = &x->R->schedule.programs[x->R->stage];
    struct ir_action_list sends = {0};
    int rc = 0;
    for (int i = 0; i < prog->n && !rc; i++) {
        const struct ir_ins *ins = &prog->ins[i];
        if (ins->kind == IR_INS_FORWARD)
            rc = fill_inputs(x, ins->vstage, ins->micro, d) || run_list(x, &x->acts->forward[ins->vstage], ins->vstage, ins->micro, d);
        else if (ins->kind == IR_INS_P2P) { /* its activations, not its gradients: every rank drops the same halves */
            sends.n = 0;
            for (int k = 0; k < x->acts->ins[i].n; k++)
                if (x->acts->ins[i].v[k].p2p.buf.what != IR_BUF_GRAD) {
                    WF_GROW(sends.v, sends.n, sends.cap);
                    sends.v[sends.n++] = x->acts->ins[i].v[k];
                }
            rc = run_list(x, &sends, -1, -1, d);
        }
        if (rc) {
            char s[256];
            diag_note(d, NULL, 0, "rank %d was at instruction %d of its program (%s), in validation", x->R->rank, i, ir_ins_str(ins, s, sizeof s));
        }
    }
    free(sends.v);
    x->validating = false;
    float sum[2];
    if (rc || loss_sums(x, sum, d))
        return -1;
    *loss_sum = sum[0], *tokens = sum[1];
    return 0;
}

/* A run of a parameter's elements (exec_param_runs) added into the whole
 * tensor's sums, and counted among its copies. */
struct dump_sums {
    float *sum, *held;
};

static int add_run(void *ctx, int64_t whole_first, float *local, int64_t count)
{
    const struct dump_sums *s = ctx;
    for (int64_t i = 0; i < count; i++)
        s->sum[whole_first + i] += local[i], s->held[whole_first + i] += 1;
    return 0;
}

int exec_dump_params(struct exec *x, FILE *f, struct diag *d)
{
    const struct rank_plan *R = x->R;
    int rc = 0;
    if (f)
        fprintf(f, "weft-params 1\n");
    for (int t = 0; t < R->n_tensors && !rc; t++) {
        const struct rank_tensor *T = &R->tensors[t];
        if (T->kind != IR_TENSOR_PARAM)
            continue;
        int64_t n = 1;
        for (int k = 0; k < T->rank; k++)
            n *= T->shape[k];
        float *sum = wf_calloc((size_t)n * 2 + 1, sizeof *sum), *held = sum + n; /* values, and copies of each */
        rc = exec_param_runs(x, t, EXEC_WEIGHTS, false, add_run, &(struct dump_sums){sum, held}, d);
        if (!rc && x->comm)
            rc = x->comm->ops->collective(x->comm, IR_GROUP_COUNT, 0, IR_COLL_ALL_REDUCE, sum, sum, 2 * n, IR_DTYPE_F32, d);
        for (int64_t i = 0; i < n; i++) /* identical copies (data-parallel replicas, tensor-parallel duplicates): their mean */
            sum[i] = held[i] > 0 ? sum[i] / held[i] : NAN;
        uint32_t len = (uint32_t)strlen(T->name);
        if (f && !rc && (fwrite(&len, 4, 1, f) != 1 || fwrite(T->name, 1, len, f) != len || fwrite(&n, 8, 1, f) != 1 ||
                         fwrite(sum, 4, (size_t)n, f) != (size_t)n)) {
            diag_error(d, NULL, 0, "writing the parameters failed");
            rc = -1;
        }
        free(sum);
    }
    return rc;
}

