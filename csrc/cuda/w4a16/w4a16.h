// Framework-agnostic entry point of the weight-only FP4 GEMM (W4A16): out[M, N] = x[M, K] @ W^T (+ bias),
// W [N, K] given as E2M1 codes and MXFP4 (E8M0, per 32) or NVFP4 (E4M3, per 16, plus a float32 global
// scale) scales in the packed layout of core/w4a16_layout.h. The weight is dequantized in registers inside
// the kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/quantize/quantize.h"
#include "cuda/w4a16/w4a16_plan.h"

namespace fpquant::cuda {

struct W4A16Params {
  const void* x = nullptr;  // [M, K] bfloat16 or float16, 16-byte aligned rows (K % 128 == 0)
  DType dtype = DType::kBF16;
  int64_t M = 0, N = 0, K = 0;  // N % 32 == 0, K % 128 == 0
  const uint8_t* codes = nullptr;   // packed: [N/16][K/64][512], 16-byte aligned
  const uint8_t* scales = nullptr;  // packed: [N/16][K/64][16 * 64/G]
  Format format = Format::kMxFp4;
  const float* global_scale = nullptr;  // NVFP4's; for MXFP4 optional, a divisor (FP-Quant abs_max)
  const void* bias = nullptr;           // [N] of dtype, optional
  void* out = nullptr;                  // [M, N] of dtype
  float* workspace = nullptr;           // [splits, M, N] float32 when splits > 1
  int splits = 1;
  int config = 0;  // the plan's configuration for the path: decode shape, mma m-tiles or wgmma tile
};

// One launcher per path of plan_w4a16 (w4a16_plan.h); p.config and p.splits come from the plan.
// The decode kernel (M <= 16, w4a16_decode.cu).
cudaError_t w4a16_decode(const W4A16Params& p, cudaStream_t stream);
// The mma.sync kernel (17 <= M, w4a16_mma.cu): p.config m-tiles of 16 rows per CTA (2 or 4).
cudaError_t w4a16_mma(const W4A16Params& p, cudaStream_t stream);
// The Hopper register-A wgmma kernel (w4a16_wgmma_sm90.cu, compiled for sm_90a alone): any M, 16-byte
// aligned inputs, M, N, K below 2^31, p.config a tile of kW4A16WgmmaTiles.
cudaError_t w4a16_wgmma(const W4A16Params& p, cudaStream_t stream);

// The canonical weight (codes [N, K/2] row-major, 16-byte aligned; linear scales [N, K/G]) rewritten into
// the packed layout (packed_codes [N/16][K/64][512], packed_scales [N/16][K/64][16 * 64/G]) in one pass,
// byte for byte what fpquant.pack_w4a16's tensor operations produce (w4a16_pack.cu). N % 16 == 0, K % 64 == 0.
cudaError_t w4a16_pack(const uint8_t* codes, const uint8_t* scales, int64_t N, int64_t K, Format format,
                       uint8_t* packed_codes, uint8_t* packed_scales, cudaStream_t stream);

// Rows [n0, n0 + rows) of the packed weight dequantized into out ([rows, K] of p.dtype), rounded as
// dequantize_mxfp4 / dequantize_nvfp4 round them (w4a16_slab.cu); n0 and rows multiples of 16.
cudaError_t w4a16_dequantize_rows(const W4A16Params& p, int64_t n0, int64_t rows, void* out, cudaStream_t stream);

}  // namespace fpquant::cuda
