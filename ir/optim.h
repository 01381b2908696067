/* optim.h: the training step's optimizer: AdamW with fp32 master weights,
 * gradient clipping by the global norm, and Megatron's learning-rate
 * schedule (OptimizerParamScheduler), configured by Megatron's flags.
 *
 *   struct optim_config o = optim_config_default();
 *   optim_flag_set(&o, "lr", "3e-4", err, sizeof err);     // 0, or -1 with err
 *   double lr = optim_lr(&o, iteration);                   // warmup, then decay
 *
 * The plan records the configuration (section "optimizer"); the runtime's
 * step reads it. */
#ifndef WEFT_OPTIM_H
#define WEFT_OPTIM_H

#include "diag.h"
#include "plan.h"

#include <stdbool.h>
#include <stddef.h>

#define OPTIM_DECAY_STYLES(X)                                                  \
    X(CONSTANT, "constant")                                                    \
    X(LINEAR, "linear")                                                        \
    X(COSINE, "cosine")

enum optim_decay_style {
#define X(id, name) OPTIM_DECAY_##id,
    OPTIM_DECAY_STYLES(X)
#undef X
    OPTIM_DECAY_COUNT
};

struct optim_config {
    double lr, min_lr;
    long warmup_iters, decay_iters, train_iters; /* decay_iters 0: train_iters */
    enum optim_decay_style decay_style;
    double weight_decay, beta1, beta2, eps;
    double clip_grad; /* 0: no clipping */
};

/* Weight decay applies to parameters of two or more dimensions: biases and
 * norm weights (1-D) take none, Megatron's default (get_param_groups). */
/* Megatron's defaults: lr 1e-4 (Megatron has none: it must be given),
 * min-lr 0, no warm-up, linear decay over train-iters, weight decay 0.01,
 * betas 0.9 and 0.999, eps 1e-8, clip-grad 1.0. */
struct optim_config optim_config_default(void);
/* Whether `name` (without dashes) is an optimizer flag. */
bool optim_is_flag(const char *name);
/* The i-th optimizer flag's name (without dashes); NULL past the last. */
const char *optim_flag_name(int i);
/* Set one flag from its text; -1 with a message in err when the value is bad. */
int optim_flag_set(struct optim_config *o, const char *name, const char *value, char *err, size_t n);
/* The whole configuration's consistency (min-lr <= lr, betas in [0, 1), ...). */
int optim_check(const struct optim_config *o, char *err, size_t n);
const char *optim_decay_name(enum optim_decay_style s);

/* The learning rate at iteration `it` (0-based, as Megatron counts
 * num_steps): linear warm-up to lr over warmup_iters, then decay to min_lr
 * over the rest of decay_iters, then min_lr. */
double optim_lr(const struct optim_config *o, long it);
/* The factor gradients are scaled by, given their global norm: Megatron's
 * clip_grad_norm_fp32, clip / (norm + 1e-6) when that is below 1, else 1. */
double optim_clip_coeff(const struct optim_config *o, double norm);
/* One AdamW step on n fp32 master weights, in place: `step` counts from 1
 * (bias correction), lr from optim_lr, weight decay decoupled (applied as
 * w -= lr * wd * w), as torch.optim.AdamW and Megatron's FusedAdam do. */
void optim_adamw(const struct optim_config *o, long step, double lr, size_t n, float *w, const float *grad, float *m,
                 float *v);

/* The plan's "optimizer" section (absent from a forward-only plan). */
void optim_write(struct plan_writer *w, const struct optim_config *o);
int optim_read(struct plan *p, struct optim_config *o, struct diag *d);

#endif
