// The W4A16 plan (w4a16_plan.h). Every threshold below was measured; the sweeps and the numbers behind them
// are in docs/perf/w4a16.md, section "Plan".
#include "cuda/w4a16/w4a16_plan.h"

#include <algorithm>

namespace fpquant::cuda {
namespace {

// Path bounds by M. The fused kernels read the packed weight once per tile and never hold a bf16 copy of
// it. On the packed layout the wgmma kernel takes 64 rows in about the time of 128 (8192^2: ~35 us, where
// the mma.sync kernel, bound by its 32-bit activation loads, takes ~115); at M = 2048 it beats the slab path
// for both formats, at M = 8192 the slab path wins.
constexpr int64_t kDecodeMaxM = 16;
constexpr int64_t kMmaMaxM = 64;
constexpr int64_t kWgmmaMaxM = 2048;

// Split-K factor: doubled while the grid (ctas x splits) stays within `target` CTAs and the factor at most
// `max_splits` (each kernel's bound on how little K a split may get).
int split_k(int64_t ctas, int64_t target, int64_t max_splits) {
  int s = 1;
  while (ctas * s * 2 <= target && s * 2 <= max_splits) s *= 2;
  return s;
}

// Decode shape. Config 0 (a 4-warp CTA whose warps take turns along K on one group of 32 features) is the
// default. Where the layer has few feature groups, twice the warps per group (config 1) keeps more loads in
// flight per SM: with at most one group per SM at every M <= 16, and with at most two at M <= 4, where x
// costs the extra warps nothing; wider layers already have enough warps and lose, as does 8192^2 at M = 8
// and 16 (x per warp). Above 8 rows, x (16 rows: twice the weight's bytes per chunk) costs config 0 a second
// copy per warp; where the layer has enough features for one 128-feature CTA per SM, the cluster shape
// (config 2: the CTA's 4 warps share one copy of x, splits summed in the cluster) is faster. With fewer
// features it needs 4-8 splits and loses. Thread block clusters exist from compute capability 9.0 (below it
// the cluster shape's reduction has no cluster to read from), so older GPUs never take it.
int decode_config(int64_t M, int64_t N, int sms, bool clusters) {
  constexpr int kCluster = 2, kWide = 1;
  const int64_t groups = N / kW4A16TileN;
  if (clusters && M > 8 && N / kW4A16DecodeShapes[kCluster].features() >= sms) return kCluster;
  if (groups <= sms || (M <= 4 && groups <= 2 * sms)) return kWide;
  return 0;
}

// Decode split-K: the CTAs already split K between the warps of a feature group, and a single launch wins
// even when the grid is a bit short of the SMs (4096 x 4096 on H100: 128 CTAs, 6.4 us unsplit against 7.9
// with 2 splits), so K is split only while the grid would cover fewer than half the SMs. The cluster shape
// splits while the grid stays within about four CTAs per SM, at most a cluster.
int decode_splits(int64_t N, int64_t K, int config, int sms) {
  const W4A16DecodeShape shape = kW4A16DecodeShapes[config];
  const int64_t ctas = (N + shape.features() - 1) / shape.features();
  if (shape.cluster)
    return split_k(ctas, 4LL * sms, std::min<int64_t>(kW4A16MaxClusterSplits, K / (kW4A16ChunkK * 2)));
  return split_k(ctas, sms, K / (kW4A16ChunkK * 2 * shape.group_warps));
}

// mma.sync kernel: MT m-tiles of 16 rows per CTA, 2 up to 32 rows and 4 above, with 4 warps (128 features)
// for MT = 2 and 8 warps (256 features) for MT = 4, so that wider CTAs share activation reads as M grows;
// K is split until there are about sixteen CTAs per SM.
int mma_m_tiles(int64_t M) { return M <= 32 ? 2 : 4; }
int mma_splits(int64_t M, int64_t N, int64_t K, int mt, int sms) {
  const int64_t features = mt == 2 ? 128 : 256;
  const int64_t ctas = ((N + features - 1) / features) * ((M + 16 * mt - 1) / (16 * mt));
  return split_k(ctas, 16LL * sms, K / (kW4A16ChunkK * 4));
}

int64_t wgmma_ctas(int64_t M, int64_t N, int tile) {
  const W4A16WgmmaTile t = kW4A16WgmmaTiles[tile];
  return ((M + t.rows - 1) / t.rows) * ((N + t.features() - 1) / t.features());
}

// wgmma tile: above 128 rows, 256-row tiles (half the decode per multiply-add); up to 128 rows, 128 x 128
// tiles with 8 stages, except NVFP4 layers with at least 32 tiles of 256 features, where four consumer
// warpgroups (256 features, 4 warps per scheduler) hide NVFP4's longer scale decode better.
int wgmma_tile(int64_t M, int64_t N, core::Format f) {
  if (M > 128) return 2;
  return f == core::Format::kNvFp4 && wgmma_ctas(M, N, 1) >= 32 ? 1 : 0;
}

// wgmma split-K only while the tiles cover at most half the SMs (one CTA per SM), keeping at least 8 k-steps
// of 64 per split.
int wgmma_splits(int64_t M, int64_t N, int64_t K, int tile, int sms) {
  return split_k(wgmma_ctas(M, N, tile), sms, K / (64 * 8));
}

// The tensor maps of the wgmma kernel take int coordinates.
bool wgmma_fits(int64_t M, int64_t N, int64_t K) { return M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31); }

// An override of the path's configuration, when given, replaces the heuristic's if it names one of the
// path's `count` configurations; otherwise the plan is marked invalid and false returned.
bool take_override(int config, int count, const char* invalid, W4A16Plan& plan) {
  if (config < 0) return true;
  if (config >= count) {
    plan.invalid = invalid;
    return false;
  }
  plan.config = config;
  return true;
}

}  // namespace

W4A16Plan plan_w4a16(int64_t M, int64_t N, int64_t K, core::Format f, const GpuInfo& gpu, const W4A16Override& ov) {
  W4A16Plan plan;
  const bool wgmma_ok = gpu.runs_sm90() && wgmma_fits(M, N, K);
  if (ov.path >= 0) {
    if (ov.path >= kW4A16Paths) {
      plan.invalid = "path must be 0 (decode), 1 (mma), 2 (wgmma) or 3 (slab)";
      return plan;
    }
    plan.path = static_cast<W4A16Path>(ov.path);
    if (plan.path == W4A16Path::kDecode && M > kDecodeMaxM) plan.invalid = "the decode kernel takes at most 16 rows";
    if (plan.path == W4A16Path::kMma && M <= kDecodeMaxM) plan.invalid = "the mma kernel takes more than 16 rows";
    if (plan.path == W4A16Path::kWgmma && !wgmma_ok) plan.invalid = "the wgmma kernel needs an sm_90 GPU and an sm_90a build";
    if (plan.invalid != nullptr) return plan;
  } else if (M <= kDecodeMaxM) {
    plan.path = W4A16Path::kDecode;
  } else if (M <= kWgmmaMaxM && wgmma_ok) {
    plan.path = W4A16Path::kWgmma;
  } else if (M <= kMmaMaxM) {
    plan.path = W4A16Path::kMma;
  } else {
    plan.path = W4A16Path::kSlab;
  }

  const int sms = gpu.num_sms > 0 ? gpu.num_sms : 1;
  switch (plan.path) {
    case W4A16Path::kDecode:
      plan.config = decode_config(M, N, sms, gpu.cc_major >= 9);
      if (!take_override(ov.config, kW4A16DecodeConfigs, "the decode config must be 0, 1 or 2", plan)) return plan;
      plan.cluster = kW4A16DecodeShapes[plan.config].cluster;
      if (plan.cluster && gpu.cc_major < 9) {
        plan.invalid = "the cluster decode config needs compute capability 9.0 or newer (thread block clusters)";
        return plan;
      }
      plan.splits = decode_splits(N, K, plan.config, sms);
      break;
    case W4A16Path::kMma:
      plan.config = mma_m_tiles(M);
      plan.splits = mma_splits(M, N, K, plan.config, sms);
      break;
    case W4A16Path::kWgmma:
      plan.config = wgmma_tile(M, N, f);
      if (!take_override(ov.config, kW4A16WgmmaTileCount, "the wgmma tile must be 0, 1, 2 or 3", plan)) return plan;
      plan.splits = wgmma_splits(M, N, K, plan.config, sms);
      break;
    case W4A16Path::kSlab:
      plan.splits = 1;
      break;
  }
  if (ov.splits > 0 && plan.path != W4A16Path::kSlab)
    plan.splits = static_cast<int>(std::min<int64_t>(ov.splits, K / kW4A16ChunkK));
  if (plan.cluster) plan.splits = std::min(plan.splits, kW4A16MaxClusterSplits);
  return plan;
}

}  // namespace fpquant::cuda
