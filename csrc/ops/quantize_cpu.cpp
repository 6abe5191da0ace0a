// CPU implementations of the fpquant operators. They follow python/fpquant_ext/formats.py operation for
// operation (the shared arithmetic is in csrc/core), so their output is bit-identical to the reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops/checks.h"
#include "ops/outputs.h"
#include "core/scale_layout.h"
#include "core/scale_rules.h"
#include "ops/w4a16_pack.h"

namespace fpquant {
namespace {

using core::kMxGroup;
using core::kNvGroup;

// Row-wise rotation with float64 accumulation in increasing index order: out[j] = sum_i in[i] * A[j][i].
// Products of two float32 values are exact in float64, so only the additions round, in a fixed order.
struct Rotation {
  int r = 0;
  std::vector<double> a;  // a[j * r + i]

  // forward: y = x_block @ R (a = R^T); inverse: x = y_block @ R^T (a = R).
  static Rotation make(const c10::optional<at::Tensor>& rot, bool inverse) {
    Rotation out;
    if (!rot.has_value()) return out;
    at::Tensor R = rot->to(at::kDouble).contiguous();
    out.r = static_cast<int>(R.size(0));
    const double* p = R.data_ptr<double>();
    out.a.resize(static_cast<size_t>(out.r) * out.r);
    for (int i = 0; i < out.r; ++i)
      for (int j = 0; j < out.r; ++j) out.a[static_cast<size_t>(j) * out.r + i] = inverse ? p[j * out.r + i] : p[i * out.r + j];
    return out;
  }

  void apply(float* row, int64_t K, float* tmp) const {
    if (r == 0) return;
    for (int64_t b = 0; b < K; b += r) {
      float* v = row + b;
      for (int j = 0; j < r; ++j) {
        const double* aj = a.data() + static_cast<size_t>(j) * r;
        double acc = 0.0;
        for (int i = 0; i < r; ++i) acc += static_cast<double>(v[i]) * aj[i];
        tmp[j] = static_cast<float>(acc);
      }
      std::copy(tmp, tmp + r, v);
    }
  }
};

// Runs fn(row_index, float32 row after rotation) over all rows of x in parallel.
template <typename Fn>
void for_each_rotated_row(const at::Tensor& x, const Rotation& rot, Fn&& fn) {
  const int64_t K = x.size(-1);
  const int64_t rows = x.numel() / K;
  const at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);  // exact widening
  const float* src = xf.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(K), tmp(std::max(rot.r, 1));
    for (int64_t i = begin; i < end; ++i) {
      std::copy(src + i * K, src + (i + 1) * K, row.data());
      rot.apply(row.data(), K, tmp.data());
      fn(i, row.data());
    }
  });
}

inline int64_t scale_index(ScaleLayout layout, int64_t row, int64_t g, int64_t groups) {
  return layout == ScaleLayout::kLinear ? row * groups + g : core::blocked_offset(row, g, groups);
}

std::tuple<at::Tensor, at::Tensor> quantize_mxfp4_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& rotation,
                                                      c10::string_view method, c10::string_view scale_layout) {
  const auto [rule, layout] = check_quantize_mxfp4(x, rotation, std::string(method), std::string(scale_layout));

  const int64_t K = x.size(-1), groups = K / kMxGroup;
  at::Tensor codes = make_codes(x);
  at::Tensor scales = make_scales(x, groups, at::kFloat8_e8m0fnu, layout);
  uint8_t* c = codes.data_ptr<uint8_t>();
  uint8_t* s = reinterpret_cast<uint8_t*>(scales.data_ptr());
  for_each_rotated_row(x, Rotation::make(rotation, false), [&](int64_t row, const float* v) {
    for (int64_t g = 0; g < groups; ++g)
      s[scale_index(layout, row, g, groups)] =
          core::mx_quantize_block(v + g * kMxGroup, rule, c + row * (K / 2) + g * (kMxGroup / 2));
  });
  return {codes, scales};
}

std::tuple<at::Tensor, at::Tensor> quantize_nvfp4_cpu(const at::Tensor& x, const at::Tensor& global_scale,
                                                      const c10::optional<at::Tensor>& rotation,
                                                      c10::string_view scale_layout) {
  const ScaleLayout layout = check_quantize_nvfp4(x, global_scale, rotation, std::string(scale_layout));

  const int64_t K = x.size(-1), groups = K / kNvGroup;
  const float g = global_scale.item<float>();
  at::Tensor codes = make_codes(x);
  at::Tensor scales = make_scales(x, groups, at::kFloat8_e4m3fn, layout);
  uint8_t* c = codes.data_ptr<uint8_t>();
  uint8_t* s = reinterpret_cast<uint8_t*>(scales.data_ptr());
  for_each_rotated_row(x, Rotation::make(rotation, false), [&](int64_t row, const float* v) {
    for (int64_t gi = 0; gi < groups; ++gi)
      s[scale_index(layout, row, gi, groups)] =
          core::nv_quantize_block(v + gi * kNvGroup, g, c + row * (K / 2) + gi * (kNvGroup / 2));
  });
  return {codes, scales};
}

at::Tensor nvfp4_global_scale_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& rotation) {
  constexpr const char* op = "fpquant.nvfp4_global_scale";
  check_activation(op, x, 1);
  check_rotation(op, rotation, x, x.size(-1));
  const int64_t K = x.size(-1), rows = x.numel() / K;
  // One slot per row keeps the parallel reduction free of races; max is order-independent anyway.
  std::vector<float> row_amax(rows);
  std::vector<uint8_t> row_finite(rows);
  for_each_rotated_row(x, Rotation::make(rotation, false), [&](int64_t row, const float* v) {
    float amax = 0.0f;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
      finite = finite && core::is_finite(v[k]);
      amax = core::max_f(amax, core::abs_f(v[k]));
    }
    row_amax[row] = amax;
    row_finite[row] = finite;
  });
  float amax = 0.0f;
  bool finite = true;
  for (int64_t r = 0; r < rows; ++r) {
    amax = core::max_f(amax, row_amax[r]);
    finite = finite && row_finite[r];
  }
  at::Tensor out = at::empty({1}, x.options().dtype(at::kFloat));
  out.data_ptr<float>()[0] = core::nv_global_scale_from_amax(finite ? amax : core::bits_f32(0x7FC00000u));
  return out;
}

// Shared dequantization: value = e2m1(code) * multiplier(scale), then the inverse rotation, then out_dtype.
template <typename Multiplier>
at::Tensor dequantize_cpu(const at::Tensor& codes, const at::Tensor& scales, int64_t group,
                          const c10::optional<at::Tensor>& rotation, ScaleLayout layout,
                          at::ScalarType out_dtype, Multiplier&& multiplier) {
  const int64_t Kb = codes.size(-1), K = 2 * Kb, rows = codes.numel() / Kb, groups = K / group;
  auto shape = codes.sizes().vec();
  shape.back() = K;
  at::Tensor out = at::empty(shape, codes.options().dtype(at::kFloat));
  const uint8_t* c = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  const uint8_t* s = reinterpret_cast<const uint8_t*>(scales.data_ptr());
  float* o = out.data_ptr<float>();
  const Rotation rot = Rotation::make(rotation, true);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(std::max(rot.r, 1));
    for (int64_t row = begin; row < end; ++row) {
      float* v = o + row * K;
      for (int64_t gi = 0; gi < groups; ++gi) {
        const float m = multiplier(s[scale_index(layout, row, gi, groups)]);
        for (int64_t k = gi * group; k < (gi + 1) * group; ++k) {
          const uint8_t byte = c[row * Kb + k / 2];
          v[k] = core::mul_rn(core::e2m1_decode((k & 1) ? (byte >> 4) : (byte & 0xF)), m);
        }
      }
      rot.apply(v, K, tmp.data());
    }
  });
  return out_dtype == at::kFloat ? out : out.to(out_dtype);
}

at::Tensor dequantize_mxfp4_cpu(const at::Tensor& codes, const at::Tensor& scales,
                                const c10::optional<at::Tensor>& rotation, c10::string_view scale_layout,
                                c10::optional<at::ScalarType> out_dtype) {
  const auto [layout, dtype] = check_dequantize_mxfp4(codes, scales, rotation, std::string(scale_layout), out_dtype);
  return dequantize_cpu(codes, scales, kMxGroup, rotation, layout, dtype,
                        [](uint8_t sc) { return core::mx_block_multiplier(sc); });
}

at::Tensor dequantize_nvfp4_cpu(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& global_scale,
                                const c10::optional<at::Tensor>& rotation, c10::string_view scale_layout,
                                c10::optional<at::ScalarType> out_dtype) {
  const auto [layout, dtype] =
      check_dequantize_nvfp4(codes, scales, global_scale, rotation, std::string(scale_layout), out_dtype);
  const float g = global_scale.item<float>();
  return dequantize_cpu(codes, scales, kNvGroup, rotation, layout, dtype,
                        [g](uint8_t sc) { return core::nv_block_multiplier(sc, g); });
}

// Reference semantics: dequantize the weight to float32 (exact), float32 matmul, bias, cast to x's dtype.
at::Tensor linear_w4a16_cpu(const at::Tensor& x, const at::Tensor& w_codes, const at::Tensor& w_scales,
                            const c10::optional<at::Tensor>& w_global_scale, const c10::optional<at::Tensor>& bias,
                            c10::string_view format) {
  const LinearW4A16Args args = check_linear_w4a16(x, w_codes, w_scales, w_global_scale, bias, std::string(format));
  at::Tensor codes = w_codes, scales = w_scales;
  if (args.w.packed) std::tie(codes, scales) = unpack_w4a16(w_codes, w_scales, format);
  at::Tensor w;
  if (args.format == Format::kMxFp4) {
    w = dequantize_cpu(codes, scales, kMxGroup, c10::nullopt, ScaleLayout::kLinear, at::kFloat,
                       [](uint8_t sc) { return core::mx_block_multiplier(sc); });
  } else {
    const float g = w_global_scale->item<float>();
    w = dequantize_cpu(codes, scales, kNvGroup, c10::nullopt, ScaleLayout::kLinear, at::kFloat,
                       [g](uint8_t sc) { return core::nv_block_multiplier(sc, g); });
  }
  at::Tensor out = at::matmul(x.to(at::kFloat), w.t());
  if (bias.has_value()) out = out + bias->to(at::kFloat);
  return out.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CPU, m) {
  m.impl("linear_w4a16", &linear_w4a16_cpu);
  m.impl("quantize_mxfp4", &quantize_mxfp4_cpu);
  m.impl("quantize_nvfp4", &quantize_nvfp4_cpu);
  m.impl("dequantize_mxfp4", &dequantize_mxfp4_cpu);
  m.impl("dequantize_nvfp4", &dequantize_nvfp4_cpu);
  m.impl("nvfp4_global_scale", &nvfp4_global_scale_cpu);
}

}  // namespace fpquant
