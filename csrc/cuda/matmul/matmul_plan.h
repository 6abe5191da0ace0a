// The matmul plan: which kernel computes matmul_mxfp4 / matmul_nvfp4 (matmul.h), with which tile, and how
// much workspace its launcher needs. The one place where that is decided; the glue and the kernels obey it.
// Plain C++ (no CUDA, no torch). Reasoning: matmul_plan.cpp and docs/perf/matmul.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "core/types.h"
#include "cuda/common/gpu_info.h"

namespace fpquant::cuda {

enum class MatmulPath : int {
  kGeneric = 0,  // any GPU: both operands dequantized (exact) by the dequantize kernel, multiplied in float64
                 // by cuBLAS (torch glue), then divided by gA * gB, bias added, rounded once (matmul_generic.cu)
  kSm100 = 1,    // CUTLASS tcgen05 block-scaled kernels (matmul_*_sm100.cu), compute capability 10.0
  kSm120 = 2,    // CUTLASS block-scaled mma.sync kernels (matmul_*_sm120.cu), compute capability 12.0
  kSm90 = 3,     // the Hopper kernels (matmul_sm90.cu), compute capability 9.0: an operand pass (MXFP4 to E4M3
                 // with folded scales, NVFP4 to bf16) and a TMA + wgmma GEMM
  kW4a16 = 4,    // A dequantized to bf16 (exact up to bf16's range), then linear_w4a16 with B as its FP4 weight
                 // (the W4A16 kernels, csrc/cuda/w4a16/), bf16 output: small M on Hopper, and GPUs without a
                 // native kernel (matmul_plan.cpp)
};
constexpr int kMatmulPaths = 5;

// Hopper takes the w4a16 path up to this many rows of A: there the sm90 path converts all of B on every call
// (77-134 us at N = K = 8192 on the H200) while the W4A16 kernels read the FP4 weight directly (14-37 us up to
// M = 128, 98 us at M = 512, on a weight packed once; this path also packs B on every call). A first bound,
// to be confirmed by benchmarks/bench_matmul.py on the H200 (its "sm90" column times the forced sm90 path
// next to the plan's choice).
constexpr int64_t kMatmulW4a16MaxM = 512;

// A CTA tile of the CUTLASS kernels: m x n outputs per MMA tile, k elements per pipeline stage, on
// cluster_m CTAs along M (2: the sm_100 two-SM MMA, each CTA holding m / 2 rows of A).
struct MatmulTile {
  int m, n, k, cluster_m;
};
constexpr MatmulTile kSm100Tiles[] = {{128, 128, 256, 1}, {256, 128, 256, 2}};
constexpr int kSm100TileCount = 2;
constexpr MatmulTile kSm120Tiles[] = {{128, 128, 128, 1}, {256, 128, 128, 1}};
constexpr int kSm120TileCount = 2;

// What the CUTLASS kernels need of a problem: TMA moves rows of 16-byte multiples (codes: K % 32 == 0;
// output: N * element size % 16 == 0) and CUTLASS takes M, N, K as int.
constexpr int64_t kMatmulKernelKAlign = 32;
constexpr int64_t kMatmulKernelRowBytes = 16;
// Workspace of the CUTLASS paths: the NVFP4 epilogue factor 1 / (gA * gB), computed on the device.
constexpr size_t kMatmulAlphaBytes = 256;
// Shared memory per block (opt-in maximum) by target: CUDA programming guide, compute capability 10.0 and
// 12.0; the host check (tests/host) holds every instantiated kernel to these.
constexpr int kSm100SmemPerBlock = 227 * 1024;
constexpr int kSm120SmemPerBlock = 99 * 1024;

// An explicit choice for measurements and tests (fpquant_ext.tuning.plan_override); -1 leaves the plan's.
struct MatmulOverride {
  int path = -1;
  int config = -1;
};

struct MatmulPlan {
  MatmulPath path = MatmulPath::kGeneric;
  int config = 0;                 // kSm100Tiles / kSm120Tiles / kMatmulSm90{Mx,Nv}Tiles index
  bool swizzle_scales = false;    // linear scales go through swizzle_scales first (the kernels read blocked)
  bool unswizzle_scales = false;  // kW4a16: B's blocked scales go through unswizzle_scales first (a canonical
                                  // linear_w4a16 weight has linear scales)
  size_t workspace_bytes = 0;     // MatmulParams::workspace the launcher needs
  const char* note = nullptr;     // why a GPU with kernels for it still takes kGeneric
  const char* invalid = nullptr;  // set when an override cannot apply to this problem or GPU
};

// Whether the CUTLASS kernels take an [M, K] x [N, K] problem with output `out` (the alignment and size
// rules above); nullptr if so, else the reason.
const char* matmul_kernel_shape_issue(int64_t M, int64_t N, int64_t K, core::DType out);

// The plan for A [M, K] x B [N, K]^T of format f, scales in `layout`, output dtype `out`, a bias of dtype
// `bias` (nullopt: none), on gpu.
MatmulPlan plan_matmul(int64_t M, int64_t N, int64_t K, core::Format f, core::ScaleLayout layout, core::DType out,
                       std::optional<core::DType> bias, const GpuInfo& gpu, const MatmulOverride& ov = {});

}  // namespace fpquant::cuda
