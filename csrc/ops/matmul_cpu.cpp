// CPU reference of the block-scaled FP4 GEMMs (matmul_mxfp4, matmul_nvfp4). It defines the results the
// GPU kernels are measured against, so it trades speed for exactly stated arithmetic:
//   a = e2m1(code) * scale and b likewise, in float64 (exact: at most 3 + 4 significant bits each; float64
//     also holds MXFP4's 6 * 2^127, which float32 does not);
//   acc[m, n] = sum over k = 0, 1, ..., K-1 in that order, in float64, of a[m, k] * b[n, k] (each product
//     exact, each addition rounded to nearest even);
//   NVFP4: acc / (gA * gB) (the product of the two float32 global scales is exact in float64);
//   + bias[n] (widened exactly), in float64;
//   then one rounding to out_dtype (round to nearest even, through float32 with round-to-odd so that
//   bfloat16 / float16 are not rounded twice).
// Every output element is computed by one thread in that fixed order, so the result does not depend on the
// thread count. NaN scales make their group NaN, and NaN propagates (also through a product with zero).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/scale_layout.h"
#include "ops/checks.h"
#include "ops/cpu_parallel.h"

namespace fpquant {
namespace {

using core::kMxGroup;
using core::kNvGroup;

// Scale byte -> its value as double (exact), before any global scale.
double mx_scale(uint8_t s) { return static_cast<double>(core::e8m0_decode(s)); }
double nv_scale(uint8_t s) { return static_cast<double>(core::e4m3_decode(s)); }

// One row of an operand, decoded to float64.
template <typename Scale>
void decode_row(const uint8_t* codes, const uint8_t* scales, int64_t row, int64_t K, int64_t group, ScaleLayout layout,
                const Scale& scale, double* dst) {
  const int64_t groups = K / group;
  const uint8_t* c = codes + row * (K / 2);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t si = layout == ScaleLayout::kLinear ? row * groups + g : core::blocked_offset(row, g, groups);
    const double m = scale(scales[si]);
    for (int64_t e = g * group; e < (g + 1) * group; e += 2) {
      dst[e] = static_cast<double>(core::e2m1_decode(c[e / 2] & 0xF)) * m;
      dst[e + 1] = static_cast<double>(core::e2m1_decode(c[e / 2] >> 4)) * m;
    }
  }
}

// double -> float rounded to odd: the truncation toward zero, with the last bit set when inexact. Rounding
// that to a format with at least two fewer significant bits (bfloat16: 8, float16: 11, vs 24) gives the
// correctly rounded result of the double.
float to_float_odd(double d) {
  float f = static_cast<float>(d);
  if (std::isnan(d) || static_cast<double>(f) == d) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= 1u;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename T>
T round_out(double d) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(d);
  } else {
    return static_cast<T>(to_float_odd(d));  // c10 rounds float -> bfloat16 / half to nearest even
  }
}

template <typename T, typename Scale>
void matmul_into(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b, const at::Tensor& b_scales,
                 int64_t group, ScaleLayout layout, const Scale& scale, double divisor, const double* bias, int64_t N,
                 int64_t K, T* out) {
  const int64_t M = a.numel() / a.size(-1);
  const uint8_t* ac = reinterpret_cast<const uint8_t*>(a.const_data_ptr());
  const uint8_t* as = reinterpret_cast<const uint8_t*>(a_scales.const_data_ptr());
  const uint8_t* bc = reinterpret_cast<const uint8_t*>(b.const_data_ptr());
  const uint8_t* bs = reinterpret_cast<const uint8_t*>(b_scales.const_data_ptr());
  std::vector<double> bd(N * K);
  cpu::parallel_ranges(N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) decode_row(bc, bs, n, K, group, layout, scale, bd.data() + n * K);
  });
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, N * K));
  cpu::parallel_ranges(M, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> row(K);
    for (int64_t m = begin; m < end; ++m) {
      decode_row(ac, as, m, K, group, layout, scale, row.data());
      const double* r = row.data();
      T* o = out + m * N;
      int64_t n = 0;
      // Four columns at a time for instruction-level parallelism; each column's sum stays in k order.
      for (; n + 4 <= N; n += 4) {
        const double *b0 = bd.data() + n * K, *b1 = b0 + K, *b2 = b1 + K, *b3 = b2 + K;
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          s0 += r[k] * b0[k];
          s1 += r[k] * b1[k];
          s2 += r[k] * b2[k];
          s3 += r[k] * b3[k];
        }
        const double s[4] = {s0, s1, s2, s3};
        for (int j = 0; j < 4; ++j) {
          double v = s[j] / divisor;
          if (bias != nullptr) v += bias[n + j];
          o[n + j] = round_out<T>(v);
        }
      }
      for (; n < N; ++n) {
        const double* bn = bd.data() + n * K;
        double s = 0.0;
        for (int64_t k = 0; k < K; ++k) s += r[k] * bn[k];
        double v = s / divisor;
        if (bias != nullptr) v += bias[n];
        o[n] = round_out<T>(v);
      }
    }
  });
}

template <typename Scale>
at::Tensor matmul_cpu(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b,
                      const at::Tensor& b_scales, const c10::optional<at::Tensor>& bias, const MatmulArgs& args,
                      int64_t group, const Scale& scale, double divisor) {
  auto shape = a.sizes().vec();
  shape.back() = args.N;
  at::Tensor out = at::empty(shape, a.options().dtype(args.out_dtype));
  at::Tensor bias64;
  if (bias.has_value()) bias64 = bias->to(at::kDouble).contiguous();
  const double* bp = bias.has_value() ? bias64.const_data_ptr<double>() : nullptr;
  switch (args.out_dtype) {
    case at::kFloat:
      matmul_into(a, a_scales, b, b_scales, group, args.layout, scale, divisor, bp, args.N, args.K,
                  out.data_ptr<float>());
      break;
    case at::kBFloat16:
      matmul_into(a, a_scales, b, b_scales, group, args.layout, scale, divisor, bp, args.N, args.K,
                  out.data_ptr<at::BFloat16>());
      break;
    case at::kHalf:
      matmul_into(a, a_scales, b, b_scales, group, args.layout, scale, divisor, bp, args.N, args.K,
                  out.data_ptr<at::Half>());
      break;
    default: TORCH_CHECK(false, "fpquant: unsupported out_dtype ", args.out_dtype);
  }
  return out;
}

at::Tensor matmul_mxfp4_cpu(const at::Tensor& a_codes, const at::Tensor& a_scales, const at::Tensor& b_codes,
                            const at::Tensor& b_scales, c10::string_view scale_layout,
                            c10::optional<at::ScalarType> out_dtype, const c10::optional<at::Tensor>& bias) {
  const MatmulArgs args =
      check_matmul_mxfp4(a_codes, a_scales, b_codes, b_scales, std::string(scale_layout), out_dtype, bias);
  return matmul_cpu(a_codes, a_scales, b_codes, b_scales, bias, args, kMxGroup, mx_scale, 1.0);
}

at::Tensor matmul_nvfp4_cpu(const at::Tensor& a_codes, const at::Tensor& a_scales, const at::Tensor& a_global_scale,
                            const at::Tensor& b_codes, const at::Tensor& b_scales, const at::Tensor& b_global_scale,
                            c10::string_view scale_layout, c10::optional<at::ScalarType> out_dtype,
                            const c10::optional<at::Tensor>& bias) {
  const MatmulArgs args = check_matmul_nvfp4(a_codes, a_scales, a_global_scale, b_codes, b_scales, b_global_scale,
                                             std::string(scale_layout), out_dtype, bias);
  const double divisor = static_cast<double>(a_global_scale.item<float>()) *
                         static_cast<double>(b_global_scale.item<float>());
  return matmul_cpu(a_codes, a_scales, b_codes, b_scales, bias, args, kNvGroup, nv_scale, divisor);
}

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CPU, m) {
  m.impl("matmul_mxfp4", &matmul_mxfp4_cpu);
  m.impl("matmul_nvfp4", &matmul_nvfp4_cpu);
}

}  // namespace fpquant
