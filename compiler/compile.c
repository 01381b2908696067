/* compile.c: the passes of a compile, in order, with ir_verify after each
 * (QBE's main.c).  A pass reports user errors into the diag and returns
 * non-zero; the compile stops at the first pass that fails. */
#include "compiler.h"

static int pass_shapes(struct ir_graph *g, struct diag *d) { return ir_infer_shapes(g, d); }

static const struct {
    const char *name;
    int (*run)(struct ir_graph *g, struct diag *d);
    bool shapes_known_after;
} passes[] = {
    {"shapes", pass_shapes, true},
};

struct ir_graph *compile_model(const char *path, const struct fe_options *opt, struct diag *d)
{
    struct ir_graph *g = fe_load_file(path, opt, d);
    if (!g)
        return NULL;
    for (size_t i = 0; i < sizeof passes / sizeof passes[0]; i++) {
        if (passes[i].run(g, d) || ir_verify(g, passes[i].shapes_known_after, d)) {
            ir_graph_free(g);
            return NULL;
        }
    }
    return g;
}
