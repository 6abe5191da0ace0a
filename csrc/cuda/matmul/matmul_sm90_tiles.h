// The Hopper GEMMs' tile table and workspace arithmetic (matmul_sm90.h has the kernels' contract). Plain C++
// (no CUDA), so that plan_matmul, built into every build, can choose a tile and size the workspace.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/types.h"

namespace fpquant::cuda {

// GEMM tile configurations (MatmulParams::config). Rows per CTA are always 128 (two consumer warpgroups of
// 64 rows); bn = columns of B per CTA (the wgmma N); stages = depth of the shared-memory ring; persistent =
// one CTA per SM walking the tiles (the producer fills the next tile's stages during the epilogue) rather
// than one CTA per tile; decode (NVFP4 only) = the GEMM's producer warpgroup reads both operands' codes and
// scales itself and writes their bf16 values into the ring (no operand pass, no workspace) rather than TMA
// copying bf16 operands that a pass wrote.
struct MatmulSm90Tile {
  int bn;
  int stages;
  int persistent;
  int decode;
};
// MXFP4 (FP8 operands, 128 K per stage): 128 x 192 (157 FLOP per byte of L2 traffic, float32 accumulators
// 96 + 96 per thread) and 128 x 128 (more CTAs for small M x N), each one CTA per tile and persistent.
inline constexpr MatmulSm90Tile kMatmulSm90MxTiles[] = {{192, 5, 0, 0}, {128, 6, 0, 0}, {192, 5, 1, 0}, {128, 6, 1, 0}};
// NVFP4 (bf16 operands, 64 K per stage): 128 x 256 and 128 x 128, likewise, fed by the operand pass (0-3) or
// decoding in the GEMM (4-7). The plan picks among 0-1: the decoding tiles pass the GPU tests and memcheck
// but ran at 0.29-0.38x bf16 on the H200 (their 4 producer warps decode ~3x slower than the tensor cores
// consume; docs/perf/matmul.md); they are reached by plan_override.
inline constexpr MatmulSm90Tile kMatmulSm90NvTiles[] = {{256, 4, 0, 0}, {128, 6, 0, 0}, {256, 4, 1, 0}, {128, 6, 1, 0},
                                                        {256, 4, 0, 1}, {128, 6, 0, 1}, {256, 4, 1, 1}, {128, 6, 1, 1}};
inline constexpr int kMatmulSm90MxTileCount = 4;
inline constexpr int kMatmulSm90NvTileCount = 8;
// The NVFP4 pair the plan chooses between (this tile, wide, and the next, narrow): the operand-pass tiles,
// measured faster than the decoding ones (4, 5).
inline constexpr int kMatmulSm90NvPlanFirst = 0;
static_assert(kMatmulSm90NvTiles[kMatmulSm90NvPlanFirst].bn == 256 && kMatmulSm90NvTiles[kMatmulSm90NvPlanFirst + 1].bn == 128 &&
                  kMatmulSm90NvTiles[kMatmulSm90NvPlanFirst].decode == kMatmulSm90NvTiles[kMatmulSm90NvPlanFirst + 1].decode,
              "the plan's NVFP4 pair: the wide and the narrow tile of one kind");

// The plan's tile: the one with the least work per SM, counted as waves of 128-row CTAs (rounded up) times
// the tile's columns, a column of the narrow tile counted as dearer (more bytes per FLOP, fewer columns per
// wgmma): NVFP4 10/9 (a column-wave of 128 x 128 took 1.15x the time of one of 128 x 256 at 8192^3 on the
// H200), MXFP4 11/9 (1.11x-1.23x at 8192^3; the wide tile was the faster at all four large shapes of the
// sweep, 4096 x 4096 x 14336 included, where 6 waves of it face 8 of the narrow one). When M x N is small the
// wide tile leaves SMs idle (M = 128, N = 8192: 43 CTAs of 128 x 192 on 132 SMs) and the narrow tile's extra
// CTAs win. The persistent tiles (2, 3) are for measurements: within 1-4% of tiles 0 / 1 either way
// (benchmarks/sweep_matmul_tiles.py; docs/perf/matmul.md).
inline int matmul_sm90_tile(core::Format format, int64_t M, int64_t N, int num_sms) {
  const bool mx = format == core::Format::kMxFp4;
  const int first = mx ? 0 : kMatmulSm90NvPlanFirst;
  const MatmulSm90Tile* tiles = (mx ? kMatmulSm90MxTiles : kMatmulSm90NvTiles) + first;
  const int64_t sms = num_sms > 0 ? num_sms : 1;
  const int64_t rows = (M + 127) / 128;
  int best = 0;
  int64_t best_cost = -1;
  for (int t = 0; t < 2; ++t) {  // the wide tile first, so that it wins ties
    const int64_t ctas = rows * ((N + tiles[t].bn - 1) / tiles[t].bn);
    const int64_t cost = (ctas + sms - 1) / sms * tiles[t].bn * (t == 0 ? 9 : (mx ? 11 : 10));
    if (best_cost < 0 || cost < best_cost) best = t, best_cost = cost;
  }
  return first + best;
}

// K per folded block of the MXFP4 operand (one reference exponent, one promotion) and the row padding of the
// block-factor arrays (a multiple of every tile's rows and columns, so a stage's factor copy never reads past
// the array).
inline constexpr int64_t kMatmulSm90FoldK = 128;
inline constexpr int64_t kMatmulSm90RowPad = 768;
inline int64_t matmul_sm90_row_pad(int64_t rows) { return (rows + kMatmulSm90RowPad - 1) / kMatmulSm90RowPad * kMatmulSm90RowPad; }
// Rows of B per entry of the MXFP4 per-block flags (a divisor of every tile's columns and of the padding).
inline constexpr int64_t kMatmulSm90FlagCols = 64;

struct MatmulSm90Workspace {
  // Byte offsets into the workspace (256-byte aligned). MXFP4: a_factors / b_factors [K/128 blocks][padded
  // rows] float32, b_row [padded N] float32 (B's factor per row when one holds for its whole K), b_flags
  // [padded N / 64] int32 (nonzero: some row among those 64 needs factors per block).
  size_t a_operand, b_operand, a_factors, b_factors, b_row, b_flags;
  size_t bytes;  // total
};

// config: the tile (its decode flag decides whether NVFP4 needs its operands in the workspace). An NVFP4
// tile that decodes in the GEMM needs none (bytes = 0).
inline MatmulSm90Workspace matmul_sm90_workspace(core::Format format, int64_t M, int64_t N, int64_t K, int config) {
  auto align = [](size_t v) { return (v + 255) / 256 * 256; };
  const bool mx = format == core::Format::kMxFp4;
  const bool in_gemm = !mx && config >= 0 && config < kMatmulSm90NvTileCount && kMatmulSm90NvTiles[config].decode;
  const size_t elem = mx ? 1 : (in_gemm ? 0 : 2);  // E4M3 or bfloat16 per element (none: decoded in the GEMM)
  const int64_t kb = (K + kMatmulSm90FoldK - 1) / kMatmulSm90FoldK;
  MatmulSm90Workspace w{};
  w.a_operand = 0;
  w.b_operand = align(w.a_operand + static_cast<size_t>(M) * static_cast<size_t>(K) * elem);
  w.a_factors = align(w.b_operand + static_cast<size_t>(N) * static_cast<size_t>(K) * elem);
  w.b_factors = align(w.a_factors + (mx ? static_cast<size_t>(kb * matmul_sm90_row_pad(M)) * 4 : 0));
  w.b_row = align(w.b_factors + (mx ? static_cast<size_t>(kb * matmul_sm90_row_pad(N)) * 4 : 0));
  w.b_flags = align(w.b_row + (mx ? static_cast<size_t>(matmul_sm90_row_pad(N)) * 4 : 0));
  w.bytes = align(w.b_flags + (mx ? static_cast<size_t>(matmul_sm90_row_pad(N) / kMatmulSm90FlagCols) * 4 : 0));
  return w;
}

inline size_t matmul_sm90_workspace_bytes(core::Format format, int64_t M, int64_t N, int64_t K, int config) {
  return matmul_sm90_workspace(format, M, N, K, config).bytes;
}

}  // namespace fpquant::cuda
