// The library's vocabulary, one enum per concept, shared by the torch glue (csrc/ops), the plans and the
// kernels (csrc/cuda). Torch-free and CUDA-free. Strings appear only at the Python/schema boundary, where
// csrc/ops/checks.h parses them into these.
#pragma once

namespace fpquant::core {

// The 4-bit format: E2M1 elements with an E8M0 scale per 32 (MXFP4) or an E4M3 scale per 16 and a float32
// global scale (NVFP4).
enum class Format : int { kMxFp4 = 0, kNvFp4 = 1 };

// Where group scales live: `linear` [rows, groups] row-major, or `blocked`, the 128x4 tiling that Blackwell
// block-scaled tensor cores and cuBLAS read (core/scale_layout.h).
enum class ScaleLayout : int { kLinear = 0, kBlocked = 1 };

// The MXFP4 scale rule (the `method` argument). NVFP4 has one rule (amax / 6 times the global scale).
enum class MxRule : int { kFloor = 0, kCeil = 1, kQuest = 2 };

// Element types of activations and outputs.
enum class DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

constexpr int kMxGroup = 32;  // MXFP4: elements per E8M0 scale
constexpr int kNvGroup = 16;  // NVFP4: elements per E4M3 scale

// Elements per scale.
constexpr int group_size(Format f) { return f == Format::kMxFp4 ? kMxGroup : kNvGroup; }

}  // namespace fpquant::core
