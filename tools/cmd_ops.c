/* cmd_ops.c: `weft ops`: the op kinds a model file can use, from ir/ops.def. */
#include "cli.h"
#include "json.h"

#include <stdio.h>
#include <string.h>

static const char usage[] = "usage: weft ops [--json]\n\nList every op kind: its inputs (? optional, * repeated),\n"
                            "outputs, attributes (=default) and what it computes.\n";

int cmd_ops(int argc, char **argv)
{
    struct cli c;
    if (cli_parse(&c, argc, argv, "ops", usage))
        return c.status;
    struct json j;
    if (c.json) {
        json_init(&j, stdout);
        json_begin_array(&j, NULL);
    }
    for (int k = 0; k < IR_OP_COUNT; k++) {
        const struct ir_op_info *info = ir_op_info((enum ir_op_kind)k);
        char in[256] = "", out[128] = "", attrs[512] = "";
        size_t n = 0;
        for (int i = 0; i < info->n_in_names; i++)
            n += (size_t)snprintf(in + n, sizeof in - n, "%s%s%s", i ? " " : "", info->in_names[i],
                                  i >= info->in_min ? (info->in_max == IR_MAX_IN && i == info->n_in_names - 1 ? "*" : "?") : "");
        n = 0;
        for (int i = 0; i < info->n_out_names; i++)
            n += (size_t)snprintf(out + n, sizeof out - n, "%s%s%s", i ? " " : "", info->out_names[i],
                                  i >= info->out_min ? "?" : "");
        n = 0;
        for (int a = 0; a < info->n_attrs; a++)
            n += (size_t)snprintf(attrs + n, sizeof attrs - n, "%s%s%s%s", a ? " " : "", ir_attr_name(info->attrs[a].id),
                                  info->attrs[a].def ? "=" : "", info->attrs[a].def ? info->attrs[a].def : "");
        if (c.json) {
            json_begin_object(&j, NULL);
            json_string(&j, "kind", info->name);
            json_string(&j, "inputs", in);
            json_string(&j, "outputs", out);
            json_string(&j, "attributes", attrs);
            json_string(&j, "summary", info->summary);
            json_end_object(&j);
        } else {
            printf("%-19s in=\"%s\" out=\"%s\"%s%s\n    %s\n", info->name, in, out, *attrs ? "  " : "", attrs,
                   info->summary);
        }
    }
    if (c.json) {
        json_end_array(&j);
        json_finish(&j);
    }
    return EXIT_OK;
}
