/* test_shard.c: tensor-shard propagation, op by op, and the collectives it
 * implies; then whole models: Megatron's collective counts per layer. */
#include "testing.h"

#include "cost.h"
#include "partition.h"

#define HEAD                                                                                 \
    "<model name=\"t\" xmlns=\"urn:weft:model:1\">"                                          \
    "<dim name=\"B\" value=\"2\"/><dim name=\"S\" value=\"8\"/><dim name=\"H\" value=\"16\"/>" \
    "<dim name=\"N\" value=\"4\"/><dim name=\"D\" value=\"4\"/><dim name=\"F\" value=\"32\"/>"  \
    "<dim name=\"V\" value=\"64\"/><dim name=\"E\" value=\"4\"/><dim name=\"K\" value=\"2\"/>"  \
    "<dim name=\"C\" value=\"8\"/><decoder>"
#define TAIL "<output name=\"y\"/></decoder></model>"
#define IN(n, s) "<input name=\"" n "\" shape=\"" s "\"/>"
#define INT(n, s) "<input name=\"" n "\" shape=\"" s "\" dtype=\"i32\"/>"
#define W(n, s, split) "<param name=\"" n "\" shape=\"" s "\" split=\"" split "\"/>"

struct shard_case {
    const char *name;
    int tp, ep;
    const char *body;
    const char *y;     /* y's shard, as ir_shard_str prints it */
    const char *xfers; /* the forward's transfers, "kind over tensor" joined by "; " ("" for none) */
    const char *grads; /* the backward's, in the order it runs them ("" for none) */
};

static const struct shard_case cases[] = {
    {"matmul column-parallel", 2, 1, IN("a", "B S H") W("w", "H F", "col") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>",
     "(-, -, tp)", "", ""},
    {"matmul row-parallel", 2, 1,
     IN("a", "B S H") W("w1", "H F", "col") W("w2", "F H", "row")
     "<op kind=\"matmul\" in=\"a w1\" out=\"h\"/><op kind=\"matmul\" in=\"h w2\" out=\"y\"/>",
     "(-, -, -) partial tp", "", ""},
    {"matmul row-parallel slices a whole input", 2, 1, IN("a", "B S F") W("w", "F H", "row") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>",
     "(-, -, -) partial tp", "slice tp a", ""},
    {"matmul reads a partial input whole", 2, 1,
     IN("a", "B S H") W("w1", "H F", "col") W("w2", "F H", "row") W("w3", "H F", "col")
     "<op kind=\"matmul\" in=\"a w1\" out=\"h\"/><op kind=\"matmul\" in=\"h w2\" out=\"p\"/><op kind=\"matmul\" in=\"p w3\" out=\"y\"/>",
     "(-, -, tp)", "all-reduce tp p", "all-reduce tp p"},
    {"bias after row-parallel: all-reduce", 2, 1,
     IN("a", "B S F") W("w", "F H", "row") "<param name=\"b\" shape=\"H\"/>"
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"bias_add\" in=\"p b\" out=\"y\"/>",
     "(-, -, -)", "slice tp a; all-reduce tp p", ""},
    {"column bias follows the split", 2, 1,
     IN("a", "B S H") W("w", "H F", "col") W("b", "F", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"bias_add\" in=\"p b\" out=\"y\"/>", "(-, -, tp)", "", ""},
    {"gelu keeps a split", 2, 1, IN("a", "B S H") W("w", "H F", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"gelu\" in=\"p\" out=\"y\"/>", "(-, -, tp)", "", ""},
    {"scale keeps partial sums", 2, 1, IN("a", "B S F") W("w", "F H", "row")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"scale\" in=\"p\" by=\"2\" out=\"y\"/>", "(-, -, -) partial tp", "slice tp a", ""},
    {"partial plus partial stays partial", 2, 1, IN("a", "B S F") W("w", "F H", "row") W("v", "F H", "row")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"matmul\" in=\"a v\" out=\"q\"/><op kind=\"add\" in=\"p q\" out=\"y\"/>",
     "(-, -, -) partial tp", "slice tp a", ""},
    {"mul reads partial sums whole", 2, 1, IN("a", "B S F") W("w", "F H", "row") IN("m", "B S H")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"mul\" in=\"p m\" out=\"y\"/>", "(-, -, -)", "slice tp a; all-reduce tp p", ""},
    {"layernorm gathers a split last axis", 2, 1, IN("a", "B S H") W("w", "H H", "col") IN("g", "H")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"layernorm\" in=\"p g\" out=\"y\"/>", "(-, -, -)", "all-gather tp p", "slice tp p"},
    {"rmsnorm of whole values", 2, 1, IN("a", "B S H") IN("g", "H") "<op kind=\"rmsnorm\" in=\"a g\" out=\"y\"/>", "(-, -, -)", "", ""},
    {"softmax gathers the key axis", 2, 1, IN("a", "B S H") W("w", "H S", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"softmax\" in=\"p\" out=\"y\"/>", "(-, -, -)", "all-gather tp p", "slice tp p"},
    {"split_heads splits heads", 2, 1, IN("a", "B S H") W("w", "H 3*H", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"split_heads\" in=\"p\" heads=\"N\" out=\"y k v\"/>", "(-, tp, -, -)", "", ""},
    {"attention per head, merged back", 2, 1, IN("a", "B S H") W("w", "H 3*H", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"split_heads\" in=\"p\" heads=\"N\" out=\"q k v\"/>"
     "<op kind=\"attention\" in=\"q k v\" causal=\"true\" out=\"o\"/><op kind=\"merge_heads\" in=\"o\" out=\"y\"/>",
     "(-, -, tp)", "", ""},
    {"attention bias sliced by heads", 2, 1, IN("a", "B S H") W("w", "H 3*H", "col") IN("t", "8 N")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"split_heads\" in=\"p\" heads=\"N\" out=\"q k v\"/>"
     "<op kind=\"relpos_bias\" in=\"t\" q_len=\"S\" k_len=\"S\" out=\"b\"/><op kind=\"attention\" in=\"q k v b\" out=\"y\"/>",
     "(-, tp, -, -)", "slice tp b", ""},
    {"rotary gathers a split head_dim", 2, 1, IN("a", "B N S D") W("w", "D D", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"rotary\" in=\"p\" out=\"y\"/>", "(-, -, -, -)", "all-gather tp p", "slice tp p"},
    {"vocab-parallel embedding: partial", 2, 1, INT("ids", "B S") W("e", "V H", "vocab")
     "<op kind=\"embedding\" in=\"e ids\" out=\"y\"/>", "(-, -, -) partial tp", "", ""},
    {"position embedding keeps a hidden split", 2, 1, W("p", "S H", "col")
     "<op kind=\"position_embedding\" in=\"p\" length=\"S\" out=\"y\"/>", "(-, tp)", "", ""},
    {"vocab-parallel cross-entropy", 2, 1, IN("h", "B S H") W("e", "V H", "vocab") INT("t", "B S")
     "<op kind=\"matmul\" in=\"h e\" transpose_b=\"true\" out=\"l\"/><op kind=\"cross_entropy\" in=\"l t\" out=\"y\"/>",
     "()", "all-reduce-max tp l; all-reduce tp l", ""},
    {"router reads whole scores", 2, 1, IN("a", "B S H") W("w", "H E", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"l\"/><op kind=\"router\" in=\"l\" topk=\"K\" out=\"y i\"/>", "(-, -, -)", "all-gather tp l", "slice tp l"},
    {"experts: all-to-all there and back", 1, 2,
     IN("x", "B S H") IN("l", "B S E") W("w", "E H H", "expert")
     "<op kind=\"router\" in=\"l\" topk=\"K\" out=\"g i\"/><op kind=\"dispatch\" in=\"x i\" experts=\"E\" capacity=\"C\" out=\"xe\"/>"
     "<op kind=\"matmul\" in=\"xe w\" out=\"ye\"/><op kind=\"combine\" in=\"ye g i\" out=\"y\"/>",
     "(-, -, -)", "all-to-all ep xe; all-to-all ep ye", "all-to-all ep ye; all-to-all ep xe"},
    {"concat of split inputs", 2, 1, IN("a", "B S H") W("w", "H H", "col") W("v", "H H", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"matmul\" in=\"a v\" out=\"q\"/><op kind=\"concat\" in=\"p q\" axis=\"1\" out=\"y\"/>",
     "(-, -, tp)", "", ""},
    {"reshape reads whole tensors", 2, 1, IN("a", "B S H") W("w", "H H", "col")
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"reshape\" in=\"p\" shape=\"B S N D\" out=\"y\"/>", "(-, -, -, -)",
     "all-gather tp p", "slice tp p"},
    {"patchify reads whole images", 2, 1, IN("img", "B 3 8 8") "<op kind=\"patchify\" in=\"img\" patch=\"4\" out=\"y\"/>",
     "(-, -, -)", "", ""},
    {"column-parallel reader of an activation: its gradient all-reduced", 2, 1,
     IN("a", "B S H") "<param name=\"n\" shape=\"H\"/>" W("w", "H F", "col")
     "<op kind=\"rmsnorm\" in=\"a n\" out=\"x\"/><op kind=\"matmul\" in=\"x w\" out=\"y\"/>", "(-, -, tp)", "",
     "all-reduce tp x"},
    {"row-parallel reader slices an activation: its gradient gathered", 2, 1,
     IN("a", "B S F") "<param name=\"n\" shape=\"F\"/>" W("w", "F H", "row")
     "<op kind=\"rmsnorm\" in=\"a n\" out=\"x\"/><op kind=\"matmul\" in=\"x w\" out=\"y\"/>", "(-, -, -) partial tp",
     "slice tp x", "all-gather tp x"},
    {"one rank: no transfers", 1, 1, IN("a", "B S F") W("w", "F H", "row") "<param name=\"b\" shape=\"H\"/>"
     "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"bias_add\" in=\"p b\" out=\"y\"/>", "(-, -, -)", "", ""},
};

static struct partition *partition_text(const char *xml, int tp, int ep, struct diag *d)
{
    char path[] = "/tmp/weft-shard-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, xml, strlen(xml)), (ssize_t)strlen(xml));
    close(fd);
    struct par_config pc = par_config_default();
    pc.tp = tp, pc.ep = ep, pc.world_size = tp * ep;
    struct fe_options opt = {0};
    diag_init(d);
    struct partition *P = partition_model(path, &opt, &pc, d);
    unlink(path);
    return P;
}

static void test_case(void **state)
{
    const struct shard_case *c = *state;
    char xml[8192];
    snprintf(xml, sizeof xml, HEAD "%s" TAIL, c->body);
    struct diag d;
    struct partition *P = partition_text(xml, c->tp, c->ep, &d);
    if (!P)
        fail_msg("%s: %s", c->name, diag_first_error(&d));
    const struct ir_graph *g = P->g;
    int y = -1;
    for (int i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].local_name, "y"))
            y = i;
    assert_true(y >= 0);
    char got[256];
    ir_shard_str(&P->shard[y], g->tensors[y].shape.rank, got, sizeof got);
    if (strcmp(got, c->y))
        fail_msg("%s: y is held %s, want %s", c->name, got, c->y);
    for (int backward = 0; backward < 2; backward++) {
        char xf[1024] = "";
        size_t n = 0;
        for (int i = 0; i < P->n_xfers; i++)
            if (P->xfers[i].grad == backward)
                n += (size_t)snprintf(xf + n, sizeof xf - n, "%s%s %s %s", n ? "; " : "", part_xfer_name(P->xfers[i].kind),
                                      ir_pdim_name(P->xfers[i].over), g->tensors[P->xfers[i].tensor].local_name);
        const char *want = backward ? c->grads : c->xfers;
        if (getenv("WEFT_SHARD_DUMP"))
            printf("DUMP %s | %s | %s\n", c->name, backward ? "B" : "F", xf);
        else if (strcmp(xf, want))
            fail_msg("%s: %s transfers\n  got  %s\n  want %s", c->name, backward ? "backward" : "forward", xf, want);
    }
    partition_free(P);
    diag_free(&d);
}

/* Count transfers by kind and group over a whole model, the forward's or the backward's. */
static int count_dir(const struct partition *P, enum part_xfer_kind kind, enum ir_pdim over, bool backward)
{
    int n = 0;
    for (int i = 0; i < P->n_xfers; i++)
        n += P->xfers[i].kind == kind && P->xfers[i].over == over && P->xfers[i].grad == backward;
    return n;
}

static int count(const struct partition *P, enum part_xfer_kind kind, enum ir_pdim over)
{
    return count_dir(P, kind, over, false);
}

static int count_back(const struct partition *P, enum part_xfer_kind kind, enum ir_pdim over)
{
    return count_dir(P, kind, over, true);
}

/* GPT-2 124M at tp=2: two all-reduces per layer in forward (attention out, MLP
 * out), plus the embedding's and the loss's; with sequence parallelism two
 * all-gathers and two reduce-scatters per layer instead.  The backward has
 * Megatron's conjugates: an all-reduce of the input gradient of each
 * column-parallel block (qkv, fc, the head); with sequence parallelism
 * reduce-scatters and all-gathers swap, and the gradients of the weights
 * that every rank holds whole but applies to its slice of the sequence (the
 * norms, the row-parallel biases) are all-reduced. */
static void test_gpt2_tp2_counts(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.tp = 2;
    struct partition *P = place_model("models/gpt2.xml", NULL, pc, NULL, 0);
    assert_int_equal(count(P, PART_XFER_ALL_REDUCE, IR_PDIM_TP), 2 * 12 + 2);
    assert_int_equal(count(P, PART_XFER_ALL_GATHER, IR_PDIM_TP), 0);
    assert_int_equal(count(P, PART_XFER_REDUCE_SCATTER, IR_PDIM_TP), 0);
    assert_int_equal(count_back(P, PART_XFER_ALL_REDUCE, IR_PDIM_TP), 2 * 12 + 1);
    assert_int_equal(count_back(P, PART_XFER_ALL_GATHER, IR_PDIM_TP) + count_back(P, PART_XFER_REDUCE_SCATTER, IR_PDIM_TP), 0);
    int per_layer[2][12] = {{0}};
    for (int i = 0; i < P->n_xfers; i++)
        if (P->g->ops[P->xfers[i].op].layer >= 0)
            per_layer[P->xfers[i].grad][P->g->ops[P->xfers[i].op].layer]++;
    for (int l = 0; l < 12; l++) {
        assert_int_equal(per_layer[0][l], 2);
        assert_int_equal(per_layer[1][l], 2);
    }
    partition_free(P);

    pc.sequence_parallel = true;
    P = place_model("models/gpt2.xml", NULL, pc, NULL, 0);
    /* + the embedding's reduce-scatter; + the gather before the head */
    assert_int_equal(count(P, PART_XFER_ALL_GATHER, IR_PDIM_TP), 2 * 12 + 1);
    assert_int_equal(count(P, PART_XFER_REDUCE_SCATTER, IR_PDIM_TP), 2 * 12 + 1);
    assert_int_equal(count(P, PART_XFER_ALL_REDUCE, IR_PDIM_TP), 1); /* the loss */
    /* + the embeddings' gathers (token and position); + the head's scatter */
    assert_int_equal(count_back(P, PART_XFER_ALL_GATHER, IR_PDIM_TP), 2 * 12 + 2);
    assert_int_equal(count_back(P, PART_XFER_REDUCE_SCATTER, IR_PDIM_TP), 2 * 12 + 1);
    /* two norms' gain and bias and two row-parallel biases per layer; the final norm's */
    assert_int_equal(count_back(P, PART_XFER_ALL_REDUCE, IR_PDIM_TP), 6 * 12 + 2);
    for (int i = 0; i < P->n_xfers; i++)
        if (P->xfers[i].grad && P->xfers[i].kind == PART_XFER_ALL_REDUCE)
            assert_int_equal(P->g->tensors[P->xfers[i].tensor].kind, IR_TENSOR_PARAM);
    partition_free(P);
}

static void test_pipeline_sends(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.pp = 4;
    struct partition *P = place_model("models/gpt2.xml", NULL, pc, NULL, 0);
    assert_int_equal(count(P, PART_XFER_SEND, IR_PDIM_NONE), 3); /* the residual stream, stage to stage */
    for (int i = 0; i < P->n_xfers; i++)
        assert_int_equal(P->chunks[P->xfers[i].to_chunk].stage, P->chunks[P->xfers[i].from_chunk].stage + 1);
    partition_free(P);
    /* T5 on its own encoder stage: the encoder's output goes to both decoder stages. */
    pc = par_config_default();
    pc.world_size = 3, pc.pp = 2, pc.epp = 1;
    P = place_model("models/t5.xml", NULL, pc, NULL, 0);
    int to_decoder = 0;
    for (int i = 0; i < P->n_xfers; i++)
        if (P->xfers[i].kind == PART_XFER_SEND && !strcmp(P->g->tensors[P->xfers[i].tensor].name, "encoder.out"))
            to_decoder++;
    assert_int_equal(to_decoder, 2);
    partition_free(P);
}

static void test_experts(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.world_size = 4, pc.tp = 2, pc.ep = 2;
    struct fe_options opt = {.variant = "tiny"};
    struct diag d;
    diag_init(&d);
    struct partition *P = partition_model("models/mixtral.xml", &opt, &pc, &d);
    if (!P)
        fail_msg("%s", diag_first_error(&d));
    assert_int_equal(count(P, PART_XFER_ALL_TO_ALL, IR_PDIM_EP), 2 * 2); /* there and back, per layer */
    assert_int_equal(count(P, PART_XFER_ALL_REDUCE, IR_PDIM_XTP), 2);    /* expert row-parallel output */
    assert_int_equal(count_back(P, PART_XFER_ALL_TO_ALL, IR_PDIM_EP), 2 * 2); /* the gradients, back and there */
    assert_int_equal(count_back(P, PART_XFER_ALL_REDUCE, IR_PDIM_XTP), 2);    /* expert column-parallel input */
    partition_free(P);
    diag_free(&d);
}

/* Sequence parallelism with context parallelism, as Megatron runs them: the
 * sequence split by cp, then each cp rank's share by tp.  GPT-2 124M (12
 * layers, seq 1024, hidden 768, micro-batch 1) at tp 2, cp 2:
 *   the residual stream on a rank: 1024 / (2 x 2) = 256 positions,
 *   (1, 256, 768); each tp all-gather before a column-parallel matmul
 *   brings back the cp rank's 512, not the whole 1024, and sends
 *   256 x 768 x 4 = 786,432 bytes;
 *   forward: per layer 2 tp all-gathers and 2 reduce-scatters, plus the
 *   embedding's reduce-scatter and the head's gather (25 each), the loss's
 *   all-reduce; per layer cp gathers k and v (24);
 *   backward: per layer 2 reduce-scatters and 2 all-gathers, plus the head's
 *   scatter (25) and the two embeddings' gathers (26), the same as at cp 1.
 * Before, the cp split made sequence parallelism fall away unannounced: 26
 * tp all-reduces forward and the stream held (1, 512, 768). */
static void test_sequence_parallel_with_cp(void **state)
{
    (void)state;
    struct par_config pc = par_config_default();
    pc.tp = 2, pc.cp = 2, pc.sequence_parallel = true;
    struct partition *P = place_model("models/gpt2.xml", NULL, pc, NULL, 0);
    const struct ir_graph *g = P->g;
    const uint8_t cp_tp = IR_PDIM_BIT(IR_PDIM_CP) | IR_PDIM_BIT(IR_PDIM_TP);
    int stream = 0;
    for (int t = 0; t < g->n_tensors; t++) {
        const struct ir_tensor *x = &g->tensors[t];
        if (x->kind != IR_TENSOR_ACT || (strcmp(x->local_name, "x") && strcmp(x->local_name, "x1")))
            continue;
        struct ir_shape l = partition_local_shape(P, x->part, &x->shape, &P->shard[t]);
        char sh[64], sz[64];
        if (P->shard[t].split[1] != cp_tp || l.ax[0].size != 1 || l.ax[1].size != 256 || l.ax[2].size != 768)
            fail_msg("%s is held %s, %s on a rank; want (-, cp+tp, -), 1x256x768", x->name,
                     ir_shard_str(&P->shard[t], x->shape.rank, sh, sizeof sh), shape_sizes(&l, sz, sizeof sz));
        stream++;
    }
    assert_int_equal(stream, 1 + 2 * 12); /* the embeddings' output, then x1 and x of each layer */
    assert_int_equal(count(P, PART_XFER_ALL_GATHER, IR_PDIM_TP), 2 * 12 + 1);
    assert_int_equal(count(P, PART_XFER_REDUCE_SCATTER, IR_PDIM_TP), 2 * 12 + 1);
    assert_int_equal(count(P, PART_XFER_ALL_REDUCE, IR_PDIM_TP), 1);
    assert_int_equal(count(P, PART_XFER_ALL_GATHER, IR_PDIM_CP), 2 * 12);
    assert_int_equal(count_back(P, PART_XFER_REDUCE_SCATTER, IR_PDIM_TP), 2 * 12 + 1);
    assert_int_equal(count_back(P, PART_XFER_ALL_GATHER, IR_PDIM_TP), 2 * 12 + 2);
    for (int i = 0; i < P->n_xfers; i++) {
        const struct part_xfer *x = &P->xfers[i];
        if (x->grad || x->kind != PART_XFER_ALL_GATHER || x->over != IR_PDIM_TP)
            continue;
        assert_int_equal(x->after.split[1], IR_PDIM_BIT(IR_PDIM_CP)); /* the cp split stays */
        assert_int_equal(x->bytes, 256 * 768 * 4);
    }
    partition_free(P);
}

/* Expert parallelism as Megatron's MoE runs it: each rank routes its own
 * tokens into a whole (experts, capacity, hidden) buffer, and the all-to-all
 * over the ep group leaves each rank its experts / ep experts' rows from all
 * ep ranks of the group.  Mixtral tiny: batch 2, seq 32, topk 2, 4 experts,
 * so capacity = cdiv(2 x 32 x 2, 4) = 32; hidden 64, ffn 96.  At ep 1, 2, 4
 * (tp 1) a rank holds the buffer as (4/ep, 32 x ep, 64) and its w1 matmul
 * makes (4/ep, 32 x ep, 96): 2 x 4 x 32 x 64 x 96 = 1,572,864 FLOPs
 * whatever ep is, since ep divides the experts, not the tokens each sees;
 * at tp 2 (expert tp 2) half that, 786,432.  Each all-to-all (dispatch's
 * and combine's) moves a rank's whole buffer: 4 x 32 x 64 x 4 bytes =
 * 32,768.  Before, the buffer was (4/ep, 32, 64): the experts' FLOPs, their
 * activations and the all-to-all bytes were ep times too small. */
static void test_expert_rows(void **state)
{
    (void)state;
    static const struct {
        int world, tp, ep;
        double flops;
    } cfg[] = {{4, 1, 1, 1572864}, {4, 1, 2, 1572864}, {4, 1, 4, 1572864}, {4, 2, 2, 786432}};
    for (size_t i = 0; i < WF_COUNT(cfg); i++) {
        struct par_config pc = par_config_default();
        pc.world_size = cfg[i].world, pc.tp = cfg[i].tp, pc.ep = cfg[i].ep;
        struct partition *P = place_model("models/mixtral.xml", "tiny", pc, NULL, 0);
        const struct ir_graph *g = P->g;
        int ep = cfg[i].ep, checked = 0, exchanges = 0;
        for (int op = 0; op < g->n_ops; op++) {
            const struct ir_op *o = &g->ops[op];
            const struct ir_tensor *y = &g->tensors[o->out[0]];
            if (o->kind != IR_OP_MATMUL || strcmp(y->local_name, "g"))
                continue;
            const struct ir_tensor *xe = &g->tensors[o->in[0]];
            struct ir_shape lx = partition_local_shape(P, xe->part, &xe->shape, &P->shard[o->in[0]]);
            struct ir_shape ly = partition_local_shape(P, y->part, &y->shape, &P->shard[o->out[0]]);
            char a[64], b[64];
            if (lx.ax[0].size != 4 / ep || lx.ax[1].size != 32 * ep || lx.ax[2].size != 64 || ly.ax[1].size != 32 * ep ||
                ly.ax[2].size != 96 / cfg[i].tp)
                fail_msg("tp %d ep %d: %s is %s and %s is %s on a rank; want %dx%dx64 and %dx%dx%d", cfg[i].tp, ep, xe->name,
                         shape_sizes(&lx, a, sizeof a), y->name, shape_sizes(&ly, b, sizeof b), 4 / ep, 32 * ep, 4 / ep, 32 * ep,
                         96 / cfg[i].tp);
            if (cost_op_flops(P, op) != cfg[i].flops)
                fail_msg("tp %d ep %d: %s: %.0f FLOPs a rank, want %.0f", cfg[i].tp, ep, y->name, cost_op_flops(P, op), cfg[i].flops);
            checked++;
        }
        for (int x = 0; x < P->n_xfers; x++)
            if (P->xfers[x].kind == PART_XFER_ALL_TO_ALL && P->xfers[x].over == IR_PDIM_EP) {
                assert_int_equal(P->xfers[x].bytes, 4 * 32 * 64 * 4);
                exchanges++;
            }
        printf("    tp %d ep %d: the experts' buffer %dx%dx64 a rank, w1 %.0f FLOPs, %d all-to-alls of 32 KiB\n", cfg[i].tp, ep,
               4 / ep, 32 * ep, cfg[i].flops, exchanges);
        assert_int_equal(checked, 2);                      /* a layer each */
        assert_int_equal(exchanges, ep > 1 ? 2 * 2 * 2 : 0); /* there and back, per layer, forward and backward */
        partition_free(P);
    }
}

static void test_heads_must_divide(void **state)
{
    (void)state;
    struct diag d;
    char xml[4096];
    /* 36 features: 3 outputs of 6 heads of 2; the weight splits over 4 ranks, the heads do not. */
    snprintf(xml, sizeof xml, HEAD IN("a", "B S H") W("w", "H 36", "col")
             "<op kind=\"matmul\" in=\"a w\" out=\"p\"/><op kind=\"split_heads\" in=\"p\" heads=\"6\" out=\"y k v\"/>" TAIL);
    struct partition *P = partition_text(xml, 4, 1, &d);
    assert_null(P);
    assert_non_null(strstr(diag_first_error(&d), "heads 6=6 does not split over 4 tp ranks: each rank must hold whole heads"));
    diag_free(&d);
    snprintf(xml, sizeof xml, HEAD IN("a", "B S H") W("w", "H 6", "col") "<op kind=\"matmul\" in=\"a w\" out=\"y\"/>" TAIL);
    P = partition_text(xml, 4, 1, &d);
    assert_null(P);
    assert_non_null(strstr(diag_first_error(&d), "axis 1 of 'w' (6) does not split over 4 tp ranks"));
    diag_free(&d);
}

/* Every model partitions under tp, pp and dp, and T5 and LLaVA with encoder degrees of their own. */
static void test_every_model(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int world, tp, pp, etp, epp, ep;
    } cfg[] = {
        {"models/gpt2.xml", 8, 2, 2, 0, -1, 1},  {"models/llama2.xml", 16, 4, 2, 0, -1, 1},
        {"models/mixtral.xml", 16, 2, 2, 0, -1, 2}, {"models/t5.xml", 10, 2, 2, 1, 1, 1},
        {"models/llava.xml", 24, 4, 2, 2, 2, 1},
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        struct par_config pc = par_config_default();
        pc.world_size = cfg[i].world, pc.tp = cfg[i].tp, pc.pp = cfg[i].pp, pc.etp = cfg[i].etp, pc.epp = cfg[i].epp;
        pc.ep = cfg[i].ep;
        struct partition *P = place_model(cfg[i].file, NULL, pc, NULL, 0);
        assert_true(P->n_xfers > 0);
        assert_int_equal(count(P, PART_XFER_SEND, IR_PDIM_NONE) > 0, 1);
        partition_free(P);
    }
}

int main(void)
{
    enum { N = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N + 7];
    for (size_t i = 0; i < N; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, test_case, NULL, NULL, (void *)&cases[i]};
    tests[N] = (struct CMUnitTest)cmocka_unit_test(test_gpt2_tp2_counts);
    tests[N + 1] = (struct CMUnitTest)cmocka_unit_test(test_pipeline_sends);
    tests[N + 2] = (struct CMUnitTest)cmocka_unit_test(test_experts);
    tests[N + 3] = (struct CMUnitTest)cmocka_unit_test(test_heads_must_divide);
    tests[N + 4] = (struct CMUnitTest)cmocka_unit_test(test_every_model);
    tests[N + 5] = (struct CMUnitTest)cmocka_unit_test(test_sequence_parallel_with_cp);
    tests[N + 6] = (struct CMUnitTest)cmocka_unit_test(test_expert_rows);
    int rc = _cmocka_run_group_tests("shard", tests, N + 7, NULL, NULL);
    fe_cleanup();
    return rc;
}
