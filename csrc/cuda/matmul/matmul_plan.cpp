// The matmul plan (matmul_plan.h). Nothing here has been measured yet: no Blackwell GPU is reachable, so
// the tile thresholds follow the shapes of the tensor-core instructions (reasoning below and in
// docs/perf/matmul.md) and are to be swept with plan_override on real hardware.
#include "cuda/matmul/matmul_plan.h"

#include <climits>

#include "cuda/matmul/matmul_sm90_tiles.h"
#include "cuda/w4a16/w4a16_plan.h"

namespace fpquant::cuda {
namespace {

int64_t out_bytes(core::DType d) { return d == core::DType::kF32 ? 4 : 2; }

// sm_100: up to 128 rows, one CTA with a 128 x 128 tile (the 1-SM tcgen05 MMA is 128 rows tall, so a
// 256-row pair would leave one SM's half empty); above, the 2-SM MMA on a 2 x 1 cluster, 256 x 128 per
// pair, which reads each B tile once for 256 rows and halves B's shared-memory traffic per SM.
constexpr int64_t kSm100PairMinM = 129;
// sm_120 (no clusters, 99 KB of shared memory): 128 x 128 below 512 rows, 256 x 128 from there, where
// enough row tiles fill the GPU and the taller tile halves B's reads.
constexpr int64_t kSm120TallMinM = 512;

int sm100_tile(int64_t M) { return M >= kSm100PairMinM ? 1 : 0; }

int sm120_tile(int64_t M) { return M >= kSm120TallMinM ? 1 : 0; }

// The Hopper kernels index rows and k with int (matmul_sm90.h); any shape below that bound works.
bool sm90_takes(int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kLimit = int64_t{1} << 30;
  return M < kLimit && N < kLimit && K < kLimit;
}

// The w4a16 path: A dequantized to bf16 by the dequantize kernel (MXFP4 code * 2^e and NVFP4 code * E4M3 scale
// are exact in bf16, except MXFP4 elements of magnitude >= 2^128, which become inf as they do in the generic
// path's float32 operands, where the float64 reference could still end finite), then linear_w4a16 with B as
// its canonical weight (packed per call by its glue) and, for NVFP4, gA * gB as the weight's global scale (a
// divisor there; the float32 product is formed on the device, so gA * gB must stay within float32's range).
// The W4A16 kernels write their activation dtype and add a bias of that dtype, so the path is exact up to one
// rounding only for a bf16 output and a bf16 bias (or none): a float32 / fp16 output or bias would be
// rounded twice, and stays on the other paths. Their tiles take N % kW4A16TileN == 0 and
// K % kW4A16ChunkK == 0; their mma.sync needs compute capability 8.0. nullptr if the path applies, else why not.
const char* w4a16_issue(int64_t M, int64_t N, int64_t K, core::Format f, core::DType out,
                        std::optional<core::DType> bias, const GpuInfo& gpu) {
  if (gpu.cc_major < 8) return "the w4a16 matmul path needs a GPU of compute capability 8.0 or newer";
  if (out != core::DType::kBF16)
    return "the w4a16 matmul path writes bfloat16 only (the W4A16 kernels write their activation dtype; another "
           "output dtype would be a second rounding)";
  if (bias.has_value() && *bias != core::DType::kBF16)
    return "the w4a16 matmul path takes a bfloat16 bias only (the W4A16 kernels add it in bfloat16: another dtype "
           "would be rounded twice)";
  if (N % kW4A16TileN != 0 || K % kW4A16ChunkK != 0)
    return "the w4a16 matmul path needs N a multiple of 32 and K a multiple of 128 (the W4A16 kernels' tiles)";
  // Its slab path multiplies dequantized bf16 slabs by cuBLAS, whose bf16 output may come from reduced-precision
  // split-K reductions: more than one rounding (measured 2.54e-3 against the reference, over the 2.5e-3 bound).
  if (plan_w4a16(M, N, K, f, gpu).path == W4A16Path::kSlab)
    return "the w4a16 matmul path takes only the rows the W4A16 kernels multiply themselves (their plan sends "
           "this M to cuBLAS on dequantized bf16 slabs, a second rounding)";
  return nullptr;
}

static_assert(kW4A16TileN == 32 && kW4A16ChunkK == 128, "w4a16_issue's message names these multiples");

// GPUs without a native matmul kernel that the W4A16 kernels were written for (Ampere, Ada, and Hopper in a
// build without sm_90a): there the w4a16 path replaces the float64 generic path, which is slow on them (float64
// runs at 1/64 rate on GeForce parts), for the rows its kernels take (w4a16_issue: M <= 64 off sm_90a). A
// Blackwell GPU without its kernels keeps the generic path and the note on the target its build lacks.
bool w4a16_instead_of_generic(const GpuInfo& gpu) { return gpu.cc_major == 8 || gpu.cc_major == 9; }

}  // namespace

const char* matmul_kernel_shape_issue(int64_t M, int64_t N, int64_t K, core::DType out) {
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX) return "M, N and K must fit in int for the CUTLASS kernels";
  if (K % kMatmulKernelKAlign != 0) return "the CUTLASS kernels need K a multiple of 32 (16-byte rows of codes)";
  if ((N * out_bytes(out)) % kMatmulKernelRowBytes != 0)
    return "the CUTLASS kernels need output rows of a multiple of 16 bytes (N a multiple of 8, or 4 for float32)";
  return nullptr;
}

MatmulPlan plan_matmul(int64_t M, int64_t N, int64_t K, core::Format f, core::ScaleLayout layout, core::DType out,
                       std::optional<core::DType> bias, const GpuInfo& gpu, const MatmulOverride& ov) {
  MatmulPlan plan;
  const char* shape_issue = matmul_kernel_shape_issue(M, N, K, out);
  const char* w4a16_no = w4a16_issue(M, N, K, f, out, bias, gpu);
  if (ov.path >= 0) {
    if (ov.path >= kMatmulPaths) {
      plan.invalid = "matmul path must be 0 (generic), 1 (sm100), 2 (sm120), 3 (sm90) or 4 (w4a16)";
      return plan;
    }
    plan.path = static_cast<MatmulPath>(ov.path);
    if (plan.path == MatmulPath::kSm100 && !gpu.runs_sm100())
      plan.invalid = "the sm100 matmul kernels need a compute capability 10.0 GPU and an sm_100a build";
    else if (plan.path == MatmulPath::kSm120 && !gpu.runs_sm120())
      plan.invalid = "the sm120 matmul kernels need a compute capability 12.0 GPU and an sm_120a build";
    else if (plan.path == MatmulPath::kSm90 && !gpu.runs_sm90())
      plan.invalid = "the sm90 matmul kernels need a compute capability 9.0 GPU and an sm_90a build";
    else if (plan.path == MatmulPath::kSm90 && !sm90_takes(M, N, K))
      plan.invalid = "the sm90 matmul kernels need M, N and K below 2^30";
    else if (plan.path == MatmulPath::kW4a16)
      plan.invalid = w4a16_no;
    else if (plan.path != MatmulPath::kGeneric && plan.path != MatmulPath::kSm90 && shape_issue != nullptr)
      plan.invalid = shape_issue;
    if (plan.invalid != nullptr) return plan;
  } else if (gpu.runs_sm100() || gpu.runs_sm120()) {
    plan.path = shape_issue == nullptr ? (gpu.runs_sm100() ? MatmulPath::kSm100 : MatmulPath::kSm120)
                                       : MatmulPath::kGeneric;
    plan.note = shape_issue;
  } else if (gpu.runs_sm90() && M <= kMatmulW4a16MaxM && w4a16_no == nullptr) {
    plan.path = MatmulPath::kW4a16;  // the sm90 path would convert all of B for a few rows (matmul_plan.h)
  } else if (gpu.runs_sm90() && sm90_takes(M, N, K)) {
    plan.path = MatmulPath::kSm90;  // any shape: the operand pass pads what the TMA tiles need
  } else if (!gpu.runs_sm90() && w4a16_instead_of_generic(gpu) && w4a16_no == nullptr) {
    plan.path = MatmulPath::kW4a16;
  } else {
    plan.path = MatmulPath::kGeneric;
    if (w4a16_instead_of_generic(gpu)) plan.note = w4a16_no;
    if (gpu.runs_sm90()) plan.note = "the sm90 matmul kernels need M, N and K below 2^30";
    if (gpu.cc_major == 10 || gpu.cc_major == 12) {
      const bool built = gpu.cc_major == 10 ? gpu.sm100_kernels : gpu.sm120_kernels;
      plan.note = !built ? "this build has no kernels for this Blackwell GPU (its sm_100a / sm_120a target was not "
                           "compiled, or CUTLASS headers were missing)"
                         : "sm_100a / sm_120a code runs on compute capability 10.0 / 12.0 alone";
    }
  }

  if (plan.path == MatmulPath::kGeneric) {
    plan.config = 0;
    plan.workspace_bytes = 0;  // the glue allocates the dequantized operands itself
    return plan;
  }
  if (plan.path == MatmulPath::kW4a16) {
    // linear_w4a16 runs its own plan (plan_w4a16, steered by the w4a16_* overrides); nothing to choose here.
    if (ov.config >= 0) {
      plan.invalid =
          "the w4a16 matmul path has no tile (its kernel follows plan_w4a16: use w4a16_path / w4a16_config)";
      return plan;
    }
    plan.config = 0;
    plan.unswizzle_scales = layout == core::ScaleLayout::kBlocked;
    plan.workspace_bytes = 0;  // the glue allocates A's bf16 copy itself
    return plan;
  }
  if (plan.path == MatmulPath::kSm90) {
    // Both scale layouts are read by index arithmetic; the workspace holds the converted operands (none for
    // an NVFP4 tile that decodes in the GEMM).
    const bool mx = f == core::Format::kMxFp4;
    plan.config = matmul_sm90_tile(f, M, N, gpu.num_sms);
    if (ov.config >= 0) {
      if (ov.config >= (mx ? kMatmulSm90MxTileCount : kMatmulSm90NvTileCount)) {
        plan.invalid = mx ? "the sm90 MXFP4 matmul tile is out of range (matmul_sm90_tiles.h: kMatmulSm90MxTiles)"
                          : "the sm90 NVFP4 matmul tile is out of range (matmul_sm90_tiles.h: kMatmulSm90NvTiles)";
        return plan;
      }
      plan.config = ov.config;
    }
    plan.workspace_bytes = matmul_sm90_workspace_bytes(f, M, N, K, plan.config);
    return plan;
  }
  const bool sm100 = plan.path == MatmulPath::kSm100;
  plan.config = sm100 ? sm100_tile(M) : sm120_tile(M);
  if (ov.config >= 0) {
    if (ov.config >= (sm100 ? kSm100TileCount : kSm120TileCount)) {
      plan.invalid = sm100 ? "the sm100 matmul tile must be 0 or 1" : "the sm120 matmul tile must be 0 or 1";
      return plan;
    }
    plan.config = ov.config;
  }
  // The kernels read the blocked layout only; linear scales are swizzled per call (a few small tensor ops,
  // 1/8 (NVFP4) or 1/16 (MXFP4) of the codes' bytes). Quantizers write blocked directly.
  plan.swizzle_scales = layout == core::ScaleLayout::kLinear;
  plan.workspace_bytes = f == core::Format::kNvFp4 ? kMatmulAlphaBytes : 0;
  return plan;
}

}  // namespace fpquant::cuda
