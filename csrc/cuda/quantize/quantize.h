// Framework-agnostic CUDA entry points for quantization (raw pointers, sizes, a stream). The torch glue in
// csrc/ops/quantize_cuda.cpp validates inputs, allocates outputs through torch, asks plan_quantize
// (quantize_plan.h) for the kernel, and calls these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/scale_rules.h"

namespace fpquant::cuda {

using core::DType;
using core::Format;
using core::group_size;
using core::ScaleLayout;

struct QuantizeParams {
  const void* x = nullptr;  // [rows, K], contiguous, 16-byte aligned
  DType dtype = DType::kBF16;
  int64_t rows = 0, K = 0;
  Format format = Format::kMxFp4;
  core::MxRule rule = core::MxRule::kFloor;  // MXFP4 only
  const float* global_scale = nullptr;       // NVFP4 only: one float on the device
  ScaleLayout layout = ScaleLayout::kLinear;  // blocked scales must be zero-filled beforehand
  uint8_t* codes = nullptr;                  // [rows, K/2]
  uint8_t* scales = nullptr;                 // [rows, K/group] or blocked
  // Optional rotation, r in {16, 32, 64, 128}, R[in][out] (y = x_block @ R), given either as
  //  - rot: float32, 16-byte aligned (fast path, 16-bit x; the kernel derives its tensor-core operands), or
  //  - rot_hi + rot_lo: R split into a high and a low part of the tensor-core type (bfloat16, or float16 when
  //    x is float16), hi + lo carrying R to ~16 bits (split path: float32 x, or NVFP4 r = 16 with K % 32 != 0).
  const float* rot = nullptr;
  const void* rot_hi = nullptr;
  const void* rot_lo = nullptr;
  int r = 0;
};

struct DequantizeParams {
  const uint8_t* codes = nullptr;  // [rows, K/2], 16-byte aligned
  const uint8_t* scales = nullptr;
  Format format = Format::kMxFp4;
  const float* global_scale = nullptr;
  ScaleLayout layout = ScaleLayout::kLinear;
  int64_t rows = 0, K = 0;
  void* out = nullptr;  // [rows, K] of out_dtype
  DType out_dtype = DType::kF32;
};

// One launcher per path of plan_quantize (quantize_plan.h):
// - kGroups: no rotation, one thread per group, bit-identical to the CPU;
// - kRotateMma: rotation on mma.sync tensor cores (fp32 accumulation) fused with quantization, rot set;
// - kRotateSplit: the same with R and x split hi + lo (rot_hi / rot_lo set, r the plan's kernel_r);
// - kRotateSm90 (compiled for sm_90a alone, FPQUANT_SM90_KERNELS): warpgroup MMAs, same semantics.
cudaError_t quantize_groups(const QuantizeParams& p, cudaStream_t stream);
cudaError_t quantize_rotated_mma(const QuantizeParams& p, cudaStream_t stream);
cudaError_t quantize_rotated_split(const QuantizeParams& p, cudaStream_t stream);
cudaError_t quantize_rotated_sm90(const QuantizeParams& p, cudaStream_t stream);
cudaError_t dequantize(const DequantizeParams& p, cudaStream_t stream);

// NVFP4 global scale of n elements: *out = 448 * 6 / amax (core::nv_global_scale_from_amax). `scratch` is two
// uint32 that must be zero on entry (amax bits, non-finite flag). No host synchronization.
cudaError_t global_scale(const void* x, DType dtype, int64_t n, uint32_t* scratch, float* out, cudaStream_t stream);

}  // namespace fpquant::cuda
