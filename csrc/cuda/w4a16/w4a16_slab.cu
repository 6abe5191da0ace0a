// Dequantization of rows of a packed W4A16 weight (core/w4a16_layout.h) into a dense [rows, K] slab of
// bf16/fp16, for the large-M path of linear_w4a16 (slab + cuBLAS). Each weight is rounded once, as
// dequantize_mxfp4 / dequantize_nvfp4 round it (code x the group's multiplier in float32, then to the 16-bit
// type), so the slab equals the canonical dequantization bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/scale_rules.h"
#include "core/w4a16_layout.h"
#include "cuda/common/device_utils.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/w4a16/w4a16.h"

namespace fpquant::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per (atom, lane): its 16 code bytes are rows g and g + 8 of the atom at k = 16s + 8j + 2q + e
// (core/w4a16_layout.h), written as pairs (e = 0, 1) of neighbouring outputs.
template <typename AT, Format F>
__global__ void __launch_bounds__(kThreads) dequantize_packed_kernel(W4A16Params p, int64_t tile0, int64_t tiles,
                                                                      AT* __restrict__ out) {
  constexpr int SB = core::pack_scale_bytes(group_size(F)), PR = core::kPackK / group_size(F);
  // The global scale divides the block multiplier: NVFP4's always, an MXFP4 weight's when it has one.
  const float gs = p.global_scale != nullptr ? __ldg(p.global_scale) : 0.0f;
  const int64_t atoms_k = p.K / core::kPackK, total = tiles * atoms_k * 32;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(i % 32), g = lane / 4, q = lane % 4;
    const int64_t atom = i / 32, t = atom / atoms_k, a = atom % atoms_k;
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p.codes + core::packed_atom(tile0 + t, a, p.K)) + lane);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    const uint8_t* sp = p.scales + ((tile0 + t) * atoms_k + a) * SB;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float m[PR];
#pragma unroll
      for (int i2 = 0; i2 < PR; ++i2) {
        const uint8_t sc = __ldg(sp + (8 * h + g) * PR + i2);
        m[i2] = F == Format::kNvFp4 ? core::nv_block_multiplier(sc, gs)
                : gs != 0.0f        ? core::mx_block_multiplier(sc) / gs
                                    : core::mx_block_multiplier(sc);
      }
      AT* row = out + (16 * t + 8 * h + g) * p.K + a * core::kPackK + 2 * q;
#pragma unroll
      for (int s2 = 0; s2 < 2; ++s2)
#pragma unroll
        for (int s1 = 0; s1 < 2; ++s1)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int s = 2 * s2 + s1;
            const float mult = m[F == Format::kMxFp4 ? s2 : s];
            float v[2];
#pragma unroll
            for (int e = 0; e < 2; ++e)
              v[e] = core::mul_rn(core::e2m1_decode((w[2 * h + s2] >> (4 * (4 * e + 2 * s1 + j))) & 0xF), mult);
            *reinterpret_cast<uint32_t*>(row + 16 * s + 8 * j) = pack2<AT>(v[0], v[1]);
          }
    }
  }
}

template <typename AT, Format F>
cudaError_t launch(const W4A16Params& p, int64_t n0, int64_t rows, void* out, cudaStream_t stream) {
  const int64_t tiles = rows / core::kPackRows;
  dequantize_packed_kernel<AT, F><<<grid_for(tiles * (p.K / core::kPackK) * 32, kThreads), kThreads, 0, stream>>>(
      p, n0 / core::kPackRows, tiles, static_cast<AT*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t w4a16_dequantize_rows(const W4A16Params& p, int64_t n0, int64_t rows, void* out, cudaStream_t stream) {
  if (n0 % core::kPackRows != 0 || rows % core::kPackRows != 0) return cudaErrorInvalidValue;
  const bool bf16 = p.dtype == DType::kBF16;
  if (p.format == Format::kMxFp4)
    return bf16 ? launch<__nv_bfloat16, Format::kMxFp4>(p, n0, rows, out, stream)
                : launch<__half, Format::kMxFp4>(p, n0, rows, out, stream);
  return bf16 ? launch<__nv_bfloat16, Format::kNvFp4>(p, n0, rows, out, stream)
              : launch<__half, Format::kNvFp4>(p, n0, rows, out, stream);
}

}  // namespace fpquant::cuda
