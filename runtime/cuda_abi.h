/* cuda_abi.h: the values of the CUDA libraries' enums and the shapes of
 * their structs that cuda.c passes, copied from their documented headers
 * (cuda.h, library_types.h, cublas_api.h, cublasLt.h of CUDA 13), so that
 * weft builds without them.  tests/test_backends.c reads the toolkit's
 * headers, where they are installed, and checks every value here against
 * them:
 *
 *   #define X(name, value) check(#name, value);
 *   CUDA_ABI_CONSTANTS(X)
 *   #undef X
 */
#ifndef WEFT_CUDA_ABI_H
#define WEFT_CUDA_ABI_H

#include <stdint.h>

#define CUDA_ABI_CONSTANTS(X)                                                                                                 \
    X(CU_MEMORYTYPE_DEVICE, 2)                  /* cuda.h: CUmemorytype */                                            \
    X(CU_STREAM_NON_BLOCKING, 1)                /* CUstream_flags */                                                   \
    X(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL, 1)   /* CUstreamCaptureMode */                                              \
    X(CU_EVENT_DISABLE_TIMING, 2)               /* CUevent_flags */                                                    \
    X(CUDA_ERROR_NOT_READY, 600)                /* CUresult */                                                         \
    X(CUDA_R_32F, 0)                            /* library_types.h: cudaDataType */                                    \
    X(CUDA_R_16BF, 14)                                                                                                    \
    X(CUBLAS_STATUS_SUCCESS, 0)                 /* cublas_api.h */                                                     \
    X(CUBLAS_OP_N, 0)                                                                                                     \
    X(CUBLAS_OP_T, 1)                                                                                                     \
    X(CUBLAS_COMPUTE_32F, 68)                   /* fp32 sums, no TF32 */                                               \
    X(CUBLASLT_MATMUL_DESC_TRANSA, 3)           /* cublasLt.h: int32_t, a cublasOperation_t */                         \
    X(CUBLASLT_MATMUL_DESC_TRANSB, 4)                                                                                     \
    X(CUBLASLT_MATMUL_DESC_EPILOGUE, 7)         /* uint32_t, a cublasLtEpilogue_t */                                   \
    X(CUBLASLT_MATMUL_DESC_BIAS_POINTER, 8)     /* const void *: D's rows */                                           \
    X(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, 11) /* void *: GELU's input */                                        \
    X(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, 12) /* int64_t: a multiple of 8, at least D's rows */                       \
    X(CUBLASLT_EPILOGUE_DEFAULT, 1)                                                                                       \
    X(CUBLASLT_EPILOGUE_BIAS, 4)                                                                                          \
    X(CUBLASLT_EPILOGUE_GELU_BIAS, 36)                                                                                    \
    X(CUBLASLT_EPILOGUE_GELU_AUX_BIAS, 164)                                                                               \
    X(CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, 5)    /* int32_t */                                                          \
    X(CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, 6) /* int64_t, elements */                                          \
    X(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, 1) /* uint64_t */                                                      \
    X(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, 5) /* uint32_t each */                                               \
    X(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, 6)                                                                      \
    X(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, 7)                                                                      \
    X(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, 8)

enum cuda_abi {
#define X(name, value) ABI_##name = value,
    CUDA_ABI_CONSTANTS(X)
#undef X
};

/* cublasLtMatmulAlgo_t: 8 uint64_t, opaque. */
struct lt_algo {
    uint64_t data[8];
};

/* cublasLtMatmulHeuristicResult_t: the algorithm (64 bytes), its workspace
 * (size_t, 8), its status (int, 4), its waves (float, 4), int[4] reserved
 * (16): 96 bytes. */
struct lt_heuristic {
    struct lt_algo algo;
    size_t workspace_bytes;
    int state;
    float waves;
    int reserved[4];
};
_Static_assert(sizeof(struct lt_heuristic) == 96, "cublasLtMatmulHeuristicResult_t is 96 bytes");

#endif
