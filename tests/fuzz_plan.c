/* fuzz_plan.c: libFuzzer target for the plan reader (make fuzz FUZZ=plan).
 * Checksums are recomputed over the input first, so a mutation reaches the
 * section decoders instead of stopping at the CRC.  Any input must be read,
 * or refused with a message: never a crash, a leak or a hang. */
#include "actions.h"
#include "kernel.h"
#include "memplan.h"
#include "partition.h"
#include "optim.h"
#include "plan.h"
#include "rank_plan.h"
#include "program.h"
#include "util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t rd(const uint8_t *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static void wr(uint8_t *b, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    if (size >= 72) { /* make the checksums agree with the (mutated) contents */
        uint64_t table = rd(buf + 24, 8), n = rd(buf + 12, 4);
        if (table <= size && n <= (size - table) / 48) {
            for (uint64_t i = 0; i < n; i++) {
                uint8_t *e = buf + table + i * 48;
                uint64_t off = rd(e + 24, 8), len = rd(e + 32, 8);
                if (off <= size && len <= size - off)
                    wr(e + 40, plan_crc32(buf + off, len));
            }
            wr(buf + 68, plan_crc32(buf + table, n * 48));
        }
        wr(buf + 64, plan_crc32(buf, 64));
    }
    struct diag d;
    diag_init(&d);
    struct plan *p = plan_open_memory("fuzz.plan", buf, size, &d);
    struct par_config pc = {0};
    bool enc;
    struct ir_schedule S = {0};
    if (p && ir_layout_read(p, &pc, &enc, &d) == 0 && pc.world_size <= 64) {
        struct rank_layout *L = rank_layout_new(&pc, enc, &d);
        if (L && ir_schedule_read(p, -1, &S, &d) == 0) {
            int n = 0;
            for (int s = 0; s < S.n_stages; s++)
                n += S.programs[s].n;
            bool fits = n < 20000;
            for (int c = 0; c < S.n_chunks; c++) /* a program must name stages the layout has */
                fits &= S.chunk_stage[c] < L->groups[PAR_GROUP_PP].group_size || !L->groups[PAR_GROUP_PP].group_size;
            if (fits)
                ir_schedule_verify(&S, L, &d);
            struct ir_memory M;
            if (ir_memory_read(p, S.n_stages, -1, &M, &d) == 0) {
                ir_memory_check(&M, &d);
                struct ir_actions A; /* every step's actions, against the memory and the kernels */
                struct kn_set K;
                bool kernels = plan_has(p, "kernels") && kn_set_read(p, &K, &d) == 0;
                if (ir_actions_read(p, S.n_stages, -1, &A, &d) == 0) {
                    ir_actions_check(&A, &M, kernels ? &K : NULL, &S, &d);
                    ir_actions_free(&A);
                }
                if (kernels)
                    kn_set_free(&K);
                ir_memory_free(&M);
            }
        }
        rank_layout_free(L);
    }
    ir_schedule_free(&S);
    if (p && pc.world_size <= 64) /* the compiler's reader of the same plan: graph, shards, transfers */
        partition_free(partition_read_plan(p, &d));
    struct optim_config opt;
    if (p && plan_has(p, "optimizer"))
        optim_read(p, &opt, &d);
    struct kn_set K;
    if (p && plan_has(p, "kernels") && kn_set_read(p, &K, &d) == 0)
        kn_set_free(&K);
    struct rank_hf hf;
    if (p) { /* Hugging Face's names: maps may name any of a million tensors here */
        rank_hf_read(p, 1 << 20, &hf, &d);
        rank_hf_free(&hf);
    }
    plan_close(p);
    diag_free(&d);
    free(buf);
    return 0;
}
