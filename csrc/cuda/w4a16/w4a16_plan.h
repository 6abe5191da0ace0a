// The W4A16 plan: which kernel computes out[M, N] = x[M, K] @ W^T for a weight-only FP4 linear layer, with
// which tile configuration and how many splits of K. The one place where that is decided; the kernels obey
// the plan they are given. Plain C++ (no CUDA, no torch). Reasoning and measurements: docs/perf/w4a16.md.
#pragma once

#include <cstdint>

#include "core/types.h"
#include "cuda/common/gpu_info.h"

namespace fpquant::cuda {

constexpr int kW4A16TileN = 32;    // output features per warp (N must be a multiple)
constexpr int kW4A16ChunkK = 128;  // K per pipeline step (K must be a multiple)

enum class W4A16Path : int {
  kDecode = 0,  // M <= 16: the decode kernel (w4a16_decode.cu), weights as the mma.sync A operand
  kMma = 1,     // 17 <= M <= 64 off sm_90: the mma.sync kernel (w4a16_mma.cu)
  kWgmma = 2,   // 17 <= M <= 2048 on sm_90: the register-A wgmma kernel (w4a16_wgmma_sm90.cu)
  kSlab = 3,    // otherwise: weight dequantized in slabs (w4a16_slab.cu), multiplied by cuBLAS
};
constexpr int kW4A16Paths = 4;

// The decode kernel's CTA shapes: `warps` warps, of which `group_warps` share 32 output features and take
// turns along K; with group_warps 1 the CTA's warps walk the same chunks and share one copy of x. With
// `cluster` (group_warps 1), split-K is a thread block cluster of up to kW4A16MaxClusterSplits CTAs along K
// whose sums meet in distributed shared memory (no workspace, no second kernel).
struct W4A16DecodeShape {
  int warps, group_warps;
  bool cluster = false;
  constexpr int features() const { return warps / group_warps * kW4A16TileN; }
};
constexpr W4A16DecodeShape kW4A16DecodeShapes[] = {{4, 4}, {8, 8}, {4, 1, true}};
constexpr int kW4A16DecodeConfigs = 3;
constexpr int kW4A16MaxClusterSplits = 8;  // the portable cluster size
static_assert(kW4A16DecodeShapes[2].cluster, "config 2 is the cluster shape");

// The wgmma kernel's tiles: `rows` rows of x, `wg` consumer warpgroups of `mt` m64 tiles each (features =
// 64 wg mt), `stages` pipeline stages.
struct W4A16WgmmaTile {
  int rows, wg, mt, stages;
  constexpr int features() const { return 64 * wg * mt; }
};
constexpr W4A16WgmmaTile kW4A16WgmmaTiles[] = {{128, 2, 1, 8}, {128, 4, 1, 6}, {256, 2, 1, 4}, {128, 2, 2, 4}};
constexpr int kW4A16WgmmaTileCount = 4;

// An explicit choice for measurements and tests (fpquant_ext.tuning.plan_override); -1 / 0 leave the
// heuristic's choice. `config` is the decode shape (kDecode) or the wgmma tile (kWgmma).
struct W4A16Override {
  int path = -1;
  int config = -1;
  int splits = 0;
};

struct W4A16Plan {
  W4A16Path path = W4A16Path::kSlab;
  int config = 0;  // decode shape or wgmma tile; kMma: m-tiles of 16 rows per CTA (2 or 4)
  int splits = 1;  // partial sums along K; > 1 needs a float32 workspace unless cluster
  bool cluster = false;  // splits summed inside a thread block cluster (no workspace)
  const char* invalid = nullptr;  // set when an override cannot apply to this problem or GPU
};

// The plan for x [M, K] times a weight [N, K] of format f on gpu. N % kW4A16TileN == 0 and
// K % kW4A16ChunkK == 0 (checked by the caller).
W4A16Plan plan_w4a16(int64_t M, int64_t N, int64_t K, core::Format f, const GpuInfo& gpu,
                     const W4A16Override& ov = {});

}  // namespace fpquant::cuda
