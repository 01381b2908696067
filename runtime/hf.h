/* hf.h: a model's weights in Hugging Face's layout, read into any layout and
 * written from any layout, through the plan's "hf" section (the model file's
 * <huggingface> and <hf> elements: each parameter's Hugging Face tensors, a
 * transpose, their order in weft's fused columns, a padded vocabulary).
 *
 *   if (hf_is_checkpoint("gpt2/"))                        // a .safetensors file, or a directory with
 *       rc = hf_load(x, &R, comm, "gpt2/", &d);           // model.safetensors(.index.json)
 *   ...exec_step...
 *   rc = hf_write(x, &R, comm, "out/", &d);               // out/model.safetensors, out/config.json
 *
 * Both are collectives: every rank of the world calls them, and every rank
 * returns the same status.  Each rank reads of each row of a tensor the
 * span that holds its slices, and writes its own slices (exec_param_runs:
 * the replica that stores a slice writes it once) in place in the one file,
 * as runs of consecutive elements (a transposed slice is transposed in
 * memory between). */
#ifndef WEFT_HF_H
#define WEFT_HF_H

#include "comm.h"
#include "exec.h"
#include "rank_plan.h"

#include <stdbool.h>

/* Whether path is a Hugging Face checkpoint: a file named *.safetensors, or
 * a directory holding model.safetensors.index.json or model.safetensors. */
bool hf_is_checkpoint(const char *path);

/* Every parameter from path's tensors, converted to fp32 (from F32, BF16,
 * F16, F64); a padded vocabulary's extra rows zero.  Names may lack the
 * model's optional prefix ("transformer.").  Returns 0; 2 for bad input,
 * found by every rank before any weight is read (a plan without
 * Hugging Face's names, a missing tensor or shard, a shape that differs, a
 * dtype that is no float: d names the tensor and the file); 1 for a failure
 * while reading (the rank's d says it). */
int hf_load(struct exec *x, const struct rank_plan *R, struct comm *comm, const char *path, struct diag *d);

/* The model's weights as Hugging Face's: dir/model.safetensors (F32, the
 * names and shapes the model file gives, the vocabulary unpadded)
 * and dir/config.json (model_type, architectures, the model file's keys).
 * The tensors are in the order of their names, as the safetensors package
 * writes them: a model transformers saved comes back byte for byte.
 * dir is made if absent (its parent must exist).  Returns 0; 2 where the
 * plan has no Hugging Face names; 1 for a failure while writing. */
int hf_write(struct exec *x, const struct rank_plan *R, struct comm *comm, const char *dir, struct diag *d);

#endif
