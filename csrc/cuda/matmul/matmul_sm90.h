// Hopper (sm_90a) block-scaled FP4 GEMMs: launchers, tile configurations and the workspace they need.
//
// Both formats run in two steps on the stream (matmul_sm90.cu has the design):
//   1. an operand pass that turns the packed codes + group scales of A and of B into a tensor-core operand
//      in the workspace: MXFP4 -> E4M3 bytes [rows, K] with each group scale folded in as a power of two
//      relative to a reference exponent per (row, 128-K block), plus that block's factor 2^R as float32
//      [K/128 blocks, padded rows]; NVFP4 -> bfloat16 [rows, K] (code * E4M3 scale, exact);
//   2. a TMA + wgmma GEMM over those operands (MXFP4: FP8 wgmma, promoted into float32 every 128 K with
//      the two block factors; NVFP4: bf16 wgmma), epilogue scale (NVFP4: 1 / (gA gB)), bias, out_dtype.
//
// What the plan must check before choosing these launchers (nothing here re-checks it):
//   - GpuInfo::runs_sm90() and a build with FPQUANT_SM90_KERNELS=1.
//   - M >= 1, N >= 1, K >= group, K % group == 0 (MXFP4 32, NVFP4 16); M, N, K < 2^31 / 2 (int indexing
//     of rows and k; every byte offset is 64-bit).
//   - a_codes, b_codes 16-byte aligned (row pitch K/2 is then 16-byte aligned for MXFP4; for NVFP4 the
//     pass reads 8-byte words, so 8-byte alignment suffices there, 16 is asked for simplicity).
//   - scale pointers: any alignment (read bytewise); both layouts (linear, blocked 128x4) are handled by
//     index arithmetic (core::scale_offset).
//   - out: [M, N] row-major, any alignment of the element type; out may be uninitialized (torch.empty): every
//     element of [M, N] is written, including partial M / N tiles; nothing outside it.
//   - bias: [N] of bias_dtype (f32 / bf16 / f16) or null. NVFP4: a_global / b_global device pointers.
//   - workspace: at least matmul_sm90_workspace_bytes(format, M, N, K) bytes, 256-byte aligned, no initial
//     content required; it is overwritten by every call (no state between calls).
//   - config: an index into kMatmulSm90MxTiles / kMatmulSm90NvTiles (any M, N: tails are handled).
//   - Small M: the operand pass converts all of B (N x K) on every call, 1.5 bytes written per element for
//     MXFP4 (3 for NVFP4). At 8192^2 that is ~25 us (~50 us NVFP4) of memory traffic, about the cost of the
//     whole GEMM at M = 128: below a few hundred rows the plan should prefer a path that streams the FP4
//     weight directly (dequantized A through the W4A16 kernels, exact in bf16) unless measured otherwise.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/matmul/matmul.h"

namespace fpquant::cuda {

// GEMM tile configurations (MatmulParams::config). Rows per CTA are always 128 (two consumer warpgroups of
// 64 rows); bn = columns of B per CTA (the wgmma N); stages = depth of the TMA ring; promote_k (MXFP4) = K
// between promotions of the FP8 tensor-core sums into the float32 accumulators (128: one per stage; 64: two,
// twice the promotion instructions, for the case that Hopper's FP8 accumulation shows at 128).
struct MatmulSm90Tile {
  int bn;
  int stages;
  int promote_k;
};
// MXFP4 (FP8 operands, 128 K per stage). 0: 128 x 192 (the default: 157 FLOP per byte of L2 traffic, float32
// accumulators 96 + 96 per thread); 1: 128 x 128 (more CTAs for small M x N); 2: 128 x 192 promoting every 64 K.
inline constexpr MatmulSm90Tile kMatmulSm90MxTiles[] = {{192, 5, 128}, {128, 6, 128}, {192, 5, 64}};
// NVFP4 (bf16 operands, 64 K per stage, no promotion). 0: 128 x 256; 1: 128 x 128.
inline constexpr MatmulSm90Tile kMatmulSm90NvTiles[] = {{256, 4, 0}, {128, 6, 0}};
inline constexpr int kMatmulSm90MxTileCount = 3;
inline constexpr int kMatmulSm90NvTileCount = 2;

// K per folded block of the MXFP4 operand (one reference exponent, one promotion) and the row padding of the
// block-factor arrays (a multiple of every tile's rows and columns, so a stage's factor copy never reads past
// the array).
inline constexpr int64_t kMatmulSm90FoldK = 128;
inline constexpr int64_t kMatmulSm90RowPad = 768;

struct MatmulSm90Workspace {
  size_t a_operand, b_operand, a_factors, b_factors;  // byte offsets into the workspace (256-byte aligned)
  size_t bytes;                                         // total
};

inline MatmulSm90Workspace matmul_sm90_workspace(Format format, int64_t M, int64_t N, int64_t K) {
  auto align = [](size_t v) { return (v + 255) / 256 * 256; };
  const bool mx = format == Format::kMxFp4;
  const size_t elem = mx ? 1 : 2;  // E4M3 or bfloat16 per element
  const int64_t kb = (K + kMatmulSm90FoldK - 1) / kMatmulSm90FoldK;
  auto pad = [](int64_t r) { return (r + kMatmulSm90RowPad - 1) / kMatmulSm90RowPad * kMatmulSm90RowPad; };
  MatmulSm90Workspace w{};
  w.a_operand = 0;
  w.b_operand = align(w.a_operand + static_cast<size_t>(M) * static_cast<size_t>(K) * elem);
  w.a_factors = align(w.b_operand + static_cast<size_t>(N) * static_cast<size_t>(K) * elem);
  w.b_factors = align(w.a_factors + (mx ? static_cast<size_t>(kb * pad(M)) * 4 : 0));
  w.bytes = align(w.b_factors + (mx ? static_cast<size_t>(kb * pad(N)) * 4 : 0));
  return w;
}

inline size_t matmul_sm90_workspace_bytes(Format format, int64_t M, int64_t N, int64_t K) {
  return matmul_sm90_workspace(format, M, N, K).bytes;
}

// p.format must match the launcher. Returns cudaErrorInvalidValue for a config out of range, a workspace
// that is too small, or a tensor map the driver refuses; launch errors otherwise.
cudaError_t matmul_mxfp4_sm90(const MatmulParams& p, cudaStream_t stream);
cudaError_t matmul_nvfp4_sm90(const MatmulParams& p, cudaStream_t stream);

}  // namespace fpquant::cuda
