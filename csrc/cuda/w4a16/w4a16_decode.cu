// Weight-only FP4 GEMM for decode sizes (M <= 16 rows of x) on mma.sync tensor cores (sm_80+).
//
// At these sizes the layer is a stream of weight bytes, and the GPU's issue slots, not the memory, bound a
// kernel that spends ~37 SASS instructions per 8 weights per thread (0.5 issued per scheduler cycle, ~1.1
// TB/s on the H100). This kernel spends ~25 (18 of them decode, scale and mma):
// - The weight is the A operand (16 features x 16 k per mma), x the B operand (8 rows: one B tile for
//   M <= 8, two for M <= 16), so each mma consumes 256 weights and the activation fragments are shared by
//   every weight tile of the warp.
// - The weight comes packed (core/w4a16_layout.h): a lane's 16 bytes of a 16-feature x 64-k atom are its A
//   fragments of the atom's 4 k-steps, in natural k order, and the atoms of a feature tile are contiguous
//   along K, so a warp's copy of one atom is 512 contiguous bytes and the CTA's warps, taking neighbouring
//   chunks, read 4 KiB pieces of each tile (the canonical layout gave 32 rows x 64 bytes, 4 KiB apart;
//   contiguous blocks measured ~10% faster at decode on the H100).
// - E2M1 -> 16-bit by integer arithmetic, 3 operations per pair of values (e2m1_bits8): the nibble, copied
//   twice by one multiply, keeps its magnitude bits as the low exponent bits and top mantissa bit and its sign
//   bit as the sign. The result is code * 2^-126 (bf16) or code * 2^-14 (fp16), the 0.5 code a subnormal; the
//   group-scale multiply that every weight needs anyway also removes that factor (see multipliers).
// - Each thread copies its own weight codes into private shared-memory slots with cp.async, kStages - 1
//   chunks ahead, and a share of its warp's scales and rows of x, so the main loop needs only a __syncwarp
//   and no registers hold data in flight. Three stages, not four or eight: with more bytes in flight per SM
//   the kernel got slower (H100, 8192^2, M = 1: 17.8 us at 4 stages, 17.0 at 3, 20.5 at 8; docs/perf/w4a16.md,
//   "Tried and dropped"), the memory system already queueing at ~2.4 TB/s for this access pattern.
// - Several warps of a CTA share one group of 32 features and take turns along K (Cfg), so that a layer
//   fills the GPU with one launch and no split-K reduction. Their sums meet in shared memory at the end.
// - Launched with programmatic dependent launch (sm_90+): the CTAs start while the previous kernel in the
//   stream finishes and wait (griddepcontrol.wait) before their first global read, which hides the launch
//   gap (H100: ~0.7 -> ~0.45 us between back-to-back calls; docs/perf/w4a16.md, "Tried and dropped").
//
// Operands: a warp owns two 16-feature tiles t; a chunk of 128 k is two atoms a of each. The x row of B
// column g supplies, for k-step s of atom a, b0b1 = x[k0 + 2q, + 1] and b2b3 = x[k0 + 2q + 8, + 9] (k0 =
// 128 c + 64 a + 16 s): pair q of every 8-k block, which is what ldmatrix hands lane (g, q) from 8 rows of
// 8-k blocks. So x rides in the weight stages (cp.async of whole 256-byte row pieces into a per-warp buffer, or
// one per CTA where its warps walk the same chunks; through the L1, where the other CTAs on the SM find the
// same x) and reaches the B registers by ldmatrix.
// (x loaded into registers one chunk ahead and stored to the buffer exposed the load latency at M = 1: 17.8
// us against 15.9 at 8192^2; a cp.async.cg copy that skips the L1 doubled the L2 traffic at M = 16: 27.8 us
// against 21.4 through the L1. H100; docs/perf/w4a16.md, "Tried and dropped".)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "core/w4a16_layout.h"
#include "cuda/common/async_copy.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/w4a16/w4a16_common.cuh"

namespace fpquant::cuda {
namespace {
using namespace w4a16;

constexpr int kTiles = kW4A16TileN / 16;           // 16-feature tiles per warp
constexpr int kAtomsK = kW4A16ChunkK / core::kPackK;  // atoms per tile and chunk
constexpr int kAtoms = kTiles * kAtomsK;             // atoms per warp and chunk: slot r = kAtomsK t + a

// Configuration I of kW4A16DecodeShapes (w4a16_plan.h): a CTA of `warps` warps, of which `group_warps` share 32
// features and take the CTA's chunks of K in turn, so that the warps of a CTA read neighbouring atoms of
// their feature tiles (4 KiB pieces) at about the same time, and a layer with few features still has enough
// warps in flight without a split-K reduction kernel.
// Where each warp has its own feature group (kSplit 1), the CTA's warps walk the same chunks and share one copy
// of x per stage. With kCluster, the splits of K are the CTAs of a cluster.
template <int I>
struct Cfg {
  static constexpr W4A16DecodeShape kShape = kW4A16DecodeShapes[I];
  static constexpr int kWarps = kShape.warps, kSplit = kShape.group_warps, kStages = 3;
  static constexpr int kGroups = kWarps / kSplit;
  static_assert(kGroups == 1 || kSplit == 1, "x is shared by the whole CTA or by none of its warps");
  static constexpr bool kCluster = kShape.cluster;
  static_assert(!kCluster || kSplit == 1, "a cluster configuration's CTAs each take one turn");
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kFeatures = kShape.features();  // features per CTA
  static constexpr int kXThreads = 32 * kGroups;         // threads that copy (and share) one buffer of x
};

// A row of x's chunk in the per-warp buffer: 128 16-bit values and 16 bytes of padding, so that ldmatrix's 8
// row addresses of a phase fall in distinct banks.
constexpr int kXRow = kW4A16ChunkK * 2 + 16;

template <Format F, typename C, int NB>
struct Slots {  // stages: codes [atom r][thread] (a warp's 16-byte reads are conflict-free), scales, x
  static constexpr int kAtomScales = core::pack_scale_bytes(group_size(F));  // 32 (MXFP4) or 64 (NVFP4)
  static constexpr int kWarpScales = kAtoms * kAtomScales;                   // [tile][atom][row][group]
  static constexpr int kScalePieces = kWarpScales / 16;                      // 16-byte copies per warp
  static_assert(kScalePieces <= 32, "one scale copy per lane at most");
  static constexpr int kXWarp = 8 * NB * kXRow;  // a buffer of x rows of the chunk: [8 NB rows][kXRow bytes]
  static constexpr int kXBuffers = C::kSplit;  // one per turn
  static constexpr int kCodes = 0;
  static constexpr int kScales = kAtoms * C::kThreads * 16;
  static constexpr int kX = kScales + C::kWarps * kWarpScales;
  static constexpr int kStage = kX + kXBuffers * kXWarp;
  static constexpr int kBytes = C::kStages * kStage;
};

// One chunk: per tile and atom, decode this lane's fragments with the multipliers that mults(r, m1, m2) gives
// for atom r (see decode_atom_scaled) and multiply them by every B tile of x.
template <typename AT, int NB, bool TWO, typename Mults>
__device__ __forceinline__ void chunk_mma(const uint4 (&wq)[kAtoms], const Mults& mults,
                                          const uint32_t (&xb)[NB][kAtomsK][4][2], float (&acc)[kTiles][NB][4]) {
#pragma unroll
  for (int a = 0; a < kAtomsK; ++a)
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const int r = kAtomsK * t + a;
      uint32_t m1[2][2][2], m2[2][2][2] = {}, f[4][4];
      mults(r, m1, m2);
      decode_atom_scaled<AT, TWO>(wq[r], m1, m2, f);
#pragma unroll
      for (int s = 0; s < 4; ++s)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) mma16816<AT>(acc[t][nb], f[s], xb[nb][a][s][0], xb[nb][a][s][1]);
    }
}

// The multiplier table of a chunk (MXFP4's one-multiply path, every NVFP4 chunk): each scale is needed by the
// 4 lanes of a quad, so the warp converts each one once. Lane l converts rows 2 (l % 8) and + 1 of atom l / 8;
// an atom's table, at table + atom * STRIDE, is [row][group] x the 4-byte multiplier (the one that varies by
// group: m1 where one multiply suffices, m2 for NVFP4 on fp16), kRow bytes per row, which a lane reads whole.
template <typename AT, Format F>
struct ScaleTable {
  static constexpr int kGroups = core::kPackK / group_size(F);  // per atom row: 2 (MXFP4) or 4 (NVFP4)
  static constexpr int kRow = 4 * kGroups;
  static constexpr int kAtom = 16 * kRow;

  template <int STRIDE>
  static __device__ __forceinline__ void build(const unsigned char* scales, unsigned char* table, int lane) {
    const int r = lane / 8, row = 2 * (lane % 8);
    const unsigned char* src = scales + r * core::pack_scale_bytes(group_size(F)) + row * kGroups;
    uint32_t m[2 * kGroups];
    if constexpr (F == Format::kMxFp4) {
      const uint32_t b = *reinterpret_cast<const uint32_t*>(src);  // rows row and row + 1, 2 groups each
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint8_t sc[2] = {static_cast<uint8_t>(b >> (8 * i)), 0};
        uint32_t m1[2], m2[2];
        multipliers<AT, F, false>(sc, m1, m2);
        m[i] = m1[0];
      }
    } else {
      const uint2 b = *reinterpret_cast<const uint2*>(src);
      const uint32_t w[2] = {b.x, b.y};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t pair[2];
        nv_pair_multipliers<AT>(static_cast<uint16_t>(w[i / 2] >> (16 * (i % 2))), pair);
        m[2 * i] = pair[0];
        m[2 * i + 1] = pair[1];
      }
    }
#pragma unroll
    for (int i = 0; i < 2 * kGroups; i += 4)
      *reinterpret_cast<uint4*>(table + r * STRIDE + row * kRow + 4 * i) = make_uint4(m[i], m[i + 1], m[i + 2], m[i + 3]);
  }

  // m1 / m2 [h][s2][i] of rows g and g + 8 of atom r (k-step 2 s2 + i: MXFP4 group s2, NVFP4 group 2 s2 + i).
  template <int STRIDE, bool TWO>
  static __device__ __forceinline__ void read(const unsigned char* table, int r, int g, uint32_t (&m1)[2][2][2],
                                              uint32_t (&m2)[2][2][2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const unsigned char* p = table + r * STRIDE + (g + 8 * h) * kRow;
      uint32_t mg[kGroups];
      if constexpr (F == Format::kMxFp4) {
        const uint2 v = *reinterpret_cast<const uint2*>(p);
        mg[0] = v.x, mg[1] = v.y;
      } else {
        const uint4 v = *reinterpret_cast<const uint4*>(p);
        mg[0] = v.x, mg[1] = v.y, mg[2] = v.z, mg[3] = v.w;
      }
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint32_t v = mg[F == Format::kMxFp4 ? s / 2 : s];
        if constexpr (TWO) {
          m1[h][s / 2][s % 2] = splat<AT>(kCodeUnit<AT>);
          m2[h][s / 2][s % 2] = v;
        } else {
          m1[h][s / 2][s % 2] = v;
        }
      }
    }
  }
};

template <typename AT, Format F, int NB, typename C>
__global__ void __launch_bounds__(C::kThreads) w4a16_decode_kernel(W4A16Params p) {
  using S = Slots<F, C, NB>;
  constexpr int WS = C::kSplit, kStages = C::kStages, kThreads = C::kThreads;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  grid_dependency_wait();  // every input may come from the previous kernel
  const int kw = warp % WS;  // this warp's turn in the CTA's walk along K
  const int64_t nw = static_cast<int64_t>(blockIdx.x) * C::kFeatures + (warp / WS) * kW4A16TileN;
  // N % 32 == 0: a warp's features are all valid or all not. Warps past N still reach the block barriers; where
  // warps share x they also walk the chunks (the sharers sync on every one), reading the CTA's first features.
  constexpr bool kShareX = C::kGroups > 1;
  const bool active = nw < p.N;
  const int64_t nr = active || !kShareX ? nw : static_cast<int64_t>(blockIdx.x) * C::kFeatures;
  const int64_t chunks = p.K / kW4A16ChunkK;
  const int64_t c_begin = chunks * blockIdx.y / p.splits;
  const int n_chunks = static_cast<int>(chunks * (blockIdx.y + 1) / p.splits - c_begin);
  // This warp's t-th chunk is c_begin + WS * t + kw; it has T of them.
  const int T = (active || kShareX) && kw < n_chunks ? (n_chunks - kw + WS - 1) / WS : 0;

  // Sources of this warp's chunk t = 0 (chunk c_begin + kw of the row tiles nw / 16 + tile), advanced by WS
  // chunks per copy. Codes: the atoms of a tile are neighbours (kPackAtomBytes apart).
  const int64_t atoms_k = p.K / core::kPackK;
  const uint8_t* wsrc[kTiles];
#pragma unroll
  for (int tl = 0; tl < kTiles; ++tl)
    wsrc[tl] = p.codes + core::packed_atom(nr / 16 + tl, kAtomsK * (c_begin + kw), p.K) + 16 * lane;
  // Scales: lane l < kScalePieces copies the l-th 16 bytes of the warp's [tile][atom][row][group] block (the
  // two atoms of a tile are neighbours in memory); the warp syncs before reading them.
  constexpr int kTilePieces = S::kScalePieces / kTiles;
  const bool scale_lane = lane < S::kScalePieces;
  const uint8_t* ssrc = p.scales +
                        ((nr / 16 + lane / kTilePieces) * atoms_k + kAtomsK * (c_begin + kw)) * S::kAtomScales +
                        16 * (lane % kTilePieces);
  const int sslot = warp * S::kWarpScales + 16 * lane;
  // Activations ride in the same stages: the rows of x for the chunk (M rows, at most 8 NB, of 256 bytes = 16
  // pieces) in the buffer of the warp's turn, copied by the warps that share it; copier i takes piece i % 16
  // of row i / 16 + R j (R = copiers / 16), so that each copy instruction of a warp reads two whole row
  // pieces; through the L1 (cp.async.ca: the other CTAs on the SM read the same x). Rows past M are never
  // copied: ldmatrix reads row M - 1 in their place (the B columns past M only feed outputs that are not
  // stored).
  constexpr int kXRowsPerCopy = C::kXThreads / 16, kXPieces = 8 * NB / kXRowsPerCopy;
  static_assert(8 * NB % kXRowsPerCopy == 0, "the sharers copy whole rows");
  const int xi = (warp / WS) * 32 + lane, xrow0 = xi / 16;
  const int xbuf = S::kX + kw * S::kXWarp;
  const int xrows = p.M < 8 * NB ? static_cast<int>(p.M) : 8 * NB;
  const AT* xsrc = static_cast<const AT*>(p.x) + (xrow0 < xrows ? xrow0 : 0) * p.K + (c_begin + kw) * kW4A16ChunkK +
                   8 * (xi % 16);
  const int64_t xrow_step = kXRowsPerCopy * p.K;  // piece j: R rows further
  const int xslot = xbuf + xrow0 * kXRow + 16 * (xi % 16);
  constexpr int64_t kCodeStep = WS * kAtomsK * core::kPackAtomBytes, kScaleStep = WS * kAtomsK * S::kAtomScales;
  constexpr int kXStep = WS * kW4A16ChunkK;
  unsigned char* wslot = smem;  // the stage the next copy fills
  auto issue = [&] {
#pragma unroll
    for (int tl = 0; tl < kTiles; ++tl) {
#pragma unroll
      for (int a = 0; a < kAtomsK; ++a)
        cp_async16_prefetch256(wslot + S::kCodes + ((kAtomsK * tl + a) * kThreads + tid) * 16,
                               wsrc[tl] + a * core::kPackAtomBytes);
      wsrc[tl] += kCodeStep;
    }
    if (scale_lane) cp_async16_prefetch256(wslot + S::kScales + sslot, ssrc);
    ssrc += kScaleStep;
#pragma unroll
    for (int j = 0; j < kXPieces; ++j)
      if (kXRowsPerCopy * j < xrows && xrow0 + kXRowsPerCopy * j < xrows)
        cp_async16_ca(wslot + xslot + kXRowsPerCopy * j * kXRow, xsrc + j * xrow_step);
    xsrc += kXStep;
    wslot = wslot == smem + (kStages - 1) * S::kStage ? smem : wslot + S::kStage;
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < T) issue();
    cp_async_commit();
  }

  // ldmatrix: lane l addresses row l % 8 (+ 8 nb, at most M - 1) of 8-k block l / 8 (+ 4i) of the chunk.
  int xread[NB];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
    xread[nb] = xbuf + min(lane % 8 + 8 * nb, xrows - 1) * kXRow + 16 * (lane / 8);

  float acc[kTiles][NB][4] = {};
  unsigned char* st = smem;  // the stage of chunk t
  for (int t = 0; t < T; ++t) {
    cp_async_wait<kStages - 2>();  // this thread's copies of chunk t have landed
    // ... and every lane's (scales are copied for the warp, x for the warps that share it)
    if constexpr (kShareX) {
      __syncthreads();
    } else {
      __syncwarp();
    }
    // The stage refilled here held chunk t - 1, which every reader finished before this barrier.
    if (t + kStages - 1 < T) issue();
    cp_async_commit();

    // B fragments of x: ldmatrix i (blocks 4i .. 4i + 3) gives k-steps 2(i % 2) and + 1 of atom i / 2, b0b1
    // then b2b3.
    uint32_t xc[NB][kAtomsK][4][2];
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int i = 0; i < 2 * kAtomsK; ++i) {
        uint32_t r[4];
        ldmatrix_x4(r, st + xread[nb] + 64 * i);
        const int a = i / 2, s0 = 2 * (i % 2);
        xc[nb][a][s0][0] = r[0], xc[nb][a][s0][1] = r[1], xc[nb][a][s0 + 1][0] = r[2], xc[nb][a][s0 + 1][1] = r[3];
      }

    uint4 wq[kAtoms];
#pragma unroll
    for (int r = 0; r < kAtoms; ++r) wq[r] = *reinterpret_cast<const uint4*>(st + S::kCodes + (r * kThreads + tid) * 16);
    const unsigned char* scales = st + S::kScales + warp * S::kWarpScales;
    // MXFP4: the warp's whole scale block of the chunk (the rows of every lane) is checked by the lanes that
    // copied it; chunks with a scale above 2^1 (or NaN) take the two-multiply path, multipliers from each
    // lane's own scale bytes.
    bool big = false;
    if constexpr (F == Format::kMxFp4) {
      if (scale_lane) big = mx_any_big(*reinterpret_cast<const uint4*>(st + S::kScales + sslot));
      big = __any_sync(0xffffffffu, big);
    }
    if (F == Format::kMxFp4 && big) {
      auto mults = [&](int r, uint32_t (&m1)[2][2][2], uint32_t (&m2)[2][2][2]) {
        const unsigned char* sa = scales + r * S::kAtomScales;
        atom_multipliers<AT, F, true>(atom_row_scales<F>(sa, g), atom_row_scales<F>(sa, g + 8), m1, m2);
      };
      chunk_mma<AT, NB, true>(wq, mults, xc, acc);
    } else {
      // The table goes where the warp's codes of this stage were (each atom's 512 bytes hold its table), once
      // every lane holds its codes; the stage is refilled only after the next iteration's first __syncwarp,
      // when every lane has read the table.
      using Table = ScaleTable<AT, F>;
      constexpr int kStride = kThreads * 16;
      static_assert(Table::kAtom <= 32 * 16, "an atom's table fits the warp's codes of the atom");
      unsigned char* table = st + S::kCodes + warp * 32 * 16;
      __syncwarp();
      Table::template build<kStride>(scales, table, lane);
      __syncwarp();
      constexpr bool kTwo = kAlwaysTwo<AT, F>;
      auto mults = [&](int r, uint32_t (&m1)[2][2][2], uint32_t (&m2)[2][2][2]) {
        Table::template read<kStride, kTwo>(table, r, g, m1, m2);
      };
      chunk_mma<AT, NB, kTwo>(wq, mults, xc, acc);
    }
    st = st == smem + (kStages - 1) * S::kStage ? smem : st + S::kStage;
  }
  cp_async_wait<0>();  // no copy may still be writing shared memory when the warp exits or reuses it

  if constexpr (WS > 1) {  // warps 1..WS-1 of a feature group hand their sums to warp 0 (added in turn order)
    constexpr int kAcc = kTiles * NB * 4;
    static_assert(C::kWarps * kAcc * 32 * 4 <= S::kBytes, "the partial sums fit the stage buffers");
    float* red = reinterpret_cast<float*>(smem);
    __syncthreads();  // every warp is done with the stage buffers
    if (kw > 0) {
      float* dst = red + (warp * kAcc) * 32 + lane;
#pragma unroll
      for (int t = 0; t < kTiles; ++t)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) dst[((t * NB + nb) * 4 + c) * 32] = acc[t][nb][c];
    }
    __syncthreads();
    if (kw > 0) return;
#pragma unroll
    for (int k = 1; k < WS; ++k) {
      const float* src = red + ((warp + k) * kAcc) * 32 + lane;
#pragma unroll
      for (int t = 0; t < kTiles; ++t)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[t][nb][c] += src[((t * NB + nb) * 4 + c) * 32];
    }
  }
  // acc[t][nb]: c0, c1 = feature g of tile t, x rows 8nb + 2q + {0, 1}; c2, c3 = feature g + 8.
  const float unscale = kNvUnscale<AT, F>;
  const float scale = unscale * inv_global_scale(p);  // unscale is a power of two: one rounding
  auto store = [&](int t, int nb, int c, float v) {
    const int64_t m = 8 * nb + 2 * q + (c & 1);
    const int64_t n = nw + 16 * t + g + 8 * (c >> 1);
    if (m >= p.M) return;
    v *= scale;
    if (p.bias) v += to_float(static_cast<const AT*>(p.bias)[n]);
    store_float(static_cast<AT*>(p.out) + m * p.N + n, v);
  };
  if constexpr (C::kCluster) {
    if (p.splits > 1) {  // the cluster's CTAs (blockIdx.y = rank) each sum every split's share of value i
      constexpr int kAcc = kTiles * NB * 4;
      static_assert(kAcc * kThreads * 4 <= S::kBytes, "the partial sums fit the stage buffers");
      float* red = reinterpret_cast<float*>(smem);
      __syncthreads();  // every thread's copies have landed and the stage buffers are free
#pragma unroll
      for (int i = 0; i < kAcc; ++i) red[i * kThreads + tid] = acc[i / (4 * NB)][i / 4 % NB][i % 4];
      cluster_sync();
      const int rank = static_cast<int>(blockIdx.y);
#pragma unroll
      for (int i = 0; i < kAcc; ++i) {
        if (i % p.splits != rank) continue;
        float v = 0.0f;
        for (int r = 0; r < p.splits; ++r) v += cluster_load(red + i * kThreads + tid, r);  // split order
        if (active) store(i / (4 * NB), i / 4 % NB, i % 4, v);
      }
      cluster_sync();  // no CTA leaves while the others read its shared memory
      return;
    }
  }
  if (!active) return;
#pragma unroll
  for (int t = 0; t < kTiles; ++t)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t m = 8 * nb + 2 * q + (c & 1);
        const int64_t n = nw + 16 * t + g + 8 * (c >> 1);
        if (m >= p.M) continue;
        if (p.splits > 1) {
          p.workspace[(static_cast<int64_t>(blockIdx.y) * p.M + m) * p.N + n] = acc[t][nb][c] * unscale;
        } else {
          store(t, nb, c, acc[t][nb][c]);
        }
      }
}

template <typename AT, Format F, int NB, typename C>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  auto kernel = w4a16_decode_kernel<AT, F, NB, C>;
  constexpr int bytes = Slots<F, C, NB>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.N + C::kFeatures - 1) / C::kFeatures), static_cast<unsigned>(p.splits));
  const dim3 cluster(1, C::kCluster ? static_cast<unsigned>(p.splits) : 1u, 1);
  err = launch_dependent(kernel, grid, dim3(C::kThreads), bytes, stream, cluster, p);
  return err != cudaSuccess || C::kCluster ? err : reduce_splits<AT, F>(p, stream);
}

template <typename AT, Format F, int NB, int I = 0>
cudaError_t launch_config(const W4A16Params& p, cudaStream_t stream) {
  if constexpr (I + 1 < kW4A16DecodeConfigs) {
    if (p.config != I) return launch_config<AT, F, NB, I + 1>(p, stream);
  }
  return launch<AT, F, NB, Cfg<I>>(p, stream);
}

template <typename AT>
cudaError_t launch_dtype(const W4A16Params& p, cudaStream_t stream) {
  const bool two = p.M > 8;
  if (p.format == Format::kMxFp4)
    return two ? launch_config<AT, Format::kMxFp4, 2>(p, stream) : launch_config<AT, Format::kMxFp4, 1>(p, stream);
  return two ? launch_config<AT, Format::kNvFp4, 2>(p, stream) : launch_config<AT, Format::kNvFp4, 1>(p, stream);
}

}  // namespace

cudaError_t w4a16_decode(const W4A16Params& p, cudaStream_t stream) {
  return p.dtype == DType::kBF16 ? launch_dtype<__nv_bfloat16>(p, stream) : launch_dtype<__half>(p, stream);
}

}  // namespace fpquant::cuda
