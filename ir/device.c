/* device.c: the built-in devices' calibration tables and the file that
 * replaces their constants. */
#include "device.h"

#include "json.h"
#include "util.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Where each default comes from.  Datasheet figures are the vendors' dense
 * (no sparsity) peaks; the efficiencies are published measurements where one
 * is cited, else an estimate said to be one, to be replaced by a measured
 * calibration file (bench/gpu.sh writes one).
 *
 * H100 SXM5 80 GB (NVIDIA H100 Tensor Core GPU datasheet): 989 TFLOP/s dense
 *   bf16, 67 TFLOP/s fp32 (CUDA cores), 3.35 TB/s HBM3, NVLink 4 at 900 GB/s
 *   both ways (450 each), 8 to an HGX node, NDR InfiniBand 400 Gb/s (50 GB/s)
 *   per GPU.
 * A100 SXM4 80 GB (NVIDIA A100 datasheet): 312 TFLOP/s dense bf16, 19.5
 *   TFLOP/s fp32, 2.04 TB/s HBM2e, NVLink 3 at 600 GB/s both ways, HDR
 *   InfiniBand 200 Gb/s (25 GB/s) per GPU.
 * An fp32 plan's GEMMs are costed at the fp32 (CUDA-core) peak, not TF32's:
 *   weft's fp32 runs are its reference for the CPU backend (losses within
 *   1e-4), which TF32's 10-bit mantissa would not meet.
 * gemm_ceiling: large bf16 GEMMs through cuBLAS reach about three quarters
 *   of the dense peak on H100 SXM (700-800 of 989 TFLOP/s is what cuBLAS
 *   12 is commonly reported at on 8192^3; issue 15 takes ~0.75) and a
 *   larger share on A100 (whose peak is easier to feed: ~0.85, an
 *   estimate).  gemm_half_dim 128: one tensor-core tile (128 x 128 or 128
 *   x 256 on Hopper) along a dimension leaves most of the GPU's SMs idle;
 *   an estimate of the shape of the curve, not a measurement.
 * gemm_launch 3 us: a kernel launched from a CUDA graph costs 1-3 us;
 *   an estimate.
 * attention_efficiency: FlashAttention-2 reaches 50-73% of the A100's peak
 *   forward (Dao 2023, "FlashAttention-2", its A100 benchmarks) and 35% of
 *   the H100's (Shah et al. 2024, "FlashAttention-3", section 1).
 * hbm_efficiency 0.8: streaming kernels reach 80-90% of HBM's peak
 *   (BabelStream's copy and triad on A100 and H100 are in that range);
 *   0.8 leaves room for the row reductions (norms, softmax).
 * link_bytes: nccl-tests' bus bandwidth (busbw, the rate a ring moves
 *   2(n-1)/n of an all-reduce's buffer at: nccl-tests' PERFORMANCE.md) on
 *   8 GPUs at large sizes: 460-480 GB/s on H100 SXM, 230-250 GB/s on A100
 *   SXM (e.g. the reference tables of NCCL-tests run guides); the lower
 *   ends.  network_bytes: the NIC's line rate per GPU.
 * link_latency 10 us: nccl-tests' small all-reduces on NVLink take 10-30
 *   us; the lower end, since the plan's collectives are large.
 * cpu: the figures of a small AVX2 machine (2 cores at ~2.5 GHz: 2 FMA
 *   units x 8 floats x 2 FLOPs x 2.5 GHz = 80 GFLOP/s a core; ~20 GB/s of
 *   DRAM bandwidth; MPI's shared-memory transport at a few GB/s and a few
 *   microseconds), estimates only: weft run fits the GEMM and kernel rates
 *   to what it measures (compiler/simulate.h, simulate_fit). */
static const struct device devices[] = {
    {.name = "h100", .arch = 90, .bf16_flops = 989e12, .fp32_flops = 67e12, .gemm_ceiling = 0.75, .gemm_half_dim = 128,
     .gemm_launch = 3e-6, .attention_efficiency = 0.35, .hbm_bytes = 3.35e12, .hbm_efficiency = 0.8, .link_bytes = 460e9,
     .network_bytes = 50e9, .link_latency = 10e-6, .memory = 80.0 * (1 << 30), .gpus_per_node = 8},
    {.name = "a100", .arch = 80, .bf16_flops = 312e12, .fp32_flops = 19.5e12, .gemm_ceiling = 0.85, .gemm_half_dim = 128,
     .gemm_launch = 3e-6, .attention_efficiency = 0.6, .hbm_bytes = 2.04e12, .hbm_efficiency = 0.8, .link_bytes = 230e9,
     .network_bytes = 25e9, .link_latency = 10e-6, .memory = 80.0 * (1 << 30), .gpus_per_node = 8},
    {.name = "cpu", .arch = 0, .bf16_flops = 160e9, .fp32_flops = 160e9, .gemm_ceiling = 0.8, .gemm_half_dim = 32,
     .gemm_launch = 5e-6, .attention_efficiency = 0.1, .hbm_bytes = 20e9, .hbm_efficiency = 0.5, .link_bytes = 4e9,
     .network_bytes = 1e9, .link_latency = 5e-6, .memory = 16.0 * (1 << 30), .gpus_per_node = 1 << 20},
};

/* The calibration file's keys: each a field of the table, in the unit its
 * name says (scale: that unit in SI). */
static const struct {
    const char *key;
    size_t offset;
    double scale;
} keys[] = {
    {"arch", offsetof(struct device, arch), 0}, /* an integer: sm_XX's XX */
    {"bf16_tflops", offsetof(struct device, bf16_flops), 1e12},
    {"fp32_tflops", offsetof(struct device, fp32_flops), 1e12},
    {"gemm_ceiling", offsetof(struct device, gemm_ceiling), 1},
    {"gemm_half_dim", offsetof(struct device, gemm_half_dim), 1},
    {"gemm_launch_us", offsetof(struct device, gemm_launch), 1e-6},
    {"attention_efficiency", offsetof(struct device, attention_efficiency), 1},
    {"hbm_gbps", offsetof(struct device, hbm_bytes), 1e9},
    {"hbm_efficiency", offsetof(struct device, hbm_efficiency), 1},
    {"link_gbps", offsetof(struct device, link_bytes), 1e9},
    {"network_gbps", offsetof(struct device, network_bytes), 1e9},
    {"link_latency_us", offsetof(struct device, link_latency), 1e-6},
    {"memory_gib", offsetof(struct device, memory), 1073741824.0},
    {"gpus_per_node", offsetof(struct device, gpus_per_node), 1},
};

const struct device *device_find(const char *name)
{
    for (size_t i = 0; i < WF_COUNT(devices); i++)
        if (!strcmp(devices[i].name, name))
            return &devices[i];
    return NULL;
}

const char *device_names(void) { return "h100, a100, cpu"; }

const struct device *device_for_archs(const char *archs, struct diag *d)
{
    const struct device *best = NULL;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", archs);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "cpu"))
            return device_find("cpu");
        long a = strtol(!strncmp(tok, "sm_", 3) ? tok + 3 : tok, NULL, 10);
        for (size_t i = 0; i < WF_COUNT(devices); i++)
            if (devices[i].arch && devices[i].arch == a && (!best || a > best->arch))
                best = &devices[i];
    }
    if (!best)
        diag_error(d, NULL, 0, "--arch %s: no built-in device for it (sm_90: h100, sm_80: a100, cpu); name one with --gpu", archs);
    return best;
}

int device_calibrate(struct device *dev, const char *path, struct diag *d)
{
    size_t len;
    char *text = wf_read_file(path, 1 << 20, &len), err[128];
    if (!text) {
        diag_error(d, path, 0, "cannot read the calibration file: %s", strerror(errno));
        return -1;
    }
    struct json_value *v = json_parse(text, len, err, sizeof err);
    free(text);
    if (!v || v->type != JSON_OBJECT) {
        diag_error(d, path, 0, "a calibration file is one JSON object%s%s", v ? "" : ": ", v ? "" : err);
        json_free(v);
        return -1;
    }
    int errors = d->n_errors;
    for (int i = 0; i < v->n; i++) {
        const char *key = v->keys[i];
        const struct json_value *x = &v->items[i];
        if (!strcmp(key, "name")) {
            if (x->type != JSON_STRING || !x->len || x->len >= sizeof dev->name)
                diag_error(d, path, 0, "name: expected a device's name (a string of 1 to %zu bytes)", sizeof dev->name - 1);
            else
                snprintf(dev->name, sizeof dev->name, "%s", x->string);
            continue;
        }
        int k = -1;
        for (size_t j = 0; j < WF_COUNT(keys) && k < 0; j++)
            if (!strcmp(keys[j].key, key))
                k = (int)j;
        if (k < 0) {
            char list[512];
            size_t n = (size_t)snprintf(list, sizeof list, "name");
            for (size_t j = 0; j < WF_COUNT(keys) && n < sizeof list; j++)
                n += (size_t)snprintf(list + n, sizeof list - n, ", %s", keys[j].key);
            diag_error(d, path, 0, "unknown key '%s' (keys: %s)", key, list);
        } else if (x->type != JSON_NUMBER || !(x->number > 0) || x->number > 1e30) {
            diag_error(d, path, 0, "%s: expected a positive number", key);
        } else if (keys[k].scale == 0) {
            if (!x->is_int || x->integer > 1000)
                diag_error(d, path, 0, "%s: expected an architecture's number such as 90", key);
            else
                *(int *)((char *)dev + keys[k].offset) = (int)x->integer;
        } else {
            *(double *)((char *)dev + keys[k].offset) = x->number * keys[k].scale;
        }
    }
    json_free(v);
    return d->n_errors == errors ? 0 : -1;
}

void device_json(struct json *j, const char *key, const struct device *dev)
{
    json_begin_object(j, key);
    json_string(j, "name", dev->name);
    for (size_t i = 0; i < WF_COUNT(keys); i++) {
        const char *at = (const char *)dev + keys[i].offset;
        if (keys[i].scale == 0)
            json_int(j, keys[i].key, *(const int *)at);
        else
            json_double(j, keys[i].key, *(const double *)at / keys[i].scale);
    }
    json_end_object(j);
}

double device_gemm_efficiency(const struct device *dev, double m, double n, double k)
{
    double h = dev->gemm_half_dim;
    return dev->gemm_ceiling * (m / (m + h)) * (n / (n + h)) * (k / (k + h));
}

double device_gemm_seconds(const struct device *dev, bool bf16, double m, double n, double k)
{
    if (m <= 0 || n <= 0 || k <= 0)
        return 0;
    double peak = bf16 ? dev->bf16_flops : dev->fp32_flops;
    return dev->gemm_launch + 2 * m * n * k / (peak * device_gemm_efficiency(dev, m, n, k));
}
