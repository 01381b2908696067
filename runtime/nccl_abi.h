/* nccl_abi.h: the few types and constants of NCCL's C interface that
 * comm_nccl.c uses, as nccl.h (NCCL 2.28) documents them, so that weft
 * builds without NCCL and opens libnccl.so.2 only when a run asks for it.
 * tests/test_comm.c compiles them against nccl.h where the toolkit has it.
 *
 *   nc_config cfg = NC_CONFIG_INITIALIZER;   // as NCCL_CONFIG_INITIALIZER
 *   cfg.blocking = 0;                        // ncclInProgress until done
 *
 * Enum values are those of ncclResult_t, ncclRedOp_t and ncclDataType_t;
 * nc_config is ncclConfig_v22800, whose fields NCCL only ever appends to:
 * a library older than 2.28 reads the fields it knows (by `version`). */
#ifndef WEFT_NCCL_ABI_H
#define WEFT_NCCL_ABI_H

#include <limits.h>
#include <stddef.h>

typedef int nc_result;              /* ncclResult_t */
typedef struct nc_comm *nc_comm;    /* ncclComm_t */

enum { NC_SUCCESS = 0, NC_UNHANDLED_CUDA_ERROR = 1, NC_SYSTEM_ERROR = 2, NC_INTERNAL_ERROR = 3, NC_INVALID_ARGUMENT = 4,
       NC_INVALID_USAGE = 5, NC_REMOTE_ERROR = 6, NC_IN_PROGRESS = 7 };
enum { NC_SUM = 0, NC_MAX = 2 };                                      /* ncclRedOp_t */
enum { NC_INT8 = 0, NC_INT32 = 2, NC_FLOAT32 = 7, NC_BFLOAT16 = 9 };  /* ncclDataType_t */

#define NC_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NC_UNIQUE_ID_BYTES];
} nc_unique_id;

#define NC_VERSION_CODE(x, y, z) ((x) * 10000 + (y) * 100 + (z)) /* NCCL_VERSION, from 2.9 on */
#define NC_CONFIG_MAGIC 0xcafebeef
#define NC_CONFIG_UNDEF_INT INT_MIN

typedef struct {
    size_t size;
    unsigned int magic;
    unsigned int version;
    int blocking;
    int cgaClusterSize;
    int minCTAs;
    int maxCTAs;
    const char *netName;
    int splitShare;
    int trafficClass;
    const char *commName;
    int collnetEnable;
    int CTAPolicy;
    int shrinkShare;
    int nvlsCTAs;
    int nChannelsPerNetPeer;
    int nvlinkCentricSched;
} nc_config;

#define NC_CONFIG_INITIALIZER                                                                                                 \
    {                                                                                                                         \
        sizeof(nc_config), NC_CONFIG_MAGIC, NC_VERSION_CODE(2, 28, 9), NC_CONFIG_UNDEF_INT, NC_CONFIG_UNDEF_INT,              \
            NC_CONFIG_UNDEF_INT, NC_CONFIG_UNDEF_INT, NULL, NC_CONFIG_UNDEF_INT, NC_CONFIG_UNDEF_INT, NULL,                  \
            NC_CONFIG_UNDEF_INT, NC_CONFIG_UNDEF_INT, NC_CONFIG_UNDEF_INT, NC_CONFIG_UNDEF_INT, NC_CONFIG_UNDEF_INT,          \
            NC_CONFIG_UNDEF_INT                                                                                               \
    }

/* The oldest NCCL weft runs on: non-blocking communicators and their
 * configuration (2.14), bf16 (2.10), ncclCommGetAsyncError's polling of
 * a non-blocking init (2.14). */
#define NC_VERSION_MIN NC_VERSION_CODE(2, 14, 0)

#endif
