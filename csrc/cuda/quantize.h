// Framework-agnostic CUDA entry points for quantization (raw pointers, sizes, a stream). The torch glue in
// ops_cuda.cpp validates inputs, allocates outputs through torch and calls these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/scale_rules.h"

namespace fpquant::cuda {

enum class DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };
enum class Format : int { kMxFp4 = 0, kNvFp4 = 1 };

// Elements per scale: 32 for MXFP4, 16 for NVFP4.
constexpr int group_size(Format f) { return f == Format::kMxFp4 ? core::kMxGroup : core::kNvGroup; }

struct QuantizeParams {
  const void* x = nullptr;  // [rows, K], contiguous, 16-byte aligned
  DType dtype = DType::kBF16;
  int64_t rows = 0, K = 0;
  Format format = Format::kMxFp4;
  core::MxRule rule = core::MxRule::kFloor;  // MXFP4 only
  const float* global_scale = nullptr;       // NVFP4 only: one float on the device
  bool blocked = false;                      // scale layout; blocked scales must be zero-filled beforehand
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
  bool blocked = false;
  int64_t rows = 0, K = 0;
  void* out = nullptr;  // [rows, K] of out_dtype
  DType out_dtype = DType::kF32;
};

// quantize() picks quantize_rowwise (no rotation: one thread per group, bit-identical to the CPU) or
// quantize_rotated (rotation on tensor cores with fp32 accumulation, fused with quantization), which hands
// split-precision requests (rot_hi set) to quantize_rotated_split.
cudaError_t quantize(const QuantizeParams& p, cudaStream_t stream);
cudaError_t quantize_rowwise(const QuantizeParams& p, cudaStream_t stream);
cudaError_t quantize_rotated(const QuantizeParams& p, cudaStream_t stream);
cudaError_t quantize_rotated_split(const QuantizeParams& p, cudaStream_t stream);
// Hopper (sm_90a) variant of quantize_rotated on warpgroup MMAs, same bits; used where it applies (16-bit x,
// float32 rotation, rows * K a multiple of 128, an sm_90 device).
bool quantize_rotated_wgmma_applies(const QuantizeParams& p);
cudaError_t quantize_rotated_wgmma(const QuantizeParams& p, cudaStream_t stream);
cudaError_t dequantize(const DequantizeParams& p, cudaStream_t stream);

// NVFP4 global scale of n elements: *out = 448 * 6 / amax (core::nv_global_scale_from_amax). `scratch` is two
// uint32 that must be zero on entry (amax bits, non-finite flag). No host synchronization.
cudaError_t global_scale(const void* x, DType dtype, int64_t n, uint32_t* scratch, float* out, cudaStream_t stream);

}  // namespace fpquant::cuda
