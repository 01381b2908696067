/* hf.c: Hugging Face's weights in and out (hf.h).
 *
 * A mapped parameter's whole tensor is seen as rows of its last axis.  Along
 * that axis, hf_blocks blocks repeat; each block holds one piece of every
 * source chunk in order (ir.h, struct ir_hf).  A rank's runs of the whole
 * tensor (exec_param_runs) are cut into segments, each a stretch of one row
 * that maps to consecutive columns of one source (in weft's orientation), or
 * to padding.  A source is then read, or written, in slabs of its own rows
 * (Hugging Face's orientation) that this rank's segments touch: the
 * elements they touch are read (slab_ranges), runs of a row are written,
 * and a transposed slice is gathered or scattered in memory in between. */
#include "hf.h"
#include "json.h"
#include "safetensors.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLAB_ELEMENTS (16 << 20) /* a slab of a source's rows: 64 MiB of fp32 at most (or one row) */

/* ---- a parameter's pieces ---------------------------------------------------- */

struct piece {
    int source;
    int64_t chunk, width, at; /* at: its first column within a block */
};

struct geom {
    const struct rank_tensor *T;
    const struct rank_hf_map *m;
    int64_t cols, block; /* the last axis; a block's width */
    int n_pieces;
    struct piece *pieces;
    int64_t (*ws)[IR_MAX_RANK]; /* per source, its shape in weft's orientation */
    bool single;                /* one piece in one block: columns past it are padding */
};

struct seg {
    int source;         /* -1: padding */
    int64_t hrow, scol; /* the source's row (over all but its last axis) and column, in weft's orientation */
    int64_t len;
};

static void geom_free(struct geom *g)
{
    free(g->pieces);
    free(g->ws);
    g->pieces = NULL;
    g->ws = NULL;
}

static int geom_init(struct geom *g, const struct rank_plan *R, const struct rank_hf_map *m, struct diag *d)
{
    memset(g, 0, sizeof *g);
    g->T = &R->tensors[m->tensor];
    g->m = m;
    int r = g->T->rank;
    g->ws = wf_calloc((size_t)m->n_sources, sizeof *g->ws);
    g->cols = g->T->shape[r - 1];
    for (int s = 0; s < m->n_sources; s++) {
        const struct rank_hf_source *src = &m->sources[s];
        if (src->rank != r)
            goto bad;
        for (int a = 0; a < r; a++)
            g->ws[s][a] = src->shape[a];
        if (src->transpose)
            g->ws[s][0] = src->shape[1], g->ws[s][1] = src->shape[0];
        for (int a = 0; a + 1 < r; a++)
            if (g->ws[s][a] > g->T->shape[a])
                goto bad;
        if (src->chunks > g->ws[s][r - 1] || m->blocks > g->ws[s][r - 1] || g->n_pieces + src->chunks > g->cols)
            goto bad; /* more pieces than columns: no product below overflows */
        g->n_pieces += (int)src->chunks;
    }
    g->pieces = wf_calloc((size_t)g->n_pieces + 1, sizeof *g->pieces);
    int p = 0;
    for (int s = 0; s < m->n_sources; s++) {
        const struct rank_hf_source *src = &m->sources[s];
        int64_t last = g->ws[s][r - 1];
        if (last % (src->chunks * m->blocks))
            goto bad;
        for (int64_t c = 0; c < src->chunks; c++, p++) {
            g->pieces[p] = (struct piece){s, c, last / (src->chunks * m->blocks), g->block};
            g->block += g->pieces[p].width;
        }
    }
    g->single = g->n_pieces == 1 && m->blocks == 1;
    if (g->single ? g->block <= g->cols : g->block * m->blocks == g->cols) {
        if (g->single)
            g->block = g->cols;
        return 0;
    }
bad:
    diag_error(d, NULL, 0, "plan section 'hf': the tensors mapped to '%s' do not fit its shape: the plan is corrupted", g->T->name);
    geom_free(g);
    return -1;
}

/* The segment of whole element `flat` (at most `left` elements long). */
static struct seg seg_at(const struct geom *g, int64_t flat, int64_t left)
{
    int r = g->T->rank;
    int64_t row = flat / g->cols, col = flat % g->cols;
    if (left > g->cols - col)
        left = g->cols - col;
    int64_t b = col / g->block, o = col % g->block;
    int p = 0;
    while (p + 1 < g->n_pieces && o >= g->pieces[p].at + g->pieces[p].width)
        p++;
    const struct piece *pc = &g->pieces[p];
    struct seg sg = {.source = pc->source, .len = left};
    const int64_t *ws = g->ws[pc->source];
    if (o >= pc->at + pc->width) { /* past a single source's last column: padding to the row's end */
        sg.source = -1;
        return sg;
    }
    if (sg.len > pc->at + pc->width - o)
        sg.len = pc->at + pc->width - o;
    sg.scol = pc->chunk * g->m->blocks * pc->width + b * pc->width + (o - pc->at);
    int64_t stride = 1;
    for (int a = r - 2; a >= 0; a--) { /* the row's coordinates, each within the source's axis, else padding */
        int64_t coord = row % g->T->shape[a];
        row /= g->T->shape[a];
        if (coord >= ws[a]) {
            sg.source = -1;
            return sg;
        }
        sg.hrow += coord * stride;
        stride *= ws[a];
    }
    return sg;
}

/* A source's row in Hugging Face's orientation (the file's), and its length. */
static int64_t file_row(const struct geom *g, const struct seg *sg, int64_t j)
{
    return g->m->sources[sg->source].transpose ? sg->scol + j : sg->hrow;
}

static int64_t file_row_len(const struct geom *g, int s)
{
    const struct rank_hf_source *src = &g->m->sources[s];
    return src->shape[src->rank - 1];
}

/* Where (hrow, scol + j) of segment sg is within a slab of the file's rows from `first`. */
static int64_t slab_at(const struct geom *g, const struct seg *sg, int64_t j, int64_t first)
{
    int64_t len = file_row_len(g, sg->source);
    if (g->m->sources[sg->source].transpose)
        return (sg->scol + j - first) * len + sg->hrow;
    return (sg->hrow - first) * len + sg->scol + j;
}

/* ---- this rank's runs ------------------------------------------------------ */

struct run {
    int64_t first, count;
    float *local;
};

struct runs {
    struct run *v;
    int n, cap;
};

static int collect(void *ctx, int64_t whole_first, float *local, int64_t count)
{
    struct runs *rs = ctx;
    WF_GROW(rs->v, rs->n, rs->cap);
    rs->v[rs->n++] = (struct run){whole_first, count, local};
    return 0;
}

/* The file's rows [lo, hi) that source s's segments touch; hi 0 where none. */
static void rows_touched(const struct geom *g, const struct runs *rs, int s, int64_t *lo, int64_t *hi)
{
    *lo = INT64_MAX, *hi = 0;
    for (int i = 0; i < rs->n; i++)
        for (int64_t e = 0; e < rs->v[i].count;) {
            struct seg sg = seg_at(g, rs->v[i].first + e, rs->v[i].count - e);
            if (sg.source == s) {
                int64_t a = file_row(g, &sg, 0), b = file_row(g, &sg, sg.len - 1);
                *lo = a < *lo ? a : *lo;
                *hi = b + 1 > *hi ? b + 1 : *hi;
            }
            e += sg.len;
        }
}

/* Copies between the rank's segments of source s and a slab holding the
 * file's rows [first, end): into the slab (and its mask) when `to_slab`. */
static void slab_copy(const struct geom *g, const struct runs *rs, int s, int64_t first, int64_t end, float *slab, uint8_t *mask,
                      bool to_slab)
{
    for (int i = 0; i < rs->n; i++)
        for (int64_t e = 0; e < rs->v[i].count;) {
            struct seg sg = seg_at(g, rs->v[i].first + e, rs->v[i].count - e);
            float *local = rs->v[i].local + e;
            e += sg.len;
            if (sg.source != s)
                continue;
            if (!g->m->sources[s].transpose) { /* one file row, consecutive */
                if (sg.hrow < first || sg.hrow >= end)
                    continue;
                int64_t at = slab_at(g, &sg, 0, first);
                if (to_slab) {
                    memcpy(slab + at, local, (size_t)sg.len * sizeof *slab);
                    memset(mask + at, 1, (size_t)sg.len);
                } else
                    memcpy(local, slab + at, (size_t)sg.len * sizeof *slab);
                continue;
            }
            for (int64_t j = 0; j < sg.len; j++) { /* a column of the file's rows: gathered or scattered */
                int64_t fr = file_row(g, &sg, j);
                if (fr < first || fr >= end)
                    continue;
                int64_t at = slab_at(g, &sg, j, first);
                if (to_slab)
                    slab[at] = local[j], mask[at] = 1;
                else
                    local[j] = slab[at];
            }
        }
}

/* The file's elements of the slab [first, end) that source s's segments
 * touch, as ranges of the tensor's elements, sorted and joined where they
 * meet: a segment is one range where the source is not transposed; a
 * transposed one touches a column of several rows, so of each row the span
 * from its first to its last column touched is taken. */
struct range {
    int64_t at, n;
};

static int range_order(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return (x->at > y->at) - (x->at < y->at);
}

static int slab_ranges(const struct geom *g, const struct runs *rs, int s, int64_t first, int64_t end, struct range **out)
{
    int64_t rows = end - first, len = file_row_len(g, s);
    bool tr = g->m->sources[s].transpose;
    int64_t *lo = tr ? wf_calloc((size_t)rows, sizeof *lo) : NULL, *hi = tr ? wf_calloc((size_t)rows, sizeof *hi) : NULL;
    for (int64_t r = 0; tr && r < rows; r++)
        lo[r] = INT64_MAX;
    struct range *v = NULL;
    int n = 0, cap = 0;
    for (int i = 0; i < rs->n; i++)
        for (int64_t e = 0; e < rs->v[i].count;) {
            struct seg sg = seg_at(g, rs->v[i].first + e, rs->v[i].count - e);
            e += sg.len;
            if (sg.source != s)
                continue;
            if (!tr) {
                if (sg.hrow >= first && sg.hrow < end) {
                    WF_GROW(v, n, cap);
                    v[n++] = (struct range){sg.hrow * len + sg.scol, sg.len};
                }
                continue;
            }
            for (int64_t j = 0; j < sg.len; j++) {
                int64_t fr = file_row(g, &sg, j) - first;
                if (fr >= 0 && fr < rows) {
                    lo[fr] = sg.hrow < lo[fr] ? sg.hrow : lo[fr];
                    hi[fr] = sg.hrow + 1 > hi[fr] ? sg.hrow + 1 : hi[fr];
                }
            }
        }
    for (int64_t r = 0; tr && r < rows; r++)
        if (lo[r] < hi[r]) {
            WF_GROW(v, n, cap);
            v[n++] = (struct range){(first + r) * len + lo[r], hi[r] - lo[r]};
        }
    free(lo);
    free(hi);
    if (n)
        qsort(v, (size_t)n, sizeof *v, range_order);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (k && v[i].at <= v[k - 1].at + v[k - 1].n) {
            int64_t e = v[i].at + v[i].n;
            if (e > v[k - 1].at + v[k - 1].n)
                v[k - 1].n = e - v[k - 1].at;
        } else
            v[k++] = v[i];
    }
    *out = v;
    return k;
}

static int no_names(const struct rank_plan *R, struct diag *d)
{
    diag_error(d, NULL, 0, "the plan's model (%s) names no Hugging Face tensors: its model file needs <huggingface> and <hf> "
                           "elements (models/gpt2.xml has them); compile the plan again with this weft", R->meta.file);
    return 2;
}

/* ---- the files --------------------------------------------------------------- */

static char *hf_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(wf_calloc(n, 1), s, n);
}

bool hf_is_checkpoint(const char *path)
{
    struct stat st;
    if (stat(path, &st))
        return false;
    size_t n = strlen(path);
    if (S_ISREG(st.st_mode))
        return n > 12 && !strcmp(path + n - 12, ".safetensors");
    if (!S_ISDIR(st.st_mode))
        return false;
    char *p = wf_calloc(n + 64, 1);
    snprintf(p, n + 64, "%s/model.safetensors.index.json", path);
    bool yes = !stat(p, &st);
    snprintf(p, n + 64, "%s/model.safetensors", path);
    yes = yes || !stat(p, &st);
    free(p);
    return yes;
}

struct hf_in {
    char *where;                   /* the index, or the one file: for messages */
    struct json_value *index;      /* the index's JSON, or NULL */
    const struct json_value *map;  /* its weight_map */
    int n;
    char **names;                  /* the shards' file names (as the index writes them) */
    struct st_file *files;
    const char *prefix;            /* that names may lack */
};

static void in_close(struct hf_in *in)
{
    for (int i = 0; i < in->n; i++) {
        if (in->files[i].path)
            st_close(&in->files[i]);
        free(in->names[i]);
    }
    free(in->files);
    free(in->names);
    json_free(in->index);
    free(in->where);
    memset(in, 0, sizeof *in);
}

static int in_add(struct hf_in *in, const char *dir, const char *name, struct diag *d)
{
    for (int i = 0; i < in->n; i++)
        if (!strcmp(in->names[i], name))
            return 0;
    in->names = wf_realloc(in->names, (size_t)(in->n + 1) * sizeof *in->names);
    in->files = wf_realloc(in->files, (size_t)(in->n + 1) * sizeof *in->files);
    memset(&in->files[in->n], 0, sizeof in->files[in->n]);
    in->names[in->n] = hf_strdup(name);
    int k = in->n++;
    size_t len = strlen(dir) + strlen(name) + 2;
    char *path = wf_calloc(len, 1);
    snprintf(path, len, "%s%s%s", dir, *dir ? "/" : "", name);
    struct stat st;
    int rc = 0;
    if (in->index && stat(path, &st)) {
        diag_error(d, in->where, 0, "names the shard '%s', which is missing (%s: %s)", name, path, strerror(errno));
        rc = 2;
    } else if (st_open(path, &in->files[k], d))
        rc = 2;
    free(path);
    return rc;
}

static int in_open(struct hf_in *in, const char *path, const char *prefix, struct diag *d)
{
    memset(in, 0, sizeof *in);
    in->prefix = prefix && *prefix ? prefix : NULL;
    struct stat st;
    if (stat(path, &st)) {
        diag_error(d, path, 0, "cannot read it: %s", strerror(errno));
        return 2;
    }
    if (S_ISREG(st.st_mode)) {
        in->where = hf_strdup(path);
        return in_add(in, "", path, d);
    }
    size_t n = strlen(path) + 64;
    char *p = wf_calloc(n, 1);
    snprintf(p, n, "%s/model.safetensors.index.json", path);
    int rc = 0;
    if (stat(p, &st)) { /* no index: the one file */
        snprintf(p, n, "%s/model.safetensors", path);
        in->where = p;
        return in_add(in, path, "model.safetensors", d);
    }
    in->where = p;
    size_t len = 0;
    char *text = wf_read_file(p, 256u << 20, &len), err[160];
    if (!text) {
        diag_error(d, p, 0, "cannot read it: %s", strerror(errno));
        return 2;
    }
    in->index = json_parse(text, len, err, sizeof err);
    free(text);
    in->map = in->index ? json_get(in->index, "weight_map") : NULL;
    if (!in->map || in->map->type != JSON_OBJECT) {
        diag_error(d, p, 0, "%s", in->index ? "no \"weight_map\" object: not a safetensors index" : err);
        return 2;
    }
    for (int i = 0; i < in->map->n && !rc; i++) {
        const struct json_value *v = &in->map->items[i];
        if (v->type != JSON_STRING || !*v->string || strchr(v->string, '/')) {
            diag_error(d, p, 0, "weight_map: tensor '%s' maps to no shard file name", in->map->keys[i]);
            rc = 2;
        } else
            rc = in_add(in, path, v->string, d);
    }
    return rc;
}

/* The tensor `name` (or it without the optional prefix): its file, or NULL
 * with the name tried in `tried`. */
static const struct st_tensor *in_find(const struct hf_in *in, const char *name, const struct st_file **file)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        const char *want = name;
        if (attempt == 1) {
            size_t pl = in->prefix ? strlen(in->prefix) : 0;
            if (!pl || strncmp(name, in->prefix, pl))
                return NULL;
            want = name + pl;
        }
        if (!in->index) {
            const struct st_tensor *t = st_find(&in->files[0], want);
            if (t) {
                *file = &in->files[0];
                return t;
            }
            continue;
        }
        const struct json_value *v = json_get(in->map, want);
        for (int i = 0; v && i < in->n; i++)
            if (!strcmp(in->names[i], v->string)) {
                *file = &in->files[i];
                return st_find(&in->files[i], want);
            }
    }
    return NULL;
}

static char *shape_str(int rank, const int64_t *shape, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int a = 0; a < rank && o < n; a++)
        o += (size_t)snprintf(buf + o, n - o, "%s%" PRId64, a ? ", " : "", shape[a]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
    return buf;
}

/* Every source of every map found, shaped and typed as the plan says: the
 * same checks on every rank (the headers only), so all find the same. */
static int in_check(const struct hf_in *in, const struct rank_plan *R, struct diag *d)
{
    int rc = 0, missing = 0;
    for (int i = 0; i < R->hf.n_maps; i++) {
        const struct rank_hf_map *m = &R->hf.maps[i];
        for (int s = 0; s < m->n_sources; s++) {
            const struct rank_hf_source *src = &m->sources[s];
            const struct st_file *f = NULL;
            const struct st_tensor *t = in_find(in, src->name, &f);
            char a[128], b[128];
            size_t pl = in->prefix ? strlen(in->prefix) : 0;
            bool stripped = pl && !strncmp(src->name, in->prefix, pl);
            if (!t) {
                if (missing++ < 4) /* a file of another model misses them all: the first few say it */
                    diag_error(d, f ? f->path : in->where, 0, "no tensor '%s'%s%s%s, which weft's '%s' is made of", src->name,
                               stripped ? " (nor '" : "", stripped ? src->name + pl : "", stripped ? "')" : "",
                               R->tensors[m->tensor].name);
                rc = 2;
                continue;
            }
            bool same = t->rank == src->rank;
            for (int k = 0; same && k < t->rank; k++)
                same = t->shape[k] == src->shape[k];
            if (!same) {
                diag_error(d, f->path, 0, "tensor '%s' is %s; weft's '%s' needs %s (the model file's <hf shape>, with its dimensions)",
                           t->name, shape_str(t->rank, t->shape, a, sizeof a), R->tensors[m->tensor].name,
                           shape_str(src->rank, src->shape, b, sizeof b));
                rc = 2;
            }
            if (!st_dtype_is_float(t->dtype)) {
                diag_error(d, f->path, 0, "tensor '%s' is %s: weft converts F32, BF16, F16 and F64 to its fp32 weights", t->name,
                           st_dtype_name(t->dtype));
                rc = 2;
            }
        }
    }
    if (missing > 4)
        diag_error(d, in->where, 0, "%d more of the model's tensors are missing (a file of another model? this plan's is %s, %s)", missing - 4,
                   R->hf.model_type, R->hf.architecture);
    return rc;
}

/* ---- loading ------------------------------------------------------------------- */

static int load_map(struct exec *x, const struct rank_plan *R, const struct hf_in *in, const struct rank_hf_map *m, struct diag *d)
{
    struct geom g;
    if (geom_init(&g, R, m, d))
        return 1;
    struct runs rs = {0};
    int rc = exec_param_runs(x, m->tensor, EXEC_WEIGHTS, false, collect, &rs, d) ? 1 : 0;
    for (int i = 0; i < rs.n; i++) /* padding stays zero */
        memset(rs.v[i].local, 0, (size_t)rs.v[i].count * sizeof(float));
    float *slab = NULL;
    for (int s = 0; s < m->n_sources && !rc; s++) {
        int64_t lo, hi, len = file_row_len(&g, s);
        rows_touched(&g, &rs, s, &lo, &hi);
        const struct st_file *f = NULL;
        const struct st_tensor *t = hi ? in_find(in, m->sources[s].name, &f) : NULL;
        int64_t per = SLAB_ELEMENTS / len > 0 ? SLAB_ELEMENTS / len : 1;
        for (int64_t a = lo; t && a < hi && !rc; a += per) {
            int64_t b = a + per < hi ? a + per : hi;
            slab = wf_realloc(slab, (size_t)((b - a) * len) * sizeof *slab);
            struct range *v = NULL;
            int n = slab_ranges(&g, &rs, s, a, b, &v);
            for (int i = 0; i < n && !rc; i++)
                rc = st_read_f32(f, t, v[i].at, v[i].n, slab + (v[i].at - a * len), d) ? 1 : 0;
            free(v);
            if (!rc)
                slab_copy(&g, &rs, s, a, b, slab, NULL, false);
        }
    }
    if (!rc && exec_param_store(x, d))
        rc = 1;
    free(slab);
    free(rs.v);
    geom_free(&g);
    return rc;
}

int hf_load(struct exec *x, const struct rank_plan *R, struct comm *comm, const char *path, struct diag *d)
{
    if (!R->hf.present)
        return no_names(R, d);
    struct hf_in in;
    int rc = in_open(&in, path, R->hf.optional_prefix, d);
    if (!rc)
        rc = in_check(&in, R, d);
    for (int i = 0; !rc && i < R->hf.n_maps; i++)
        rc = load_map(x, R, &in, &R->hf.maps[i], d);
    in_close(&in);
    rc = comm_agree(comm, rc, NULL, d);
    if (!rc && exec_weights_loaded(x, d))
        rc = 1;
    return rc;
}

/* ---- writing ------------------------------------------------------------------- */

static int source_order(const void *a, const void *b)
{
    return strcmp((*(const struct rank_hf_source *const *)a)->name, (*(const struct rank_hf_source *const *)b)->name);
}

/* Map m's slices held here into the file; k[s]: source s's tensor in w. */
static int write_map(struct exec *x, const struct rank_plan *R, const struct st_writer *w, const int *k, int fd, const char *path,
                     const struct rank_hf_map *m, struct diag *d)
{
    struct geom g;
    if (geom_init(&g, R, m, d))
        return 1;
    struct runs rs = {0};
    int rc = exec_param_runs(x, m->tensor, EXEC_WEIGHTS, true, collect, &rs, d) ? 1 : 0;
    float *slab = NULL;
    uint8_t *mask = NULL;
    for (int s = 0; s < m->n_sources && !rc; s++) {
        int64_t lo, hi, len = file_row_len(&g, s);
        rows_touched(&g, &rs, s, &lo, &hi);
        int64_t per = SLAB_ELEMENTS / len > 0 ? SLAB_ELEMENTS / len : 1;
        for (int64_t a = lo; a < hi && !rc; a += per) {
            int64_t b = a + per < hi ? a + per : hi, n = (b - a) * len;
            slab = wf_realloc(slab, (size_t)n * sizeof *slab);
            mask = wf_realloc(mask, (size_t)n);
            memset(mask, 0, (size_t)n);
            slab_copy(&g, &rs, s, a, b, slab, mask, true);
            for (int64_t e = 0; e < n && !rc;) { /* the runs this rank holds, each one write */
                if (!mask[e]) {
                    e++;
                    continue;
                }
                int64_t f = e;
                while (e < n && mask[e] && (e == f || (e % len))) /* a run within one row */
                    e++;
                rc = st_writer_put_f32(w, fd, path, k[s], a * len + f, slab + f, e - f, d) ? 1 : 0;
            }
        }
    }
    free(slab);
    free(mask);
    free(rs.v);
    geom_free(&g);
    return rc;
}

static int write_config(const struct rank_plan *R, const char *path, struct diag *d)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        diag_error(d, path, 0, "cannot write it: %s", strerror(errno));
        return 1;
    }
    struct json j;
    json_init(&j, f);
    json_begin_object(&j, NULL);
    json_begin_array(&j, "architectures");
    json_string(&j, NULL, R->hf.architecture);
    json_end_array(&j);
    json_string(&j, "model_type", R->hf.model_type);
    for (int i = 0; i < R->hf.n_config; i++) {
        const struct rank_hf_config *c = &R->hf.config[i];
        switch (c->kind) {
        case IR_HF_INT: json_int(&j, c->key, strtoll(c->value, NULL, 10)); break;
        case IR_HF_NUMBER: json_double(&j, c->key, strtod(c->value, NULL)); break;
        case IR_HF_STRING: json_string(&j, c->key, c->value); break;
        default: json_bool(&j, c->key, !strcmp(c->value, "true")); break;
        }
    }
    json_string(&j, "dtype", "float32"); /* the file's: F32 */
    json_end_object(&j);
    json_finish(&j);
    if (ferror(f) | fclose(f)) {
        diag_error(d, path, 0, "cannot write it: %s", strerror(errno));
        return 1;
    }
    return 0;
}

int hf_write(struct exec *x, const struct rank_plan *R, struct comm *comm, const char *dir, struct diag *d)
{
    if (!R->hf.present)
        return no_names(R, d);
    /* The tensors in the order of their names, as Hugging Face's writer puts
     * tensors of one dtype: the same file save_pretrained writes. */
    int n_src = 0;
    for (int i = 0; i < R->hf.n_maps; i++)
        n_src += R->hf.maps[i].n_sources;
    const struct rank_hf_source **by_name = wf_calloc((size_t)n_src + 1, sizeof *by_name);
    int *first = wf_calloc((size_t)R->hf.n_maps + 1, sizeof *first), *slot = wf_calloc((size_t)n_src + 1, sizeof *slot);
    for (int i = 0, k = 0; i < R->hf.n_maps; i++) {
        first[i] = k; /* the map's sources from here in slot[] */
        for (int s = 0; s < R->hf.maps[i].n_sources; s++)
            by_name[k++] = &R->hf.maps[i].sources[s];
    }
    qsort(by_name, (size_t)n_src, sizeof *by_name, source_order);
    struct st_writer *w = st_writer_new();
    for (int k = 0; k < n_src; k++)
        st_writer_add(w, by_name[k]->name, ST_F32, by_name[k]->rank, by_name[k]->shape);
    for (int i = 0; i < R->hf.n_maps; i++)
        for (int s = 0; s < R->hf.maps[i].n_sources; s++)
            for (int k = 0; k < n_src; k++)
                if (by_name[k] == &R->hf.maps[i].sources[s])
                    slot[first[i] + s] = k;
    free(by_name);
    st_writer_meta(w, "format", "pt");
    st_writer_finish(w);
    size_t n = strlen(dir) + 32;
    char *path = wf_calloc(n, 1), *config = wf_calloc(n, 1);
    snprintf(path, n, "%s/model.safetensors", dir);
    snprintf(config, n, "%s/config.json", dir);
    int rc = 0;
    if (!comm || comm->rank == 0) { /* the directory and config.json */
        if (wf_make_dirs(dir)) {
            diag_error(d, dir, 0, "cannot make the directory: %s", strerror(errno));
            rc = 1;
        } else
            rc = write_config(R, config, d);
    }
    if (!(rc = comm_agree(comm, rc, NULL, d))) {
        int fd = st_writer_open_shared(w, comm, path, d); /* model.safetensors at its size, then each rank's slices */
        rc = fd < 0;
        for (int i = 0; !rc && i < R->hf.n_maps; i++)
            rc = write_map(x, R, w, slot + first[i], fd, path, &R->hf.maps[i], d);
        if (fd >= 0 && st_writer_sync_close(fd, comm, path, rc, d))
            rc = 1;
        rc = comm_agree(comm, rc, NULL, d);
    }
    free(path);
    free(config);
    free(first);
    free(slot);
    st_writer_free(w);
    return rc;
}
