// cuBLAS, opened at run time with dlopen: this machine (and many users') has no cuBLAS headers
// and the addon must load without cuBLAS present so that it can say why it cannot run.
// Only the few prototypes and enum values glmtool uses are declared here; their values are
// those of cublas_api.h (cuBLAS 12/13), where the ABI of these calls has been stable.
#pragma once
#include <cuda_runtime.h>
#include <library_types.h>
#include <string>

namespace glm {

typedef struct cublasContext* cublasHandle_t;
typedef int cublasStatus_t;  // CUBLAS_STATUS_SUCCESS = 0
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };

struct Cublas {
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
  cublasStatus_t (*setStream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*setWorkspace)(cublasHandle_t, void*, size_t) = nullptr;
  cublasStatus_t (*getVersion)(cublasHandle_t, int*) = nullptr;
  cublasStatus_t (*gemmEx)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*,
                           cudaDataType, int, const void*, cudaDataType, int, const void*, void*, cudaDataType, int,
                           cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  cublasStatus_t (*gemmStridedBatchedEx)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                         const void*, cudaDataType, int, long long, const void*, cudaDataType, int, long long,
                                         const void*, void*, cudaDataType, int, long long, int, cublasComputeType_t,
                                         cublasGemmAlgo_t) = nullptr;
  std::string path;   // the library actually opened
};

// Opens libcublas.so.13 once (GLMTOOL_CUBLAS may name the file; else the dynamic linker's search
// path, then the usual CUDA install folders). Returns nullptr and sets `why` when it cannot.
const Cublas* loadCublas(std::string* why);

}  // namespace glm
