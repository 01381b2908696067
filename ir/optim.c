/* optim.c: AdamW, clipping and the learning-rate schedule (see optim.h). */
#include "optim.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *decay_names[] = {
#define X(id, name) name,
    OPTIM_DECAY_STYLES(X)
#undef X
};

const char *optim_decay_name(enum optim_decay_style s) { return decay_names[s]; }

struct optim_config optim_config_default(void)
{
    return (struct optim_config){.lr = 1e-4, .decay_style = OPTIM_DECAY_LINEAR, .weight_decay = 0.01, .beta1 = 0.9,
                                 .beta2 = 0.999, .eps = 1e-8, .clip_grad = 1.0};
}

enum kind { REAL, COUNT, STYLE };
#define O(field) offsetof(struct optim_config, field)
static const struct {
    const char *name;
    enum kind kind;
    size_t offset;
} flags[] = {
    {"lr", REAL, O(lr)},
    {"min-lr", REAL, O(min_lr)},
    {"lr-warmup-iters", COUNT, O(warmup_iters)},
    {"lr-decay-iters", COUNT, O(decay_iters)},
    {"train-iters", COUNT, O(train_iters)},
    {"lr-decay-style", STYLE, O(decay_style)},
    {"weight-decay", REAL, O(weight_decay)},
    {"adam-beta1", REAL, O(beta1)},
    {"adam-beta2", REAL, O(beta2)},
    {"adam-eps", REAL, O(eps)},
    {"clip-grad", REAL, O(clip_grad)},
};
#undef O

static int find(const char *name)
{
    for (size_t i = 0; i < WF_COUNT(flags); i++)
        if (!strcmp(flags[i].name, name))
            return (int)i;
    return -1;
}

bool optim_is_flag(const char *name) { return find(name) >= 0; }

const char *optim_flag_name(int i) { return i >= 0 && (size_t)i < WF_COUNT(flags) ? flags[i].name : NULL; }

int optim_flag_set(struct optim_config *o, const char *name, const char *value, char *err, size_t n)
{
    int i = find(name);
    WF_ASSERT(i >= 0);
    char *end;
    errno = 0;
    switch (flags[i].kind) {
    case REAL: {
        double v = strtod(value, &end);
        if (!*value || *end || errno || !isfinite(v) || v < 0) {
            snprintf(err, n, "--%s %s: expected a non-negative number", name, value);
            return -1;
        }
        *(double *)((char *)o + flags[i].offset) = v;
        return 0;
    }
    case COUNT: {
        long v = strtol(value, &end, 10);
        if (!*value || *end || errno || v < 0 || v > 1L << 40) {
            snprintf(err, n, "--%s %s: expected a non-negative integer", name, value);
            return -1;
        }
        *(long *)((char *)o + flags[i].offset) = v;
        return 0;
    }
    case STYLE:
        for (int s = 0; s < OPTIM_DECAY_COUNT; s++)
            if (!strcmp(value, decay_names[s])) {
                o->decay_style = (enum optim_decay_style)s;
                return 0;
            }
        snprintf(err, n, "--%s %s: expected constant, linear or cosine", name, value);
        return -1;
    }
    return -1;
}

int optim_check(const struct optim_config *o, char *err, size_t n)
{
    long decay = o->decay_iters ? o->decay_iters : o->train_iters;
    if (o->min_lr > o->lr)
        snprintf(err, n, "--min-lr %g is above --lr %g", o->min_lr, o->lr);
    else if (o->beta1 >= 1 || o->beta2 >= 1)
        snprintf(err, n, "--adam-beta1 %g and --adam-beta2 %g must be below 1", o->beta1, o->beta2);
    else if (o->eps <= 0)
        snprintf(err, n, "--adam-eps %g must be positive", o->eps);
    else if (o->decay_style != OPTIM_DECAY_CONSTANT && decay && o->warmup_iters >= decay)
        snprintf(err, n, "--lr-warmup-iters %ld leaves nothing of the %ld decay iterations (--lr-decay-iters or --train-iters)",
                 o->warmup_iters, decay);
    else
        return 0;
    return -1;
}

double optim_lr(const struct optim_config *o, long it)
{
    if (o->warmup_iters > 0 && it <= o->warmup_iters)
        return o->lr * (double)it / (double)o->warmup_iters;
    long decay = o->decay_iters ? o->decay_iters : o->train_iters;
    if (o->decay_style == OPTIM_DECAY_CONSTANT || decay <= 0)
        return o->lr;
    if (it > decay)
        return o->min_lr;
    double ratio = (double)(it - o->warmup_iters) / (double)(decay - o->warmup_iters);
    const double pi = 3.14159265358979323846;
    double coeff = o->decay_style == OPTIM_DECAY_LINEAR ? 1.0 - ratio : 0.5 * (cos(pi * ratio) + 1.0);
    return o->min_lr + coeff * (o->lr - o->min_lr);
}

double optim_clip_coeff(const struct optim_config *o, double norm)
{
    if (o->clip_grad <= 0)
        return 1.0;
    double c = o->clip_grad / (norm + 1e-6);
    return c < 1.0 ? c : 1.0;
}

void optim_adamw(const struct optim_config *o, long step, double lr, size_t n, float *w, const float *grad, float *m,
                 float *v)
{
    double c1 = 1.0 - pow(o->beta1, (double)step), c2 = 1.0 - pow(o->beta2, (double)step);
    for (size_t i = 0; i < n; i++) {
        m[i] = (float)(o->beta1 * m[i] + (1.0 - o->beta1) * grad[i]);
        v[i] = (float)(o->beta2 * v[i] + (1.0 - o->beta2) * (double)grad[i] * grad[i]);
        double mhat = m[i] / c1, vhat = v[i] / c2;
        w[i] = (float)(w[i] - lr * (o->weight_decay * w[i] + mhat / (sqrt(vhat) + o->eps)));
    }
}

void optim_write(struct plan_writer *w, const struct optim_config *o)
{
    plan_section(w, "optimizer");
    plan_put_str(w, "adamw");
    plan_put_f64(w, o->lr);
    plan_put_f64(w, o->min_lr);
    plan_put_i64(w, o->warmup_iters);
    plan_put_i64(w, o->decay_iters);
    plan_put_i64(w, o->train_iters);
    plan_put_u32(w, o->decay_style);
    plan_put_f64(w, o->weight_decay);
    plan_put_f64(w, o->beta1);
    plan_put_f64(w, o->beta2);
    plan_put_f64(w, o->eps);
    plan_put_f64(w, o->clip_grad);
}

int optim_read(struct plan *p, struct optim_config *o, struct diag *d)
{
    struct plan_reader r;
    if (plan_read(p, "optimizer", &r, d))
        return -1;
    char kind[16], err[256];
    plan_get_str(&r, kind, sizeof kind);
    o->lr = plan_get_f64(&r);
    o->min_lr = plan_get_f64(&r);
    o->warmup_iters = (long)plan_get_i64(&r);
    o->decay_iters = (long)plan_get_i64(&r);
    o->train_iters = (long)plan_get_i64(&r);
    uint32_t style = plan_get_u32(&r);
    o->decay_style = style < OPTIM_DECAY_COUNT ? (enum optim_decay_style)style : OPTIM_DECAY_CONSTANT;
    o->weight_decay = plan_get_f64(&r);
    o->beta1 = plan_get_f64(&r);
    o->beta2 = plan_get_f64(&r);
    o->eps = plan_get_f64(&r);
    o->clip_grad = plan_get_f64(&r);
    if (r.bad || strcmp(kind, "adamw") || style >= OPTIM_DECAY_COUNT || o->warmup_iters < 0 || o->decay_iters < 0 ||
        o->train_iters < 0 || !(o->lr >= 0) || !(o->min_lr >= 0) || !(o->weight_decay >= 0) || !(o->clip_grad >= 0) ||
        optim_check(o, err, sizeof err)) {
        diag_error(d, NULL, 0, "plan section 'optimizer': an optimizer this weft does not know, or impossible values: "
                               "the plan is corrupted");
        return -1;
    }
    return 0;
}
