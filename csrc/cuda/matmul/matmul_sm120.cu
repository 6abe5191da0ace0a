// The sm120 path's entry point (matmul_with_alpha: the NVFP4 epilogue factor, then the format's kernel).
#include "cuda/matmul/matmul_generic.h"
#include "cuda/matmul/matmul_sm120.h"

namespace fpquant::cuda {

cudaError_t matmul_sm120(const MatmulParams& p, cudaStream_t stream) {
  return matmul_with_alpha(p, matmul_mxfp4_sm120, matmul_nvfp4_sm120, stream);
}

}  // namespace fpquant::cuda
