// How our tensors become the arguments of the CUTLASS block-scaled GEMMs (sm_100a and sm_120a): problem
// shape, operand and output strides, scale-factor layouts. Host code over cute layouts (no CUDA launch, no
// torch), shared by the kernels (matmul_cutlass.cuh, which static_asserts that its CUTLASS types are these)
// and by the host check (tests/host/matmul_blackwell_check.cu), which evaluates these same layouts against
// core/scale_layout.h and the row-major packed codes, so the two cannot drift apart.
//
// Our operands, in CUTLASS's terms (D = A B^T, "TN"): A [M, K] row-major and B [N, K] row-major, both
// K-major (CUTLASS: A RowMajor, B ColumnMajor), two E2M1 codes a byte with element 2i in the low nibble (as
// cutlass::float_e2m1_t packs them); D [M, N] row-major; the bias a row vector broadcast over M; one batch
// (L = 1). Scales: CUTLASS's Sm1xxBlockScaledConfig layout, whose 512-byte atom (32 x 4 rows of 4 scales,
// row r of a 128-row block at (r % 32) * 16 + (r / 32) * 4) tiled K-block-fastest is our blocked layout.
#pragma once

#include <cstdint>

#include "cute/layout.hpp"
#include "cutlass/detail/layout.hpp"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/layout/matrix.h"

namespace fpquant::cuda::cutlass_gemm {

// Geometry of one GEMM with `SFVec` elements per scale (32: MXFP4, 16: NVFP4).
template <int SFVec>
struct Geometry {
  using ScaleConfig = cutlass::detail::Sm1xxBlockScaledConfig<SFVec>;
  using StrideA = cutlass::detail::TagToStrideA_t<cutlass::layout::RowMajor>;
  using StrideB = cutlass::detail::TagToStrideB_t<cutlass::layout::ColumnMajor>;
  using StrideD = cutlass::detail::TagToStrideC_t<cutlass::layout::RowMajor>;
  using StrideBias = cute::Stride<cute::_0, cute::_1, int64_t>;  // the per-column bias of the epilogue
  using LayoutSF = decltype(ScaleConfig::deduce_layoutSFA());
  using ProblemShape = cute::Shape<int, int, int, int>;  // (M, N, K, L)

  ProblemShape problem;
  StrideA stride_a;
  StrideB stride_b;
  StrideD stride_d;
  StrideBias stride_bias;
  LayoutSF layout_sfa, layout_sfb;
};

// The geometry of A [M, K] x B [N, K]^T (M, N, K within int: plan_matmul checks).
template <int SFVec>
Geometry<SFVec> make_geometry(int64_t M, int64_t N, int64_t K) {
  using G = Geometry<SFVec>;
  G g;
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  g.problem = cute::make_shape(m, n, k, 1);
  // Row strides in elements (codes: K elements per row, K / 2 bytes); a single batch, so no batch stride.
  g.stride_a = cute::make_stride(static_cast<int64_t>(K), cute::_1{}, int64_t{0});
  g.stride_b = cute::make_stride(static_cast<int64_t>(K), cute::_1{}, int64_t{0});
  g.stride_d = cute::make_stride(static_cast<int64_t>(N), cute::_1{}, int64_t{0});
  g.stride_bias = cute::make_stride(cute::_0{}, cute::_1{}, int64_t{0});
  g.layout_sfa = G::ScaleConfig::tile_atom_to_shape_SFA(g.problem);
  g.layout_sfb = G::ScaleConfig::tile_atom_to_shape_SFB(g.problem);
  return g;
}

}  // namespace fpquant::cuda::cutlass_gemm
