/* checkpoint.c: Megatron's checkpoint directories of full tensors (checkpoint.h). */
#define _GNU_SOURCE /* renameat2's RENAME_EXCHANGE */
#include "checkpoint.h"
#include "hf.h"
#include "json.h"
#include "safetensors.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKPT_JSON "checkpoint.json"
#define CKPT_MODEL "model.safetensors"
#define CKPT_OPTIM "optimizer.safetensors"

/* snprintf for paths and names: one too long is cut (and then names no file). */
static void fmt(char *buf, size_t n, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t n, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, n, f, ap);
    va_end(ap);
}

static bool lead(const struct comm *c) { return !c || c->rank == 0; }

static bool is_dir(const char *path)
{
    struct stat sb;
    return !stat(path, &sb) && S_ISDIR(sb.st_mode);
}

static bool exists(const char *path)
{
    struct stat sb;
    return !stat(path, &sb);
}

static int fsync_path(const char *path, bool dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    int rc = fd < 0 || fsync(fd) ? -1 : 0;
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Whether a name ends with suffix. */
static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* Removes a directory of plain files (a checkpoint's); errors ignored: what
 * is left is a *.tmp that no loader trusts and the next save removes. */
static void remove_dir(const char *path)
{
    DIR *dp = opendir(path);
    struct dirent *e;
    char f[CKPT_PATH_MAX + 256];
    while (dp && (e = readdir(dp)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            fmt(f, sizeof f, "%s/%s", path, e->d_name);
            unlink(f);
        }
    if (dp)
        closedir(dp);
    rmdir(path);
}

/* Writes one safetensors file of full tensors: for each state in states,
 * every parameter (its name + suffix), fp32.  Every rank fixes the same
 * header; rank 0 creates the file at its full size; after a barrier each
 * rank writes the slices it stores once, then fsyncs.  This rank's status. */
struct put_ctx {
    const struct st_writer *w;
    int fd, k;
    const char *path;
    struct diag *d;
};

static int put_run(void *ctx, int64_t whole_first, float *local, int64_t count)
{
    struct put_ctx *p = ctx;
    return st_writer_put_f32(p->w, p->fd, p->path, p->k, whole_first, local, count, p->d);
}

static void add_meta(struct st_writer *w, const struct rank_plan *R, const struct ckpt_state *s)
{
    char v[64];
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "weft.model", R->meta.model);
    fmt(v, sizeof v, "%" PRId64, R->vocab);
    st_writer_meta(w, "weft.vocab", v);
    fmt(v, sizeof v, "%ld", s->iteration);
    st_writer_meta(w, "weft.iteration", v);
    fmt(v, sizeof v, "%" PRId64, s->consumed_samples);
    st_writer_meta(w, "weft.consumed_samples", v);
}

static int write_full_tensors(struct exec *x, const struct rank_plan *R, struct comm *c, const char *path, int n_states,
                              const enum exec_state *states, const char *const *suffix, const struct ckpt_state *s, struct diag *d)
{
    struct st_writer *w = st_writer_new();
    add_meta(w, R, s);
    int *index = wf_calloc((size_t)(n_states * R->n_tensors) + 1, sizeof *index);
    for (int k = 0; k < n_states; k++)
        for (int t = 0; t < R->n_tensors; t++) {
            const struct rank_tensor *T = &R->tensors[t];
            if (T->kind != IR_TENSOR_PARAM)
                continue;
            char name[256];
            fmt(name, sizeof name, "%s%s", T->name, suffix[k]);
            index[k * R->n_tensors + t] = st_writer_add(w, name, ST_F32, T->rank, T->shape);
        }
    st_writer_finish(w);
    int fd = st_writer_open_shared(w, c, path, d), rc = fd < 0 ? -1 : 0;
    for (int k = 0; k < n_states && !rc; k++)
        for (int t = 0; t < R->n_tensors && !rc; t++) {
            if (R->tensors[t].kind != IR_TENSOR_PARAM)
                continue;
            struct put_ctx p = {w, fd, index[k * R->n_tensors + t], path, d};
            rc = exec_param_runs(x, t, states[k], true, put_run, &p, d);
            if (rc && c)
                diag_note(d, path, 0, "rank %d on %s was writing its slices", c->rank, c->host);
        }
    if (fd >= 0)
        rc = st_writer_sync_close(fd, c, path, rc, d);
    st_writer_free(w);
    free(index);
    return rc;
}

static int weft_model_write(struct exec *x, const struct rank_plan *R, struct comm *c, const char *dir, const struct ckpt_state *s,
                            struct diag *d)
{
    char path[CKPT_PATH_MAX + 64];
    fmt(path, sizeof path, "%s/%s", dir, CKPT_MODEL);
    static const enum exec_state w[] = {EXEC_WEIGHTS};
    static const char *const none[] = {""};
    return write_full_tensors(x, R, c, path, 1, w, none, s, d);
}

const struct ckpt_model_writer ckpt_weft_model = {"weft", weft_model_write};

static int hf_model_write(struct exec *x, const struct rank_plan *R, struct comm *c, const char *dir, const struct ckpt_state *s,
                          struct diag *d)
{
    (void)s;
    if (hf_write(x, R, c, dir, d))
        return -1;
    char path[CKPT_PATH_MAX + 64];
    fmt(path, sizeof path, "%s/config.json", dir);
    if (lead(c) && fsync_path(path, false)) { /* hf_write made the safetensors file durable; its config too */
        diag_error(d, path, 0, "cannot sync it: %s", strerror(errno));
        return -1;
    }
    return 0;
}

const struct ckpt_model_writer ckpt_hf_model = {"hf", hf_model_write};

/* checkpoint.json: the run's position and what saved it; rank 0 writes it, fsynced. */
static int write_json(const struct rank_plan *R, const char *dir, const struct ckpt_state *s, const struct ckpt_model_writer *mw,
                      struct diag *d)
{
    char path[CKPT_PATH_MAX + 64], lay[256];
    fmt(path, sizeof path, "%s/%s", dir, CKPT_JSON);
    FILE *f = fopen(path, "w");
    if (!f) {
        diag_error(d, path, 0, "cannot create it: %s", strerror(errno));
        return -1;
    }
    struct json j;
    json_init(&j, f);
    json_begin_object(&j, NULL);
    json_string(&j, "format", "weft-checkpoint");
    json_int(&j, "version", 1);
    json_int(&j, "iteration", s->iteration);
    json_int(&j, "consumed_samples", s->consumed_samples);
    json_int(&j, "skipped_updates", s->skipped);
    json_int(&j, "consumed_valid_samples", s->valid_consumed);
    json_int(&j, "seed", (int64_t)s->seed); /* the randomness's whole state (counter-based); read back as its bits */
    json_begin_object(&j, "data");
    if (s->data_path[0])
        json_string(&j, "path", s->data_path);
    else
        json_string(&j, "path", ""); /* synthetic tokens from the seed */
    json_string(&j, "split", s->split);
    json_end_object(&j);
    json_begin_object(&j, "model");
    json_string(&j, "name", R->meta.model);
    json_string(&j, "file", R->meta.file);
    json_string(&j, "variant", R->meta.variant);
    json_int(&j, "vocab", R->vocab);
    json_begin_object(&j, "dims");
    for (int i = 0; i < R->meta.n_dims; i++)
        json_int(&j, R->meta.dim_name[i], R->meta.dim_value[i]);
    json_end_object(&j);
    json_end_object(&j);
    json_begin_object(&j, "saved_by");
    json_int(&j, "world_size", R->L->n_ranks);
    json_string(&j, "layout", par_layout_str(&R->L->pc, lay, sizeof lay));
    json_bool(&j, "bf16", R->L->pc.bf16);
    json_end_object(&j);
    json_string(&j, "model_format", mw->name);
    json_string(&j, "optimizer", CKPT_OPTIM);
    json_end_object(&j);
    json_finish(&j);
    int rc = fflush(f) || fsync(fileno(f)) ? -1 : 0;
    if (fclose(f) || rc) {
        diag_error(d, path, 0, "cannot write it: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Rank 0: DIR exists, and what interrupted saves left (iter_*.tmp, the
 * tracker's temporary) is gone; then a fresh tmp directory. */
static int prepare(const char *dir, const char *tmp, struct diag *d)
{
    if (wf_make_dirs(dir)) {
        diag_error(d, dir, 0, "cannot make the checkpoint directory: %s", strerror(errno));
        return -1;
    }
    DIR *dp = opendir(dir);
    struct dirent *e;
    char p[CKPT_PATH_MAX + 256];
    while (dp && (e = readdir(dp))) {
        if (strncmp(e->d_name, "iter_", 5) && strncmp(e->d_name, CKPT_TRACKER, strlen(CKPT_TRACKER)))
            continue;
        if (!ends_with(e->d_name, ".tmp"))
            continue;
        fmt(p, sizeof p, "%s/%s", dir, e->d_name);
        if (is_dir(p))
            remove_dir(p);
        else
            unlink(p);
    }
    if (dp)
        closedir(dp);
    if (mkdir(tmp, 0755)) {
        diag_error(d, tmp, 0, "cannot make it: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Rank 0, after every rank's files are durable: tmp becomes final (an
 * existing final swapped out at once, then removed), then the tracker
 * names it; each step made durable before the next. */
static int publish(const char *dir, const char *tmp, const char *final, long iteration, struct diag *d)
{
    if (fsync_path(tmp, true)) {
        diag_error(d, tmp, 0, "fsync: %s", strerror(errno));
        return -1;
    }
    if (exists(final)) { /* saved before (a run resumed from an earlier one): swap, so final is never missing */
        char old[CKPT_PATH_MAX + 64];
        fmt(old, sizeof old, "%s.old.tmp", final);
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0)
            remove_dir(tmp); /* the old one, now under the temporary name */
        else if ((errno == EINVAL || errno == ENOSYS) && !rename(final, old) && !rename(tmp, final))
            remove_dir(old); /* a file system without the swap: final was missing for a moment */
        else {
            diag_error(d, final, 0, "cannot replace it with %s: %s", tmp, strerror(errno));
            return -1;
        }
    } else if (rename(tmp, final)) {
        diag_error(d, final, 0, "cannot rename %s to it: %s", tmp, strerror(errno));
        return -1;
    }
    if (fsync_path(dir, true)) {
        diag_error(d, dir, 0, "fsync: %s", strerror(errno));
        return -1;
    }
    char tracker[CKPT_PATH_MAX + 64], ttmp[CKPT_PATH_MAX + 64];
    fmt(tracker, sizeof tracker, "%s/%s", dir, CKPT_TRACKER);
    fmt(ttmp, sizeof ttmp, "%s.tmp", tracker);
    FILE *f = fopen(ttmp, "w");
    int rc = !f || fprintf(f, "%ld", iteration) < 0 || fflush(f) || fsync(fileno(f)) ? -1 : 0;
    if ((f && fclose(f)) || rc) {
        diag_error(d, ttmp, 0, "cannot write it: %s", strerror(errno));
        unlink(ttmp);
        return -1;
    }
    if (rename(ttmp, tracker) || fsync_path(dir, true)) {
        diag_error(d, tracker, 0, "cannot replace it: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int ckpt_save(struct exec *x, const struct rank_plan *R, struct comm *c, const char *dir, const struct ckpt_state *s,
              const struct ckpt_model_writer *mw, struct ckpt_saved *saved, struct diag *d)
{
    double t0 = wf_seconds();
    char tmp[CKPT_PATH_MAX + 64], final[CKPT_PATH_MAX + 64], path[CKPT_PATH_MAX + 128];
    fmt(final, sizeof final, "%s/iter_%07ld", dir, s->iteration);
    fmt(tmp, sizeof tmp, "%s.tmp", final);
    memset(saved, 0, sizeof *saved);
    fmt(saved->dir, sizeof saved->dir, "%s", final);
    int rc = lead(c) ? prepare(dir, tmp, d) : 0;
    if (comm_agree(c, rc ? 1 : 0, NULL, d))
        goto failed;
    /* from here every rank runs each writer, whatever the others found, so the barriers inside meet */
    rc = mw->write(x, R, c, tmp, s, d);
    static const enum exec_state moments[] = {EXEC_EXP_AVG, EXEC_EXP_AVG_SQ};
    static const char *const names[] = {".exp_avg", ".exp_avg_sq"};
    fmt(path, sizeof path, "%s/%s", tmp, CKPT_OPTIM);
    rc |= write_full_tensors(x, R, c, path, 2, moments, names, s, d);
    if (lead(c))
        rc |= write_json(R, tmp, s, mw, d);
    if (comm_agree(c, rc ? 1 : 0, NULL, d))
        goto failed;
    rc = lead(c) ? publish(dir, tmp, final, s->iteration, d) : 0;
    if (comm_agree(c, rc ? 1 : 0, NULL, d))
        goto failed;
    if (lead(c)) { /* the bytes written: the directory's files */
        DIR *dp = opendir(final);
        struct dirent *e;
        struct stat sb;
        while (dp && (e = readdir(dp))) {
            fmt(path, sizeof path, "%s/%s", final, e->d_name);
            if (!stat(path, &sb) && S_ISREG(sb.st_mode))
                saved->bytes += sb.st_size;
        }
        if (dp)
            closedir(dp);
    }
    saved->seconds = wf_seconds() - t0;
    return 0;
failed:
    if (lead(c)) {
        remove_dir(tmp);
        char tracker[CKPT_PATH_MAX + 64];
        fmt(tracker, sizeof tracker, "%s/%s", dir, CKPT_TRACKER);
        size_t tlen;
        char *was = wf_read_file(tracker, 64, &tlen);
        if (was)
            was[strcspn(was, "\r\n")] = 0;
        if (was)
            diag_error(d, dir, 0, "checkpoint of iteration %ld not saved (the error above): %s still names iteration %s, whose "
                                  "checkpoint is as it was", s->iteration, CKPT_TRACKER, was);
        else
            diag_error(d, dir, 0, "checkpoint of iteration %ld not saved (the error above); no earlier checkpoint is there",
                       s->iteration);
        free(was);
    }
    return -1;
}

/* checkpoint.json of dir into f->state and the model's name; 2 with an error where it is not one. */
static int read_json(const char *dir, struct ckpt_found *f, struct diag *d)
{
    char path[CKPT_PATH_MAX + 64], err[128];
    fmt(path, sizeof path, "%s/%s", dir, CKPT_JSON);
    size_t len;
    char *text = wf_read_file(path, 1 << 20, &len);
    if (!text) {
        diag_error(d, path, 0, "cannot read it: %s", strerror(errno));
        return 2;
    }
    struct json_value *v = json_parse(text, len, err, sizeof err);
    free(text);
    const struct json_value *form = json_get(v, "format"), *it = json_get(v, "iteration"), *cs = json_get(v, "consumed_samples"),
                            *seed = json_get(v, "seed"), *data = json_get(v, "data"), *model = json_get(v, "model"),
                            *by = json_get(v, "saved_by");
    const struct json_value *name = json_get(model, "name"), *dp = json_get(data, "path"), *split = json_get(data, "split"),
                            *ws = json_get(by, "world_size"), *lay = json_get(by, "layout");
    if (!v || !form || form->type != JSON_STRING || strcmp(form->string, "weft-checkpoint") || !it || !it->is_int || it->integer < 0 ||
        !cs || !cs->is_int || cs->integer < 0 || !seed || !seed->is_int || !name || name->type != JSON_STRING) {
        diag_error(d, path, 0, "not a weft checkpoint's state%s%s (it needs format, iteration, consumed_samples, seed, model.name)",
                   v ? "" : ": ", v ? "" : err);
        json_free(v);
        return 2;
    }
    f->state.iteration = (long)it->integer;
    f->state.consumed_samples = cs->integer;
    f->state.seed = (uint64_t)seed->integer;
    const struct json_value *sk = json_get(v, "skipped_updates"), *vc = json_get(v, "consumed_valid_samples"),
                            *mf = json_get(v, "model_format");
    f->state.skipped = sk && sk->is_int && sk->integer >= 0 ? (long)sk->integer : 0;
    f->state.valid_consumed = vc && vc->is_int && vc->integer >= 0 ? vc->integer : 0;
    fmt(f->model_format, sizeof f->model_format, "%s", mf && mf->type == JSON_STRING ? mf->string : "weft");
    fmt(f->state.data_path, sizeof f->state.data_path, "%s", dp && dp->type == JSON_STRING ? dp->string : "");
    fmt(f->state.split, sizeof f->state.split, "%s", split && split->type == JSON_STRING ? split->string : "");
    fmt(f->model, sizeof f->model, "%s", name->string);
    fmt(f->layout, sizeof f->layout, "%s", lay && lay->type == JSON_STRING ? lay->string : "?");
    f->world_size = ws && ws->is_int ? (int)ws->integer : 0;
    json_free(v);
    static const char *const files[] = {CKPT_JSON, CKPT_MODEL, CKPT_OPTIM};
    for (int i = 0; i < 3; i++) {
        struct stat sb;
        fmt(path, sizeof path, "%s/%s", dir, files[i]);
        f->bytes += stat(path, &sb) ? 0 : sb.st_size;
    }
    return 0;
}

/* What this rank found (mine, freed) into d: rank 0 reports what it
 * found, another rank only where rank 0 found nothing (so each error is
 * printed once, by the rank that can say it). */
static void relay(const struct comm *c, struct diag *mine, int rc, int rank0, struct diag *d)
{
    for (int i = 0; i < mine->n && (lead(c) || (rc && !rank0)); i++) {
        const struct diag_entry *e = &mine->v[i];
        if (lead(c))
            (e->level == DIAG_ERROR ? diag_error : diag_note)(d, e->file, e->line, "%s", e->msg);
        else
            (e->level == DIAG_ERROR ? diag_error : diag_note)(d, e->file, e->line, "rank %d: %s", c->rank, e->msg);
    }
    diag_free(mine);
}

static int find_local(const char *path, bool empty_ok, struct ckpt_found *f, struct diag *d)
{
    char p[CKPT_PATH_MAX + 64];
    fmt(p, sizeof p, "%s/%s", path, CKPT_TRACKER);
    if (is_dir(path) && exists(p)) {
        size_t tlen;
        char *text = wf_read_file(p, 64, &tlen), *end = NULL;
        long it = text ? strtol(text, &end, 10) : -1;
        while (end && (*end == '\n' || *end == ' '))
            end++;
        if (!text || end == text || *end || it < 0) {
            int n = text ? (int)strcspn(text, "\n") : 0;
            diag_error(d, p, 0, "names no iteration (\"%.*s\"): a tracker holds the last saved iteration's number", n < 20 ? n : 20,
                       text ? text : "");
            free(text);
            return 2;
        }
        free(text);
        fmt(f->dir, sizeof f->dir, "%s/iter_%07ld", path, it);
        fmt(p, sizeof p, "%s/%s", f->dir, CKPT_JSON);
        if (!exists(p)) {
            diag_error(d, path, 0, "%s names iteration %ld, but %s %s", CKPT_TRACKER, it, f->dir,
                       is_dir(f->dir) ? "holds no checkpoint.json" : "is missing");
            return 2;
        }
    } else if (is_dir(path) && (fmt(p, sizeof p, "%s/%s", path, CKPT_JSON), exists(p))) {
        char base[CKPT_PATH_MAX];
        fmt(base, sizeof base, "%s", path);
        for (size_t n = strlen(base); n > 1 && base[n - 1] == '/'; n--)
            base[n - 1] = 0;
        if (ends_with(base, ".tmp")) {
            diag_error(d, path, 0, "an interrupted save, not a complete checkpoint: load its directory's tracker instead");
            return 2;
        }
        fmt(f->dir, sizeof f->dir, "%s", base);
    } else {
        bool iters = false, any = false;
        DIR *dp = is_dir(path) ? opendir(path) : NULL;
        struct dirent *e;
        while (dp && (e = readdir(dp))) { /* what an interrupted save left (*.tmp) does not count */
            bool tmp = ends_with(e->d_name, ".tmp");
            any |= strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && !tmp;
            iters |= !strncmp(e->d_name, "iter_", 5) && !tmp;
        }
        if (dp)
            closedir(dp);
        if (empty_ok && (!exists(path) || (is_dir(path) && !iters && !any)))
            return 1;
        if (!exists(path))
            diag_error(d, path, 0, "--load: no such file or directory");
        else if (iters)
            diag_error(d, path, 0, "no %s here (a save that never finished one): name one of its iter_* directories", CKPT_TRACKER);
        else
            diag_error(d, path, 0, "not a checkpoint: neither weft's (%s or checkpoint.json) nor Hugging Face's (a .safetensors "
                                   "file, or model.safetensors or its index)", CKPT_TRACKER);
        return 2;
    }
    return read_json(f->dir, f, d);
}

bool ckpt_is_checkpoint(const char *path)
{
    char p[CKPT_PATH_MAX + 64];
    fmt(p, sizeof p, "%s/%s", path, CKPT_TRACKER);
    if (is_dir(path) && exists(p))
        return true;
    fmt(p, sizeof p, "%s/%s", path, CKPT_JSON);
    return is_dir(path) && exists(p);
}

int ckpt_find(struct comm *c, const char *path, bool empty_ok, struct ckpt_found *f, struct diag *d)
{
    memset(f, 0, sizeof *f);
    struct diag mine;
    diag_init(&mine);
    int rc = find_local(path, empty_ok, f, &mine), rank0;
    int all = comm_agree(c, rc, &rank0, d);
    relay(c, &mine, rc, rank0, d);
    if (all && !rc && lead(c))
        diag_error(d, path, 0, "another rank finds it otherwise (is the directory on every node?)");
    return all;
}

/* How a parameter's stored tensor maps to this plan's: the same shape, or
 * the same but for a vocabulary axis padded to another size (va). */
struct read_ctx {
    const struct st_file *f;
    const struct st_tensor *t;
    const struct rank_tensor *T;
    int va;          /* the vocabulary's axis, or -1: the shapes are equal */
    int64_t vocab;   /* its real rows */
    struct diag *d;
};

static int read_run(void *ctx, int64_t first, float *local, int64_t count)
{
    struct read_ctx *r = ctx;
    if (r->va < 0)
        return st_read_f32(r->f, r->t, first, count, local, r->d);
    const struct rank_tensor *T = r->T;
    int last = T->rank - 1;
    int64_t L = T->shape[last];
    for (int64_t e = first; e < first + count;) { /* a row of the last axis at a time */
        int64_t row = e / L, col = e % L, seg = L - col < first + count - e ? L - col : first + count - e;
        int64_t frow = 0, stride = 1, rest = row;
        bool pad = false;
        for (int k = last - 1; k >= 0; k--) { /* the row's coordinates, as a row of the file's tensor */
            int64_t i = rest % T->shape[k];
            rest /= T->shape[k];
            pad |= k == r->va && i >= r->vocab;
            frow += i * stride;
            stride *= r->t->shape[k];
        }
        int64_t real = pad ? 0 : r->va == last ? (col >= r->vocab ? 0 : r->vocab - col < seg ? r->vocab - col : seg) : seg;
        float *out = local + (e - first);
        if (real && st_read_f32(r->f, r->t, frow * r->t->shape[last] + col, real, out, r->d))
            return -1;
        memset(out + real, 0, (size_t)(seg - real) * sizeof *out);
        e += seg;
    }
    return 0;
}

/* The stored tensor's entry against the plan's parameter: present, a float
 * dtype, its shape (a vocabulary axis may differ in padding); *va its
 * vocabulary axis (-1: none differs).  2 with an error naming the file and tensor. */
static int check_entry(const struct st_file *f, const char *name, const struct rank_tensor *T, int64_t vocab, int64_t file_vocab,
                       const struct st_tensor **t, int *va, struct diag *d)
{
    *t = st_find(f, name);
    *va = -1;
    if (!*t) {
        diag_error(d, f->path, 0, "tensor '%s' is missing (this plan's parameter)", name);
        return 2;
    }
    if (!st_dtype_is_float((*t)->dtype)) {
        diag_error(d, f->path, 0, "tensor '%s': dtype %s cannot be converted to fp32", name, st_dtype_name((*t)->dtype));
        return 2;
    }
    bool ok = (*t)->rank == T->rank;
    for (int k = 0; ok && k < T->rank; k++)
        if ((*t)->shape[k] != T->shape[k]) {
            if (*va < 0 && vocab > 0 && file_vocab == vocab && (*t)->shape[k] >= vocab && T->shape[k] >= vocab)
                *va = k; /* the same vocabulary, padded to another multiple */
            else
                ok = false;
        }
    if (!ok) {
        char a[128] = "", b[128] = "";
        for (int k = 0, n = 0; k < (*t)->rank; k++)
            n += snprintf(a + n, sizeof a - (size_t)n, "%s%" PRId64, k ? ", " : "", (*t)->shape[k]);
        for (int k = 0, n = 0; k < T->rank; k++)
            n += snprintf(b + n, sizeof b - (size_t)n, "%s%" PRId64, k ? ", " : "", T->shape[k]);
        diag_error(d, f->path, 0, "tensor '%s': shape [%s], this plan's is [%s]", name, a, b);
        return 2;
    }
    return 0;
}

/* Both files opened and every parameter's entries checked against the
 * plan, on this rank: 0, or 2 with every error found. */
static int check_files(const struct rank_plan *R, const struct ckpt_found *fd, struct st_file *files, struct diag *d)
{
    static const char *const names[2] = {CKPT_MODEL, CKPT_OPTIM};
    int rc = 0;
    for (int i = !strcmp(fd->model_format, "hf"); i < 2; i++) { /* Hugging Face's model file: hf_load checks it */
        char path[CKPT_PATH_MAX + 64];
        fmt(path, sizeof path, "%s/%s", fd->dir, names[i]);
        if (st_open(path, &files[i], d)) {
            rc = 2;
            continue;
        }
        const char *model = st_meta(&files[i], "weft.model"), *vocab = st_meta(&files[i], "weft.vocab");
        if (!model || strcmp(model, R->meta.model)) {
            diag_error(d, path, 0, "a checkpoint of model '%s', this plan's is '%s'", model ? model : "(not weft's)", R->meta.model);
            rc = 2;
            continue;
        }
        int64_t fv = vocab ? strtoll(vocab, NULL, 10) : -1;
        int n_params = 0;
        for (int t = 0; t < R->n_tensors; t++) {
            const struct rank_tensor *T = &R->tensors[t];
            if (T->kind != IR_TENSOR_PARAM)
                continue;
            n_params++;
            for (int k = 0; k < (i ? 2 : 1); k++) {
                char name[256];
                fmt(name, sizeof name, "%s%s", T->name, i ? (k ? ".exp_avg_sq" : ".exp_avg") : "");
                const struct st_tensor *st;
                int va;
                rc |= check_entry(&files[i], name, T, R->vocab, fv, &st, &va, d);
            }
        }
        if (!rc && files[i].n != n_params * (i ? 2 : 1))
            for (int k = 0; k < files[i].n; k++) { /* one the plan does not have */
                char base[256];
                fmt(base, sizeof base, "%s", files[i].tensors[k].name);
                if (i && ends_with(base, ".exp_avg_sq"))
                    base[strlen(base) - 11] = 0;
                else if (i && ends_with(base, ".exp_avg"))
                    base[strlen(base) - 8] = 0;
                bool found = false;
                for (int t = 0; t < R->n_tensors && !found; t++)
                    found = R->tensors[t].kind == IR_TENSOR_PARAM && !strcmp(R->tensors[t].name, base);
                if (!found) {
                    diag_error(d, path, 0, "tensor '%s' is no parameter of this plan's model", files[i].tensors[k].name);
                    rc = 2;
                }
            }
    }
    return rc;
}

int ckpt_load(struct exec *x, const struct rank_plan *R, struct comm *c, const struct ckpt_found *f, struct diag *d)
{
    struct st_file files[2];
    memset(files, 0, sizeof files);
    files[0].fd = files[1].fd = -1;
    struct diag mine;
    diag_init(&mine);
    int rc = check_files(R, f, files, &mine), rank0;
    int all = comm_agree(c, rc, &rank0, d);
    relay(c, &mine, rc, rank0, d);
    if (all && !rc && lead(c))
        diag_error(d, f->dir, 0, "another rank finds this checkpoint otherwise (is it the same file on every node?)");
    static const enum exec_state states[3] = {EXEC_WEIGHTS, EXEC_EXP_AVG, EXEC_EXP_AVG_SQ};
    static const char *const suffix[3] = {"", ".exp_avg", ".exp_avg_sq"};
    bool hf = !strcmp(f->model_format, "hf"); /* the weights by Hugging Face's names: its reader, every rank agreeing */
    if (!all && hf && hf_load(x, R, c, f->dir, d))
        all = 1;
    for (int s = hf; s < 3 && !all && !rc; s++)
        for (int t = 0; t < R->n_tensors && !rc; t++) {
            const struct rank_tensor *T = &R->tensors[t];
            if (T->kind != IR_TENSOR_PARAM)
                continue;
            const struct st_file *sf = &files[s ? 1 : 0];
            char name[256];
            fmt(name, sizeof name, "%s%s", T->name, suffix[s]);
            const char *vocab = st_meta(sf, "weft.vocab");
            struct read_ctx r = {.f = sf, .T = T, .vocab = R->vocab, .d = d};
            check_entry(sf, name, T, R->vocab, vocab ? strtoll(vocab, NULL, 10) : -1, &r.t, &r.va, d);
            rc = exec_param_runs(x, t, states[s], false, read_run, &r, d) ? 2 : exec_param_store(x, d) ? 1 : 0;
        }
    if (!all)
        all = comm_agree(c, rc, NULL, d);
    st_close(&files[0]);
    st_close(&files[1]);
    if (all)
        return 2;
    if (exec_weights_loaded(x, d))
        return 1;
    exec_set_consumed_samples(x, f->state.consumed_samples);
    exec_set_skipped_updates(x, f->state.skipped);
    return 0;
}
