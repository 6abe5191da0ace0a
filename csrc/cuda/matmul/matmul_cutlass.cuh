// The CUTLASS block-scaled FP4 GEMMs behind the sm100 and sm120 paths of plan_matmul: one kernel type per
// (architecture, format, output dtype, tile), from CUTLASS's collective builders, and the launch template
// that fills its arguments from MatmulParams through matmul_cutlass_args.h. Included by the *_sm100.cu /
// *_sm120.cu sources (each instantiates one format) and, for the types alone, by the host check.
//
// Epilogue: D = alpha * acc + bias[n], alpha from the device (NVFP4: matmul_alpha, written to the
// workspace by matmul_prepare_alpha) or 1 (MXFP4), bias float32 or absent (a null pointer reads as zeros),
// no C operand; one rounding from the float32 result to the output type.
//
// The types are alias templates rather than members of a class template: with the latter, nvcc 13.0's
// front end gives the sm_120 GemmUniversal two spellings that the host compiler then treats as different
// types (GemmUniversalAdapter::Arguments no longer converts to itself).
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cuda/matmul/matmul.h"
#include "cuda/matmul/matmul_cutlass_args.h"
#include "cuda/matmul/matmul_plan.h"

namespace fpquant::cuda::cutlass_gemm {

// Operand type of a format: E2M1 codes with E8M0 scales per 32 (MXFP4) or E4M3 scales per 16 (NVFP4);
// CUTLASS reads the scale bytes as unsigned (ue8m0 / ue4m3), which our quantizers' scales always are.
template <core::Format F>
using Operand = std::conditional_t<F == core::Format::kMxFp4, cutlass::mx_float4_t<cutlass::float_e2m1_t>,
                                   cutlass::nv_float4_t<cutlass::float_e2m1_t>>;
template <core::Format F>
constexpr int kScaleVec = core::group_size(F);

template <core::DType D>
using OutType = std::conditional_t<D == core::DType::kF32, float,
                                   std::conditional_t<D == core::DType::kBF16, cutlass::bfloat16_t, cutlass::half_t>>;

template <class Arch>
constexpr int kSmemPerBlock = std::is_same_v<Arch, cutlass::arch::Sm100> ? kSm100SmemPerBlock : kSm120SmemPerBlock;
template <class Arch>
constexpr const MatmulTile& tile_of(int i) {
  return std::is_same_v<Arch, cutlass::arch::Sm100> ? kSm100Tiles[i] : kSm120Tiles[i];
}

template <class Arch, int I>
using TileShape = cute::Shape<cute::Int<tile_of<Arch>(I).m>, cute::Int<tile_of<Arch>(I).n>, cute::Int<tile_of<Arch>(I).k>>;
template <class Arch, int I>
using ClusterShape = cute::Shape<cute::Int<tile_of<Arch>(I).cluster_m>, cute::_1, cute::_1>;

constexpr int kCodesAlign = static_cast<int>(kMatmulKernelKAlign);  // elements: 16 bytes of codes
template <core::DType D>
constexpr int kOutAlign = static_cast<int>(kMatmulKernelRowBytes) / static_cast<int>(sizeof(OutType<D>));

template <core::DType D>
using Fusion = cutlass::epilogue::fusion::LinCombPerColBias<OutType<D>, float, float, OutType<D>, float>;

template <class Arch, core::DType D, int I>
using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    Arch, cutlass::arch::OpClassBlockScaledTensorOp, TileShape<Arch, I>, ClusterShape<Arch, I>,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, cutlass::layout::RowMajor, kOutAlign<D>,
    OutType<D>, cutlass::layout::RowMajor, kOutAlign<D>, cutlass::epilogue::collective::EpilogueScheduleAuto,
    Fusion<D>>::CollectiveOp;

template <class Arch, core::Format F, core::DType D, int I>
using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    Arch, cutlass::arch::OpClassBlockScaledTensorOp, Operand<F>, cutlass::layout::RowMajor, kCodesAlign, Operand<F>,
    cutlass::layout::ColumnMajor, kCodesAlign, float, TileShape<Arch, I>, ClusterShape<Arch, I>,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue<Arch, D, I>::SharedStorage))>,
    cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;

template <class Arch, core::Format F, core::DType D, int I>
using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop<Arch, F, D, I>,
                                                    Epilogue<Arch, D, I>, void>;

// The facts the host check and the launch hold every kernel to: its CUTLASS types are the geometry of
// matmul_cutlass_args.h, and it fits the target's shared memory.
template <class Arch, core::Format F, core::DType D, int I>
struct KernelFacts {
  using K = Kernel<Arch, F, D, I>;
  using G = Geometry<kScaleVec<F>>;
  using ML = typename K::CollectiveMainloop;
  static_assert(std::is_same_v<typename ML::Sm1xxBlkScaledConfig, typename G::ScaleConfig>, "scale config");
  static_assert(std::is_same_v<typename ML::LayoutSFA, typename G::LayoutSF>, "SFA layout type");
  static_assert(std::is_same_v<typename ML::LayoutSFB, typename G::LayoutSF>, "SFB layout type");
  static_assert(std::is_same_v<typename K::StrideA, typename G::StrideA>, "A stride type");
  static_assert(std::is_same_v<typename K::StrideB, typename G::StrideB>, "B stride type");
  static_assert(std::is_same_v<typename K::StrideD, typename G::StrideD>, "D stride type");
  static_assert(std::is_same_v<typename K::ProblemShape, typename G::ProblemShape>, "problem shape type");
  static constexpr int kSmem = static_cast<int>(K::SharedStorageSize);
  static constexpr int kThreads = static_cast<int>(K::MaxThreadsPerBlock);
  static_assert(kSmem <= kSmemPerBlock<Arch>, "the kernel's shared memory exceeds the target's per-block maximum");
};

// Runs kernel (Arch, F, D, I) on p. alpha: device pointer to the epilogue factor, or null for 1.
template <class Arch, core::Format F, core::DType D, int I>
cudaError_t launch(const MatmulParams& p, const float* alpha, cudaStream_t stream) {
  using Facts = KernelFacts<Arch, F, D, I>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<typename Facts::K>;
  static_assert(Facts::kSmem > 0, "");
  if (p.bias != nullptr && p.bias_dtype != core::DType::kF32) return cudaErrorInvalidValue;
  const auto g = make_geometry<kScaleVec<F>>(p.M, p.N, p.K);
  using Data = cutlass::float_e2m1_t;
  using Scale = typename Operand<F>::ScaleFactorType;

  typename Gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = g.problem;
  args.mainloop.ptr_A = reinterpret_cast<const Data*>(p.a_codes);
  args.mainloop.dA = g.stride_a;
  args.mainloop.ptr_B = reinterpret_cast<const Data*>(p.b_codes);
  args.mainloop.dB = g.stride_b;
  args.mainloop.ptr_SFA = reinterpret_cast<const Scale*>(p.a_scales);
  args.mainloop.layout_SFA = g.layout_sfa;
  args.mainloop.ptr_SFB = reinterpret_cast<const Scale*>(p.b_scales);
  args.mainloop.layout_SFB = g.layout_sfb;
  auto& ep = args.epilogue.thread;
  ep.alpha = 1.0f;
  ep.alpha_ptr = alpha;
  ep.beta = 0.0f;
  ep.bias_ptr = static_cast<const float*>(p.bias);
  ep.dBias = g.stride_bias;
  args.epilogue.ptr_C = nullptr;
  args.epilogue.ptr_D = static_cast<OutType<D>*>(p.out);
  args.epilogue.dD = g.stride_d;
  args.hw_info.sm_count = p.num_sms;

  // The plan admits only problems these kernels implement (matmul_kernel_shape_issue); a refusal here is
  // a disagreement between the two, reported as an invalid value rather than run.
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  // The persistent tile schedulers without split-K need no workspace, so the plan reserves none for CUTLASS.
  if (Gemm::get_workspace_size(args) > 0) return cudaErrorInvalidValue;
  Gemm gemm;
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

// Dispatch over the output dtype and the plan's tile.
template <class Arch, core::Format F, int Tiles>
cudaError_t launch_format(const MatmulParams& p, const float* alpha, cudaStream_t stream) {
  using core::DType;
  static_assert(Tiles == 2, "one branch per tile below");
  const int t = p.config;
  if (t < 0 || t >= Tiles) return cudaErrorInvalidValue;
  switch (p.out_dtype) {
    case DType::kF32: return t == 0 ? launch<Arch, F, DType::kF32, 0>(p, alpha, stream) : launch<Arch, F, DType::kF32, 1>(p, alpha, stream);
    case DType::kBF16: return t == 0 ? launch<Arch, F, DType::kBF16, 0>(p, alpha, stream) : launch<Arch, F, DType::kBF16, 1>(p, alpha, stream);
    case DType::kF16: return t == 0 ? launch<Arch, F, DType::kF16, 0>(p, alpha, stream) : launch<Arch, F, DType::kF16, 1>(p, alpha, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fpquant::cuda::cutlass_gemm
