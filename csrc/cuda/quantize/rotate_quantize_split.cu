// Rotation fused with quantization, split-precision variant: used for float32 input (x split into hi + lo as
// well) and for NVFP4 with r = 16 on rows whose length is not a multiple of 32; rotate_quantize_mma.cu is the fast
// path for 16-bit input. y = x_block @ R on tensor cores (mma.sync m16n8k16, fp32 accumulation), then the
// scale rule and E2M1 encoding on the accumulators, in one pass over x.
//
// View x as X [n_chunks, r] (n_chunks = rows * K / r); Y = X @ R is a GEMM with N = K = r. Each warp owns
// MT m-tiles of 16 chunk rows and all r output columns; R lives in shared memory (read with ldmatrix).
// Precision: R is split into hi + lo halves of the tensor-core type (two MMAs), and float32 inputs are split
// the same way (three MMAs), so products carry ~16 bits and the sums are fp32: results differ from the
// float64 reference only by fp32 rounding (tests bound the code mismatches).
//
// Register layouts: see cuda/common/mma.cuh.
// The reduction index k may be permuted freely if A and B agree, so thread q loads its memory columns
// [q*E, (q+1)*E) (E = r/4, contiguous: wide loads) and B's rows are permuted to match (perm_k).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/common/device_utils.cuh"
#include "cuda/common/mma.cuh"
#include "core/scale_layout.h"
#include "core/scale_rules.h"

namespace fpquant::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;

// The mma k index of memory column m of a rotation block: thread q's e-th element (m = q*E + e) is slot
// {2q, 2q+1, 2q+8, 2q+9}[e % 4] of k-step e / 4.
__host__ __device__ constexpr int perm_k(int m, int r) {
  const int E = r / 4, q = m / E, e = m % E, s = e / 4, j = e % 4;
  return 16 * s + (j < 2 ? 2 * q + j : 2 * q + 6 + j);
}

// Loads 4 consecutive elements (one k-step's worth for one row) as two A words; for float32 input also the
// low parts (x - hi) so that hi + lo carries the value to ~16 bits.
template <typename T, typename MT>
__device__ __forceinline__ void load_a(const T* __restrict__ p, bool valid, uint32_t& w0, uint32_t& w1,
                                       uint32_t& l0, uint32_t& l1) {
  if constexpr (std::is_same_v<T, float>) {
    float4 v = valid ? __ldg(reinterpret_cast<const float4*>(p)) : make_float4(0.f, 0.f, 0.f, 0.f);
    const float h0 = round_to<MT>(v.x), h1 = round_to<MT>(v.y), h2 = round_to<MT>(v.z),
                h3 = round_to<MT>(v.w);
    w0 = pack2<MT>(h0, h1);
    w1 = pack2<MT>(h2, h3);
    l0 = pack2<MT>(v.x - h0, v.y - h1);  // exact differences
    l1 = pack2<MT>(v.z - h2, v.w - h3);
  } else {
    const uint2 v = valid ? __ldg(reinterpret_cast<const uint2*>(p)) : make_uint2(0u, 0u);
    w0 = v.x;
    w1 = v.y;
    l0 = l1 = 0u;
  }
}

// Reduce over the 4 lanes of a quad (lanes 4g .. 4g+3 hold one row's values of a group).
__device__ __forceinline__ float quad_max(float v) {
  v = core::max_f(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return core::max_f(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

template <typename T, typename MT, int R, int MT_TILES, Format F>
__global__ void __launch_bounds__(kThreads, 2)
    rotate_quantize_split_kernel(const T* __restrict__ x, int64_t n_chunks, int64_t K, const MT* __restrict__ rot_hi,
                           const MT* __restrict__ rot_lo, core::MxRule rule, const float* __restrict__ gs,
                           ScaleLayout layout, uint8_t* __restrict__ codes, uint8_t* __restrict__ scales) {
  constexpr int G = group_size(F);
  constexpr int kStride = R + 8;  // padded smem rows: conflict-free ldmatrix
  constexpr int E = R / 4;        // elements per thread per row
  constexpr int ROWS = 16 * MT_TILES;
  constexpr bool kSplitA = std::is_same_v<T, float>;
  static_assert(R >= G, "a scale group must lie inside one rotation block (the glue widens r=16 for MXFP4)");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  MT* b_hi = reinterpret_cast<MT*>(smem_raw);  // b[n][k] = R[m][n] with k = perm_k(m)
  MT* b_lo = b_hi + R * kStride;
  uint8_t* stage_all = reinterpret_cast<uint8_t*>(b_lo + R * kStride);

  for (int idx = threadIdx.x; idx < R * R; idx += kThreads) {
    const int m = idx / R, n = idx % R;
    const int k = perm_k(m, R);
    b_hi[n * kStride + k] = rot_hi[idx];
    b_lo[n * kStride + k] = rot_lo[idx];
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  uint8_t* stage = stage_all + warp * ROWS * (R / 2);
  const float gval = F == Format::kNvFp4 ? __ldg(gs) : 0.0f;
  const int64_t groups_per_row = K / G;

  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * kWarps + warp; tile * ROWS < n_chunks;
       tile += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t base = tile * ROWS;
    float acc[MT_TILES][R / 8][4];
#pragma unroll
    for (int mi = 0; mi < MT_TILES; ++mi)
#pragma unroll
      for (int nt = 0; nt < R / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mi][nt][c] = 0.0f;

#pragma unroll
    for (int s = 0; s < R / 16; ++s) {
      uint32_t ah[MT_TILES][4], al[MT_TILES][4];
#pragma unroll
      for (int mi = 0; mi < MT_TILES; ++mi) {
        const int64_t c0 = base + mi * 16 + g, c1 = c0 + 8;
        const int col = q * E + 4 * s;
        load_a<T, MT>(x + c0 * R + col, c0 < n_chunks, ah[mi][0], ah[mi][2], al[mi][0], al[mi][2]);
        load_a<T, MT>(x + c1 * R + col, c1 < n_chunks, ah[mi][1], ah[mi][3], al[mi][1], al[mi][3]);
      }
#pragma unroll
      for (int np = 0; np < R / 16; ++np) {
        const int mat = lane / 8, rr = lane % 8;
        const int off = ((2 * np + mat / 2) * 8 + rr) * kStride + 16 * s + (mat % 2) * 8;
        uint32_t bh[4], bl[4];
        ldmatrix_x4(bh, b_hi + off);
        ldmatrix_x4(bl, b_lo + off);
#pragma unroll
        for (int mi = 0; mi < MT_TILES; ++mi) {
          mma16816<MT>(acc[mi][2 * np], ah[mi], bh[0], bh[1]);
          mma16816<MT>(acc[mi][2 * np + 1], ah[mi], bh[2], bh[3]);
          mma16816<MT>(acc[mi][2 * np], ah[mi], bl[0], bl[1]);
          mma16816<MT>(acc[mi][2 * np + 1], ah[mi], bl[2], bl[3]);
          if constexpr (kSplitA) {
            mma16816<MT>(acc[mi][2 * np], al[mi], bh[0], bh[1]);
            mma16816<MT>(acc[mi][2 * np + 1], al[mi], bh[2], bh[3]);
          }
        }
      }
    }

    // Epilogue: quantize each group of each row held by this quad; codes go to the staging buffer.
#pragma unroll
    for (int mi = 0; mi < MT_TILES; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row_in_tile = mi * 16 + h * 8 + g;
        const int64_t chunk = base + row_in_tile;
        uint8_t* srow = stage + row_in_tile * (R / 2);
#pragma unroll
        for (int j = 0; j < R / G; ++j) {
          constexpr int NV = G / 4;  // values per thread: in-group column 8i + 2q + b is v[2i + b]
          float v[NV];
#pragma unroll
          for (int i = 0; i < NV / 2; ++i) {
            v[2 * i] = acc[mi][(G / 8) * j + i][2 * h];
            v[2 * i + 1] = acc[mi][(G / 8) * j + i][2 * h + 1];
          }
          bool finite = true;
          float amax = 0.0f;
#pragma unroll
          for (int i = 0; i < NV; ++i) {
            finite = finite && core::is_finite(v[i]);
            amax = core::max_f(amax, core::abs_f(v[i]));
          }
          amax = quad_max(amax);
          // the group is finite only if all four lanes of the quad are
          const unsigned fin_mask = __ballot_sync(0xffffffffu, finite);
          finite = ((fin_mask >> (4 * g)) & 0xFu) == 0xFu;
          uint8_t sc;
          if constexpr (F == Format::kMxFp4) {
            float sum = 0.0f, sumsq = 0.0f;
            if (rule == core::MxRule::kQuest) {
              // core::tree_sum order: adjacent pairs (local), then pairs of pairs across lanes q^1, then q^2,
              // then across this thread's n-tiles (0+1, 2+3), then the two halves.
              float p[4], ps[4];
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                p[i] = core::add_rn(v[2 * i], v[2 * i + 1]);
                ps[i] = core::add_rn(core::mul_rn(v[2 * i], v[2 * i]), core::mul_rn(v[2 * i + 1], v[2 * i + 1]));
              }
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                p[i] = core::add_rn(p[i], __shfl_xor_sync(0xffffffffu, p[i], 1));
                ps[i] = core::add_rn(ps[i], __shfl_xor_sync(0xffffffffu, ps[i], 1));
              }
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                p[i] = core::add_rn(p[i], __shfl_xor_sync(0xffffffffu, p[i], 2));
                ps[i] = core::add_rn(ps[i], __shfl_xor_sync(0xffffffffu, ps[i], 2));
              }
              sum = core::add_rn(core::add_rn(p[0], p[1]), core::add_rn(p[2], p[3]));
              sumsq = core::add_rn(core::add_rn(ps[0], ps[1]), core::add_rn(ps[2], ps[3]));
            }
            const int e = core::mx_block_exponent(rule, amax, sum, sumsq);
            const float inv = core::exp2i(-e);
            sc = finite ? static_cast<uint8_t>(e + 127) : core::kE8M0Nan;
#pragma unroll
            for (int i = 0; i < NV / 2; ++i)
              srow[j * (G / 2) + 4 * i + q] =
                  finite ? core::pack2(core::e2m1_encode(core::mul_rn(v[2 * i], inv)),
                                       core::e2m1_encode(core::mul_rn(v[2 * i + 1], inv)))
                         : 0;
          } else {
            sc = core::nv_block_scale(amax, finite, gval);
            const float d = core::nv_block_divisor(sc, gval);
#pragma unroll
            for (int i = 0; i < NV / 2; ++i)
              srow[j * (G / 2) + 4 * i + q] = core::pack2(core::nv_encode(v[2 * i], d), core::nv_encode(v[2 * i + 1], d));
          }
          if (q == 0 && chunk < n_chunks) {
            const int64_t flat = chunk * (R / G) + j;  // linear scale index (K is a multiple of R)
            scales[core::scale_offset(flat, groups_per_row, layout)] = sc;
          }
        }
      }
    }
    __syncwarp();
    // Staged codes of ROWS consecutive chunk rows are one contiguous range of codes.
    constexpr int VB = (R / 2) < 16 ? (R / 2) : 16;
    constexpr int n_vec = ROWS * (R / 2) / VB;
#pragma unroll
    for (int vi = lane; vi < n_vec; vi += 32) {
      const int row_in_tile = (vi * VB) / (R / 2);
      if (base + row_in_tile < n_chunks) {
        uint8_t* dst = codes + base * (R / 2) + static_cast<int64_t>(vi) * VB;
        if constexpr (VB == 16) {
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(stage + vi * VB);
        } else {
          *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(stage + vi * VB);
        }
      }
    }
    __syncwarp();
  }
}

template <typename T, typename MT, int R, Format F>
cudaError_t launch(const QuantizeParams& p, cudaStream_t stream) {
  // Few m-tiles per warp keep the accumulators small enough (<= 128 registers) for two CTAs (16 warps) per
  // SM: the first H100 run (two m-tiles, 1 CTA/SM) was latency-bound at 17-26% of copy bandwidth.
  constexpr int MT_TILES = R >= 64 ? 1 : 2;
  constexpr int ROWS = 16 * MT_TILES;
  auto kernel = rotate_quantize_split_kernel<T, MT, R, MT_TILES, F>;
  const size_t smem = 2 * R * (R + 8) * sizeof(MT) + kWarps * ROWS * (R / 2);
  // Set on every launch: cheap, not a stream operation, and correct for whichever device is current.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int64_t n_chunks = p.rows * p.K / R;
  const int64_t tiles = (n_chunks + ROWS - 1) / ROWS;
  const unsigned grid = grid_for(tiles, kWarps, resident_blocks(kernel, kThreads, smem));
  kernel<<<grid, kThreads, smem, stream>>>(static_cast<const T*>(p.x), n_chunks, p.K,
                                           static_cast<const MT*>(p.rot_hi), static_cast<const MT*>(p.rot_lo),
                                           p.rule, p.global_scale, p.layout, p.codes, p.scales);
  return cudaGetLastError();
}

template <typename T, typename MT, Format F>
cudaError_t by_size(const QuantizeParams& p, cudaStream_t stream) {
  switch (p.r) {
    case 16:
      if constexpr (F == Format::kMxFp4) return cudaErrorInvalidValue;  // widened to 32 by the plan
      else return launch<T, MT, 16, F>(p, stream);
    case 32: return launch<T, MT, 32, F>(p, stream);
    case 64: return launch<T, MT, 64, F>(p, stream);
    case 128: return launch<T, MT, 128, F>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <Format F>
cudaError_t by_dtype(const QuantizeParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kBF16: return by_size<__nv_bfloat16, __nv_bfloat16, F>(p, stream);
    case DType::kF16: return by_size<__half, __half, F>(p, stream);
    default: return by_size<float, __nv_bfloat16, F>(p, stream);
  }
}

}  // namespace

cudaError_t quantize_rotated_split(const QuantizeParams& p, cudaStream_t stream) {
  return p.format == Format::kMxFp4 ? by_dtype<Format::kMxFp4>(p, stream) : by_dtype<Format::kNvFp4>(p, stream);
}

}  // namespace fpquant::cuda
