/* checkpoint.h: Megatron's checkpoint directories, holding every parameter
 * and AdamW moment as a full (unsharded) tensor, written in place by every
 * rank at once, crash-safe, and loaded by any layout.
 *
 *   struct ckpt_state s = {.iteration = 100, .consumed_samples = 800, .seed = 1234};
 *   ckpt_save(x, &R, comm, "ckpt", &s, &ckpt_weft_model, &saved, &d);   // every rank calls it
 *
 *   struct ckpt_found f;
 *   ckpt_find(comm, "ckpt", false, &f, &d);     // the tracker's iteration (or "ckpt/iter_0000100" itself)
 *   struct exec *x = exec_new(&R, comm, f.state.seed, &d);
 *   ckpt_load(x, &R, comm, &f, &d);             // weights, moments, consumed samples: whatever layout saved them
 *   for (long it = f.state.iteration; ...) exec_step(x, it, ...);
 *
 * On disk (Megatron's names for the directory and the tracker):
 *   DIR/latest_checkpointed_iteration.txt    "100": the last complete checkpoint, written last
 *   DIR/iter_0000100/model.safetensors       every parameter whole, fp32 (the master weights under
 *                                            --bf16), by its plan name (as weft inspect shows them)
 *   DIR/iter_0000100/optimizer.safetensors   NAME.exp_avg and NAME.exp_avg_sq for every parameter
 *   DIR/iter_0000100/checkpoint.json         iteration, consumed samples, seed, data, model, layout
 * A vocabulary's rows are stored as the saving layout padded them
 * (--make-vocab-size-divisible-by x tp); the safetensors metadata's
 * "weft.vocab" says how many are real, and a layout padding to another
 * size loads the real rows and zeroes its padding.
 *
 * The protocol (ckpt_save): rank 0 makes DIR/iter_N.tmp (removing what an
 * earlier, interrupted save left); the model writer and the optimizer's
 * writer each fix a file's header on every rank alike, rank 0 creates the
 * file at its full size, and after a barrier every rank writes its slices
 * in place (exec_param_runs, stored once) and fsyncs; the ranks agree
 * that every write succeeded (an all-reduce of a status); rank 0 renames
 * the directory to iter_N (an existing one is swapped out atomically) and
 * fsyncs DIR, then writes the tracker as a temporary file, fsyncs it,
 * renames it over the tracker and fsyncs DIR.  A crash at any moment
 * leaves the tracker naming a complete checkpoint (or none); a loader
 * trusts only the tracker's directory or a complete iter_N named to it,
 * never an *.tmp. */
#ifndef WEFT_CHECKPOINT_H
#define WEFT_CHECKPOINT_H

#include "comm.h"
#include "diag.h"
#include "exec.h"
#include "rank_plan.h"

#include <stdint.h>

#define CKPT_TRACKER "latest_checkpointed_iteration.txt"
#define CKPT_PATH_MAX 4096

/* What a run's position is, beside its tensors. */
struct ckpt_state {
    long iteration;            /* iterations done: the next step is this one (from 0) */
    int64_t consumed_samples;  /* global samples consumed (exec_consumed_samples) */
    uint64_t seed;             /* weft's randomness is counter-based: the seed is its whole state */
    char data_path[1024];      /* --data-path as given ("": synthetic data from the seed) */
    char split[64];            /* --split as given ("": none) */
    long skipped;              /* updates skipped before it (a gradient not finite): the schedule counts the others */
    int64_t valid_consumed;    /* validation samples read so far (Megatron's consumed_valid_samples) */
};

/* Writes a checkpoint's model files into dir, the checkpoint's temporary
 * directory.  Every rank calls it at once (it may use collectives: a
 * barrier between creating a file and writing into it); each rank fsyncs
 * what it wrote.  Returns this rank's status (0, or -1 with the reason in
 * d): the protocol around it agrees across ranks, then publishes or
 * discards the directory.  --save-format hf plugs in another. */
struct ckpt_model_writer {
    const char *name;  /* "weft" */
    int (*write)(struct exec *x, const struct rank_plan *R, struct comm *c, const char *dir, const struct ckpt_state *s,
                 struct diag *d);
};
/* model.safetensors: every parameter whole, fp32, by its plan name. */
extern const struct ckpt_model_writer ckpt_weft_model;
/* model.safetensors and config.json as Hugging Face's (runtime/hf.h): a
 * checkpoint that transformers loads, and that --load resumes too (its
 * checkpoint.json says model_format "hf"). */
extern const struct ckpt_model_writer ckpt_hf_model;

struct ckpt_saved {
    char dir[CKPT_PATH_MAX];  /* DIR/iter_N */
    int64_t bytes;            /* the files' sizes, together */
    double seconds;           /* from the first byte to the tracker's fsync */
};

/* Saves the run's state as DIR/iter_N (N = s->iteration) and points the
 * tracker at it.  Every rank calls it and gets the same result: 0, or -1
 * where any rank failed (a full disk, a directory it cannot write): then
 * d holds this rank's reason (rank 0's also names the iteration), the
 * temporary directory is removed and the tracker and every earlier
 * checkpoint are as they were. */
int ckpt_save(struct exec *x, const struct rank_plan *R, struct comm *c, const char *dir, const struct ckpt_state *s,
              const struct ckpt_model_writer *mw, struct ckpt_saved *saved, struct diag *d);

/* A complete checkpoint found: its directory and its state. */
struct ckpt_found {
    char dir[CKPT_PATH_MAX];
    struct ckpt_state state;
    char model[256];          /* the model's name, as the plan that saved it had it */
    char layout[256];         /* how the saving run was laid out (for the user) */
    char model_format[16];    /* "weft", or "hf": model.safetensors by Hugging Face's names */
    int world_size;
    int64_t bytes;            /* its files' sizes, together */
};

/* Resolves --load PATH: a directory with the tracker loads the iteration
 * it names (its iter_N must be there: else an error saying so); an iter_N
 * directory (checkpoint.json in it) loads itself, unless its name ends in
 * .tmp (an interrupted save).  Anything else is not a weft checkpoint (a
 * Hugging Face file or folder among them: not loaded yet).  empty_ok
 * (Megatron's `--save D --load D` on a new D): a missing directory, or one
 * with nothing but what interrupted saves left (*.tmp), returns 1 (nothing
 * to load).  Every rank
 * calls it and gets the same: 0 (f filled), 1, or 2 with the error in d. */
int ckpt_find(struct comm *c, const char *path, bool empty_ok, struct ckpt_found *f, struct diag *d);
/* Whether path is a weft checkpoint (or a directory of them): it holds the
 * tracker or checkpoint.json.  --load takes any other path for Hugging
 * Face's weights where hf_is_checkpoint says so. */
bool ckpt_is_checkpoint(const char *path);

/* Loads f's checkpoint into x: every rank checks every parameter's entry
 * in both files (present, a float dtype, its shape this plan's, but for a
 * vocabulary's padding), so all ranks agree; then reads its slices of the
 * full tensors (exec_param_runs, every replica), rounds the bf16 copies
 * and restores the consumed samples.  0, or 2 on every rank with the
 * error (naming the file and the tensor) in d. */
int ckpt_load(struct exec *x, const struct rank_plan *R, struct comm *c, const struct ckpt_found *f, struct diag *d);

#endif
