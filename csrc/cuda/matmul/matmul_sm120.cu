// The sm120 path's entry point: the NVFP4 epilogue factor into the workspace (no host synchronization,
// so the call can be captured in a CUDA graph), then the format's CUTLASS kernel.
#include "cuda/matmul/matmul_generic.h"
#include "cuda/matmul/matmul_sm120.h"

namespace fpquant::cuda {

cudaError_t matmul_sm120(const MatmulParams& p, cudaStream_t stream) {
  if (p.format == core::Format::kMxFp4) return matmul_mxfp4_sm120(p, nullptr, stream);
  float* alpha = static_cast<float*>(p.workspace);
  if (alpha == nullptr || p.workspace_bytes < sizeof(float)) return cudaErrorInvalidValue;
  const cudaError_t err = matmul_prepare_alpha(p, alpha, stream);
  if (err != cudaSuccess) return err;
  return matmul_nvfp4_sm120(p, alpha, stream);
}

}  // namespace fpquant::cuda
