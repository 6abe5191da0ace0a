// NVFP4 x NVFP4 GEMMs for sm_120a: every tile of kSm120Tiles for float32, bfloat16 and float16 output
// (matmul_cutlass.cuh). One format per file so that the two compile in parallel.
#include "cuda/matmul/matmul_cutlass.cuh"
#include "cuda/matmul/matmul_sm120.h"

namespace fpquant::cuda {

cudaError_t matmul_nvfp4_sm120(const MatmulParams& p, const float* alpha, cudaStream_t stream) {
  return cutlass_gemm::launch_format<cutlass::arch::Sm120, core::Format::kNvFp4, kSm120TileCount>(p, alpha, stream);
}

}  // namespace fpquant::cuda
