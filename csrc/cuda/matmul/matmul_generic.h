// Small kernels around the GEMMs (matmul_generic.cu, compiled for every target): the NVFP4 epilogue factor
// of the CUTLASS paths, and the last step of the generic path.
#pragma once

#include <cuda_runtime.h>

#include "cuda/matmul/matmul.h"

namespace fpquant::cuda {

// *alpha = matmul_alpha(*p.a_global, *p.b_global), on the device (one thread).
cudaError_t matmul_prepare_alpha(const MatmulParams& p, float* alpha, cudaStream_t stream);

// A CUTLASS path's per-format launcher: alpha is a device pointer to the epilogue factor, or null for 1.
using MatmulAlphaLauncher = cudaError_t (*)(const MatmulParams& p, const float* alpha, cudaStream_t stream);

// The CUTLASS paths' entry: MXFP4 runs `mx` with alpha = 1; NVFP4 first writes 1 / (gA gB) into the
// workspace on the device (no host synchronization, so the call can be captured in a CUDA graph), then
// runs `nv` with it.
cudaError_t matmul_with_alpha(const MatmulParams& p, MatmulAlphaLauncher mx, MatmulAlphaLauncher nv,
                              cudaStream_t stream);

// The generic path's epilogue: out[m, n] = acc[m, n] (/ (gA * gB) for NVFP4) (+ bias[n]), in float64 as the
// reference computes it, then one rounding to p.out_dtype (bfloat16 / float16 through float32 rounded to
// odd, so not rounded twice). acc: [M, N] row-major float64, the exact operands' product summed by cuBLAS.
cudaError_t matmul_generic_finish(const MatmulParams& p, const double* acc, cudaStream_t stream);

}  // namespace fpquant::cuda
