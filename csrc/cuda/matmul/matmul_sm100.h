// Launchers of the sm_100a block-scaled FP4 GEMMs, CUTLASS kernels on the tcgen05 block-scaled MMA (B200 / GB200: compute capability 10.0): the sm100 path of plan_matmul. Compiled only when 100a is in
// FPQUANT_CUDA_ARCHS (FPQUANT_SM100_KERNELS); torch-free.
#pragma once

#include <cuda_runtime.h>

#include "cuda/matmul/matmul.h"

namespace fpquant::cuda {

// out = A B^T (/ gA gB) (+ bias) for p.format, p.out_dtype and tile p.config (kSm100Tiles). Needs what
// plan_matmul's sm100 path guarantees: blocked scales, matmul_kernel_shape_issue() == nullptr, bias (if
// any) float32, 16-byte aligned codes, scales and output, and for NVFP4 the plan's workspace.
cudaError_t matmul_sm100(const MatmulParams& p, cudaStream_t stream);

// The per-format halves (matmul_mxfp4_sm100.cu, matmul_nvfp4_sm100.cu, one compile each); alpha is a device
// pointer to the epilogue factor or null for 1.
cudaError_t matmul_mxfp4_sm100(const MatmulParams& p, const float* alpha, cudaStream_t stream);
cudaError_t matmul_nvfp4_sm100(const MatmulParams& p, const float* alpha, cudaStream_t stream);

}  // namespace fpquant::cuda
