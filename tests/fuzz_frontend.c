/* fuzz_frontend.c: libFuzzer target for the model-file front end (make fuzz).
 * Any input must end in a graph or in diagnostics: never a crash, a leak, a
 * hang or undefined behaviour.  Typed graphs also go through the summary. */
#include "compiler.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct diag d;
    diag_init(&d);
    struct ir_graph *g = fe_load_memory("fuzz.xml", (const char *)data, size, NULL, &d);
    if (g && ir_infer_shapes(g, &d) == 0 && ir_verify(g, true, &d) == 0) {
        struct model_summary s;
        model_summarize(g, &s, &d);
    }
    ir_graph_free(g);
    diag_free(&d);
    return 0;
}
