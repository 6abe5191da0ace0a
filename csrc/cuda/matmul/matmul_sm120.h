// Launchers of the sm_120a block-scaled FP4 GEMMs, CUTLASS kernels on the block-scaled mma.sync (RTX 50xx / RTX PRO Blackwell: compute capability 12.0): the sm120 path of plan_matmul. Compiled only when 120a is in
// FPQUANT_CUDA_ARCHS (FPQUANT_SM120_KERNELS); torch-free.
#pragma once

#include <cuda_runtime.h>

#include "cuda/matmul/matmul.h"

namespace fpquant::cuda {

// out = A B^T (/ gA gB) (+ bias) for p.format, p.out_dtype and tile p.config (kSm120Tiles). Needs what
// plan_matmul's sm120 path guarantees: blocked scales, matmul_kernel_shape_issue() == nullptr, bias (if
// any) float32, 16-byte aligned codes, scales and output, and for NVFP4 the plan's workspace.
cudaError_t matmul_sm120(const MatmulParams& p, cudaStream_t stream);

// The per-format halves (matmul_mxfp4_sm120.cu, matmul_nvfp4_sm120.cu, one compile each); alpha is a device
// pointer to the epilogue factor or null for 1.
cudaError_t matmul_mxfp4_sm120(const MatmulParams& p, const float* alpha, cudaStream_t stream);
cudaError_t matmul_nvfp4_sm120(const MatmulParams& p, const float* alpha, cudaStream_t stream);

}  // namespace fpquant::cuda
