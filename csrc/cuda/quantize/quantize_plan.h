// The quantize plan: which kernel quantizes x [rows, K] (with or without a block rotation of size r), and
// what rotation matrix that kernel sees. The one place where that is decided. Plain C++ (no CUDA, no
// torch). Reasoning and measurements: docs/perf/quantize.md, section "Plan".
#pragma once

#include <cstdint>

#include "core/types.h"
#include "cuda/common/gpu_info.h"

namespace fpquant::cuda {

enum class QuantizePath : int {
  kGroups = 0,       // no rotation: one thread per group (quantize_groups.cu), bit-identical to the CPU
  kRotateMma = 1,    // 16-bit x: rotation on mma.sync tensor cores, fused (rotate_quantize_mma.cu)
  kRotateSplit = 2,  // float32 x (or NVFP4 r = 16, K % 32 != 0): R and x split hi + lo (rotate_quantize_split.cu)
  kRotateSm90 = 3,   // 16-bit x on sm_90: warpgroup MMAs, rotation in shared memory (rotate_quantize_sm90.cu)
};
constexpr int kQuantizePaths = 4;

// The sm_90 rotation kernel streams 128-element chunks in tiles of 64 chunks, 4 warpgroups per CTA.
constexpr int kRotateSm90Chunk = 128;
constexpr int kRotateSm90TileChunks = 64;
constexpr int kRotateSm90Warpgroups = 4;

// An explicit path for measurements and tests (fpquant_ext.tuning.plan_override); -1 leaves the choice.
struct QuantizeOverride {
  int path = -1;
};

struct QuantizePlan {
  QuantizePath path = QuantizePath::kGroups;
  // The rotation size the kernel is built for. r = 16 runs as the block-diagonal diag(R, R) of size 32
  // where a group (32 for MXFP4) must not straddle two rotation blocks and the kernel has no 16 variant:
  // the mma kernel always, the split kernel for MXFP4 (its rotation operand is expanded by the glue).
  int kernel_r = 0;
  const char* invalid = nullptr;  // set when an override cannot apply
};

QuantizePlan plan_quantize(int64_t rows, int64_t K, core::Format f, core::DType x, int r, const GpuInfo& gpu,
                           const QuantizeOverride& ov = {});

}  // namespace fpquant::cuda
