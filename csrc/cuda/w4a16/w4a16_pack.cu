// The canonical -> packed W4A16 weight layout (core/w4a16_layout.h) in one pass on the GPU, for weights
// that reach linear_w4a16 (or the matmul's w4a16 path) unpacked: every call packs them, and the tensor-op
// pack (ops/layout.cpp, any device) takes several kernels and a nibble tensor twice the codes' size.
#include <cstdint>

#include "core/w4a16_layout.h"
#include "cuda/w4a16/w4a16.h"

namespace fpquant::cuda {
namespace {

constexpr int kThreads = 128;  // 4 atoms per block, one warp each

// Nibbles (low if hi == 0) of the four bytes of x, packed into 16 bits, byte i's at bits [4i, 4i + 4).
__device__ __forceinline__ uint32_t compact_nibbles(uint32_t x, int hi) {
  uint32_t v = (x >> (4 * hi)) & 0x0F0F0F0Fu;
  v = (v | (v >> 4)) & 0x00FF00FFu;
  return (v | (v >> 8)) & 0xFFFFu;
}

// One warp per atom (16 rows x 64 k), lane l = 4g + q writing its 16 bytes: word u = 2h + s2 is row 8h + g,
// nibble p = 4e + 2 s1 + j the code of k = 16 (2 s2 + s1) + 8j + 2q + e, i.e. nibble e of byte
// 16 s2 + 4 (2 s1 + j) + q of the row's 32 code bytes: byte q of each of the row's words 4 s2 .. 4 s2 + 3.
// Lanes 0-15 also move row l's 64 / G scale bytes of the atom.
__global__ void __launch_bounds__(kThreads) pack_kernel(const uint8_t* __restrict__ codes, const uint8_t* __restrict__ scales,
                                                        int64_t N, int64_t K, int per_row, uint8_t* __restrict__ out_codes,
                                                        uint8_t* __restrict__ out_scales) {
  const int64_t atoms_k = K / core::kPackK, atoms = N / core::kPackRows * atoms_k;
  const int64_t atom = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  if (atom >= atoms) return;
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t t = atom / atoms_k, a = atom % atoms_k;
  uint32_t word[4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint4* row = reinterpret_cast<const uint4*>(codes + (16 * t + 8 * h + g) * (K / 2) + a * (core::kPackK / 2));
#pragma unroll
    for (int s2 = 0; s2 < 2; ++s2) {
      const uint4 r = __ldg(row + s2);
      const uint32_t sel = 0x40u + 0x11u * q;  // bytes 0, 1: byte q of the first operand, of the second
      const uint32_t lo = __byte_perm(r.x, r.y, sel), hi = __byte_perm(r.z, r.w, sel);
      const uint32_t x = __byte_perm(lo, hi, 0x5410u);  // byte i = byte q of word i
      word[2 * h + s2] = compact_nibbles(x, 0) | (compact_nibbles(x, 1) << 16);
    }
  }
  reinterpret_cast<uint4*>(out_codes + core::packed_atom(t, a, K))[lane] = make_uint4(word[0], word[1], word[2], word[3]);
  if (lane < core::kPackRows) {
    const uint8_t* src = scales + (16 * t + lane) * (atoms_k * per_row) + a * per_row;
    uint8_t* dst = out_scales + atom * (core::kPackRows * per_row) + lane * per_row;
    for (int i = 0; i < per_row; ++i) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t w4a16_pack(const uint8_t* codes, const uint8_t* scales, int64_t N, int64_t K, Format format,
                       uint8_t* packed_codes, uint8_t* packed_scales, cudaStream_t stream) {
  if (N <= 0 || K <= 0 || N % core::kPackRows != 0 || K % core::kPackK != 0) return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(codes) % 16 != 0 || reinterpret_cast<uintptr_t>(packed_codes) % 16 != 0)
    return cudaErrorInvalidValue;
  const int64_t atoms = N / core::kPackRows * (K / core::kPackK);
  const int64_t blocks = (atoms * 32 + kThreads - 1) / kThreads;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  pack_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(codes, scales, N, K,
                                                                        core::kPackK / group_size(format), packed_codes,
                                                                        packed_scales);
  return cudaGetLastError();
}

}  // namespace fpquant::cuda
