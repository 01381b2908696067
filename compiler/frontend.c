/* frontend.c: model file -> graph IR.
 *   requires:  a path or a buffer, options (variant, flag and --set overrides)
 *   produces:  an unrolled graph in topological order; dims evaluated; params
 *              and inputs shaped; op attributes complete (see frontend.h)
 *   reports:   every user error with file:line into the diag
 *
 * The steps, in order: read and sniff the bytes; parse (no DTD, no network);
 * validate against models/weft.rng; evaluate dimensions (file < variant <
 * flags and --set); then walk the parts.  Each scope (a part, or one
 * iteration of a <repeat>) is walked twice: `declare` creates the tensors its
 * params, inputs and ops define, so a use can be told apart from a typo;
 * `emit` then creates the ops in document order.  A use of a tensor whose op
 * comes later is either a cycle or a use before production; both are
 * reported, after the walk, by looking at the whole op graph. */
#include "frontend.h"
#include "expr.h"
#include "util.h"

#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/relaxng.h>
#include <libxml/SAX2.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define WEFT_NS "urn:weft:model:1"

extern const char fe_schema_rng[]; /* models/weft.rng, compiled in (build/schema.c) */

#if LIBXML_VERSION >= 21200
typedef const xmlError *xml_error_arg;
#else
typedef xmlErrorPtr xml_error_arg;
#endif

/* ---- state ------------------------------------------------------------------- */

struct binding {
    const char *name;
    int tensor;
    int line;
};

struct scope {
    struct scope *parent;
    const char *prefix; /* "decoder.layer.3." */
    enum ir_part part;
    int block, iter, layer;
    struct binding *v;
    int n, cap;
    const char **carry; /* names this repeat body carries */
    int *carry_defs;    /* how many ops of the body redefine each */
    int n_carry;
    int *outs;          /* tensors `declare` made for op outputs, in order (-1: carried) */
    int n_outs, cap_outs, next_out;
};

struct forward_use {
    int op, tensor, line;
};

enum { DIM_NEW, DIM_VISITING, DIM_DONE, DIM_FAILED };

struct fe {
    struct ir_graph *g;
    struct diag *d;
    const char *file;
    xmlDoc *doc;
    int *dim_state;
    int *dim_stack, n_dim_stack;
    struct scope *parts[IR_PART_COUNT];
    struct forward_use *fwd;
    int n_fwd, cap_fwd;
    struct {
        const void *node;
        int block;
    } *blocks; /* one ir_block per <repeat> element */
    int n_blocks, cap_blocks;
    const struct fe_options *opt;
    double *prob;    /* per override: the probability a probability flag gives, NaN for the others */
    bool *prob_used; /* per override: an op binds its flag */
};

const char *const fe_prob_flags[] = {"hidden-dropout", "attention-dropout", NULL};

static bool is_prob_flag(const char *key)
{
    for (int i = 0; fe_prob_flags[i]; i++)
        if (!strcmp(fe_prob_flags[i], key))
            return true;
    return false;
}

/* ---- small helpers --------------------------------------------------------- */

static int line_of(const xmlNode *n) { return (int)xmlGetLineNo(n); }

static const char *attr(struct fe *fe, const xmlNode *n, const char *name)
{
    xmlChar *v = xmlGetNoNsProp(n, (const xmlChar *)name);
    if (!v)
        return NULL;
    const char *s = arena_strdup(fe->g->arena, (const char *)v);
    xmlFree(v);
    return s;
}

static bool is_elem(const xmlNode *n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, name);
}

/* Split on whitespace into arena strings; returns the count. */
static int words(struct fe *fe, const char *s, const char **out, int max)
{
    int n = 0;
    while (s && *s) {
        while (isspace((unsigned char)*s))
            s++;
        if (!*s)
            break;
        size_t len = 0;
        while (s[len] && !isspace((unsigned char)s[len]))
            len++;
        if (n < max)
            out[n] = arena_strndup(fe->g->arena, s, len);
        n++;
        s += len;
    }
    return n;
}

/* ---- reading and parsing ------------------------------------------------------- */

static int sniff(struct fe *fe, const char *buf, size_t len)
{
    size_t i = 0;
    while (i < len && isspace((unsigned char)buf[i]))
        i++;
    if (i == len) {
        diag_error(fe->d, fe->file, 0, "empty file: expected a <model> document");
        return -1;
    }
    int line = 1;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\n')
            line++;
        if (c == 0) {
            diag_error(fe->d, fe->file, line, "binary file: byte %zu is NUL; a model file is XML text", i);
            return -1;
        }
        if (c < 0x80)
            continue;
        int more = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
        bool ok = more > 0 && i + (size_t)more < len;
        for (int k = 1; ok && k <= more; k++)
            ok = ((unsigned char)buf[i + (size_t)k] & 0xC0) == 0x80;
        if (!ok) {
            diag_error(fe->d, fe->file, line,
                       "binary file: byte %zu (0x%02x) is not UTF-8 text; a model file is XML text in UTF-8", i, c);
            return -1;
        }
        i += (size_t)more;
    }
    return 0;
}

static struct fe *parsing; /* the load in progress, for libxml2's callbacks */

static void on_xml_error(void *ctx, xml_error_arg e)
{
    struct fe *fe = ctx ? ctx : parsing;
    if (!fe || !e || e->level == XML_ERR_WARNING)
        return;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", e->message ? e->message : "unknown error");
    size_t len = strlen(msg);
    while (len && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        msg[--len] = 0;
    const char *what = e->domain == XML_FROM_RELAXNGV ? "does not match the model schema" : "malformed XML";
    diag_error(fe->d, fe->file, e->line, "%s: %s", what, msg);
}

static void refuse_dtd(void *ctx, const xmlChar *name, const xmlChar *ext_id, const xmlChar *sys_id)
{
    (void)name, (void)ext_id, (void)sys_id;
    xmlParserCtxtPtr ctxt = ctx;
    diag_error(parsing->d, parsing->file, xmlSAX2GetLineNumber(ctx),
               "a DOCTYPE is not allowed in a model file: weft refuses DTDs, so no entity is "
               "ever expanded and no external file is ever fetched");
    xmlStopParser(ctxt);
}

static xmlParserInputPtr refuse_external(const char *url, const char *id, xmlParserCtxtPtr ctxt)
{
    (void)id, (void)ctxt;
    if (parsing)
        diag_error(parsing->d, parsing->file, 0, "refused to load external resource '%s'",
                   url ? url : "?");
    return NULL;
}

static xmlRelaxNGPtr schema;

static xmlRelaxNGPtr get_schema(void)
{
    if (!schema) {
        xmlRelaxNGParserCtxtPtr pc = xmlRelaxNGNewMemParserCtxt(fe_schema_rng, (int)strlen(fe_schema_rng));
        schema = xmlRelaxNGParse(pc);
        xmlRelaxNGFreeParserCtxt(pc);
        WF_ASSERT(schema);
    }
    return schema;
}

void fe_cleanup(void)
{
    if (schema)
        xmlRelaxNGFree(schema);
    schema = NULL;
    xmlCleanupParser();
}

static xmlDoc *parse(struct fe *fe, const char *buf, size_t len)
{
    if (len > (size_t)INT32_MAX) {
        diag_error(fe->d, fe->file, 0, "file too large");
        return NULL;
    }
    xmlInitParser();
    xmlSetExternalEntityLoader(refuse_external);
    xmlSetStructuredErrorFunc(fe, (xmlStructuredErrorFunc)on_xml_error);
    xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
    WF_ASSERT(ctxt);
    ctxt->sax->internalSubset = refuse_dtd;
    ctxt->sax->externalSubset = refuse_dtd;
    int errors = fe->d->n_errors;
    xmlDoc *doc = xmlCtxtReadMemory(ctxt, buf, (int)len, fe->file, NULL,
                                    XML_PARSE_NONET | XML_PARSE_BIG_LINES);
    xmlFreeParserCtxt(ctxt);
    if (doc && fe->d->n_errors == errors) {
        xmlNode *root = xmlDocGetRootElement(doc);
        if (!root || !is_elem(root, "model") || !root->ns ||
            strcmp((const char *)root->ns->href, WEFT_NS)) {
            diag_error(fe->d, fe->file, root ? line_of(root) : 0,
                       "the root element must be <model xmlns=\"" WEFT_NS "\">, not <%s%s%s>",
                       root ? (const char *)root->name : "?",
                       root && root->ns ? " xmlns=" : "",
                       root && root->ns ? (const char *)root->ns->href : "");
        } else {
            xmlRelaxNGValidCtxtPtr vc = xmlRelaxNGNewValidCtxt(get_schema());
            xmlRelaxNGSetValidStructuredErrors(vc, (xmlStructuredErrorFunc)on_xml_error, fe);
            int rc = xmlRelaxNGValidateDoc(vc, doc);
            xmlRelaxNGFreeValidCtxt(vc);
            if (rc != 0 && fe->d->n_errors == errors)
                diag_error(fe->d, fe->file, line_of(root), "does not match the model schema");
        }
    } else if (fe->d->n_errors == errors) {
        diag_error(fe->d, fe->file, 0, "malformed XML");
    }
    xmlSetStructuredErrorFunc(NULL, NULL);
    if (fe->d->n_errors != errors) {
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}

/* ---- dimensions ---------------------------------------------------------------- */

static int find_dim(const struct ir_graph *g, const char *name)
{
    for (int i = 0; i < g->n_dims; i++)
        if (!strcmp(g->dims[i].name, name))
            return i;
    return -1;
}

static int eval_dim(struct fe *fe, int i, int64_t *v, char *err, size_t n);

static int lookup_dim(void *ctx, const char *name, int64_t *v, char *err, size_t n)
{
    struct fe *fe = ctx;
    int i = find_dim(fe->g, name);
    if (i < 0) {
        struct wf_suggest s = wf_suggest_begin(name);
        for (int k = 0; k < fe->g->n_dims; k++)
            wf_suggest_add(&s, fe->g->dims[k].name);
        char hint[128];
        snprintf(err, n, "unknown dimension '%s'%s", name, wf_suggest_text(&s, "", hint, sizeof hint));
        return -1;
    }
    return eval_dim(fe, i, v, err, n);
}

/* "heads=7 from --num-attention-heads": the overridden dimensions an
 * expression uses, so an error points at the flag a user typed. */
struct set_by_flags {
    struct fe *fe;
    char text[512];
    size_t len;
};

static void note_set_by(void *ctx, const char *name)
{
    struct set_by_flags *sb = ctx;
    int i = find_dim(sb->fe->g, name);
    if (i < 0 || !sb->fe->g->dims[i].set_by || strstr(sb->text, name) || sb->len >= sizeof sb->text)
        return;
    sb->len += (size_t)snprintf(sb->text + sb->len, sizeof sb->text - sb->len, "%s%s=%s from %s",
                                sb->len ? ", " : "", name, sb->fe->g->dims[i].expr, sb->fe->g->dims[i].set_by);
}

/* Where a dimension's value came from, for messages: "<dim name="x" value="...">"
 * at its line, or the flag that set it. */
static void dim_error(struct fe *fe, int i, const char *fmt, const char *why)
{
    const struct ir_dim *dm = &fe->g->dims[i];
    char head[512];
    if (dm->set_by)
        snprintf(head, sizeof head, "%s=%s: dimension '%s'", dm->set_by, dm->expr, dm->name);
    else
        snprintf(head, sizeof head, "<dim name=\"%s\" value=\"%s\">", dm->name, dm->expr);
    char msg[1024];
    snprintf(msg, sizeof msg, fmt, why);
    struct set_by_flags sb = {fe, "", 0};
    char ignored[64];
    expr_each_name(expr_parse(fe->g->arena, dm->expr, ignored, sizeof ignored), note_set_by, &sb);
    diag_error(fe->d, dm->loc.file, dm->loc.line, "%s: %s%s%s", head, msg, sb.len ? "; " : "", sb.text);
}

/* -1: error written to err; -2: failed because of another dimension, already reported. */
static int eval_dim(struct fe *fe, int i, int64_t *v, char *err, size_t n)
{
    struct ir_dim *dm = &fe->g->dims[i];
    switch (fe->dim_state[i]) {
    case DIM_DONE:
        *v = dm->value;
        return 0;
    case DIM_FAILED:
        snprintf(err, n, "depends on '%s', which is wrong", dm->name);
        return -2;
    case DIM_VISITING: {
        char path[512] = "";
        size_t len = 0;
        int from = 0;
        while (from < fe->n_dim_stack && fe->dim_stack[from] != i)
            from++;
        for (int k = from; k < fe->n_dim_stack && len < sizeof path; k++) {
            len += (size_t)snprintf(path + len, sizeof path - len, "%s -> ", fe->g->dims[fe->dim_stack[k]].name);
            fe->dim_state[fe->dim_stack[k]] = DIM_FAILED;
        }
        if (len < sizeof path)
            snprintf(path + len, sizeof path - len, "%s", dm->name);
        snprintf(err, n, "dimensions depend on each other in a cycle: %s", path);
        return -1;
    }
    default:
        break;
    }
    fe->dim_state[i] = DIM_VISITING;
    fe->dim_stack[fe->n_dim_stack++] = i;
    int rc = -1;
    struct expr *e = expr_parse(fe->g->arena, dm->expr, err, n);
    if (e)
        rc = expr_eval(e, lookup_dim, fe, v, err, n);
    fe->n_dim_stack--;
    if (rc == 0 && *v < 1) {
        snprintf(err, n, "%s is %" PRId64 "; a dimension must be at least 1", dm->name, *v);
        rc = -1;
    }
    if (fe->dim_state[i] == DIM_FAILED && rc == 0)
        rc = -1; /* part of a cycle found deeper down */
    fe->dim_state[i] = rc == 0 ? DIM_DONE : DIM_FAILED;
    if (rc == 0)
        dm->value = *v;
    return rc;
}

static void set_dim(struct fe *fe, int i, const char *value, const char *set_by)
{
    fe->g->dims[i].expr = arena_strdup(fe->g->arena, value);
    fe->g->dims[i].set_by = arena_strdup(fe->g->arena, set_by);
}

static const char *flag_list(struct fe *fe)
{
    char buf[2048] = "";
    size_t len = 0;
    for (int i = 0; i < fe->g->n_dims && len < sizeof buf; i++)
        if (fe->g->dims[i].flag)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s--%s", len ? ", " : "", fe->g->dims[i].flag);
    return arena_strdup(fe->g->arena, len ? buf : "none");
}

static const char *dim_list(struct fe *fe)
{
    char buf[2048] = "";
    size_t len = 0;
    for (int i = 0; i < fe->g->n_dims && len < sizeof buf; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s", len ? ", " : "", fe->g->dims[i].name);
    return arena_strdup(fe->g->arena, buf);
}

static void read_dims(struct fe *fe, const xmlNode *root, const struct fe_options *opt)
{
    struct ir_graph *g = fe->g;
    const xmlNode *variant = NULL;
    for (const xmlNode *n = root->children; n; n = n->next) {
        if (is_elem(n, "dim")) {
            const char *name = attr(fe, n, "name");
            int prev = find_dim(g, name);
            if (prev >= 0) {
                diag_error(fe->d, fe->file, line_of(n), "<dim name=\"%s\">: defined twice (first at line %d)",
                           name, g->dims[prev].loc.line);
                continue;
            }
            const char *flag = attr(fe, n, "flag");
            for (int k = 0; flag && k < g->n_dims; k++)
                if (g->dims[k].flag && !strcmp(g->dims[k].flag, flag))
                    diag_error(fe->d, fe->file, line_of(n),
                               "<dim name=\"%s\">: flag --%s is already bound to dimension '%s' (line %d)",
                               name, flag, g->dims[k].name, g->dims[k].loc.line);
            ir_graph_add_dim(g, name, attr(fe, n, "value"), flag, (struct ir_loc){fe->file, line_of(n)});
        } else if (is_elem(n, "variant")) {
            const char *name = attr(fe, n, "name");
            WF_GROW(g->variants, g->n_variants, g->cap_variants);
            g->variants[g->n_variants++] = name;
            if (opt->variant && !strcmp(name, opt->variant))
                variant = n;
        }
    }
    if (opt->variant && !variant) {
        char list[1024] = "";
        size_t len = 0;
        for (int i = 0; i < g->n_variants && len < sizeof list; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", g->variants[i]);
        diag_error(fe->d, NULL, 0, "--variant %s: %s has no such variant (it has: %s)", opt->variant,
                   fe->file, len ? list : "none");
    }
    if (variant) {
        const char *items[64];
        const char *set = attr(fe, variant, "set");
        int n = words(fe, set, items, 64);
        char by[128];
        snprintf(by, sizeof by, "variant %s", opt->variant);
        for (int k = 0; k < n && k < 64; k++) {
            const char *eq = strchr(items[k], '=');
            char *key = eq ? arena_strndup(g->arena, items[k], (size_t)(eq - items[k])) : NULL;
            int i = key ? find_dim(g, key) : -1;
            if (i < 0)
                diag_error(fe->d, fe->file, line_of(variant),
                           "<variant name=\"%s\">: '%s' is not NAME=VALUE for a dimension of this model (dimensions: %s)",
                           opt->variant, items[k], dim_list(fe));
            else
                set_dim(fe, i, eq + 1, by);
        }
    }
    fe->prob = wf_calloc((size_t)opt->n_overrides + 1, sizeof *fe->prob);
    fe->prob_used = wf_calloc((size_t)opt->n_overrides + 1, sizeof *fe->prob_used);
    for (int k = 0; k < opt->n_overrides; k++) {
        const struct fe_override *o = &opt->overrides[k];
        char by[160];
        fe->prob[k] = NAN;
        if (o->kind != FE_SET && is_prob_flag(o->key)) { /* an op's probability, set as the ops are read (bind_prob) */
            char *end;
            errno = 0;
            double p = strtod(o->value, &end);
            if (!*o->value || *end || errno || !(p >= 0 && p < 1))
                diag_error(fe->d, NULL, 0, "--%s %s: expected a probability in [0, 1)", o->key, o->value);
            else
                fe->prob[k] = p;
            continue;
        }
        if (o->kind == FE_FLAG || o->kind == FE_FLAG_IF_BOUND) {
            snprintf(by, sizeof by, "--%s", o->key);
            bool found = false;
            for (int i = 0; i < g->n_dims; i++)
                if (g->dims[i].flag && !strcmp(g->dims[i].flag, o->key)) {
                    set_dim(fe, i, o->value, by);
                    found = true;
                }
            if (!found && o->kind == FE_FLAG) {
                struct wf_suggest sg = wf_suggest_begin(o->key);
                for (int i = 0; i < g->n_dims; i++)
                    if (g->dims[i].flag)
                        wf_suggest_add(&sg, g->dims[i].flag);
                for (int i = 0; fe_prob_flags[i]; i++)
                    wf_suggest_add(&sg, fe_prob_flags[i]);
                if (opt->offer_flags)
                    opt->offer_flags(&sg, opt->offer_ctx);
                char hint[160];
                diag_error(fe->d, NULL, 0, "--%s: no dimension of %s is bound to this flag%s (its flags: %s)", o->key,
                           fe->file, wf_suggest_text(&sg, "--", hint, sizeof hint), flag_list(fe));
            }
        } else {
            int i = find_dim(g, o->key);
            snprintf(by, sizeof by, "--set %s", o->key);
            if (i < 0)
                diag_error(fe->d, NULL, 0, "--set %s=%s: %s has no dimension '%s' (its dimensions: %s)",
                           o->key, o->value, fe->file, o->key, dim_list(fe));
            else
                set_dim(fe, i, o->value, by);
        }
    }
    fe->dim_state = wf_calloc((size_t)g->n_dims + 1, sizeof *fe->dim_state);
    fe->dim_stack = wf_calloc((size_t)g->n_dims + 1, sizeof *fe->dim_stack);
    for (int i = 0; i < g->n_dims; i++) {
        int64_t v;
        char err[512];
        int rc = eval_dim(fe, i, &v, err, sizeof err);
        if (rc == -1)
            dim_error(fe, i, "%s", err);
    }
}

/* An expression in the model body (a shape axis, a count, an attribute). */
static int eval_text(struct fe *fe, const char *text, int64_t *v, char *err, size_t n)
{
    struct expr *e = expr_parse(fe->g->arena, text, err, n);
    if (!e)
        return -1;
    int rc = expr_eval(e, lookup_dim, fe, v, err, n);
    if (rc == -2)
        return -2;
    if (rc == 0 && *v < 1) {
        snprintf(err, n, "'%s' is %" PRId64 "; it must be at least 1", text, *v);
        return -1;
    }
    return rc;
}

static int parse_shape(struct fe *fe, const char *text, struct ir_shape *s, const char *where, int line)
{
    const char *ax[IR_MAX_RANK + 1];
    int n = words(fe, text, ax, IR_MAX_RANK + 1);
    if (n > IR_MAX_RANK) {
        diag_error(fe->d, fe->file, line, "%s: shape '%s' has %d axes; at most %d are supported", where, text,
                   n, IR_MAX_RANK);
        return -1;
    }
    s->rank = n;
    for (int k = 0; k < n; k++) {
        char err[512];
        int rc = eval_text(fe, ax[k], &s->ax[k].size, err, sizeof err);
        if (rc) {
            if (rc == -1)
                diag_error(fe->d, fe->file, line, "%s: shape axis %d '%s': %s", where, k, ax[k], err);
            return -1;
        }
        s->ax[k].label = ax[k];
    }
    if (ir_shape_numel(s) < 0) {
        char buf[512];
        diag_error(fe->d, fe->file, line, "%s: shape %s has more elements than 64 bits can count", where,
                   ir_shape_str(s, buf, sizeof buf));
        return -1;
    }
    return 0;
}

/* ---- scopes -------------------------------------------------------------------- */

static struct binding *find_local(struct scope *s, const char *name)
{
    for (int i = s->n - 1; i >= 0; i--)
        if (!strcmp(s->v[i].name, name))
            return &s->v[i];
    return NULL;
}

static struct binding *find(struct scope *s, const char *name)
{
    for (; s; s = s->parent) {
        struct binding *b = find_local(s, name);
        if (b)
            return b;
    }
    return NULL;
}

static void bind(struct scope *s, const char *name, int tensor, int line)
{
    struct binding *b = find_local(s, name);
    if (b) {
        b->tensor = tensor;
        b->line = line;
        return;
    }
    WF_GROW(s->v, s->n, s->cap);
    s->v[s->n++] = (struct binding){name, tensor, line};
}

static int carry_index(const struct scope *s, const char *name)
{
    for (int i = 0; i < s->n_carry; i++)
        if (!strcmp(s->carry[i], name))
            return i;
    return -1;
}

static void scope_free(struct scope *s)
{
    free(s->v);
    free(s->carry_defs);
    free(s->outs);
}

static int new_tensor(struct fe *fe, struct scope *s, const char *local, enum ir_tensor_kind kind,
                      enum ir_dtype dtype, const struct ir_shape *shape, int line)
{
    char full[512];
    snprintf(full, sizeof full, "%s%s", s->prefix, local);
    int t = ir_graph_add_tensor(fe->g, full, kind, dtype, shape, (struct ir_loc){fe->file, line});
    struct ir_tensor *x = &fe->g->tensors[t];
    x->local_name = arena_strdup(fe->g->arena, local);
    x->part = s->part;
    x->block = s->block;
    x->iter = s->iter;
    x->layer = s->layer;
    return t;
}

/* Bind a newly defined name, refusing a second definition in this scope or
 * one that would hide a name of an enclosing scope. */
static bool define(struct fe *fe, struct scope *s, const char *name, int tensor, int line, const char *what)
{
    struct binding *b = find(s, name);
    if (b) {
        bool here = find_local(s, name) == b;
        diag_error(fe->d, fe->file, line, "%s: '%s' is defined twice (first at line %d%s)", what, name, b->line,
                   here ? "" : ", in an enclosing scope");
        return false;
    }
    bind(s, name, tensor, line);
    return true;
}


/* ---- Hugging Face's names ------------------------------------------------------- */

/* <huggingface model_type="gpt2" architectures="GPT2LMHeadModel" optional_prefix="transformer.">
 *   <config key="n_embd" value="hidden"/> ...  (config.json's keys)
 * The params' <hf> elements say how each is made of the file's tensors. */
static void read_huggingface(struct fe *fe, const xmlNode *root)
{
    for (const xmlNode *n = root->children; n; n = n->next) {
        if (!is_elem(n, "huggingface"))
            continue;
        struct ir_hf *hf = fe->g->hf = arena_alloc(fe->g->arena, sizeof *hf);
        hf->model_type = attr(fe, n, "model_type");
        hf->architecture = attr(fe, n, "architectures");
        hf->optional_prefix = attr(fe, n, "optional_prefix");
        hf->loc = (struct ir_loc){fe->file, line_of(n)};
        for (const xmlNode *c = n->children; c; c = c->next) {
            if (!is_elem(c, "config"))
                continue;
            static const char *const kinds[] = {"value", "number", "string", "bool"};
            WF_GROW(hf->config, hf->n_config, hf->cap_config);
            struct ir_hf_config *k = &hf->config[hf->n_config++];
            *k = (struct ir_hf_config){.key = attr(fe, c, "key"), .loc = {fe->file, line_of(c)}};
            for (int i = 0; i < 4; i++) /* the schema allows exactly one */
                if ((k->value = attr(fe, c, kinds[i]))) {
                    k->kind = (enum ir_hf_value)i;
                    break;
                }
            char err[512];
            int64_t v;
            char *end = NULL;
            if (strlen(k->key) > 127 || strlen(k->value) > 255) /* the plan's limits (rank_plan.h) */
                diag_error(fe->d, fe->file, k->loc.line, "<config key=\"%.40s\">: a key of at most 127 bytes, a value of at most 255",
                           k->key);
            else if (k->kind == IR_HF_INT && eval_text(fe, k->value, &v, err, sizeof err) == -1)
                diag_error(fe->d, fe->file, k->loc.line, "<config key=\"%s\">: value: %s", k->key, err);
            else if (k->kind == IR_HF_NUMBER && (strtod(k->value, &end), *end || end == k->value))
                diag_error(fe->d, fe->file, k->loc.line, "<config key=\"%s\">: number '%s' is not a number", k->key, k->value);
        }
    }
}

/* A Hugging Face name with each {R} replaced by the iteration of the
 * enclosing <repeat name="R">: "model.layers.{layer}.mlp.up_proj.weight". */
static const char *hf_name(struct fe *fe, struct scope *s, const char *pattern, int line, const char *where)
{
    char out[512];
    size_t o = 0;
    for (const char *p = pattern; *p && o < sizeof out - 24;) {
        if (*p != '{') {
            out[o++] = *p++;
            continue;
        }
        const char *close = strchr(p, '}');
        size_t len = close ? (size_t)(close - p - 1) : 0;
        const struct scope *sc = s;
        for (; sc; sc = sc->parent) {
            if (sc->block < 0)
                continue;
            const char *full = fe->g->blocks[sc->block].name, *dot = strrchr(full, '.');
            const char *rep = dot ? dot + 1 : full;
            if (close && strlen(rep) == len && !strncmp(rep, p + 1, len))
                break;
        }
        if (!sc) {
            diag_error(fe->d, fe->file, line, "%s: <hf name=\"%s\">: '%.*s' names no enclosing <repeat>; write {NAME} for the "
                       "iteration of <repeat name=\"NAME\">", where, pattern, close ? (int)(close - p + 1) : (int)strlen(p), p);
            return NULL;
        }
        o += (size_t)snprintf(out + o, sizeof out - o, "%d", sc->iter);
        p = close + 1;
    }
    out[o < sizeof out ? o : sizeof out - 1] = 0;
    return arena_strdup(fe->g->arena, out);
}

/* The <hf> elements of a param, checked against its shape: each source
 * shaped, chunked and blocked evenly, the pieces filling the last axis
 * (or, a single one, no more than it: a padded vocabulary), the other axes
 * no longer than the param's. */
static void declare_hf(struct fe *fe, struct scope *s, const xmlNode *n, int t, const struct ir_shape *shape, const char *where)
{
    int n_src = 0;
    for (const xmlNode *c = n->children; c; c = c->next)
        n_src += is_elem(c, "hf");
    if (!n_src || t < 0)
        return;
    int line = line_of(n);
    if (!fe->g->hf) {
        diag_error(fe->d, fe->file, line, "%s: <hf> needs the model's <huggingface> element (model_type, config.json's keys)", where);
        return;
    }
    struct ir_hf *hf = fe->g->hf;
    WF_GROW(hf->maps, hf->n_maps, hf->cap_maps);
    struct ir_hf_map *m = &hf->maps[hf->n_maps++];
    const char *blocks = attr(fe, n, "hf_blocks");
    *m = (struct ir_hf_map){.tensor = t, .blocks = blocks ? blocks : "1", .n_sources = n_src,
                            .sources = arena_alloc(fe->g->arena, (size_t)n_src * sizeof *m->sources)};
    char err[512];
    int64_t n_blocks = 1, width = 0, last = shape->ax[shape->rank - 1].size;
    if (eval_text(fe, m->blocks, &n_blocks, err, sizeof err) == -1) {
        diag_error(fe->d, fe->file, line, "%s: hf_blocks: %s", where, err);
        return;
    }
    int k = 0, pieces = 0;
    for (const xmlNode *c = n->children; c; c = c->next) {
        if (!is_elem(c, "hf"))
            continue;
        struct ir_hf_source *src = &m->sources[k++];
        int at = line_of(c);
        const char *tr = attr(fe, c, "transpose"), *chunks = attr(fe, c, "chunks");
        *src = (struct ir_hf_source){.shape = attr(fe, c, "shape"), .transpose = tr && !strcmp(tr, "true"),
                                     .chunks = chunks ? strtoll(chunks, NULL, 10) : 1, .loc = {fe->file, at}};
        char swhere[768];
        snprintf(swhere, sizeof swhere, "%s: <hf name=\"%s\">", where, attr(fe, c, "name"));
        if (!(src->name = hf_name(fe, s, attr(fe, c, "name"), at, where)))
            return;
        if (strlen(src->name) > 255) { /* the plan's limit (rank_plan.h) */
            diag_error(fe->d, fe->file, at, "%s: the name is %zu bytes; at most 255", swhere, strlen(src->name));
            return;
        }
        struct ir_shape hs;
        if (parse_shape(fe, src->shape, &hs, swhere, at))
            return;
        if (src->transpose && hs.rank != 2) {
            diag_error(fe->d, fe->file, at, "%s: transpose needs a matrix; shape '%s' has %d axes", swhere, src->shape, hs.rank);
            return;
        }
        if (hs.rank != shape->rank) {
            diag_error(fe->d, fe->file, at, "%s: shape '%s' has %d axes; the param has %d", swhere, src->shape, hs.rank, shape->rank);
            return;
        }
        if (src->transpose) {
            struct ir_axis a = hs.ax[0];
            hs.ax[0] = hs.ax[1];
            hs.ax[1] = a;
        }
        for (int a = 0; a + 1 < hs.rank; a++)
            if (hs.ax[a].size > shape->ax[a].size) {
                diag_error(fe->d, fe->file, at, "%s: axis '%s' (%" PRId64 ") is longer than the param's '%s' (%" PRId64 ")",
                           swhere, hs.ax[a].label, hs.ax[a].size, shape->ax[a].label, shape->ax[a].size);
                return;
            }
        int64_t hl = hs.ax[hs.rank - 1].size;
        if (src->chunks < 1 || hl % (src->chunks * n_blocks)) {
            diag_error(fe->d, fe->file, at, "%s: its last axis in weft's orientation (%" PRId64 ") does not divide into %" PRId64
                       " chunks of %" PRId64 " blocks (hf_blocks)", swhere, hl, src->chunks, n_blocks);
            return;
        }
        width += hl / n_blocks;
        pieces += (int)src->chunks;
    }
    if (pieces == 1 && n_blocks == 1 ? width > last : width * n_blocks != last)
        diag_error(fe->d, fe->file, line, "%s: its <hf> tensors give its last axis %" PRId64 " entries; the param has %" PRId64,
                   where, width * n_blocks, last);
}

/* ---- declare: the tensors a scope defines ------------------------------------- */

static void declare_param(struct fe *fe, struct scope *s, const xmlNode *n)
{
    int line = line_of(n);
    const char *name = attr(fe, n, "name");
    char where[256];
    snprintf(where, sizeof where, "<param name=\"%s\">", name);
    struct ir_shape shape;
    if (parse_shape(fe, attr(fe, n, "shape"), &shape, where, line)) {
        define(fe, s, name, -1, line, where);
        return;
    }
    const char *dt = attr(fe, n, "dtype");
    int t = new_tensor(fe, s, name, IR_TENSOR_PARAM, dt ? (enum ir_dtype)ir_dtype_parse(dt) : IR_DTYPE_F32,
                       &shape, line);
    struct ir_tensor *x = &fe->g->tensors[t];
    const char *splits[4];
    int ns = words(fe, attr(fe, n, "split"), splits, 4);
    for (int k = 0; k < ns && k < 4; k++) {
        enum ir_split sp = (enum ir_split)ir_split_parse(splits[k]);
        if (sp == IR_SPLIT_NONE)
            continue;
        bool tp = sp != IR_SPLIT_EXPERT;
        for (int j = 0; j < x->n_splits; j++) {
            bool tp_j = x->splits[j] != IR_SPLIT_EXPERT;
            if (tp == tp_j)
                diag_error(fe->d, fe->file, line,
                           "%s: split '%s' contradicts split '%s': %s", where, splits[k], ir_split_name(x->splits[j]),
                           tp ? "both split the tensor-parallel axis" : "expert is given twice");
        }
        if (x->n_splits < 2)
            x->splits[x->n_splits++] = sp;
        int need = sp == IR_SPLIT_COL ? 1 : sp == IR_SPLIT_EXPERT ? 2 : 2;
        if (shape.rank < need || (sp == IR_SPLIT_VOCAB && shape.rank != 2))
            diag_error(fe->d, fe->file, line, "%s: split '%s' needs %s; the shape has %d", where, splits[k],
                       sp == IR_SPLIT_COL ? "at least one axis"
                       : sp == IR_SPLIT_VOCAB ? "a (vocab, hidden) table, two axes"
                       : sp == IR_SPLIT_EXPERT ? "an expert axis and a matrix, at least two axes"
                                               : "a matrix, at least two axes", shape.rank);
    }
    const char *init = attr(fe, n, "init");
    x->init = shape.rank >= 2 ? IR_INIT_NORMAL : IR_INIT_ZEROS;
    x->init_std = 0.02;
    if (init && !strcmp(init, "zeros"))
        x->init = IR_INIT_ZEROS;
    else if (init && !strcmp(init, "ones"))
        x->init = IR_INIT_ONES;
    else if (init) {
        x->init = IR_INIT_NORMAL;
        if (init[6] == ':') {
            char *end;
            x->init_std = strtod(init + 7, &end);
            if (*end || !(x->init_std >= 0) || !isfinite(x->init_std))
                diag_error(fe->d, fe->file, line, "%s: init '%s': the standard deviation must be a number >= 0",
                           where, init);
        }
    }
    define(fe, s, name, t, line, where);
    declare_hf(fe, s, n, t, &shape, where);
}

static void declare_input(struct fe *fe, struct scope *s, const xmlNode *n)
{
    int line = line_of(n);
    const char *name = attr(fe, n, "name");
    char where[256];
    snprintf(where, sizeof where, "<input name=\"%s\">", name);
    struct ir_shape shape;
    const char *dt = attr(fe, n, "dtype");
    int t = -1;
    if (!parse_shape(fe, attr(fe, n, "shape"), &shape, where, line))
        t = new_tensor(fe, s, name, IR_TENSOR_INPUT, dt ? (enum ir_dtype)ir_dtype_parse(dt) : IR_DTYPE_F32,
                       &shape, line);
    define(fe, s, name, t, line, where);
}

static void declare_op(struct fe *fe, struct scope *s, const xmlNode *n)
{
    int line = line_of(n);
    const char *outs[IR_MAX_OUT + 1];
    int n_out = words(fe, attr(fe, n, "out"), outs, IR_MAX_OUT + 1);
    for (int k = 0; k < n_out && k <= IR_MAX_OUT; k++) {
        char where[256];
        snprintf(where, sizeof where, "<op kind=\"%s\" out=\"%s\">", attr(fe, n, "kind"), outs[0]);
        int c = carry_index(s, outs[k]);
        int t = -1;
        if (c >= 0) {
            if (++s->carry_defs[c] == 2)
                diag_error(fe->d, fe->file, line,
                           "%s: carried '%s' is redefined a second time in the repeat body; redefine it once",
                           where, outs[k]);
        } else {
            t = new_tensor(fe, s, outs[k], IR_TENSOR_ACT, IR_DTYPE_F32, NULL, line);
            define(fe, s, outs[k], t, line, where);
        }
        WF_GROW(s->outs, s->n_outs, s->cap_outs);
        s->outs[s->n_outs++] = t;
    }
}

/* A nested <repeat> that carries a name this body carries gives its next
 * value, as an op with that output would. */
static void declare_repeat(struct fe *fe, struct scope *s, const xmlNode *n)
{
    const char *carry[16];
    int n_carry = words(fe, attr(fe, n, "carry"), carry, 16);
    for (int k = 0; k < n_carry && k < 16; k++) {
        int c = carry_index(s, carry[k]);
        if (c >= 0 && ++s->carry_defs[c] == 2)
            diag_error(fe->d, fe->file, line_of(n),
                       "<repeat name=\"%s\">: carried '%s' is redefined a second time in the enclosing repeat body; redefine it once",
                       attr(fe, n, "name"), carry[k]);
    }
}

static void declare(struct fe *fe, struct scope *s, const xmlNode *parent)
{
    for (const xmlNode *n = parent->children; n; n = n->next) {
        if (is_elem(n, "param"))
            declare_param(fe, s, n);
        else if (is_elem(n, "input"))
            declare_input(fe, s, n);
        else if (is_elem(n, "op"))
            declare_op(fe, s, n);
        else if (is_elem(n, "repeat"))
            declare_repeat(fe, s, n);
    }
}

/* ---- emit: ops in document order ---------------------------------------------- */

static void suggest_scope(struct wf_suggest *sg, struct scope *s)
{
    for (; s; s = s->parent)
        for (int i = 0; i < s->n; i++)
            wf_suggest_add(sg, s->v[i].name);
}

/* The tensor a name means here; -1 (reported) if none. */
static int resolve(struct fe *fe, struct scope *s, const char *name, int line, const char *where)
{
    struct binding *b = find(s, name);
    if (!b && s->part == IR_PART_DECODER && !strncmp(name, "encoder.", 8) && fe->parts[IR_PART_ENCODER])
        b = find_local(fe->parts[IR_PART_ENCODER], name + 8);
    if (b)
        return b->tensor; /* -1 if its definition failed, already reported */
    struct wf_suggest sg = wf_suggest_begin(name);
    suggest_scope(&sg, s);
    char hint[256];
    const char *enc = !strncmp(name, "encoder.", 8) ? " (the encoder defines no such tensor)" : "";
    diag_error(fe->d, fe->file, line, "%s: '%s' is not defined here%s%s", where, name, enc,
               wf_suggest_text(&sg, "", hint, sizeof hint));
    return -1;
}

static const char *attr_names(const struct ir_op_info *info, char *buf, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (int a = 0; a < info->n_attrs && len < n; a++)
        len += (size_t)snprintf(buf + len, n - len, "%s%s", a ? ", " : "", ir_attr_name(info->attrs[a].id));
    if (!info->n_attrs)
        snprintf(buf, n, "no attributes");
    return buf;
}

static int parse_attr_value(struct fe *fe, struct ir_attr *a, const char *v, char *err, size_t n)
{
    char *end;
    switch (ir_attr_type(a->id)) {
    case IR_ATTR_TYPE_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "false")) {
            a->i = !strcmp(v, "true");
            return 0;
        }
        snprintf(err, n, "'%s' is not true or false", v);
        return -1;
    case IR_ATTR_TYPE_INT:
        errno = 0;
        a->i = strtoll(v, &end, 10);
        if (*v && !*end && !errno)
            return 0;
        snprintf(err, n, "'%s' is not an integer", v);
        return -1;
    case IR_ATTR_TYPE_FLOAT: {
        if (!strcmp(v, "auto")) {
            a->f = NAN;
            return 0;
        }
        bool r = !strncmp(v, "rsqrt(", 6), q = !strncmp(v, "sqrt(", 5);
        size_t len = strlen(v);
        if ((r || q) && v[len - 1] == ')') {
            const char *inner = arena_strndup(fe->g->arena, v + (r ? 6 : 5), len - (r ? 7 : 6));
            int64_t x;
            int rc = eval_text(fe, inner, &x, err, n);
            if (rc)
                return rc;
            a->f = r ? 1 / sqrt((double)x) : sqrt((double)x);
            return 0;
        }
        errno = 0;
        a->f = strtod(v, &end);
        if (*v && !*end && !errno && isfinite(a->f))
            return 0;
        snprintf(err, n, "'%s' is not a number (or auto, sqrt(DIM), rsqrt(DIM))", v);
        return -1;
    }
    case IR_ATTR_TYPE_DIM: {
        a->label = arena_strdup(fe->g->arena, v);
        return eval_text(fe, v, &a->i, err, n);
    }
    case IR_ATTR_TYPE_SHAPE:
        a->shape = arena_alloc(fe->g->arena, sizeof *a->shape);
        return 0; /* parsed by the caller, which reports with the line */
    }
    return -1;
}

static void set_attrs(struct fe *fe, struct ir_op *op, const xmlNode *n, const char *where)
{
    const struct ir_op_info *info = ir_op_info(op->kind);
    int line = line_of(n);
    const char *given[IR_MAX_ATTRS] = {0};
    for (const xmlAttr *p = n->properties; p; p = p->next) {
        const char *name = (const char *)p->name;
        if (!strcmp(name, "kind") || !strcmp(name, "in") || !strcmp(name, "out") || !strcmp(name, "flag"))
            continue;
        int slot = -1;
        for (int a = 0; a < info->n_attrs; a++)
            if (!strcmp(ir_attr_name(info->attrs[a].id), name))
                slot = a;
        if (slot < 0) {
            struct wf_suggest sg = wf_suggest_begin(name);
            for (int a = 0; a < info->n_attrs; a++)
                wf_suggest_add(&sg, ir_attr_name(info->attrs[a].id));
            char hint[128], list[512];
            diag_error(fe->d, fe->file, line, "%s: %s has no attribute '%s'%s; it takes %s", where, info->name,
                       name, wf_suggest_text(&sg, "", hint, sizeof hint), attr_names(info, list, sizeof list));
            continue;
        }
        given[slot] = attr(fe, n, name);
    }
    for (int a = 0; a < info->n_attrs; a++) {
        const char *v = given[a] ? given[a] : info->attrs[a].def;
        enum ir_attr_id id = info->attrs[a].id;
        if (!v) {
            diag_error(fe->d, fe->file, line, "%s: %s needs attribute %s", where, info->name, ir_attr_name(id));
            continue;
        }
        struct ir_attr *x = &op->attrs[op->n_attrs++];
        x->id = id;
        if (!given[a]) {
            int other = ir_attr_parse_name(v);
            const struct ir_attr *src = other >= 0 ? ir_op_attr(op, (enum ir_attr_id)other) : NULL;
            if (src) { /* groups=heads: the default is another attribute's value */
                *x = *src;
                x->id = id;
                continue;
            }
        }
        char err[512];
        int rc = parse_attr_value(fe, x, v, err, sizeof err);
        if (rc == 0 && ir_attr_type(id) == IR_ATTR_TYPE_SHAPE) {
            char w[300];
            snprintf(w, sizeof w, "%s: attribute shape", where);
            rc = parse_shape(fe, v, x->shape, w, line) ? -2 : 0;
        }
        if (rc == -1)
            diag_error(fe->d, fe->file, line, "%s: attribute %s: %s", where, ir_attr_name(id), err);
        if (rc)
            op->n_attrs--;
    }
}

/* An op's flag="...": its p follows that flag where the command line gives
 * it (the last time given wins), and is as written otherwise. */
static void bind_prob(struct fe *fe, struct ir_op *op, const xmlNode *n, const char *where)
{
    const char *flag = attr(fe, n, "flag");
    if (!flag)
        return;
    struct ir_attr *p = NULL;
    for (int a = 0; a < op->n_attrs; a++)
        if (op->attrs[a].id == IR_ATTR_P)
            p = &op->attrs[a];
    if (!p) {
        diag_error(fe->d, fe->file, line_of(n), "%s: flag=\"%s\" binds a probability p, and %s has none", where, flag,
                   ir_op_info(op->kind)->name);
        return;
    }
    op->flag = flag;
    for (int k = 0; k < fe->opt->n_overrides; k++)
        if (fe->opt->overrides[k].kind != FE_SET && !strcmp(fe->opt->overrides[k].key, flag)) {
            fe->prob_used[k] = true;
            if (!isnan(fe->prob[k]))
                p->f = fe->prob[k];
        }
}

/* A probability flag given non-zero that no op binds: the user meant it to
 * change the model, and it would not. */
static void check_prob_flags(struct fe *fe)
{
    for (int k = 0; k < fe->opt->n_overrides; k++) {
        if (isnan(fe->prob[k]) || fe->prob_used[k] || fe->prob[k] == 0)
            continue;
        char bound[256] = "";
        size_t len = 0;
        for (int i = 0; fe_prob_flags[i]; i++) {
            bool binds = false;
            for (int o = 0; o < fe->g->n_ops && !binds; o++)
                binds = fe->g->ops[o].flag && !strcmp(fe->g->ops[o].flag, fe_prob_flags[i]);
            if (binds && len < sizeof bound)
                len += (size_t)snprintf(bound + len, sizeof bound - len, "%s--%s", len ? ", " : "", fe_prob_flags[i]);
        }
        diag_error(fe->d, NULL, 0, "--%s %s: no op of %s binds this flag (no <op flag=\"%s\">; its ops bind %s)",
                   fe->opt->overrides[k].key, fe->opt->overrides[k].value, fe->file, fe->opt->overrides[k].key,
                   len ? bound : "none");
    }
}

static void emit(struct fe *fe, struct scope *s, const xmlNode *parent);

static void emit_op(struct fe *fe, struct scope *s, const xmlNode *n)
{
    int line = line_of(n);
    const char *kind = attr(fe, n, "kind");
    const char *ins[IR_MAX_IN + 1], *outs[IR_MAX_OUT + 1];
    int n_in = words(fe, attr(fe, n, "in"), ins, IR_MAX_IN + 1);
    int n_out = words(fe, attr(fe, n, "out"), outs, IR_MAX_OUT + 1);
    int declared[IR_MAX_OUT + 1];
    for (int k = 0; k < n_out && k <= IR_MAX_OUT; k++)
        declared[k] = s->outs[s->next_out++];
    char where[256];
    snprintf(where, sizeof where, "<op kind=\"%s\" out=\"%s\">", kind, outs[0]);
    int k_op = ir_op_parse_kind(kind);
    if (k_op < 0) {
        struct wf_suggest sg = wf_suggest_begin(kind);
        for (int k = 0; k < IR_OP_COUNT; k++)
            wf_suggest_add(&sg, ir_op_info((enum ir_op_kind)k)->name);
        char hint[128];
        diag_error(fe->d, fe->file, line, "%s: unknown op kind '%s'%s; 'weft ops' lists the kinds", where, kind,
                   wf_suggest_text(&sg, "", hint, sizeof hint));
        return;
    }
    const struct ir_op_info *info = ir_op_info((enum ir_op_kind)k_op);
    char sig[256] = "";
    for (int k = 0, len = 0; k < info->n_in_names; k++)
        len += snprintf(sig + len, sizeof sig - (size_t)len, "%s%s", k ? " " : "", info->in_names[k]);
    if (n_in < info->in_min || n_in > info->in_max) {
        diag_error(fe->d, fe->file, line, "%s: %s takes %d%s%s input%s (%s), not %d", where, info->name,
                   info->in_min, info->in_max == info->in_min ? "" : " or more",
                   info->in_max > info->in_min && info->in_max < IR_MAX_IN ? " (optional last)" : "",
                   info->in_min == 1 && info->in_max == 1 ? "" : "s", sig, n_in);
        return;
    }
    if (n_out < info->out_min || n_out > info->out_max) {
        diag_error(fe->d, fe->file, line, "%s: %s gives %d to %d outputs, not %d", where, info->name,
                   info->out_min, info->out_max, n_out);
        return;
    }
    int op = ir_graph_add_op(fe->g, (enum ir_op_kind)k_op, (struct ir_loc){fe->file, line});
    struct ir_op *o = &fe->g->ops[op];
    o->part = s->part;
    o->block = s->block;
    o->iter = s->iter;
    o->layer = s->layer;
    set_attrs(fe, o, n, where);
    bind_prob(fe, o, n, where);
    for (int k = 0; k < n_in; k++) {
        int t = resolve(fe, s, ins[k], line, where); /* -1: reported; the load fails */
        if (t < 0)
            continue;
        if (fe->g->tensors[t].kind == IR_TENSOR_ACT && fe->g->tensors[t].producer < 0) {
            WF_GROW(fe->fwd, fe->n_fwd, fe->cap_fwd);
            fe->fwd[fe->n_fwd++] = (struct forward_use){op, t, line};
        }
        ir_op_add_input(fe->g, op, t);
    }
    for (int k = 0; k < n_out; k++) {
        int t = declared[k];
        if (t < 0) { /* a carried name: the new value starts here */
            t = new_tensor(fe, s, outs[k], IR_TENSOR_ACT, IR_DTYPE_F32, NULL, line);
            bind(s, outs[k], t, line);
        } else if (fe->g->tensors[t].producer >= 0) {
            t = new_tensor(fe, s, outs[k], IR_TENSOR_ACT, IR_DTYPE_F32, NULL, line); /* a duplicate, reported */
        }
        ir_op_add_output(fe->g, op, t);
    }
}

static int block_for(struct fe *fe, const xmlNode *n, struct scope *s, const char *name, int64_t count,
                     const char *count_expr)
{
    for (int i = 0; i < fe->n_blocks; i++)
        if (fe->blocks[i].node == n)
            return fe->blocks[i].block;
    char full[512];
    const char *parent = s->block >= 0 ? fe->g->blocks[s->block].name : ir_part_name(s->part);
    snprintf(full, sizeof full, "%s.%s", parent, name);
    int b = ir_graph_add_block(fe->g, full, s->part, s->block, count, count_expr, (struct ir_loc){fe->file, line_of(n)});
    WF_GROW(fe->blocks, fe->n_blocks, fe->cap_blocks);
    fe->blocks[fe->n_blocks].node = n;
    fe->blocks[fe->n_blocks++].block = b;
    return b;
}

static void emit_repeat(struct fe *fe, struct scope *s, const xmlNode *n)
{
    int line = line_of(n);
    const char *name = attr(fe, n, "name"), *count_expr = attr(fe, n, "count");
    char where[256], err[512];
    snprintf(where, sizeof where, "<repeat name=\"%s\">", name);
    int64_t count;
    int rc = eval_text(fe, count_expr, &count, err, sizeof err);
    if (rc) {
        if (rc == -1)
            diag_error(fe->d, fe->file, line, "%s: count: %s", where, err);
        return;
    }
    const char *carry[16];
    int n_carry = words(fe, attr(fe, n, "carry"), carry, 16);
    if (n_carry > 16) {
        diag_error(fe->d, fe->file, line, "%s: at most 16 carried names", where);
        return;
    }
    for (int c = 0; c < n_carry; c++)
        if (!find_local(s, carry[c])) {
            diag_error(fe->d, fe->file, line, "%s: carried '%s' must be defined before the repeat, in the same scope",
                       where, carry[c]);
            return;
        }
    int block = block_for(fe, n, s, name, count, count_expr);
    for (int64_t i = 0; i < count; i++) {
        struct scope body = {
            .parent = s,
            .prefix = arena_printf(fe->g->arena, "%s%s.%" PRId64 ".", s->prefix, name, i),
            .part = s->part,
            .block = block,
            .iter = (int)i,
            .layer = s->layer >= 0 ? s->layer : (int)i,
            .carry = carry,
            .n_carry = n_carry,
            .carry_defs = wf_calloc((size_t)n_carry + 1, sizeof(int)),
        };
        for (int c = 0; c < n_carry; c++) {
            struct binding *b = find_local(s, carry[c]);
            bind(&body, carry[c], b->tensor, b->line);
        }
        int errors = fe->d->n_errors;
        declare(fe, &body, n);
        for (int c = 0; c < n_carry; c++)
            if (!body.carry_defs[c])
                diag_error(fe->d, fe->file, line,
                           "%s: carried '%s' is never redefined in the body; an op must give the next value (out=\"%s\")",
                           where, carry[c], carry[c]);
        if (fe->d->n_errors == errors)
            emit(fe, &body, n);
        for (int c = 0; c < n_carry; c++)
            bind(s, carry[c], find_local(&body, carry[c])->tensor, line);
        scope_free(&body);
        if (fe->d->n_errors != errors)
            break; /* each iteration is the same: one report is enough */
    }
}

static void emit(struct fe *fe, struct scope *s, const xmlNode *parent)
{
    for (const xmlNode *n = parent->children; n; n = n->next) {
        if (is_elem(n, "op")) {
            emit_op(fe, s, n);
        } else if (is_elem(n, "repeat")) {
            emit_repeat(fe, s, n);
        } else if (is_elem(n, "output")) {
            const char *name = attr(fe, n, "name");
            char where[256];
            snprintf(where, sizeof where, "<output name=\"%s\">", name);
            int t = resolve(fe, s, name, line_of(n), where);
            if (t >= 0)
                ir_graph_add_output(fe->g, t);
        }
    }
}

/* ---- whole-graph checks ----------------------------------------------------------- */

/* Ops that read a tensor produced later in the file: a cycle, or an op
 * written before the op it needs.  Cycles are found with a depth-first search
 * over producer -> consumer edges. */
static void check_order(struct fe *fe)
{
    if (!fe->n_fwd)
        return;
    struct ir_graph *g = fe->g;
    int *color = wf_calloc((size_t)g->n_ops, sizeof *color);
    int *stack = wf_calloc((size_t)g->n_ops, sizeof *stack);
    int *edge = wf_calloc((size_t)g->n_ops, sizeof *edge);
    bool *in_cycle = wf_calloc((size_t)g->n_ops, sizeof *in_cycle);
    /* Walk consumer -> producer (inputs), which is enough to find every cycle. */
    for (int root = 0; root < g->n_ops; root++) {
        if (color[root])
            continue;
        int sp = 0;
        stack[sp++] = root;
        color[root] = 1;
        edge[root] = 0;
        while (sp) {
            int v = stack[sp - 1];
            if (edge[v] >= g->ops[v].n_in) {
                color[v] = 2;
                sp--;
                continue;
            }
            int t = g->ops[v].in[edge[v]++];
            int u = t >= 0 ? g->tensors[t].producer : -1;
            if (u < 0)
                continue;
            if (color[u] == 0) {
                color[u] = 1;
                edge[u] = 0;
                stack[sp++] = u;
            } else if (color[u] == 1) {
                char path[1024] = "";
                size_t len = 0;
                int from = sp - 1;
                while (from > 0 && stack[from] != u)
                    from--;
                for (int k = sp - 1; k >= from && len < sizeof path; k--) {
                    const struct ir_op *o = &g->ops[stack[k]];
                    in_cycle[stack[k]] = true;
                    len += (size_t)snprintf(path + len, sizeof path - len, "%s (line %d) -> ",
                                            g->tensors[o->out[0]].local_name, o->loc.line);
                }
                if (len < sizeof path)
                    snprintf(path + len, sizeof path - len, "%s", g->tensors[g->ops[v].out[0]].local_name);
                diag_error(fe->d, fe->file, g->ops[u].loc.line,
                           "ops depend on each other in a cycle: each output needs the next: %s", path);
            }
        }
    }
    for (int i = 0; i < fe->n_fwd; i++) {
        const struct forward_use *f = &fe->fwd[i];
        if (in_cycle[f->op])
            continue;
        const struct ir_tensor *t = &g->tensors[f->tensor];
        const struct ir_op *o = &g->ops[f->op];
        diag_error(fe->d, fe->file, f->line,
                   "<op kind=\"%s\" out=\"%s\">: '%s' is used before it is produced (at line %d); ops run in the order written",
                   ir_op_info(o->kind)->name, g->tensors[o->out[0]].local_name, t->local_name, t->loc.line);
    }
    free(color);
    free(stack);
    free(edge);
    free(in_cycle);
}

static void warn_unused(struct fe *fe)
{
    const struct ir_graph *g = fe->g;
    for (int i = 0; i < g->n_tensors; i++) {
        const struct ir_tensor *t = &g->tensors[i];
        if (t->n_uses)
            continue;
        static const char *what[] = {"parameter", "input", "tensor"};
        diag_warn(fe->d, t->loc.file, t->loc.line, "%s '%s' is never used", what[t->kind], t->local_name);
    }
}

/* ---- the pass --------------------------------------------------------------------- */

static void read_parts(struct fe *fe, const xmlNode *root)
{
    struct scope shared = {.prefix = "", .part = IR_PART_SHARED, .block = -1, .iter = -1, .layer = -1};
    struct scope part_scope[IR_PART_COUNT];
    declare(fe, &shared, root); /* model-level params */
    fe->parts[IR_PART_SHARED] = &shared;
    for (const xmlNode *n = root->children; n; n = n->next) {
        bool enc = is_elem(n, "encoder");
        if (!enc && !is_elem(n, "decoder"))
            continue;
        enum ir_part p = enc ? IR_PART_ENCODER : IR_PART_DECODER;
        struct scope *s = &part_scope[p];
        *s = (struct scope){.parent = &shared, .prefix = enc ? "encoder." : "decoder.", .part = p,
                            .block = -1, .iter = -1, .layer = -1};
        fe->g->has_part[p] = true;
        fe->parts[p] = s;
        declare(fe, s, n);
        emit(fe, s, n);
    }
    if (!fe->g->n_outputs && !fe->d->n_errors)
        diag_error(fe->d, fe->file, line_of(root),
                   "<model>: no <output>; name what the model computes, e.g. <output name=\"loss\"/>");
    check_order(fe);
    check_prob_flags(fe);
    if (!fe->d->n_errors)
        warn_unused(fe);
    for (int p = IR_PART_ENCODER; p < IR_PART_COUNT; p++)
        if (fe->parts[p])
            scope_free(fe->parts[p]);
    scope_free(&shared);
    memset(fe->parts, 0, sizeof fe->parts);
}

/* With <huggingface>, every parameter needs its <hf>: a file loads whole. */
static void check_hf(struct fe *fe)
{
    const struct ir_hf *hf = fe->g->hf;
    if (!hf)
        return;
    for (int t = 0; t < fe->g->n_tensors; t++) {
        const struct ir_tensor *x = &fe->g->tensors[t];
        if (x->kind != IR_TENSOR_PARAM)
            continue;
        int i = 0;
        while (i < hf->n_maps && hf->maps[i].tensor != t)
            i++;
        if (i == hf->n_maps) {
            diag_error(fe->d, x->loc.file, x->loc.line, "<param name=\"%s\">: no <hf> child: with <huggingface> (line %d) every "
                       "param names the Hugging Face tensors it is made of", x->local_name, hf->loc.line);
            return;
        }
    }
    for (int i = 0; i < hf->n_maps; i++) /* one tensor of the file, one source: a name given twice would be written twice */
        for (int k = 0; k < hf->maps[i].n_sources; k++)
            for (int j = 0; j <= i; j++)
                for (int l = 0; l < (j == i ? k : hf->maps[j].n_sources); l++)
                    if (!strcmp(hf->maps[i].sources[k].name, hf->maps[j].sources[l].name)) {
                        diag_error(fe->d, fe->file, hf->maps[i].sources[k].loc.line, "<hf name=\"%s\">: '%s' names it, and '%s' "
                                   "did (line %d): each Hugging Face tensor is the source of one param", hf->maps[i].sources[k].name,
                                   fe->g->tensors[hf->maps[i].tensor].name, fe->g->tensors[hf->maps[j].tensor].name,
                                   hf->maps[j].sources[l].loc.line);
                        return;
                    }
}

struct ir_graph *fe_load_memory(const char *name, const char *buf, size_t len, const struct fe_options *opt,
                                struct diag *d)
{
    static const struct fe_options none;
    struct fe fe = {.d = d, .file = name};
    struct fe *outer = parsing;
    parsing = &fe;
    int errors = d->n_errors;
    if (!opt)
        opt = &none;
    fe.opt = opt;
    struct ir_graph *g = NULL;
    if (sniff(&fe, buf, len) == 0 && (fe.doc = parse(&fe, buf, len))) {
        xmlNode *root = xmlDocGetRootElement(fe.doc);
        xmlChar *model = xmlGetNoNsProp(root, (const xmlChar *)"name");
        g = fe.g = ir_graph_new((const char *)model, name);
        xmlFree(model);
        fe.file = g->file;
        if (opt->variant)
            g->variant = arena_strdup(g->arena, opt->variant);
        read_dims(&fe, root, opt);
        if (d->n_errors == errors)
            read_huggingface(&fe, root);
        if (d->n_errors == errors)
            read_parts(&fe, root);
        if (d->n_errors == errors)
            check_hf(&fe);
        if (d->n_errors == errors)
            ir_verify(g, false, d);
        xmlFreeDoc(fe.doc);
    }
    free(fe.dim_state);
    free(fe.dim_stack);
    free(fe.prob);
    free(fe.prob_used);
    free(fe.fwd);
    free(fe.blocks);
    parsing = outer;
    if (d->n_errors != errors) {
        ir_graph_free(g);
        return NULL;
    }
    return g;
}

struct ir_graph *fe_load_file(const char *path, const struct fe_options *opt, struct diag *d)
{
    size_t len;
    char *buf = wf_read_file(path, FE_MAX_FILE_BYTES, &len);
    if (!buf) {
        diag_error(d, path, 0, "cannot read: %s", errno == EFBIG ? "larger than 64 MiB" : strerror(errno));
        return NULL;
    }
    struct ir_graph *g = fe_load_memory(path, buf, len, opt, d);
    free(buf);
    return g;
}
