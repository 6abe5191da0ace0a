// Weight-only FP4 GEMM on mma.sync tensor cores (sm_80+) for 17-64 rows of x (w4a16_decode.cu: up to 16).
//
// CTA = WARPS warps side by side along N, each owning 32 output features (4 n-tiles of 8), and MT m-tiles
// of 16 rows of x. Every warp walks the CTA's K range (1/splits of K) in chunks of 128: it loads and
// decodes its weight codes once per chunk and reuses the decoded fragments for all MT m-tiles. The warps of
// a CTA read the same activation rows, so all but the first read hit L1. grid.x walks M fastest, so CTAs
// that share a weight tile run together and the weight comes from HBM about once. Split-K partials
// (splits > 1) go to a float32 workspace that a second kernel adds in a fixed order (deterministic).
//
// Operand layout: the weight is the B operand (features as mma n), read packed (core/w4a16_layout.h). A warp's
// 32 features are two 16-feature tiles, i.e. four n-tiles of 8 (n-tile 2t + h: row half h of tile t); a
// chunk of 128 k is two atoms per tile. A lane's 16 bytes of an atom are, decoded (decode_atom), its B
// fragments (b0b1, b2b3) of both row halves for the atom's 4 k-steps in natural k order, so the activation
// A fragments are plain 32-bit loads: x[r][k0 + 2q, + 1] and x[r][k0 + 2q + 8, + 9] of rows g and g + 8.
//
// Dequantization: E2M1 -> bf16/fp16 by integer arithmetic, times the group scale in the tensor-core type,
// with the multipliers of w4a16_common.cuh (exact; NVFP4 on bf16 carries a factor 2^-8 that the epilogue
// removes with the global scale).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "core/w4a16_layout.h"
#include "cuda/common/mma.cuh"
#include "cuda/w4a16/w4a16_common.cuh"

namespace fpquant::cuda {
namespace {
using namespace w4a16;

constexpr int kNT = kW4A16TileN / 8;                 // n-tiles per warp
constexpr int kTiles = kW4A16TileN / core::kPackRows;  // 16-feature tiles per warp
constexpr int kAtomsK = kW4A16ChunkK / core::kPackK;   // atoms per tile and chunk

template <typename AT, Format F, int MT, int WARPS>
__global__ void __launch_bounds__(32 * WARPS) w4a16_kernel(W4A16Params p) {
  constexpr int SB = core::pack_scale_bytes(group_size(F));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * 16 * MT;
  const int64_t nw = (static_cast<int64_t>(blockIdx.y) * WARPS + warp) * 32;  // this warp's first feature
  if (nw >= p.N) return;  // no block-level synchronization below
  const int64_t chunks = p.K / kW4A16ChunkK, atoms_k = p.K / core::kPackK;
  const int64_t c_begin = chunks * blockIdx.z / p.splits, c_end = chunks * (blockIdx.z + 1) / p.splits;
  const AT* x = static_cast<const AT*>(p.x);
  // Atom (t, a) of chunk c: codes at wsrc[t] + c * kAtomsK * 512 + a * 512, scales likewise from ssrc[t].
  const uint8_t* wsrc[kTiles];
  const uint8_t* ssrc[kTiles];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
    const int64_t tile = nw / core::kPackRows + t;
    wsrc[t] = p.codes + core::packed_atom(tile, 0, p.K) + 16 * lane;
    ssrc[t] = p.scales + tile * atoms_k * SB;
  }

  float acc[MT][kNT][4] = {};

  // Two-stage register pipeline: the next chunk's codes and scales are in flight while this one is decoded
  // and multiplied. w[t][a], s[t][a][h]: atom a of tile t, scales of rows g (h = 0) and g + 8.
  uint4 wq[kTiles][kAtomsK];
  uint32_t sc[kTiles][kAtomsK][2];
  auto load_w = [&](int64_t c, uint4 (&w)[kTiles][kAtomsK], uint32_t (&s)[kTiles][kAtomsK][2]) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int a = 0; a < kAtomsK; ++a) {
        const int64_t atom = kAtomsK * c + a;
        w[t][a] = ldg16(wsrc[t] + atom * core::kPackAtomBytes);
        const uint8_t* sp = ssrc[t] + atom * SB;
        if constexpr (F == Format::kMxFp4) {
          s[t][a][0] = __ldg(reinterpret_cast<const uint16_t*>(sp) + g);
          s[t][a][1] = __ldg(reinterpret_cast<const uint16_t*>(sp) + g + 8);
        } else {
          s[t][a][0] = __ldg(reinterpret_cast<const uint32_t*>(sp) + g);
          s[t][a][1] = __ldg(reinterpret_cast<const uint32_t*>(sp) + g + 8);
        }
      }
  };
  if (c_begin < c_end) load_w(c_begin, wq, sc);
  for (int64_t c = c_begin; c < c_end; ++c) {
    uint4 wn[kTiles][kAtomsK];
    uint32_t sn[kTiles][kAtomsK][2];
    if (c + 1 < c_end) load_w(c + 1, wn, sn);

    // Per atom column: decode both tiles' fragments (decode_atoms: the exact two-multiply path where MXFP4
    // needs it, by warp vote), then feed every m-tile.
#pragma unroll 1  // bounds register pressure: the compiler would otherwise hoist every m-tile's loads
    for (int a = 0; a < kAtomsK; ++a) {
      // Selected by value, not indexed by the loop variable (which would put the arrays in local memory).
      uint4 wa[kTiles];
      uint32_t sa[kTiles][2];
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        wa[t] = a == 0 ? wq[t][0] : wq[t][1];
        sa[t][0] = a == 0 ? sc[t][0][0] : sc[t][1][0];
        sa[t][1] = a == 0 ? sc[t][0][1] : sc[t][1][1];
      }
      uint32_t f[kTiles][4][4];
      decode_atoms<AT, F, kTiles>(wa, sa, f);
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        const int64_t r0 = m0 + 16 * mi + g, r1 = r0 + 8;
        const uint32_t* x0 = reinterpret_cast<const uint32_t*>(x + (r0 < p.M ? r0 : 0) * p.K);
        const uint32_t* x1 = reinterpret_cast<const uint32_t*>(x + (r1 < p.M ? r1 : 0) * p.K);
        const int64_t col = (c * kW4A16ChunkK + a * core::kPackK) / 2 + q;  // in pairs
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const int64_t k = col + 8 * s;
          const uint32_t fa[4] = {r0 < p.M ? __ldg(x0 + k) : 0u, r1 < p.M ? __ldg(x1 + k) : 0u,
                                  r0 < p.M ? __ldg(x0 + k + 4) : 0u, r1 < p.M ? __ldg(x1 + k + 4) : 0u};
#pragma unroll
          for (int t = 0; t < kTiles; ++t)
#pragma unroll
            for (int h = 0; h < 2; ++h) mma16816<AT>(acc[mi][2 * t + h], fa, f[t][s][h], f[t][s][h + 2]);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int a = 0; a < kAtomsK; ++a) {
        wq[t][a] = wn[t][a];
        sc[t][a][0] = sn[t][a][0];
        sc[t][a][1] = sn[t][a][1];
      }
  }

  // Epilogue: lane (g, q) holds rows g and g+8 of each m-tile, features 8j + 2q and 8j + 2q + 1 (n-tile j =
  // 2t + h is row half h of tile t: features 16t + 8h + ...).
  const float unscale = kNvUnscale<AT, F>;
  const float inv_g = inv_global_scale(p);
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + 16 * mi + g + 8 * h;
      if (m >= p.M) continue;
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const int64_t n = nw + 8 * j + 2 * q;
        store_pair<AT, F>(p, m, n, acc[mi][j][2 * h] * unscale, acc[mi][j][2 * h + 1] * unscale, inv_g);
      }
    }
  }
}

template <typename AT, Format F, int MT, int WARPS>
cudaError_t launch_tiles(const W4A16Params& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.M + 16 * MT - 1) / (16 * MT)),
                  static_cast<unsigned>((p.N + 32 * WARPS - 1) / (32 * WARPS)), static_cast<unsigned>(p.splits));
  w4a16_kernel<AT, F, MT, WARPS><<<grid, 32 * WARPS, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  return err != cudaSuccess ? err : reduce_splits<AT, F>(p, stream);
}

template <typename AT, Format F>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  switch (p.config) {
    case 2: return launch_tiles<AT, F, 2, 4>(p, stream);
    case 4: return launch_tiles<AT, F, 4, 8>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t w4a16_mma(const W4A16Params& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == DType::kBF16;
  if (p.format == Format::kMxFp4)
    return bf16 ? launch<__nv_bfloat16, Format::kMxFp4>(p, stream) : launch<__half, Format::kMxFp4>(p, stream);
  return bf16 ? launch<__nv_bfloat16, Format::kNvFp4>(p, stream) : launch<__half, Format::kNvFp4>(p, stream);
}

}  // namespace fpquant::cuda
