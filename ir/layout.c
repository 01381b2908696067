/* layout.c: Megatron-Core's rank grid: groups, coordinates, start-up rules. */
#include "layout.h"
#include "util.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

struct par_config par_config_default(void)
{
    return (struct par_config){.tp = 1, .pp = 1, .cp = 1, .ep = 1, .epp = -1, .vocab_divisible_by = 128};
}

#define F(field) (int)offsetof(struct par_config, field)
const struct par_flag par_flags[] = {
    {"world-size", NULL, F(world_size), false, 1, "ranks in all; data parallel size is derived"},
    {"tensor-model-parallel-size", "tp", F(tp), false, 1, "tensor parallel size"},
    {"pipeline-model-parallel-size", "pp", F(pp), false, 1, "pipeline stages of the decoder"},
    {"context-parallel-size", "cp", F(cp), false, 1, "context parallel size (the sequence split over ranks)"},
    {"expert-model-parallel-size", "ep", F(ep), false, 1, "expert parallel size"},
    {"expert-tensor-parallel-size", NULL, F(expert_tp), false, 1, "tensor parallel size within an expert (default: tp)"},
    {"encoder-tensor-model-parallel-size", "etp", F(etp), false, 1, "tensor parallel size of the encoder (default: tp)"},
    {"encoder-pipeline-model-parallel-size", "epp", F(epp), false, 0, "pipeline stages of the encoder (0: on the decoder's first stage)"},
    {"sequence-parallel", NULL, F(sequence_parallel), true, 0, "split activations between tensor-parallel blocks along the sequence"},
    {"num-layers-per-virtual-pipeline-stage", NULL, F(layers_per_virtual_stage), false, 1, "layers per virtual stage (interleaved 1F1B)"},
    {"micro-batch-size", NULL, F(micro_batch), false, 1, "samples per micro-batch"},
    {"global-batch-size", NULL, F(global_batch), false, 1, "samples per step over all data-parallel ranks"},
    {"decoder-first-pipeline-num-layers", NULL, F(first_stage_layers), false, 1, "layers on the first decoder stage"},
    {"decoder-last-pipeline-num-layers", NULL, F(last_stage_layers), false, 1, "layers on the last decoder stage"},
    {"balance-pipeline", NULL, F(balance_pipeline), true, 0, "choose the first and last stage sizes by the cost model"},
    {"bf16", NULL, F(bf16), true, 0, "mixed precision: bf16 activations and weights, fp32 master weights and gradients"},
    {"grad-reduce-in-bf16", NULL, F(grad_reduce_in_bf16), true, 0,
     "with --bf16: parameters' gradients accumulated and reduced over data-parallel ranks in bf16"},
    {"make-vocab-size-divisible-by", NULL, F(vocab_divisible_by), false, 1, "pad the vocabulary to a multiple of this times tp"},
    {"ddp-bucket-size", NULL, F(ddp_bucket_size), false, 1,
     "elements a data-parallel gradient bucket holds at least (default max(40M, 1M x dp))"},
};
#undef F
const int par_n_flags = (int)WF_COUNT(par_flags);

const struct par_flag *par_flag_find(const char *name)
{
    for (int i = 0; i < par_n_flags; i++)
        if (!strcmp(par_flags[i].name, name) || (par_flags[i].short_name && !strcmp(par_flags[i].short_name, name)))
            return &par_flags[i];
    return NULL;
}

static const struct {
    const char *name, *what;
} group_names[] = {
#define X(id, name, what) {name, what},
    PAR_GROUPS(X)
#undef X
};

const char *par_group_name(enum par_group_kind k) { return group_names[k].name; }
const char *par_group_what(enum par_group_kind k) { return group_names[k].what; }

/* ---- one grid ------------------------------------------------------------------ */

/* The axes of a grid, fastest first: tp, cp, ep, dp, pp. */
enum { AX_TP, AX_CP, AX_EP, AX_DP, AX_PP, AX_COUNT };

struct grid {
    int size[AX_COUNT];
    int offset; /* global rank of the grid's rank 0 */
};

/* Groups of ranks that differ only along the axes in `mask` (Megatron's
 * generate_masked_orthogonal_rank_groups): within a group the masked axes
 * count up, fastest first; groups are numbered by the other axes, fastest
 * first.  Appends to out. */
static void grid_groups(const struct grid *g, unsigned mask, struct rank_groups *out)
{
    int stride[AX_COUNT], s = 1;
    for (int a = 0; a < AX_COUNT; a++) {
        stride[a] = s;
        s *= g->size[a];
    }
    int group_size = 1, n_groups = 1;
    for (int a = 0; a < AX_COUNT; a++)
        if (mask & (1u << a))
            group_size *= g->size[a];
        else
            n_groups *= g->size[a];
    int first = out->n_groups;
    out->n_groups += n_groups;
    out->ranks = wf_realloc(out->ranks, (size_t)out->n_groups * sizeof *out->ranks);
    out->sizes = wf_realloc(out->sizes, (size_t)out->n_groups * sizeof *out->sizes);
    for (int gi = 0; gi < n_groups; gi++) {
        int *ranks = wf_calloc((size_t)group_size, sizeof *ranks);
        for (int ri = 0; ri < group_size; ri++) {
            int r = g->offset, gq = gi, rq = ri;
            for (int a = 0; a < AX_COUNT; a++) {
                if (mask & (1u << a)) {
                    r += (rq % g->size[a]) * stride[a];
                    rq /= g->size[a];
                } else {
                    r += (gq % g->size[a]) * stride[a];
                    gq /= g->size[a];
                }
            }
            ranks[ri] = r;
        }
        out->ranks[first + gi] = ranks;
        out->sizes[first + gi] = group_size;
    }
}

static void append_group(struct rank_groups *out, const int *a, int na, const int *b, int nb)
{
    out->ranks = wf_realloc(out->ranks, (size_t)(out->n_groups + 1) * sizeof *out->ranks);
    out->sizes = wf_realloc(out->sizes, (size_t)(out->n_groups + 1) * sizeof *out->sizes);
    int *ranks = wf_calloc((size_t)(na + nb), sizeof *ranks);
    memcpy(ranks, a, (size_t)na * sizeof *a);
    if (nb)
        memcpy(ranks + na, b, (size_t)nb * sizeof *b);
    out->ranks[out->n_groups] = ranks;
    out->sizes[out->n_groups++] = na + nb;
}

static void groups_free(struct rank_groups *g)
{
    for (int i = 0; i < g->n_groups; i++)
        free(g->ranks[i]);
    free(g->ranks);
    free(g->sizes);
    memset(g, 0, sizeof *g);
}

static void set_group_size(struct rank_groups *g)
{
    g->group_size = g->n_groups ? g->sizes[0] : 0;
    for (int i = 1; i < g->n_groups; i++)
        if (g->sizes[i] != g->group_size)
            g->group_size = 0; /* sizes differ: see sizes[] */
}

/* The groups of one kind over the encoder grid (if any) and the decoder
 * grid, stitched as Megatron-Core's generator_wrapper stitches them. */
static void build_kind(struct rank_groups *out, unsigned mask, const struct grid *enc, const struct grid *dec,
                       enum par_group_kind kind)
{
    if (!enc) {
        grid_groups(dec, mask, out);
        return;
    }
    struct rank_groups e = {0}, d = {0};
    grid_groups(enc, mask, &e);
    grid_groups(dec, mask, &d);
    if (kind == PAR_GROUP_PP) {
        /* Consecutive decoder pipelines share one encoder pipeline: rep of them
         * each, the first `remain` encoder pipelines one more. */
        int rep = d.n_groups / e.n_groups, remain = d.n_groups % e.n_groups;
        for (int i = 0, ei = 0, left = rep + (0 < remain); i < d.n_groups; i++) {
            append_group(out, e.ranks[ei], e.sizes[ei], d.ranks[i], d.sizes[i]);
            if (--left == 0) {
                ei++;
                left = rep + (ei < remain);
            }
        }
    } else if (kind == PAR_GROUP_MP) {
        WF_ASSERT(e.n_groups == d.n_groups);
        for (int i = 0; i < d.n_groups; i++)
            append_group(out, e.ranks[i], e.sizes[i], d.ranks[i], d.sizes[i]);
    } else {
        for (int i = 0; i < e.n_groups; i++)
            append_group(out, e.ranks[i], e.sizes[i], NULL, 0);
        for (int i = 0; i < d.n_groups; i++)
            append_group(out, d.ranks[i], d.sizes[i], NULL, 0);
    }
    groups_free(&e);
    groups_free(&d);
}

/* ---- the rules ------------------------------------------------------------------ */

static bool positive(struct diag *d, const char *flag, int v)
{
    if (v >= 1)
        return true;
    diag_error(d, NULL, 0, "--%s %d: must be at least 1", flag, v);
    return false;
}

struct rank_layout *rank_layout_new(const struct par_config *in, bool has_encoder, struct diag *d)
{
    struct par_config pc = *in;
    int errors = d->n_errors;
    if (!positive(d, "tensor-model-parallel-size", pc.tp) || !positive(d, "pipeline-model-parallel-size", pc.pp) ||
        !positive(d, "context-parallel-size", pc.cp) || !positive(d, "expert-model-parallel-size", pc.ep) ||
        pc.world_size < 0 || pc.etp < 0 || pc.expert_tp < 0 || pc.epp < -1) {
        if (d->n_errors == errors)
            diag_error(d, NULL, 0, "parallel sizes must be positive (world %d, etp %d, expert-tp %d, epp %d)",
                       pc.world_size, pc.etp, pc.expert_tp, pc.epp);
        return NULL;
    }
    if (pc.grad_reduce_in_bf16 && !pc.bf16) {
        diag_error(d, NULL, 0, "--grad-reduce-in-bf16 needs --bf16: without it gradients are fp32 like everything else");
        return NULL;
    }
    if (!pc.expert_tp)
        pc.expert_tp = pc.tp;
    if (!has_encoder) {
        if (pc.etp || pc.epp > 0) {
            diag_error(d, NULL, 0, "--etp/--epp: the model has no encoder");
            return NULL;
        }
        pc.etp = 0;
        pc.epp = 0;
    } else {
        if (!pc.etp)
            pc.etp = pc.tp;
        if (pc.epp < 0)
            pc.epp = 0;
        if (pc.etp > pc.tp)
            diag_error(d, NULL, 0, "--etp %d is larger than --tp %d: the encoder's tensor parallel size may not exceed the decoder's",
                       pc.etp, pc.tp);
        else if (pc.tp % pc.etp)
            diag_error(d, NULL, 0, "--etp %d does not divide --tp %d: each encoder rank feeds a whole number of decoder ranks",
                       pc.etp, pc.tp);
        if (pc.etp != pc.tp && pc.epp == 0)
            diag_error(d, NULL, 0, "--etp %d differs from --tp %d, which needs the encoder on ranks of its own: give --epp 1 or more",
                       pc.etp, pc.tp);
        if (pc.pp > 1 && pc.epp == 0)
            diag_error(d, NULL, 0, "--pp %d with --epp 0: with pipeline parallelism the encoder needs stages of its own (--epp 1 or more)",
                       pc.pp);
    }
    if (d->n_errors != errors)
        return NULL;
    /* Sizes come from flags and from plan files: multiply in 64 bits and bound
     * the product before anything is allocated by it. */
    const int64_t most = 1 << 24;
    int64_t enc64 = has_encoder && pc.epp > 0 ? (int64_t)pc.etp * pc.epp * pc.cp : 0;
    int64_t dec64 = (int64_t)pc.tp * pc.pp * pc.cp, exp64 = (int64_t)(pc.expert_tp ? pc.expert_tp : pc.tp) * pc.ep * pc.pp;
    if (enc64 + dec64 > most || exp64 > most || pc.world_size > most) {
        diag_error(d, NULL, 0, "the layout asks for more than %lld ranks (--tp %d x --pp %d x --cp %d, --ep %d, --world-size %d)",
                   (long long)most, pc.tp, pc.pp, pc.cp, pc.ep, pc.world_size);
        return NULL;
    }
    int enc_model = (int)enc64, dec_model = (int)dec64;
    int model = enc_model + dec_model;
    if (!pc.world_size)
        pc.world_size = model;
    if (pc.world_size % model) {
        if (enc_model)
            diag_error(d, NULL, 0,
                       "--world-size %d is not a multiple of the ranks one replica needs, %d: encoder %d (--etp %d x --epp %d x --cp %d) "
                       "+ decoder %d (--tp %d x --pp %d x --cp %d)",
                       pc.world_size, model, enc_model, pc.etp, pc.epp, pc.cp, dec_model, pc.tp, pc.pp, pc.cp);
        else
            diag_error(d, NULL, 0, "--world-size %d is not divisible by the model-parallel size %d (--tp %d x --pp %d x --cp %d)",
                       pc.world_size, model, pc.tp, pc.pp, pc.cp);
        return NULL;
    }
    pc.dp = pc.world_size / model;
    pc.encoder_world = enc_model * pc.dp;
    pc.decoder_world = dec_model * pc.dp;
    int expert_model = pc.expert_tp * pc.ep * pc.pp;
    if (pc.decoder_world % expert_model) {
        diag_error(d, NULL, 0,
                   "the %d decoder ranks are not divisible by --expert-tensor-parallel-size %d x --ep %d x --pp %d = %d",
                   pc.decoder_world, pc.expert_tp, pc.ep, pc.pp, expert_model);
        return NULL;
    }
    pc.expert_dp = pc.decoder_world / expert_model;
    if (pc.sequence_parallel && pc.tp == 1) {
        diag_error(d, NULL, 0, "--sequence-parallel needs --tp 2 or more: it splits the sequence over the tensor-parallel ranks");
        return NULL;
    }

    struct rank_layout *L = wf_calloc(1, sizeof *L);
    L->pc = pc;
    L->has_encoder = has_encoder;
    L->n_ranks = pc.world_size;
    L->ranks = wf_calloc((size_t)L->n_ranks, sizeof *L->ranks);
    struct grid dec = {{pc.tp, pc.cp, 1, pc.dp, pc.pp}, pc.encoder_world};
    struct grid enc = {{pc.etp, pc.cp, 1, pc.dp, pc.epp}, 0};
    struct grid expert = {{pc.expert_tp, 1, pc.ep, pc.expert_dp, pc.pp}, pc.encoder_world};
    const struct grid *e = pc.encoder_world ? &enc : NULL;

    static const struct {
        enum par_group_kind kind;
        unsigned mask;
        bool expert;
    } kinds[] = {
        {PAR_GROUP_TP, 1u << AX_TP, false},
        {PAR_GROUP_PP, 1u << AX_PP, false},
        {PAR_GROUP_DP, 1u << AX_DP, false},
        {PAR_GROUP_CP, 1u << AX_CP, false},
        {PAR_GROUP_DP_CP, 1u << AX_DP | 1u << AX_CP, false},
        {PAR_GROUP_MP, 1u << AX_TP | 1u << AX_PP, false},
        {PAR_GROUP_EP, 1u << AX_EP, true},
        {PAR_GROUP_EXPERT_TP, 1u << AX_TP, true},
        {PAR_GROUP_EXPERT_DP, 1u << AX_DP, true},
    };
    for (size_t k = 0; k < WF_COUNT(kinds); k++) {
        if (kinds[k].expert)
            grid_groups(&expert, kinds[k].mask, &L->groups[kinds[k].kind]);
        else
            build_kind(&L->groups[kinds[k].kind], kinds[k].mask, e, &dec, kinds[k].kind);
    }
    /* Embedding groups: the first and last stage of each pipeline, and with an
     * encoder of its own the decoder's first stage too (where T5's decoder
     * embeds); Megatron's default get_embedding_ranks, with its split rank. */
    const struct rank_groups *pp = &L->groups[PAR_GROUP_PP];
    for (int g = 0; g < pp->n_groups; g++) {
        int n = pp->sizes[g], *r = pp->ranks[g], emb[3], ne = 0;
        emb[ne++] = r[0];
        if (e && pc.epp < n && r[pc.epp] != r[0])
            emb[ne++] = r[pc.epp];
        if (r[n - 1] != emb[ne - 1])
            emb[ne++] = r[n - 1];
        append_group(&L->groups[PAR_GROUP_EMBEDDING], emb, ne, NULL, 0);
    }
    for (int k = 0; k < PAR_GROUP_COUNT; k++)
        set_group_size(&L->groups[k]);

    for (int r = 0; r < L->n_ranks; r++) {
        struct rank_coords *c = &L->ranks[r];
        bool in_enc = r < pc.encoder_world;
        const struct grid *g = in_enc ? &enc : &dec;
        int i = r - g->offset;
        c->part = in_enc ? IR_PART_ENCODER : IR_PART_DECODER;
        c->tp = i % g->size[AX_TP];
        i /= g->size[AX_TP];
        c->cp = i % g->size[AX_CP];
        i /= g->size[AX_CP];
        c->dp = i % g->size[AX_DP];
        c->pp = i / g->size[AX_DP];
        c->stage = in_enc ? c->pp : pc.epp + c->pp;
        if (!in_enc) {
            int x = r - expert.offset;
            c->expert_tp = x % pc.expert_tp;
            x /= pc.expert_tp;
            c->ep = x % pc.ep;
            c->expert_dp = (x / pc.ep) % pc.expert_dp;
        }
    }
    return L;
}

void rank_layout_free(struct rank_layout *L)
{
    if (!L)
        return;
    for (int k = 0; k < PAR_GROUP_COUNT; k++)
        groups_free(&L->groups[k]);
    free(L->ranks);
    free(L);
}

const struct rank_groups *rank_layout_groups(const struct rank_layout *L, enum par_group_kind k)
{
    return &L->groups[k];
}

int rank_layout_group_of(const struct rank_layout *L, enum par_group_kind k, int r)
{
    const struct rank_groups *g = &L->groups[k];
    for (int i = 0; i < g->n_groups; i++)
        for (int j = 0; j < g->sizes[i]; j++)
            if (g->ranks[i][j] == r)
                return i;
    return -1;
}

int par_pdim_degree(const struct par_config *pc, enum ir_part part, int pdim)
{
    switch (pdim) {
    case IR_PDIM_TP: return part == IR_PART_ENCODER && pc->epp > 0 ? pc->etp : pc->tp;
    case IR_PDIM_CP: return pc->cp;
    case IR_PDIM_EP: return part == IR_PART_ENCODER ? 1 : pc->ep;
    case IR_PDIM_XTP: return part == IR_PART_ENCODER ? 1 : pc->expert_tp;
    default: return 1;
    }
}

char *par_layout_str(const struct par_config *pc, char *buf, size_t n)
{
    size_t at = (size_t)snprintf(buf, n, "tp %d x pp %d x dp %d", pc->tp, pc->pp, pc->dp);
    if (pc->cp > 1 && at < n)
        at += (size_t)snprintf(buf + at, n - at, " x cp %d", pc->cp);
    if (pc->ep > 1 && at < n)
        at += (size_t)snprintf(buf + at, n - at, ", ep %d", pc->ep);
    if (pc->sequence_parallel && at < n)
        snprintf(buf + at, n - at, ", sequence parallel");
    return buf;
}

int par_pdim_coord(const struct rank_coords *rc, int pdim)
{
    switch (pdim) {
    case IR_PDIM_TP: return rc->tp;
    case IR_PDIM_CP: return rc->cp;
    case IR_PDIM_EP: return rc->ep;
    case IR_PDIM_XTP: return rc->expert_tp;
    default: return 0;
    }
}

int par_axis_coord(const struct par_config *pc, enum ir_part part, uint8_t set, const struct rank_coords *rc)
{
    int at = 0;
    for (int p = IR_PDIM_COUNT - 1; p > 0; p--) /* the outermost group first */
        if (set & IR_PDIM_BIT(p))
            at = at * par_pdim_degree(pc, part, p) + par_pdim_coord(rc, p);
    return at;
}
