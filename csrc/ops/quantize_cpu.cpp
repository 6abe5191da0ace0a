// CPU implementations of the fpquant operators. They follow python/fpquant_ext/formats.py operation for
// operation (the shared arithmetic is in csrc/core), so their output is bit-identical to the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "ops/checks.h"
#include "ops/outputs.h"
#include "core/scale_layout.h"
#include "core/scale_rules.h"
#include "ops/w4a16_pack.h"
#include "ops/cpu_parallel.h"
#include "ops/cpu_rotation.h"

namespace fpquant {
namespace {

using core::kMxGroup;
using core::kNvGroup;
using cpu::Rotation;

// Work is cut into tiles of at most kTileRows rows x kTileCols columns, so each thread's scratch is bounded
// whatever the shape (kTileCols is a multiple of every rotation size and group size, hence so is every
// tile's width). kTileRows matches the widest rotation kernel's row block.
constexpr int64_t kTileRows = 8;
constexpr int64_t kTileCols = 2048;
constexpr int64_t kMinTaskElements = 1 << 15;  // below this a thread hand-off costs more than it saves

struct Tile {
  int64_t index, row0, rows, col0, cols;
};

// Per-thread buffers for one tile: float32 values, and their float64 widening when a rotation needs it.
struct Scratch {
  std::vector<float> f;
  std::vector<double> d;
  Scratch(int64_t cols, bool rotated) : f(kTileRows * cols), d(rotated ? kTileRows * cols : 0) {}
};

int64_t tile_count(int64_t rows, int64_t K) {
  return (rows + kTileRows - 1) / kTileRows * ((K + kTileCols - 1) / kTileCols);
}

// Runs fn(tile, scratch) over the tiles of a [rows, K] matrix (row-tile major), in parallel.
template <typename Fn>
void for_each_tile(int64_t rows, int64_t K, bool rotated, const Fn& fn) {
  const int64_t cols = std::min(K, kTileCols), col_tiles = (K + cols - 1) / cols;
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / (std::min(rows, kTileRows) * cols));
  cpu::parallel_ranges(tile_count(rows, K), grain, [&](int64_t begin, int64_t end) {
    Scratch scratch(cols, rotated);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row0 = t / col_tiles * kTileRows, col0 = t % col_tiles * cols;
      fn(Tile{t, row0, std::min(kTileRows, rows - row0), col0, std::min(cols, K - col0)}, scratch);
    }
  });
}

template <typename T, typename D>
void widen_rows(const T* src, int64_t ld_src, int64_t rows, int64_t cols, D* dst) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = 0; k < cols; ++k) dst[i * cols + k] = static_cast<D>(static_cast<float>(src[i * ld_src + k]));
}

template <typename D>
void widen_tile(const at::Tensor& x, const Tile& t, D* dst) {
  const int64_t K = x.size(-1), offset = t.row0 * K + t.col0;
  switch (x.scalar_type()) {
    case at::kFloat: return widen_rows(x.const_data_ptr<float>() + offset, K, t.rows, t.cols, dst);
    case at::kBFloat16: return widen_rows(x.const_data_ptr<at::BFloat16>() + offset, K, t.rows, t.cols, dst);
    case at::kHalf: return widen_rows(x.const_data_ptr<at::Half>() + offset, K, t.rows, t.cols, dst);
    default: TORCH_CHECK(false, "fpquant: unsupported input dtype ", x.scalar_type());
  }
}

// The tile's values after the rotation, as float32 (exact widening, then the rotation if any).
// Returns the values and their row stride.
std::pair<const float*, int64_t> rotated_tile(const at::Tensor& x, const Rotation& rot, const Tile& t,
                                              Scratch& s) {
  if (!rot && x.scalar_type() == at::kFloat)
    return {x.const_data_ptr<float>() + t.row0 * x.size(-1) + t.col0, x.size(-1)};
  if (!rot) {
    widen_tile(x, t, s.f.data());
  } else {
    widen_tile(x, t, s.d.data());
    rot.apply(s.d.data(), t.cols, t.rows, t.cols, s.f.data(), t.cols);
  }
  return {s.f.data(), t.cols};
}

inline int64_t scale_index(ScaleLayout layout, int64_t row, int64_t g, int64_t groups) {
  return layout == ScaleLayout::kLinear ? row * groups + g : core::blocked_offset(row, g, groups);
}

// Quantizes x group by group: block(values, codes) writes a group's codes and returns its scale code.
template <typename Block>
void quantize_cpu(const at::Tensor& x, const Rotation& rot, int64_t group, ScaleLayout layout, at::Tensor& codes,
                  at::Tensor& scales, const Block& block) {
  const int64_t K = x.size(-1), rows = x.numel() / K, groups = K / group;
  uint8_t* c = codes.data_ptr<uint8_t>();
  uint8_t* s = reinterpret_cast<uint8_t*>(scales.data_ptr());
  for_each_tile(rows, K, bool(rot), [&](const Tile& t, Scratch& scratch) {
    const auto [v, ld] = rotated_tile(x, rot, t, scratch);
    for (int64_t i = 0; i < t.rows; ++i) {
      const int64_t row = t.row0 + i;
      for (int64_t k = 0; k < t.cols; k += group) {
        const int64_t col = t.col0 + k;
        s[scale_index(layout, row, col / group, groups)] = block(v + i * ld + k, c + row * (K / 2) + col / 2);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_mxfp4_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& rotation,
                                                      c10::string_view method, c10::string_view scale_layout) {
  const auto [rule, layout] = check_quantize_mxfp4(x, rotation, std::string(method), std::string(scale_layout));
  at::Tensor codes = make_codes(x);
  at::Tensor scales = make_scales(x, x.size(-1) / kMxGroup, at::kFloat8_e8m0fnu, layout);
  quantize_cpu(x, Rotation::make(rotation, false), kMxGroup, layout, codes, scales,
               [rule = rule](const float* v, uint8_t* c) { return core::mx_quantize_block(v, rule, c); });
  return {codes, scales};
}

std::tuple<at::Tensor, at::Tensor> quantize_nvfp4_cpu(const at::Tensor& x, const at::Tensor& global_scale,
                                                      const c10::optional<at::Tensor>& rotation,
                                                      c10::string_view scale_layout) {
  const ScaleLayout layout = check_quantize_nvfp4(x, global_scale, rotation, std::string(scale_layout));
  const float g = global_scale.item<float>();
  at::Tensor codes = make_codes(x);
  at::Tensor scales = make_scales(x, x.size(-1) / kNvGroup, at::kFloat8_e4m3fn, layout);
  quantize_cpu(x, Rotation::make(rotation, false), kNvGroup, layout, codes, scales,
               [g](const float* v, uint8_t* c) { return core::nv_quantize_block(v, g, c); });
  return {codes, scales};
}

at::Tensor nvfp4_global_scale_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& rotation) {
  constexpr const char* op = "fpquant.nvfp4_global_scale";
  check_activation(op, x, 1);
  check_rotation(op, rotation, x, x.size(-1));
  const int64_t K = x.size(-1), rows = x.numel() / K;
  const Rotation rot = Rotation::make(rotation, false);
  // One slot per tile keeps the parallel reduction free of races; max is order-independent anyway.
  const int64_t tiles = tile_count(rows, K);
  std::vector<float> tile_amax(tiles, 0.0f);
  std::vector<uint8_t> tile_finite(tiles, 1);
  for_each_tile(rows, K, bool(rot), [&](const Tile& t, Scratch& scratch) {
    const auto [v, ld] = rotated_tile(x, rot, t, scratch);
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < t.rows; ++i)
      for (int64_t k = 0; k < t.cols; ++k) {
        finite = finite && core::is_finite(v[i * ld + k]);
        amax = core::max_f(amax, core::abs_f(v[i * ld + k]));
      }
    tile_amax[t.index] = amax;
    tile_finite[t.index] = finite;
  });
  float amax = 0.0f;
  bool finite = true;
  for (int64_t t = 0; t < tiles; ++t) {
    amax = core::max_f(amax, tile_amax[t]);
    finite = finite && tile_finite[t];
  }
  at::Tensor out = at::empty({1}, x.options().dtype(at::kFloat));
  out.data_ptr<float>()[0] = core::nv_global_scale_from_amax(finite ? amax : core::bits_f32(0x7FC00000u));
  return out;
}

// Decodes a tile's codes as T: value = e2m1(code) * multiplier(scale) in float32, then one conversion to T
// (round to nearest even for bf16 / fp16, as the reference's final .to(out_dtype)). The 16 values of each
// group are tabulated once, so an element costs one lookup.
template <typename T, typename Multiplier>
void decode_tile(const uint8_t* codes, const uint8_t* scales, int64_t K, int64_t group, ScaleLayout layout,
                 const Tile& t, const Multiplier& multiplier, T* dst, int64_t ld_dst) {
  const int64_t groups = K / group;
  for (int64_t i = 0; i < t.rows; ++i) {
    const int64_t row = t.row0 + i;
    const uint8_t* cr = codes + row * (K / 2) + t.col0 / 2;
    T* d = dst + i * ld_dst;
    for (int64_t k = 0; k < t.cols; k += group) {
      const float m = multiplier(scales[scale_index(layout, row, (t.col0 + k) / group, groups)]);
      T table[16];
      for (int c = 0; c < 16; ++c) table[c] = static_cast<T>(core::mul_rn(core::e2m1_decode(c), m));
      for (int64_t e = k; e < k + group; e += 2) {
        d[e] = table[cr[e / 2] & 0xF];
        d[e + 1] = table[cr[e / 2] >> 4];
      }
    }
  }
}

template <typename T>
void store_rows(const float* v, int64_t rows, int64_t cols, T* dst, int64_t ld_dst) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = 0; k < cols; ++k) dst[i * ld_dst + k] = static_cast<T>(v[i * cols + k]);
}

// Shared dequantization: value = e2m1(code) * multiplier(scale), then the inverse rotation, then out_dtype,
// tile by tile. Without a rotation the codes decode straight into the output.
template <typename T, typename Multiplier>
void dequantize_into(const uint8_t* c, const uint8_t* s, int64_t rows, int64_t K, int64_t group,
                     const Rotation& rot, ScaleLayout layout, const Multiplier& multiplier, T* out) {
  for_each_tile(rows, K, bool(rot), [&](const Tile& t, Scratch& scratch) {
    T* dst = out + t.row0 * K + t.col0;
    if (!rot) return decode_tile(c, s, K, group, layout, t, multiplier, dst, K);
    float* v = scratch.f.data();
    decode_tile(c, s, K, group, layout, t, multiplier, v, t.cols);
    std::copy(v, v + t.rows * t.cols, scratch.d.data());
    rot.apply(scratch.d.data(), t.cols, t.rows, t.cols, v, t.cols);
    store_rows(v, t.rows, t.cols, dst, K);
  });
}

// The per-group multipliers of the two formats (scale byte -> float32).
auto mx_multiplier() {
  return [](uint8_t sc) { return core::mx_block_multiplier(sc); };
}
auto nv_multiplier(float g) {
  return [g](uint8_t sc) { return core::nv_block_multiplier(sc, g); };
}

template <typename Multiplier>
at::Tensor dequantize_cpu(const at::Tensor& codes, const at::Tensor& scales, int64_t group,
                          const c10::optional<at::Tensor>& rotation, ScaleLayout layout,
                          at::ScalarType out_dtype, Multiplier&& multiplier) {
  const int64_t Kb = codes.size(-1), K = 2 * Kb, rows = codes.numel() / Kb;
  auto shape = codes.sizes().vec();
  shape.back() = K;
  at::Tensor out = at::empty(shape, codes.options().dtype(out_dtype));
  const uint8_t* c = reinterpret_cast<const uint8_t*>(codes.const_data_ptr());
  const uint8_t* s = reinterpret_cast<const uint8_t*>(scales.const_data_ptr());
  const Rotation rot = Rotation::make(rotation, true);
  switch (out_dtype) {
    case at::kFloat: dequantize_into(c, s, rows, K, group, rot, layout, multiplier, out.data_ptr<float>()); break;
    case at::kBFloat16:
      dequantize_into(c, s, rows, K, group, rot, layout, multiplier, out.data_ptr<at::BFloat16>());
      break;
    case at::kHalf: dequantize_into(c, s, rows, K, group, rot, layout, multiplier, out.data_ptr<at::Half>()); break;
    default: TORCH_CHECK(false, "fpquant: unsupported out_dtype ", out_dtype);
  }
  return out;
}

at::Tensor dequantize_mxfp4_cpu(const at::Tensor& codes, const at::Tensor& scales,
                                const c10::optional<at::Tensor>& rotation, c10::string_view scale_layout,
                                c10::optional<at::ScalarType> out_dtype) {
  const auto [layout, dtype] = check_dequantize_mxfp4(codes, scales, rotation, std::string(scale_layout), out_dtype);
  return dequantize_cpu(codes, scales, kMxGroup, rotation, layout, dtype,
                        mx_multiplier());
}

at::Tensor dequantize_nvfp4_cpu(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& global_scale,
                                const c10::optional<at::Tensor>& rotation, c10::string_view scale_layout,
                                c10::optional<at::ScalarType> out_dtype) {
  const auto [layout, dtype] =
      check_dequantize_nvfp4(codes, scales, global_scale, rotation, std::string(scale_layout), out_dtype);
  const float g = global_scale.item<float>();
  return dequantize_cpu(codes, scales, kNvGroup, rotation, layout, dtype,
                        nv_multiplier(g));
}

// Reference semantics: dequantize the weight to float32 (exact; an MXFP4 weight's global scale then divides
// it), float32 matmul, bias, cast to x's dtype.
at::Tensor linear_w4a16_cpu(const at::Tensor& x, const at::Tensor& w_codes, const at::Tensor& w_scales,
                            const c10::optional<at::Tensor>& w_global_scale, const c10::optional<at::Tensor>& bias,
                            c10::string_view format) {
  const LinearW4A16Args args = check_linear_w4a16(x, w_codes, w_scales, w_global_scale, bias, std::string(format));
  at::Tensor codes = w_codes, scales = w_scales;
  if (args.w.packed) std::tie(codes, scales) = unpack_w4a16(w_codes, w_scales, format);
  at::Tensor w;
  if (args.format == Format::kMxFp4) {
    w = dequantize_cpu(codes, scales, kMxGroup, c10::nullopt, ScaleLayout::kLinear, at::kFloat,
                       mx_multiplier());
    if (w_global_scale.has_value()) w = w / w_global_scale->to(at::kFloat);
  } else {
    const float g = w_global_scale->item<float>();
    w = dequantize_cpu(codes, scales, kNvGroup, c10::nullopt, ScaleLayout::kLinear, at::kFloat,
                       nv_multiplier(g));
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
