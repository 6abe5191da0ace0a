// The quantize plan (quantize_plan.h). Measurements behind it: docs/perf/quantize.md, section "Plan".
#include "cuda/quantize/quantize_plan.h"

namespace fpquant::cuda {
namespace {

// The split kernel takes R as hi + lo of the MMA type and runs the x side in three MMAs: float32 x needs
// it, and so does NVFP4 r = 16 when K is not a multiple of 32 (the 16-bit kernels walk 32-column blocks).
bool needs_split(core::DType x, int r, int64_t K) { return x == core::DType::kF32 || (r == 16 && K % 32 != 0); }

// The sm_90 kernel multiplies r < 128 as a block-diagonal 128 x 128 matrix and pays a fixed setup per CTA:
// it is chosen for r = 128 always and for r < 128 when every warpgroup of the GPU gets a whole tile;
// smaller inputs go to the mma.sync kernel.
bool sm90_wanted(int64_t rows, int64_t K, int r, int sms) {
  const int64_t tiles = (rows * K / kRotateSm90Chunk + kRotateSm90TileChunks - 1) / kRotateSm90TileChunks;
  return r == 128 || tiles >= static_cast<int64_t>(kRotateSm90Warpgroups) * sms;
}

bool sm90_applies(int64_t rows, int64_t K, core::DType x, int r, const GpuInfo& gpu) {
  return gpu.runs_sm90() && !needs_split(x, r, K) && (rows * K) % kRotateSm90Chunk == 0;
}

}  // namespace

QuantizePlan plan_quantize(int64_t rows, int64_t K, core::Format f, core::DType x, int r, const GpuInfo& gpu,
                           const QuantizeOverride& ov) {
  QuantizePlan plan;
  if (r == 0) {
    if (ov.path > 0) plan.invalid = "without a rotation the only path is 0 (groups)";
    return plan;
  }
  QuantizePath path;
  if (ov.path >= 0) {
    if (ov.path == 0 || ov.path >= kQuantizePaths) {
      plan.invalid = "with a rotation the path must be 1 (mma), 2 (split) or 3 (sm90)";
      return plan;
    }
    path = static_cast<QuantizePath>(ov.path);
    if (path == QuantizePath::kRotateMma && needs_split(x, r, K))
      plan.invalid = "the mma kernel takes 16-bit x with K a multiple of 32";
    if (path == QuantizePath::kRotateSm90 && !sm90_applies(rows, K, x, r, gpu))
      plan.invalid = "the sm90 kernel needs an sm_90 GPU, an sm_90a build, 16-bit x and rows * K a multiple of 128";
    if (plan.invalid != nullptr) return plan;
  } else if (needs_split(x, r, K)) {
    path = QuantizePath::kRotateSplit;
  } else if (sm90_applies(rows, K, x, r, gpu) && sm90_wanted(rows, K, r, gpu.num_sms > 0 ? gpu.num_sms : 1)) {
    path = QuantizePath::kRotateSm90;
  } else {
    path = QuantizePath::kRotateMma;
  }
  plan.path = path;
  plan.kernel_r = r;
  if (r == 16 && (path == QuantizePath::kRotateMma ||
                  (path == QuantizePath::kRotateSplit && core::group_size(f) > 16)))
    plan.kernel_r = 32;
  return plan;
}

}  // namespace fpquant::cuda
