// Framework-agnostic entry points of the block-scaled FP4 GEMMs (matmul_mxfp4 / matmul_nvfp4):
//   out[M, N] = dequantize(A)[M, K] @ dequantize(B)[N, K]^T / (gA * gB) (+ bias[N])
// with A and B given as packed E2M1 codes (two per byte, element 2i in the low nibble) and group scales along
// K in the linear ([rows, K/group] row-major) or blocked 128x4 layout (core/scale_layout.h); the division by
// the product of the NVFP4 encode global scales only for NVFP4. Semantics and rounding: the CPU reference,
// csrc/ops/matmul_cpu.cpp. Which kernel runs: plan_matmul (matmul_plan.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/fp_formats.h"
#include "core/types.h"

namespace fpquant::cuda {

using core::DType;
using core::Format;
using core::ScaleLayout;

struct MatmulParams {
  Format format = Format::kMxFp4;
  ScaleLayout layout = ScaleLayout::kLinear;
  int64_t M = 0, N = 0, K = 0;  // K a multiple of the format's group (32 or 16)
  const uint8_t* a_codes = nullptr;   // [M, K/2], rows contiguous
  const uint8_t* a_scales = nullptr;  // E8M0 (MXFP4) or E4M3 (NVFP4) bytes, `layout` over [M, K/group]
  const uint8_t* b_codes = nullptr;   // [N, K/2]
  const uint8_t* b_scales = nullptr;  // `layout` over [N, K/group]
  const float* a_global = nullptr;    // NVFP4: device pointer to A's encode global scale (one float)
  const float* b_global = nullptr;    // NVFP4: device pointer to B's encode global scale
  const void* bias = nullptr;         // optional [N] of bias_dtype (the CUTLASS paths take float32 alone)
  DType bias_dtype = DType::kF32;
  void* out = nullptr;  // [M, N] of out_dtype, row-major
  DType out_dtype = DType::kF32;
  void* workspace = nullptr;  // what the plan asked for (MatmulPlan::workspace_bytes), 256-byte aligned
  size_t workspace_bytes = 0;
  int config = 0;  // the plan's tile configuration for the chosen path
  int num_sms = 0;  // the GPU's multiprocessors (CUTLASS's persistent tile scheduler sizes its grid by them)
};

// The NVFP4 epilogue factor of the CUTLASS paths, alpha = 1 / (gA * gB): the product and the quotient in
// float64 (exact product of two floats), one rounding to float32. The reference divides its float64 sum by
// gA * gB instead; multiplying the float32 accumulator by alpha adds at most half an ulp of float32.
FPQ_HD float matmul_alpha(float a_global, float b_global) {
  return static_cast<float>(1.0 / (static_cast<double>(a_global) * static_cast<double>(b_global)));
}

}  // namespace fpquant::cuda
