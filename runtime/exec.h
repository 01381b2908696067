/* exec.h: the executor: one rank's plan run step by step on a backend.
 *
 *   struct rank_plan R;  rank_plan_load("gpt2.plan", rank, world, &R, &d);
 *   struct exec *x = exec_new(&R, comm, seed, BACKEND_CPU, &d); // one arena, parameters drawn from the seed
 *   struct exec_stats st;
 *   exec_step(x, iteration, &st, &d);            // st.loss, st.grad_norm, st.lr
 *   exec_free(x);
 *
 * It walks the rank's program: a forward or backward step runs that step's
 * actions for its micro-batch, the optimizer the norm's sums and then the
 * updates, unless the norm (or the loss) is not finite: then it skips them
 * on every rank (exec_stats.skipped).  It decides nothing the compiler could have: every address is
 * the memory plan's (ir_memory_offset), every size the actions'.  Each
 * parameter starts from the seed by its elements' indices in the whole
 * tensor (as runtime/ref.c draws them), so every layout starts from one
 * model; inputs are a dataset's samples (exec_set_data) or synthetic token
 * ids (exec_token), the same sample for the same global index whatever the
 * layout.  A step's batch starts at the samples consumed before it
 * (exec_consumed_samples), which the step advances by the global batch.
 * Collectives and pipeline transfers go through the communicator's table
 * (comm.h); a COPY action moves or adds bytes within the arena (a slice,
 * a collective's pieces packed, a converted gradient added).  A plan with
 * an action the compiler could not lower (PENDING, or one that awaits a
 * transfer) is refused by exec_new, naming it.
 *
 * Everything runs on the backend (backend.h): the arena is one allocation
 * of its memory, GEMMs are backend_gemm, COPY backend_copy_rows, and what
 * the host makes or reads (inputs, parameters from the seed, checkpoints)
 * crosses by backend_put and backend_get.  Each run of actions the backend
 * does alone (kernels, GEMMs, zeroing, copies) between two of the host's
 * (inputs, transfers, collectives, reading the norm) is a segment
 * (backend_segment_begin) keyed by its place in the step, which a GPU
 * replays as a CUDA graph.  The host reads a step's loss
 * rows and sums of squares together (the arena's staging), so a GPU waits
 * for the host at the norm and at the step's end, not at every parameter.
 * Every buffer handed to the communicator is in the arena. */
#ifndef WEFT_EXEC_H
#define WEFT_EXEC_H

#include "backend.h"
#include "comm.h"
#include "data.h"
#include "diag.h"
#include "rank_plan.h"

#include <stdio.h>

struct exec;

struct exec_stats {
    double loss, grad_norm, lr;  /* grad_norm NaN or infinite: the update was skipped */
    bool skipped;    /* no update this step: the gradients' global norm (every rank's the same) or the loss was
                      * not finite, so no optimizer launch ran on any rank; the schedule and Adam's step count
                      * only the updates taken, as Megatron's do */
    double seconds;
    int64_t tokens;  /* the step's, across the data-parallel ranks */
    int64_t samples; /* the step's samples, across the data-parallel ranks: the global batch */
    double action_seconds[IR_ACT_COUNT]; /* this rank's time in each kind of action (GEMMs, launches, collectives, ...) */
};

/* Whether this weft runs R's program (no action it cannot run; a
 * communicator where the plan has several ranks): 0, or -1 naming what
 * it cannot, a refusal of the plan (exec_new checks it first). */
int exec_check(const struct rank_plan *R, const struct comm *comm, struct diag *d);
/* comm: the rank's communicator (its groups made), or NULL for a plan of one rank; kind: the backend
 * that runs the plan (BACKEND_CUDA: this rank's GPU, backend_open says which). */
struct exec *exec_new(const struct rank_plan *R, struct comm *comm, uint64_t seed, enum backend_kind kind, struct diag *d);
/* The same on a backend already open (its kernels R's), which the executor takes: closed by exec_free, or here on
 * failure. */
struct exec *exec_new_on(const struct rank_plan *R, struct comm *comm, uint64_t seed, struct backend *be, struct diag *d);
/* One training step over the global batch from exec_consumed_samples.
 * iteration: the absolute one (from 0; a resumed run continues from its
 * checkpoint's).  A step that succeeds advances the consumed samples by the
 * global batch. */
int exec_step(struct exec *x, long iteration, struct exec_stats *st, struct diag *d);
/* The training samples consumed so far: the next step's batch starts at
 * this global sample.  Set it when resuming, so a run goes on with the
 * sample after the last one it trained on. */
int64_t exec_consumed_samples(const struct exec *x);
void exec_set_consumed_samples(struct exec *x, int64_t samples);
/* Updates skipped so far (a gradient not finite): the learning rate's
 * schedule and Adam's step count the updates taken, so a resumed run
 * restores it from its checkpoint. */
long exec_skipped_updates(const struct exec *x);
void exec_set_skipped_updates(struct exec *x, long skipped);
/* The samples a step takes: micro-batch x data-parallel ranks x micro-batches
 * (--global-batch-size where the plan was given one). */
int64_t exec_global_batch(const struct exec *x);

/* Real data, for a decoder whose inputs are its token ids and their labels
 * (any other plan: an error naming its inputs, -1): the sequence length the
 * samples must have.  Then exec_set_data gives the training samples (G
 * outlives x; NULL: synthetic again): micro-batch j's tokens are each of its
 * samples' [0:seq], its labels [1:seq+1], every rank reading only its own
 * samples (and a context-parallel rank its piece of them). */
int64_t exec_data_seq(struct exec *x, struct diag *d);
void exec_set_data(struct exec *x, const struct data_gpt *train);
/* Validation: the forward steps of every rank's program and their
 * activations' transfers, nothing else (no gradient, no update: parameters
 * and optimizer state stay as they are), over one global batch of valid's
 * samples from its sample `first` (dealt as a training batch is).  The
 * loss summed over the batch's tokens and their count, the same on every
 * rank.  Dropout is off (every element kept, unscaled), as in Megatron's
 * evaluation: the plan's dropout kernels read it from arg[KN_ARG_EVAL]. */
int exec_evaluate(struct exec *x, const struct data_gpt *valid, int64_t first, double *loss_sum, double *tokens, struct diag *d);
void exec_free(struct exec *x);
/* Every parameter, whole, as the model holds it now (fp32; the master
 * weights under --bf16), assembled from every rank's shards: a collective,
 * so every rank calls it; rank 0 passes the file (f NULL elsewhere).  The
 * file: "weft-params 1\n", then per parameter in the model's order its name
 * (u32 length, bytes), its element count (i64) and its elements (f32),
 * little-endian.  For comparing layouts (a test's, a
 * user's): no checkpoint, which also keeps the optimizer's state. */
int exec_dump_params(struct exec *x, FILE *f, struct diag *d);
/* What a checkpoint holds of a parameter: its weights (the fp32 master
 * weights under --bf16) and AdamW's two moments. */
enum exec_state { EXEC_WEIGHTS, EXEC_EXP_AVG, EXEC_EXP_AVG_SQ, EXEC_STATE_COUNT };
/* Calls fn(ctx, whole_first, local, count) for each run of consecutive
 * elements of the whole tensor that this rank holds of parameter tensor t's
 * state: local (fp32, in the arena) holds whole elements [whole_first,
 * whole_first + count).  Reading or writing through local is how a rank
 * loads or saves its slices of the full tensors, whatever the layout.
 * stored_once: only where this rank is the replica that stores its slices
 * (data parallel rank 0 of its slices; 0 along the parallel dimensions that
 * do not split t; for experts' weights, expert data parallel rank 0), so
 * that the rank holding every slice once writes it; a tensor on two
 * pipeline stages (a tied embedding) is written by both, identical bytes.
 * No calls where this rank holds none of t (another stage's) or the state
 * is absent (no optimizer).  Returns fn's first non-zero, else 0. */
typedef int (*exec_run_fn)(void *ctx, int64_t whole_first, float *local, int64_t count);
/* local points into a host copy of the rank's state of t (got from the
 * backend), valid until the next call (or step); exec_param_store puts
 * what was written into it back.  Returns fn's first non-zero, else 0; -1 (d says
 * why) where the backend could not give it. */
int exec_param_runs(struct exec *x, int t, enum exec_state s, bool stored_once, exec_run_fn fn, void *ctx, struct diag *d);
int exec_param_store(struct exec *x, struct diag *d);
/* After the weights were written through exec_param_runs: rounds the bf16
 * copies the kernels read from the fp32 master weights (nothing under fp32). */
int exec_weights_loaded(struct exec *x, struct diag *d);
/* Memory the backend holds beside the arena: the bf16 GEMMs' widened
 * operands on the CPU (0 for a fp32 plan), cuBLASLt's workspace on a GPU. */
int64_t exec_scratch_bytes(const struct exec *x);
/* The arena's bytes: the memory plan's total (aligned), and the staging
 * of what the host reads of a step (its loss rows, its sums of squares). */
int64_t exec_arena_bytes(const struct exec *x);
/* Seconds spent in a kernel of the plan (its launches, all steps so far). */
double exec_kernel_seconds(const struct exec *x, int kernel);
/* The arena, in the backend's memory (on the CPU, where tests read
 * parameters in it). */
void *exec_arena(struct exec *x);
/* Collectives started and left running until an action reads or writes
 * their bytes (or the host waits), so that what needs neither goes on
 * meanwhile: on by default; off, each runs to its end where it stands. */
void exec_set_overlap(struct exec *x, bool on);
/* The collectives the actions started so far (not the executor's own sums), how many of them had
 * another action run while they were in flight, and how many a step starts within the backward before
 * them (a chunk's gradient buckets: Megatron's --overlap-grad-reduce, derived from the actions). */
void exec_overlap_counts(const struct exec *x, long *started, long *overlapped, int *early);
/* The backend the executor runs on (the communicator carries its memory: comm_use_device). */
struct backend *exec_backend(struct exec *x);

/* Token `pos` of synthetic sample `sample`: a walk through the vocabulary
 * that a model can learn (each token a function of the one before, with a
 * seeded start per sample), so the loss falls. */
int32_t exec_token(uint64_t seed, int64_t sample, int64_t pos, int64_t vocab);

#endif
