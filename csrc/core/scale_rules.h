// Scale selection and block quantization, shared by the CPU and CUDA kernels.
//
// A "block" is one scale group (32 values for MXFP4, 16 for NVFP4) of float32 values that have already been
// rotated (if a rotation is used). The steps below are split so that a GPU kernel can do its own parallel
// reductions (amax is order-free; the quest sums use the fixed pairwise tree of tree_sum) and then call the
// same scalar finishing functions as the CPU.
#pragma once

#include "fp_formats.h"

namespace fpquant::core {

FPQ_HD int clamp_exp(int e) { return e < -127 ? -127 : (e > 127 ? 127 : e); }

// floor: OCP MX v1.0, e = floor(log2 amax) - 2 (2 = exponent of 6, the largest E2M1 value).
// Zero and subnormal amax give e <= -129 and clamp to -127.
FPQ_HD int mx_exp_floor(float amax) {
  const int biased = static_cast<int>((f32_bits(amax) >> 23) & 0xFF);
  if (biased == 0) return -127;
  return clamp_exp(biased - 127 - 2);
}

// ceil: e = ceil(log2(amax / 6)), the smallest e with 6 * 2^e >= amax, so no element saturates. Computed
// exactly from the bits (no division): amax = m * 2^F with m in [1, 2) gives e = F - 2 + (m > 1.5).
FPQ_HD int mx_exp_ceil(float amax) {
  const uint32_t b = f32_bits(amax);
  const int biased = static_cast<int>((b >> 23) & 0xFF);
  if (biased == 0) return -127;  // amax < 2^-126: exact e <= -128
  const int up = (b & 0x7FFFFFu) > 0x400000u ? 1 : 0;
  return clamp_exp(biased - 127 - 2 + up);
}

// quest (FP-Quant / QuTLASS): s = sigma * 2.92247856/6 + 1e-8, e = floor(log2 s), sigma the population
// standard deviation of the block. sum and sumsq come from tree_sum over the 32 values / squared values.
FPQ_HD int mx_exp_quest(float sum, float sumsq) {
  const float mean = mul_rn(sum, 0.03125f);
  const float meansq = mul_rn(sumsq, 0.03125f);
  float var = add_rn(meansq, -mul_rn(mean, mean));
  if (!is_finite(var)) return 127;  // the sums overflowed float32 (|x| > ~1.8e19): largest scale
  if (!(var > 0.0f)) var = 0.0f;    // cancellation can give a tiny negative variance
#if defined(__CUDA_ARCH__)
  const float sigma = __fsqrt_rn(var);
#else
  const float sigma = sqrtf(var);
#endif
  const float s = add_rn(mul_rn(sigma, kQuestFactor), kQuestEps);  // >= 1e-8, a normal float
  return clamp_exp(static_cast<int>((f32_bits(s) >> 23) & 0xFF) - 127);
}

// Pairwise sum of n = 2^k values, adjacent pairs first: level l adds elements 2i and 2i+1 of level l-1.
// GPU kernels that hold contiguous runs per thread reproduce this order with local adds then xor-shuffles.
template <int N>
FPQ_HD float tree_sum(const float* v) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    float t[N / 2];  // one level; recursion keeps every index a compile-time constant (registers, no stack)
    FPQ_UNROLL
    for (int i = 0; i < N / 2; ++i) t[i] = add_rn(v[2 * i], v[2 * i + 1]);
    return tree_sum<N / 2>(t);
  }
}

// The MXFP4 scale exponent of a finite block from its statistics (sum/sumsq only used by quest).
FPQ_HD int mx_block_exponent(MxRule rule, float amax, float sum, float sumsq) {
  if (rule == MxRule::kFloor) return mx_exp_floor(amax);
  if (rule == MxRule::kCeil) return mx_exp_ceil(amax);
  return mx_exp_quest(sum, sumsq);
}

// Two E2M1 codes in one byte: a in the low nibble, b in the high nibble.
FPQ_HD uint8_t pack2(uint8_t a, uint8_t b) { return static_cast<uint8_t>(a | (b << 4)); }

// Quantize one MXFP4 block of 32 float32 values. Writes 16 code bytes (element 2i in the low nibble) and
// returns the E8M0 scale code. A block holding any NaN or +-inf gets the NaN scale (0xFF) and zero codes,
// so it dequantizes to NaN: non-finite input never turns into finite-looking output.
FPQ_HD uint8_t mx_quantize_block(const float* v, MxRule rule, uint8_t* codes) {
  bool finite = true;
  float amax = 0.0f;
  FPQ_UNROLL
  for (int i = 0; i < kMxGroup; ++i) {
    finite = finite && is_finite(v[i]);
    amax = max_f(amax, abs_f(v[i]));
  }
  if (!finite) {
    FPQ_UNROLL
    for (int i = 0; i < kMxGroup / 2; ++i) codes[i] = 0;
    return kE8M0Nan;
  }
  float sum = 0.0f, sumsq = 0.0f;
  if (rule == MxRule::kQuest) {
    float sq[kMxGroup];
    FPQ_UNROLL
    for (int i = 0; i < kMxGroup; ++i) sq[i] = mul_rn(v[i], v[i]);
    sum = tree_sum<kMxGroup>(v);
    sumsq = tree_sum<kMxGroup>(sq);
  }
  const int e = mx_block_exponent(rule, amax, sum, sumsq);
  // v / 2^e equals v * 2^-e exactly (one rounding of the same real number; 2^-e is representable).
  const float inv = exp2i(-e);
  FPQ_UNROLL
  for (int i = 0; i < kMxGroup / 2; ++i)
    codes[i] = pack2(e2m1_encode(mul_rn(v[2 * i], inv)), e2m1_encode(mul_rn(v[2 * i + 1], inv)));
  return static_cast<uint8_t>(e + 127);
}

// NVFP4 global scale from the tensor's absolute maximum: the encode multiplier 448*6/amax (FP-Quant and
// compressed-tensors convention). amax = 0 gives 1 (everything quantizes to zero); a non-finite amax gives
// NaN (all scales become NaN); a quotient that overflows float32 is clamped to the largest finite float.
FPQ_HD float nv_global_scale_from_amax(float amax) {
  if (!is_finite(amax)) return bits_f32(0x7FC00000u);
  if (amax == 0.0f) return 1.0f;
  const float g = div_rn(kE4M3Max * kE2M1Max, amax);
  return is_finite(g) ? g : bits_f32(0x7F7FFFFFu);
}

// NVFP4 block scale code from the block's amax: e4m3(amax / 6 * g); NaN code when the block is not finite
// or the global scale g is not finite and positive.
FPQ_HD uint8_t nv_block_scale(float amax, bool block_finite, float g) {
  const bool ok = block_finite && is_finite(g) && g > 0.0f;
  return ok ? e4m3_encode_sat(mul_rn(div_rn(amax, kE2M1Max), g)) : kE4M3Nan;
}

// The divisor applied to elements, s / g; 0 (meaning: write zero codes) for a zero or NaN scale.
FPQ_HD float nv_block_divisor(uint8_t scale_code, float g) {
  if (scale_code == kE4M3Nan) return 0.0f;
  const float d = div_rn(e4m3_decode(scale_code), g);
  return d > 0.0f ? d : 0.0f;
}

// E2M1 code of one NVFP4 element given the block divisor (0: the block's codes are zero).
FPQ_HD uint8_t nv_encode(float v, float divisor) { return divisor > 0.0f ? e2m1_encode(div_rn(v, divisor)) : 0; }

// Quantize one NVFP4 block of 16 float32 values with the global scale g (encode multiplier).
// block scale s = e4m3(amax / 6 * g); element q = v / (s / g). Returns the E4M3 scale code.
// NaN scale (and zero codes) for a non-finite block or a global scale that is not finite and positive.
// A block scale that rounds to zero (or whose s / g underflows) gives zero codes.
FPQ_HD uint8_t nv_quantize_block(const float* v, float g, uint8_t* codes) {
  bool finite = true;
  float amax = 0.0f;
  FPQ_UNROLL
  for (int i = 0; i < kNvGroup; ++i) {
    finite = finite && is_finite(v[i]);
    amax = max_f(amax, abs_f(v[i]));
  }
  const uint8_t sc = nv_block_scale(amax, finite, g);
  const float d = nv_block_divisor(sc, g);
  FPQ_UNROLL
  for (int i = 0; i < kNvGroup / 2; ++i) codes[i] = pack2(nv_encode(v[2 * i], d), nv_encode(v[2 * i + 1], d));
  return sc;
}

// Dequantization multipliers: value = e2m1(code) * multiplier, one float32 multiplication.
FPQ_HD float mx_block_multiplier(uint8_t scale_code) { return e8m0_decode(scale_code); }
FPQ_HD float nv_block_multiplier(uint8_t scale_code, float g) { return div_rn(e4m3_decode(scale_code), g); }

}  // namespace fpquant::core
