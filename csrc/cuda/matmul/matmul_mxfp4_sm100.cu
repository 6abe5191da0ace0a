// MXFP4 x MXFP4 GEMMs for sm_100a: every tile of kSm100Tiles for float32, bfloat16 and float16 output
// (matmul_cutlass.cuh). One format per file so that the two compile in parallel.
#include "cuda/matmul/matmul_cutlass.cuh"
#include "cuda/matmul/matmul_sm100.h"

namespace fpquant::cuda {

cudaError_t matmul_mxfp4_sm100(const MatmulParams& p, const float* alpha, cudaStream_t stream) {
  return cutlass_gemm::launch_format<cutlass::arch::Sm100, core::Format::kMxFp4, kSm100TileCount>(p, alpha, stream);
}

}  // namespace fpquant::cuda
