/* cmd_plot.c: `weft plot METRICS.jsonl -o loss.svg`: a run's curves, drawn.
 *
 * Reads the JSON lines `weft run --log` writes (one object per iteration:
 * "iteration", "loss", "tokens_per_s"; "val_loss" on the lines where a
 * validation ran) and draws two panels sharing the iteration axis: the
 * training and validation loss above, tokens/s below.  One drawing through
 * cairo serves both outputs, an SVG or a PNG surface by the extension. */
#include "cli.h"
#include "json.h"
#include "util.h"

#include <cairo-svg.h>
#include <cairo.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double pi = 3.14159265358979323846;

static const char usage[] =
    "usage: weft plot METRICS.jsonl -o OUT.svg|OUT.png [--title TEXT]\n"
    "\n"
    "Draw a run's metrics, as `weft run --log METRICS.jsonl` wrote them: the\n"
    "training loss (\"loss\") and, where present, the validation loss\n"
    "(\"val_loss\") against the iteration, and tokens/s (\"tokens_per_s\") in a\n"
    "second panel below.  The output's extension picks the format: .svg or .png.\n"
    "A loss that is null (a skipped iteration's) leaves a gap.\n"
    "  -o FILE       the picture to write (.svg or .png)\n"
    "  --title TEXT  the title (default: the metrics file's name)\n";

/* One series: points (x, y) in order of the file; y NaN: a gap. */
struct series {
    int n, cap;
    double *x, *y;
    int finite; /* points with a finite y */
};

static void series_add(struct series *s, double x, double y)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->x = wf_realloc(s->x, (size_t)s->cap * sizeof *s->x);
        s->y = wf_realloc(s->y, (size_t)s->cap * sizeof *s->y);
    }
    s->x[s->n] = x, s->y[s->n] = y, s->n++;
    s->finite += isfinite(y) != 0;
}

static void series_free(struct series *s)
{
    free(s->x);
    free(s->y);
}

enum { S_LOSS, S_VAL, S_TOKENS, S_COUNT };

/* A number member of a line's object, or NaN where it is absent or null
 * (-1: present and not a number, an error the caller names). */
static int member(const struct json_value *o, const char *key, double *v)
{
    const struct json_value *m = json_get(o, key);
    *v = NAN;
    if (!m || m->type == JSON_NULL)
        return 0;
    if (m->type != JSON_NUMBER)
        return -1;
    *v = m->number;
    return 0;
}

/* Read the metrics: every non-blank line an object with a number
 * "iteration"; "loss", "val_loss", "tokens_per_s" numbers or null where
 * present.  Errors name file:line; 0 or -1. */
static int read_metrics(const char *path, struct series *s)
{
    size_t len;
    char *text = wf_read_file(path, (size_t)1 << 30, &len);
    if (!text) {
        fprintf(stderr, "weft plot: %s: cannot read: %s\n", path, errno == EFBIG ? "larger than 1 GiB" : strerror(errno));
        return -1;
    }
    int rc = 0, line = 0;
    static const char *const keys[S_COUNT] = {"loss", "val_loss", "tokens_per_s"};
    for (char *p = text, *next; rc == 0 && p < text + len; p = next) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        next = nl ? nl + 1 : text + len;
        line++;
        size_t n = (size_t)((nl ? nl : text + len) - p);
        if (strspn(p, " \t\r") >= n) /* blank */
            continue;
        char err[128];
        struct json_value *v = json_parse(p, n, err, sizeof err);
        double it;
        if (!v) {
            fprintf(stderr, "weft plot: %s:%d: not JSON: %s\n", path, line, err);
            rc = -1;
        } else if (v->type != JSON_OBJECT) {
            fprintf(stderr, "weft plot: %s:%d: not a JSON object (weft run --log writes one per line)\n", path, line);
            rc = -1;
        } else if (member(v, "iteration", &it) || !isfinite(it)) {
            fprintf(stderr, "weft plot: %s:%d: no number \"iteration\"\n", path, line);
            rc = -1;
        }
        for (int k = 0; rc == 0 && k < S_COUNT; k++) {
            double y;
            if (member(v, keys[k], &y)) {
                fprintf(stderr, "weft plot: %s:%d: \"%s\" is not a number\n", path, line, keys[k]);
                rc = -1;
            } else if (json_get(v, keys[k])) { /* null included: a gap */
                series_add(&s[k], it, y);
            }
        }
        json_free(v);
    }
    if (rc == 0 && !s[S_LOSS].finite) {
        fprintf(stderr, "weft plot: %s:%d: no loss values in its %d line%s (\"loss\", as weft run --log writes it)\n", path, line, line,
                line == 1 ? "" : "s");
        rc = -1;
    }
    free(text);
    return rc;
}

/* The range of a set of series' finite values, widened where it is a point. */
static void range(const struct series *s, int n, bool xs, double *lo, double *hi)
{
    *lo = INFINITY, *hi = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int i = 0; i < s[k].n; i++) {
            double v = xs ? s[k].x[i] : s[k].y[i];
            if (isfinite(v) && isfinite(s[k].y[i]))
                *lo = fmin(*lo, v), *hi = fmax(*hi, v);
        }
    if (!(*lo <= *hi))
        *lo = 0, *hi = 1;
    if (*hi - *lo < 1e-12 * fmax(1, fabs(*hi))) {
        double d = fmax(fabs(*hi) * 0.05, 0.5);
        *lo -= d, *hi += d;
    }
}

/* Tick spacing: 1, 2 or 5 times a power of ten, about `want` ticks over [lo, hi]. */
static double tick_step(double lo, double hi, int want)
{
    double raw = (hi - lo) / want, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return mag * (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10);
}

/* A panel: a plot area in device units and the data ranges it maps. */
struct panel {
    double x0, y0, w, h;       /* the plot area: top left, size */
    double xlo, xhi, ylo, yhi;
};

static double px(const struct panel *p, double x) { return p->x0 + (x - p->xlo) / (p->xhi - p->xlo) * p->w; }
static double py(const struct panel *p, double y) { return p->y0 + p->h - (y - p->ylo) / (p->yhi - p->ylo) * p->h; }

static void text_at(cairo_t *cr, double x, double y, const char *s, double align_x, double align_y)
{
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    cairo_move_to(cr, x - e.width * align_x - e.x_bearing, y - e.height * align_y - e.y_bearing);
    cairo_show_text(cr, s);
}

/* A tick's label: few digits, no trailing zeros ("0.5", "12k" is not used:
 * tokens/s reads better whole). */
static void tick_label(double v, double step, char *buf, size_t n)
{
    int decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, n, "%.*f", decimals, fabs(v) < step * 1e-6 ? 0.0 : v);
}

/* The frame, grid, ticks and labels of a panel; the x labels only where
 * show_x (the panels share the axis). */
static void axes(cairo_t *cr, const struct panel *p, const char *ylabel, bool show_x, const char *xlabel)
{
    cairo_set_line_width(cr, 1);
    cairo_set_font_size(cr, 12);
    double ys = tick_step(p->ylo, p->yhi, 5), xs = tick_step(p->xlo, p->xhi, 8);
    char buf[32];
    for (double v = ceil(p->ylo / ys) * ys; v <= p->yhi + ys * 1e-9; v += ys) {
        double y = py(p, v);
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, p->x0, y), cairo_line_to(cr, p->x0 + p->w, y), cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
        cairo_move_to(cr, p->x0 - 5, y), cairo_line_to(cr, p->x0, y), cairo_stroke(cr);
        tick_label(v, ys, buf, sizeof buf);
        text_at(cr, p->x0 - 8, y, buf, 1, 0.5);
    }
    for (double v = ceil(p->xlo / xs) * xs; v <= p->xhi + xs * 1e-9; v += xs) {
        double x = px(p, v);
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, x, p->y0), cairo_line_to(cr, x, p->y0 + p->h), cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
        cairo_move_to(cr, x, p->y0 + p->h), cairo_line_to(cr, x, p->y0 + p->h + 5), cairo_stroke(cr);
        if (show_x) {
            tick_label(v, xs, buf, sizeof buf);
            text_at(cr, x, p->y0 + p->h + 9, buf, 0.5, 0);
        }
    }
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    cairo_rectangle(cr, p->x0, p->y0, p->w, p->h);
    cairo_stroke(cr);
    cairo_set_font_size(cr, 13);
    cairo_save(cr); /* the y label, turned */
    cairo_translate(cr, p->x0 - 62, p->y0 + p->h / 2);
    cairo_rotate(cr, -pi / 2);
    text_at(cr, 0, 0, ylabel, 0.5, 0.5);
    cairo_restore(cr);
    if (show_x)
        text_at(cr, p->x0 + p->w / 2, p->y0 + p->h + 30, xlabel, 0.5, 0);
}

/* A series as a polyline through its finite points (a gap at each NaN),
 * with a dot at each point where it has few. */
static void curve(cairo_t *cr, const struct panel *p, const struct series *s, const double rgb[3], double width)
{
    cairo_save(cr);
    cairo_rectangle(cr, p->x0, p->y0, p->w, p->h);
    cairo_clip(cr);
    cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
    cairo_set_line_width(cr, width);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    bool pen = false;
    for (int i = 0; i < s->n; i++) {
        if (!isfinite(s->y[i])) {
            pen = false;
            continue;
        }
        (pen ? cairo_line_to : cairo_move_to)(cr, px(p, s->x[i]), py(p, s->y[i]));
        pen = true;
    }
    cairo_stroke(cr);
    if (s->finite <= 50)
        for (int i = 0; i < s->n; i++)
            if (isfinite(s->y[i])) {
                cairo_arc(cr, px(p, s->x[i]), py(p, s->y[i]), width + 1.5, 0, 2 * pi);
                cairo_fill(cr);
            }
    cairo_restore(cr);
}

static const double colors[S_COUNT][3] = {{0.122, 0.467, 0.706}, {0.851, 0.373, 0.008}, {0.172, 0.627, 0.172}};

/* The legend: a swatch and a name per series shown, top right of the panel. */
static void legend(cairo_t *cr, const struct panel *p, const char *const *names, const int *which, int n)
{
    cairo_set_font_size(cr, 12);
    double w = 0;
    for (int i = 0; i < n; i++) {
        cairo_text_extents_t e;
        cairo_text_extents(cr, names[i], &e);
        w = fmax(w, e.x_advance);
    }
    double bw = w + 46, bh = 20.0 * n + 10, x = p->x0 + p->w - bw - 10, y = p->y0 + 10;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, x, y, bw, bh);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    for (int i = 0; i < n; i++) {
        double ly = y + 15 + 20.0 * i;
        const double *c = colors[which[i]];
        cairo_set_source_rgb(cr, c[0], c[1], c[2]);
        cairo_set_line_width(cr, 2.5);
        cairo_move_to(cr, x + 8, ly), cairo_line_to(cr, x + 32, ly), cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
        text_at(cr, x + 38, ly, names[i], 0, 0.5);
    }
}

/* The whole picture on a cairo context of width x height. */
static void draw(cairo_t *cr, double width, double height, const struct series *s, const char *title)
{
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    bool tokens = s[S_TOKENS].finite > 0, val = s[S_VAL].finite > 0;
    double left = 90, right = 25, top = 50, gap = 22, bottom = 55;
    double body = height - top - bottom - (tokens ? gap : 0);
    struct panel loss = {left, top, width - left - right, tokens ? body * 0.66 : body, 0, 0, 0, 0};
    range(s, S_TOKENS, true, &loss.xlo, &loss.xhi); /* the loss's and the validation's iterations */
    if (tokens) {
        double lo, hi;
        range(&s[S_TOKENS], 1, true, &lo, &hi);
        loss.xlo = fmin(loss.xlo, lo), loss.xhi = fmax(loss.xhi, hi);
    }
    range(s, val ? 2 : 1, false, &loss.ylo, &loss.yhi);
    double pad = (loss.yhi - loss.ylo) * 0.05;
    loss.ylo -= pad, loss.yhi += pad;
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    cairo_set_font_size(cr, 16);
    text_at(cr, width / 2, top / 2, title, 0.5, 0.5);
    cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    axes(cr, &loss, "loss", !tokens, "iteration");
    curve(cr, &loss, &s[S_LOSS], colors[S_LOSS], 2);
    if (val)
        curve(cr, &loss, &s[S_VAL], colors[S_VAL], 2.5);
    static const char *const names[] = {"training loss", "validation loss", "tokens/s"};
    int which[2] = {S_LOSS, S_VAL};
    const char *shown[2] = {names[S_LOSS], names[S_VAL]};
    legend(cr, &loss, shown, which, val ? 2 : 1);
    if (tokens) {
        struct panel tp = {left, top + loss.h + gap, loss.w, body - loss.h, loss.xlo, loss.xhi, 0, 0};
        range(&s[S_TOKENS], 1, false, &tp.ylo, &tp.yhi);
        tp.ylo = 0, tp.yhi *= 1.3; /* from zero (a rate reads against none), with room for the legend */
        axes(cr, &tp, "tokens/s", true, "iteration");
        curve(cr, &tp, &s[S_TOKENS], colors[S_TOKENS], 1.5);
        int wt = S_TOKENS;
        legend(cr, &tp, &names[S_TOKENS], &wt, 1);
    }
}

/* Whether path ends with ext. */
static bool ends_with(const char *path, const char *ext)
{
    size_t n = strlen(path), e = strlen(ext);
    return n > e && !strcmp(path + n - e, ext);
}

int cmd_plot(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *title = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return EXIT_OK;
        } else if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && has) {
            out = argv[++i];
        } else if (!strcmp(a, "--title") && has) {
            title = argv[++i];
        } else if (a[0] != '-' && !in) {
            in = a;
        } else {
            fprintf(stderr, "weft plot: %s: unknown flag, missing value or a second input\n%s", a, usage);
            return EXIT_BAD_INPUT;
        }
    }
    if (!in || !out) {
        fprintf(stderr, "weft plot: %s\n%s", !in ? "no metrics file given" : "no output given (-o OUT.svg or OUT.png)", usage);
        return EXIT_BAD_INPUT;
    }
    bool svg = ends_with(out, ".svg");
    if (!svg && !ends_with(out, ".png")) {
        fprintf(stderr, "weft plot: -o %s: expected a .svg or .png file\n", out);
        return EXIT_BAD_INPUT;
    }
    struct series s[S_COUNT] = {0};
    int rc = read_metrics(in, s) ? EXIT_BAD_INPUT : EXIT_OK;
    if (rc == EXIT_OK) {
        const double w = 960, h = 640;
        cairo_surface_t *surf = svg ? cairo_svg_surface_create(out, w, h)
                                    : cairo_image_surface_create(CAIRO_FORMAT_RGB24, (int)w, (int)h);
        cairo_t *cr = cairo_create(surf);
        draw(cr, w, h, s, title ? title : in);
        cairo_destroy(cr);
        cairo_surface_flush(surf);
        cairo_status_t st = svg ? cairo_surface_status(surf) : cairo_surface_write_to_png(surf, out);
        cairo_surface_finish(surf);
        if (st == CAIRO_STATUS_SUCCESS)
            st = cairo_surface_status(surf);
        cairo_surface_destroy(surf);
        if (st != CAIRO_STATUS_SUCCESS) {
            fprintf(stderr, "weft plot: %s: cannot write it: %s\n", out, cairo_status_to_string(st));
            rc = EXIT_FAILURE_RUN;
        }
    }
    for (int k = 0; k < S_COUNT; k++)
        series_free(&s[k]);
    return rc;
}
