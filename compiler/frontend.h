/* frontend.h: read a model file into the graph IR.
 *
 *   struct fe_override ov[] = {{FE_FLAG, "num-layers", "48"}, {FE_SET, "ffn", "4*hidden"}};
 *   struct fe_options opt = {.variant = NULL, .overrides = ov, .n_overrides = 2};
 *   struct diag d;  diag_init(&d);
 *   struct ir_graph *g = fe_load_file("models/gpt2.xml", &opt, &d);   // NULL: see d
 *
 * The graph that comes back is unrolled (one copy of each <repeat> body per
 * iteration), in topological order, with every dimension evaluated, every
 * parameter and input shaped, and every op's attributes filled in (defaults
 * included).  Activation shapes are left to the shapes pass (ir_infer_shapes).
 *
 * Safety: the file is read into memory and refused if empty, binary, not UTF-8
 * or over 64 MiB; libxml2 parses it with no network, no DTD of any kind (so no
 * external entity and no entity expansion) and then checks it against the
 * schema in models/weft.rng before the front end reads a single attribute. */
#ifndef WEFT_FRONTEND_H
#define WEFT_FRONTEND_H

#include <stddef.h>

#include "ir.h"
#include "util.h"

enum fe_override_kind {
    FE_FLAG, /* --hidden-size 1600: the dimension whose flag="hidden-size" */
    FE_SET,  /* --set hidden=1600: the dimension named hidden */
    FE_FLAG_IF_BOUND, /* as FE_FLAG, but no error when no dimension binds it
                       * (--micro-batch-size: a layout setting first) */
};

struct fe_override {
    enum fe_override_kind kind;
    const char *key;   /* flag without dashes, or dimension name */
    const char *value; /* an integer expression; for a probability flag, a number in [0, 1) */
};

/* The flags that set ops' probabilities rather than dimensions (Megatron's
 * --hidden-dropout, --attention-dropout): an op binds one with
 * flag="hidden-dropout", and a FE_FLAG override of that key sets its p.
 * Such a flag given non-zero that no op of the model binds is an error
 * naming the flag and the file; a value outside [0, 1) is one naming the
 * flag.  NULL-terminated. */
extern const char *const fe_prob_flags[];

struct fe_options {
    const char *variant; /* <variant name=...> to apply first, or NULL */
    const struct fe_override *overrides;
    int n_overrides;
    /* Offers (wf_suggest_add) the flags the command line takes itself, when
     * no dimension binds a FE_FLAG and a "did you mean" is sought; NULL: none */
    void (*offer_flags)(struct wf_suggest *s, const void *ctx);
    const void *offer_ctx;
};

#define FE_MAX_FILE_BYTES (64u << 20)

struct ir_graph *fe_load_file(const char *path, const struct fe_options *opt, struct diag *d);
struct ir_graph *fe_load_memory(const char *name, const char *buf, size_t len,
                                const struct fe_options *opt, struct diag *d);
/* Release libxml2's global state (the compiled schema); for leak checkers. */
void fe_cleanup(void);

#endif
