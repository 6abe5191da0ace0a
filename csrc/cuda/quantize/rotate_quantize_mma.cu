// Rotation fused with quantization for bfloat16 / float16 input: y = x_block @ R on tensor cores (mma.sync
// m16n8k16, fp32 accumulation), then the scale rule and E2M1 encoding on the accumulators, in one pass.
//
// View x as X [n_chunks, r]. Each CTA streams tiles of X rows through shared memory with cp.async (several
// tiles in flight), and each warp owns 32 output columns of a rotation block, i.e. exactly one MXFP4 group
// or two NVFP4 groups, so scales never need data from another warp.
//
// The rotation lives in registers. Column j of R is stored as c_j * S[:, j] with c_j = max_k |R[k][j]|:
// for (randomized) Hadamard matrices S is exactly +-1, so a single bf16/fp16 MMA is exact in its products
// and y_j = c_j * acc_j is one float32 rounding; the scale is applied before the scale rules, so they see
// float32 rotated values like the CPU path. When S is not exact in the 16-bit type (a general orthogonal
// matrix), its remainder S - hi(S) is kept in shared memory and a second MMA adds it (~16 significant bits,
// the fp32-input kernel's precision). The choice is made per warp on the device: no host synchronization.
//
// Fragment layouts (cuda/common/mma.cuh): output columns are permuted inside the warp's 32 so that thread q of a
// quad holds the 8 consecutive columns 8q..8q+7 of a row. The warp writes its 32 rows x 32 rotated values to
// shared memory and each lane then encodes one row's 32 values (one MXFP4 group, or two NVFP4 groups) with
// the same per-group code as the unrotated kernel (cuda/common/encode.cuh): per-group work is done once per group,
// not once per lane holding a piece of it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <type_traits>

#include "cuda/common/async_copy.cuh"
#include "cuda/common/device_utils.cuh"
#include "cuda/common/encode.cuh"
#include "cuda/common/mma.cuh"
#include "core/scale_layout.h"
#include "core/scale_rules.h"

namespace fpquant::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
// Two CTAs per SM at <= 128 registers: r = 128 holds 64 registers of rotation fragments per thread and a
// few loop-invariant values spill, yet one CTA with 255 registers and deeper staging measured slower
// (docs/perf/quantize.md, "Tried and dropped").
constexpr int kCtasPerSm = 2;

template <int R>
struct Cfg {
  static constexpr int kColGroups = R / 32;              // warps side by side over the r output columns
  static constexpr int kRowGroups = kWarps / kColGroups;  // warps stacked over rows
  static constexpr int kWarpRows = 32;                    // two 16-row m-tiles, one row per lane to encode
  static constexpr int kRows = kRowGroups * kWarpRows;    // X rows per tile
  static constexpr int kChunks = R / 8;                   // 16-byte chunks per X row
  static constexpr int kTileBytes = kRows * R * 2;        // 16 KiB
  // Two CTAs per SM must fit in shared memory.
  static constexpr int kStages = R == 128 ? 3 : 4;
  static constexpr int kStageArea = kStages * kTileBytes;
  static constexpr int kYBytes = kWarps * kWarpRows * 32 * 4;  // rotated values, float32, per warp
  static constexpr int kLoBytes = R * R * 2;              // remainder fragments, [col group][k-step][n-tile][lane]
  static constexpr int kSmem = kStageArea + kYBytes + kLoBytes;
  static_assert(kStageArea + kYBytes >= R * R * 4, "the float32 rotation is staged in the tile + value area");
};

// 16-byte chunk c of row i sits at chunk swz(i, c) of the row: the 8 rows an ldmatrix reads at one column
// chunk then fall into 8 different 16-byte bank groups (rows of 64 bytes for r = 32 pair up in a 128-byte
// line, hence the row/2). Checked by tests/kernels/test_kernel_layouts.py.
template <int R>
__device__ __forceinline__ int swz(int i, int c) {
  if constexpr (R >= 64) return c ^ (i & 7);
  else return c ^ ((i >> 1) & 3);
}

// Output column (0..31 inside the warp's group) held by accumulator n-index n of n-tile nt: thread q holds
// columns 8q .. 8q+7 (n = 2q + b -> 8q + 2nt + b).
__host__ __device__ constexpr int out_col(int nt, int n) { return 8 * (n / 2) + 2 * nt + (n % 2); }

// R[k][j] of the (possibly virtual) r x r rotation: r_in = 16 is applied as diag(R16, R16) so that an MXFP4
// group (32) lies inside one block; the zero blocks add exact zeros.
template <int R, bool kDiag16>
__device__ __forceinline__ float rot_at(const float* rs, int k, int j) {
  if constexpr (!kDiag16) return rs[k * R + j];
  else return ((k ^ j) & 16) ? 0.0f : rs[(k & 15) * 16 + (j & 15)];
}

// R[k][j] / c_j: exactly +-1 where |R[k][j]| = c_j (all entries of a Hadamard matrix), otherwise a product with
// the reciprocal (within an ULP; such a column takes the hi + lo path, whose precision is ~16 bits anyway).
__device__ __forceinline__ float unit_scaled(float v, float c, float rcp) {
  return fabsf(v) == c ? copysignf(1.0f, v) : __fmul_rn(v, rcp);
}

template <typename T, int R, bool kDiag16, Format F, core::MxRule RULE>
__global__ void __launch_bounds__(kThreads, kCtasPerSm)
    rotate_quantize_mma_kernel(const T* __restrict__ x, int64_t n_chunks, int64_t K, const float* __restrict__ rot, const float* __restrict__ gs, ScaleLayout layout,
                           uint8_t* __restrict__ codes, uint8_t* __restrict__ scales) {
  using C = Cfg<R>;
  constexpr int G = group_size(F);
  extern __shared__ __align__(128) unsigned char smem[];
  uint2* lo_frag = reinterpret_cast<uint2*>(smem + C::kStageArea + C::kYBytes);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int cg = warp % C::kColGroups, rg = warp / C::kColGroups;

  // ---- Rotation to registers: stage R (float32) in the tile area, then each warp builds its fragments.
  {
    constexpr int r_in = kDiag16 ? 16 : R;
    float* rs = reinterpret_cast<float*>(smem);
    for (int c = tid; c < r_in * r_in / 4; c += kThreads) cp_async16(rs + 4 * c, rot + 4 * c, true);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }
  const float* rs = reinterpret_cast<const float*>(smem);
  // c_j for column j = lane of this warp's group (NaN-propagating, so a NaN column stays NaN; 0 -> 1).
  float c_lane = 0.0f;
  for (int k = 0; k < R; ++k) c_lane = max_nan(c_lane, fabsf(rot_at<R, kDiag16>(rs, k, 32 * cg + lane)));
  if (c_lane == 0.0f) c_lane = 1.0f;
  const float rcp_lane = __frcp_rn(c_lane);
  uint32_t bh[R / 16][4][2];
  bool lo_nonzero = false;
#pragma unroll
  for (int s = 0; s < R / 16; ++s) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int j = out_col(nt, g);
      const float cj = __shfl_sync(0xffffffffu, c_lane, j);
      const float rcj = __shfl_sync(0xffffffffu, rcp_lane, j);
      uint32_t lo[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int k = 16 * s + 8 * h + 2 * q;
        const float s0 = unit_scaled(rot_at<R, kDiag16>(rs, k, 32 * cg + j), cj, rcj);
        const float s1 = unit_scaled(rot_at<R, kDiag16>(rs, k + 1, 32 * cg + j), cj, rcj);
        const float h0 = round_to<T>(s0), h1 = round_to<T>(s1);
        bh[s][nt][h] = pack2<T>(h0, h1);
        lo[h] = pack2<T>(s0 - h0, s1 - h1);  // exact differences
        lo_nonzero = lo_nonzero || (s0 - h0) != 0.0f || (s1 - h1) != 0.0f;
      }
      if (rg == 0) lo_frag[((cg * (R / 16) + s) * 4 + nt) * 32 + lane] = make_uint2(lo[0], lo[1]);
    }
  }
  // Warp-uniform, and equal for all warps of one column group (they read the same columns).
  const bool needs_lo = __any_sync(0xffffffffu, lo_nonzero);
  float cq[8];  // c_j of the columns 8q .. 8q+7 this thread's accumulators hold
#pragma unroll
  for (int k = 0; k < 8; ++k) cq[k] = __shfl_sync(0xffffffffu, c_lane, 8 * q + k);
  // MXFP4 with one column scale for the warp's 32 columns (Hadamard): the epilogue folds c into the group's
  // power-of-two multiplier (mx_group_scaled) and the staged values are the raw accumulators. Warp-uniform.
  const float c_warp = __shfl_sync(0xffffffffu, c_lane, 0);
  bool fold = false;
  if constexpr (F == Format::kMxFp4 && RULE != core::MxRule::kQuest)
    fold = __all_sync(0xffffffffu, c_lane == c_warp) && c_warp >= 0x1p-20f && c_warp <= 0x1p20f;
  __syncthreads();  // the tile area is reused below; lo_frag is complete

  // ---- Tile pipeline.
  const int64_t n_tiles = (n_chunks + C::kRows - 1) / C::kRows;
  const int64_t my_tiles =
      blockIdx.x < n_tiles ? (n_tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  // Thread tid copies chunk tid % kChunks of rows tid / kChunks + u * kRowStep: since kRowStep is a multiple
  // of 8, the swizzled chunk is the same for every u.
  constexpr int kRowStep = kThreads / C::kChunks;
  constexpr int kCopies = C::kRows / kRowStep;
  static_assert(kRowStep % 8 == 0 && C::kRows % kRowStep == 0, "tile copy layout");
  const int li = tid / C::kChunks, lch = tid % C::kChunks;
  const int soff = (li * C::kChunks + swz<R>(li, lch)) * 16;
  auto load_tile = [&](int64_t it) {
    const int64_t row0 = (blockIdx.x + it * gridDim.x) * C::kRows + li;
    unsigned char* dst = smem + static_cast<int>(it % C::kStages) * C::kTileBytes + soff;
    const T* src = x + row0 * R + lch * 8;
#pragma unroll
    for (int u = 0; u < kCopies; ++u) {
      const bool valid = row0 + u * kRowStep < n_chunks;
      cp_async16(dst + u * kRowStep * C::kChunks * 16, valid ? src + u * kRowStep * R : x, valid);
    }
  };
#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < my_tiles) load_tile(s);
    cp_async_commit();  // empty groups keep the group count uniform
  }

  NvGlobal ng{};
  if constexpr (F == Format::kNvFp4) ng = nv_global(gs);
  const int64_t groups_per_row = K / G;
  // This warp's rotated values: 32 rows x 32 floats, 16-byte chunk c of row i at chunk c ^ (i & 7) (both the
  // quad-pattern writes and the row-per-lane reads are conflict-free).
  float* ys = reinterpret_cast<float*>(smem + C::kStageArea) + warp * C::kWarpRows * 32;
  // ldmatrix addresses: the swizzle only flips the low 3 bits of the chunk index and repeats every 8 rows, so
  // k-steps s and s + 4 (and the second m-tile) differ by constants; four offsets cover all of them (keeps the
  // register count down: the first version spilled one address per k-step).
  constexpr int kXo = R / 16 < 4 ? R / 16 : 4;
  int xoff[kXo];
#pragma unroll
  for (int k = 0; k < kXo; ++k) {
    const int i0 = rg * C::kWarpRows + (lane & 15);
    xoff[k] = (i0 * C::kChunks + swz<R>(i0, 2 * k + (lane >> 4))) * 16;
  }
  for (int64_t it = 0; it < my_tiles; ++it) {
    cp_async_wait<C::kStages - 2>();
    __syncthreads();  // tile `it` visible to all; the slot refilled below was consumed in iteration it-1
    if (it + C::kStages - 1 < my_tiles) load_tile(it + C::kStages - 1);
    cp_async_commit();

    const unsigned char* tile = smem + static_cast<int>(it % C::kStages) * C::kTileBytes;
    const int wrow = rg * C::kWarpRows;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      float acc[4][4];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[nt][c] = 0.0f;
      // A fragments double-buffered: the next k-step's ldmatrix is in flight while this one's MMAs issue.
      uint32_t a[2][4];
      ldmatrix_x4(a[0], tile + xoff[0] + mi * 16 * C::kChunks * 16);
#pragma unroll
      for (int s = 0; s < R / 16; ++s) {
        if (s + 1 < R / 16)
          ldmatrix_x4(a[(s + 1) & 1], tile + xoff[(s + 1) % kXo] + ((s + 1) / kXo) * 128 + mi * 16 * C::kChunks * 16);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma16816<T>(acc[nt], a[s & 1], bh[s][nt][0], bh[s][nt][1]);
        if (needs_lo) {
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            const uint2 l = lo_frag[((cg * (R / 16) + s) * 4 + nt) * 32 + lane];
            mma16816<T>(acc[nt], a[s & 1], l.x, l.y);
          }
        }
      }
      // Raw accumulators when folding, c_j * acc otherwise (two copies, so neither issues a per-element select).
      auto stage = [&](auto scaled) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = mi * 16 + 8 * h + g;
          float y[8];
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            y[2 * nt] = decltype(scaled)::value ? __fmul_rn(cq[2 * nt], acc[nt][2 * h]) : acc[nt][2 * h];
            y[2 * nt + 1] = decltype(scaled)::value ? __fmul_rn(cq[2 * nt + 1], acc[nt][2 * h + 1]) : acc[nt][2 * h + 1];
          }
          float4* dst = reinterpret_cast<float4*>(ys + row * 32);
          dst[(2 * q) ^ (row & 7)] = make_float4(y[0], y[1], y[2], y[3]);
          dst[(2 * q + 1) ^ (row & 7)] = make_float4(y[4], y[5], y[6], y[7]);
        }
      };
      if (fold) stage(std::false_type{});
      else stage(std::true_type{});
    }
    __syncwarp();

    // ---- Epilogue: lane t encodes row t of the warp's 32 rows (its 32 output columns of that chunk).
    const float4* src = reinterpret_cast<const float4*>(ys + lane * 32);
    auto row_values = [&](int base8) {
      return [=](int j, float (&out)[8]) {
        const int c = 2 * (base8 + j);
        const float4 f0 = src[c ^ (lane & 7)], f1 = src[(c + 1) ^ (lane & 7)];
        out[0] = f0.x; out[1] = f0.y; out[2] = f0.z; out[3] = f0.w;
        out[4] = f1.x; out[5] = f1.y; out[6] = f1.z; out[7] = f1.w;
      };
    };
    const int64_t chunk = (blockIdx.x + it * gridDim.x) * C::kRows + wrow + lane;
    uint32_t w[4];
    uint8_t sc[2];
    if constexpr (F == Format::kMxFp4) {
      if constexpr (RULE != core::MxRule::kQuest) {
        if (fold) {
          uint32_t w1[1][4];
          uint8_t s1[1];
          mx_groups_scaled<RULE, 1>([&](int, int j, float (&out)[8]) { row_values(0)(j, out); }, c_warp, w1, s1);
          sc[0] = s1[0];
          w[0] = w1[0][0]; w[1] = w1[0][1]; w[2] = w1[0][2]; w[3] = w1[0][3];
        } else {
          sc[0] = mx_group<RULE>(row_values(0), w);
        }
      } else {
        sc[0] = mx_group<RULE>(row_values(0), w);
      }
    } else {
      uint32_t w2[2][2];
      nv_groups<2>([&](int gi, int j, float (&out)[8]) { row_values(2 * gi)(j, out); }, ng, w2, sc);
      w[0] = w2[0][0]; w[1] = w2[0][1]; w[2] = w2[1][0]; w[3] = w2[1][1];
    }
    __syncwarp();  // ys is rewritten by the next tile
    if (chunk < n_chunks) {
      *reinterpret_cast<uint4*>(codes + chunk * (R / 2) + 16 * cg) = make_uint4(w[0], w[1], w[2], w[3]);
      constexpr int kGroups = F == Format::kMxFp4 ? 1 : 2;
#pragma unroll
      for (int j = 0; j < kGroups; ++j) {
        const int64_t flat = chunk * (R / G) + kGroups * cg + j;
        scales[core::scale_offset(flat, groups_per_row, layout)] =
            sc[j];
      }
    }
  }
}

template <typename T, int R, bool kDiag16, Format F, core::MxRule RULE>
cudaError_t launch(const QuantizeParams& p, cudaStream_t stream) {
  using C = Cfg<R>;
  auto kernel = rotate_quantize_mma_kernel<T, R, kDiag16, F, RULE>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const int64_t n_chunks = p.rows * p.K / R;
  const int64_t tiles = (n_chunks + C::kRows - 1) / C::kRows;
  const unsigned grid = grid_for(tiles, 1, resident_blocks(kernel, kThreads, C::kSmem));
  kernel<<<grid, kThreads, C::kSmem, stream>>>(static_cast<const T*>(p.x), n_chunks, p.K, p.rot,
                                               p.global_scale, p.layout, p.codes, p.scales);
  return cudaGetLastError();
}

template <typename T, Format F, core::MxRule RULE>
cudaError_t by_size(const QuantizeParams& p, cudaStream_t stream) {
  switch (p.r) {
    case 16: return launch<T, 32, true, F, RULE>(p, stream);
    case 32: return launch<T, 32, false, F, RULE>(p, stream);
    case 64: return launch<T, 64, false, F, RULE>(p, stream);
    case 128: return launch<T, 128, false, F, RULE>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t quantize_rotated_mma(const QuantizeParams& p, cudaStream_t stream) {
  if (p.dtype == DType::kF32 || p.rot == nullptr) return cudaErrorInvalidValue;  // the split kernel's inputs
  return with_format_rule(p.format, p.rule, [&](auto f, auto rule) {
    constexpr Format F = decltype(f)::value;
    constexpr core::MxRule RULE = decltype(rule)::value;
    return p.dtype == DType::kBF16 ? by_size<__nv_bfloat16, F, RULE>(p, stream) : by_size<__half, F, RULE>(p, stream);
  });
}

}  // namespace fpquant::cuda
