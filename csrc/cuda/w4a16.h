// Framework-agnostic entry point of the weight-only FP4 GEMM (W4A16): out[M, N] = x[M, K] @ W^T (+ bias),
// W [N, K] given as E2M1 codes and MXFP4 (E8M0, per 32) or NVFP4 (E4M3, per 16, plus a float32 global
// scale) scales in the packed layout of core/w4a16_layout.h. The weight is dequantized in registers inside
// the kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/quantize.h"

namespace fpquant::cuda {

struct W4A16Params {
  const void* x = nullptr;  // [M, K] bfloat16 or float16, 16-byte aligned rows (K % 128 == 0)
  DType dtype = DType::kBF16;
  int64_t M = 0, N = 0, K = 0;  // N % 32 == 0, K % 128 == 0
  const uint8_t* codes = nullptr;   // packed: [N/16][K/64][512], 16-byte aligned
  const uint8_t* scales = nullptr;  // packed: [N/16][K/64][16 * 64/G]
  Format format = Format::kMxFp4;
  const float* global_scale = nullptr;  // NVFP4
  const void* bias = nullptr;           // [N] of dtype, optional
  void* out = nullptr;                  // [M, N] of dtype
  float* workspace = nullptr;           // [splits, M, N] float32 when splits > 1
  int splits = 1;
  int decode_config = 0;  // M <= 16: index into the decode kernel's configurations (w4a16_decode_config)
  int wgmma_tile = 0;     // the wgmma kernel's tile configuration (w4a16_wgmma_tile)
};

constexpr int kW4A16TileN = 32;   // output features per warp (N must be a multiple)
constexpr int kW4A16ChunkK = 128; // K per pipeline step

// The decode kernel's CTA shapes: `warps` warps, of which `group_warps` share 32 output features and take
// turns along K; with group_warps 1 the CTA's warps walk the same chunks and share one copy of x. With
// `cluster` (sm_90+, group_warps 1), split-K is a cluster of up to kW4A16MaxClusterSplits CTAs along K whose
// sums meet in distributed shared memory (no workspace, no second kernel). w4a16_decode_config picks one for
// (M, N) (documented heuristic, see w4a16_decode.cu).
struct W4A16DecodeShape {
  int warps, group_warps;
  bool cluster = false;
  constexpr int features() const { return warps / group_warps * kW4A16TileN; }
};
constexpr W4A16DecodeShape kW4A16DecodeShapes[] = {{4, 1}, {4, 4}, {8, 8}, {4, 1, true}};
constexpr int kW4A16DecodeConfigs = 4;
constexpr int kW4A16MaxClusterSplits = 8;  // the portable cluster size
constexpr int kW4A16ClusterDecodeConfig = 3;  // the one the heuristic takes for M > 8 on wide layers
static_assert(kW4A16DecodeShapes[kW4A16ClusterDecodeConfig].cluster, "kW4A16ClusterDecodeConfig is a cluster shape");
int w4a16_decode_config(int64_t M, int64_t N);

// Tile and split-K choice for a problem (documented heuristic, see w4a16_gemm.cu).
int w4a16_m_tiles(int64_t M);
int w4a16_splits(int64_t M, int64_t N, int64_t K, int decode_config);
cudaError_t w4a16_gemm(const W4A16Params& p, cudaStream_t stream);
// The decode kernel (M <= 16), which w4a16_gemm dispatches to.
cudaError_t w4a16_decode(const W4A16Params& p, cudaStream_t stream);

// The Hopper wgmma kernel for larger batches (w4a16_wgmma.cu): any M, N % 32 == 0, K % 128 == 0, on a
// compute capability 9.0 device with 16-byte aligned inputs (w4a16_wgmma_applies). Its own tile and split-K
// heuristics.
bool w4a16_wgmma_applies(const W4A16Params& p);
int w4a16_wgmma_tiles();                       // number of tile configurations
int w4a16_wgmma_tile(int64_t M, int64_t N, Format format);  // the configuration for a problem (heuristic)
int w4a16_wgmma_splits(int64_t M, int64_t N, int64_t K, int tile);
cudaError_t w4a16_wgmma(const W4A16Params& p, cudaStream_t stream);

// Rows [n0, n0 + rows) of the packed weight dequantized into out ([rows, K] of p.dtype), rounded as
// dequantize_mxfp4 / dequantize_nvfp4 round them (w4a16_slab.cu); n0 and rows multiples of 16.
cudaError_t w4a16_dequantize_rows(const W4A16Params& p, int64_t n0, int64_t rows, void* out, cudaStream_t stream);

}  // namespace fpquant::cuda
