// Input validation shared by the CPU and CUDA torch glue, so both backends reject bad input with the
// same words. Each message names the operator, the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "core/scale_layout.h"
#include "core/scale_rules.h"
#include "core/types.h"
#include "core/w4a16_layout.h"
#include "ops/rotation_check.h"

namespace fpquant {

using core::Format;
using core::ScaleLayout;

inline ScaleLayout parse_layout(const char* op, const std::string& s) {
  if (s == "linear") return ScaleLayout::kLinear;
  if (s == "blocked") return ScaleLayout::kBlocked;
  TORCH_CHECK_VALUE(false, op, ": scale_layout must be 'linear' or 'blocked', got '", s, "'");
}

inline core::MxRule parse_mx_method(const char* op, const std::string& s) {
  if (s == "floor") return core::MxRule::kFloor;
  if (s == "ceil") return core::MxRule::kCeil;
  if (s == "quest") return core::MxRule::kQuest;
  TORCH_CHECK_VALUE(false, op, ": method must be one of 'floor', 'ceil', 'quest' for MXFP4, got '", s, "'");
}

// x: float32 / bfloat16 / float16, contiguous, non-empty, last dimension a multiple of `group`.
inline void check_activation(const char* op, const at::Tensor& x, int64_t group) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 ||
                       x.scalar_type() == at::kHalf,
                   op, ": x must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension");
  TORCH_CHECK_VALUE(x.numel() > 0, op, ": x is empty (shape ", x.sizes(), ")");
  TORCH_CHECK_VALUE(x.size(-1) % group == 0, op, ": x's last dimension (", x.size(-1),
                    ") must be a multiple of the group size ", group);
  TORCH_CHECK_VALUE(x.is_contiguous(), op, ": x must be contiguous");
}

// rotation: square r x r with r in {16, 32, 64, 128}, floating, contiguous, on x's device, r divides K,
// orthogonal (ops/rotation_check.h; the one check that reads values, so it comes last).
inline void check_rotation(const char* op, const c10::optional<at::Tensor>& rot, const at::Tensor& ref,
                           int64_t K) {
  if (!rot.has_value()) return;
  const at::Tensor& R = *rot;
  TORCH_CHECK_VALUE(R.dim() == 2 && R.size(0) == R.size(1), op,
                    ": rotation must be a square matrix, got shape ", R.sizes());
  const int64_t r = R.size(0);
  TORCH_CHECK_VALUE(r == 16 || r == 32 || r == 64 || r == 128, op,
                    ": rotation size must be 16, 32, 64 or 128, got ", r);
  TORCH_CHECK_TYPE(R.scalar_type() == at::kFloat || R.scalar_type() == at::kBFloat16 ||
                       R.scalar_type() == at::kHalf,
                   op, ": rotation must be float32, bfloat16 or float16, got ", R.scalar_type());
  TORCH_CHECK_VALUE(R.device() == ref.device(), op, ": rotation is on ", R.device(),
                    " but the input is on ", ref.device());
  TORCH_CHECK_VALUE(R.is_contiguous(), op, ": rotation must be contiguous");
  TORCH_CHECK_VALUE(K % r == 0, op, ": the last dimension (", K, ") must be a multiple of the rotation size ",
                    r);
  check_rotation_orthogonal(op, R);
}

// global_scale: float32 with exactly one element (shape [] or [1]), on x's device. The names in the
// messages default to a one-operand op's; a GEMM names which operand (a_global_scale, a_codes).
inline void check_global_scale(const char* op, const at::Tensor& g, const at::Tensor& ref,
                               const char* name = "global_scale", const char* ref_name = "the input") {
  TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", g.scalar_type());
  TORCH_CHECK_VALUE(g.numel() == 1 && g.dim() <= 1, op, ": ", name,
                    " must hold one value (shape [] or [1]), got shape ", g.sizes());
  TORCH_CHECK_VALUE(g.device() == ref.device(), op, ": ", name, " is on ", g.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// codes: uint8 (or float4_e2m1fn_x2), contiguous, non-empty, 2 * last dimension a multiple of `group`.
inline void check_codes(const char* op, const at::Tensor& codes, int64_t group, const char* name = "codes") {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte || codes.scalar_type() == at::kFloat4_e2m1fn_x2, op, ": ",
                   name, " must be uint8 or float4_e2m1fn_x2, got ", codes.scalar_type());
  TORCH_CHECK_VALUE(codes.dim() >= 1 && codes.numel() > 0, op, ": ", name, " is empty (shape ", codes.sizes(), ")");
  TORCH_CHECK_VALUE((2 * codes.size(-1)) % group == 0, op, ": ", name, "' last dimension (", codes.size(-1),
                    " bytes = ", 2 * codes.size(-1), " elements) must hold whole groups of ", group);
  TORCH_CHECK_VALUE(codes.is_contiguous(), op, ": ", name, " must be contiguous");
}

// scales: the given dtype, on the codes' device, contiguous (the layout-independent part of check_scales).
inline void check_scale_tensor(const char* op, const at::Tensor& scales, const at::Tensor& codes,
                               at::ScalarType dtype, const char* name = "scales", const char* codes_name = "codes") {
  TORCH_CHECK_TYPE(scales.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
                   scales.scalar_type());
  TORCH_CHECK_VALUE(scales.device() == codes.device(), op, ": ", name, " is on ", scales.device(), " but ",
                    codes_name, " is on ", codes.device());
  TORCH_CHECK_VALUE(scales.is_contiguous(), op, ": ", name, " must be contiguous");
}

// scales: check_scale_tensor, and shaped for `layout`.
inline void check_scales(const char* op, const at::Tensor& scales, const at::Tensor& codes, int64_t group,
                         at::ScalarType dtype, ScaleLayout layout, const char* name = "scales",
                         const char* codes_name = "codes") {
  check_scale_tensor(op, scales, codes, dtype, name, codes_name);
  const int64_t groups = 2 * codes.size(-1) / group;
  const int64_t rows = codes.numel() / codes.size(-1);
  if (layout == ScaleLayout::kLinear) {
    auto expected = codes.sizes().vec();
    expected.back() = groups;
    TORCH_CHECK_VALUE(scales.sizes().vec() == expected, op, ": ", name, " must have shape ",
                      c10::IntArrayRef(expected), " for the linear layout, got ", scales.sizes());
  } else {
    const int64_t pr = core::blocked_rows(rows), pc = core::blocked_cols(groups);
    TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == pr && scales.size(1) == pc, op, ": ", name,
                      " must have shape [", pr, ", ", pc, "] for the blocked layout of ", rows, " rows x ", groups,
                      " groups, got ", scales.sizes());
  }
}

inline at::ScalarType parse_out_dtype(const char* op, const c10::optional<at::ScalarType>& dt) {
  const at::ScalarType d = dt.value_or(at::kFloat);
  TORCH_CHECK_TYPE(d == at::kFloat || d == at::kBFloat16 || d == at::kHalf, op,
                   ": out_dtype must be float32, bfloat16 or float16, got ", d);
  return d;
}

// ---- whole-operator argument checks, one per operator, called by every backend ----------------------------
struct MxQuantizeArgs {
  core::MxRule rule;
  ScaleLayout layout;
};
inline MxQuantizeArgs check_quantize_mxfp4(const at::Tensor& x, const c10::optional<at::Tensor>& rotation,
                                           const std::string& method, const std::string& layout) {
  constexpr const char* op = "fpquant.quantize_mxfp4";
  check_activation(op, x, core::kMxGroup);
  check_rotation(op, rotation, x, x.size(-1));
  return {parse_mx_method(op, method), parse_layout(op, layout)};
}

inline ScaleLayout check_quantize_nvfp4(const at::Tensor& x, const at::Tensor& global_scale,
                                        const c10::optional<at::Tensor>& rotation, const std::string& layout) {
  constexpr const char* op = "fpquant.quantize_nvfp4";
  check_activation(op, x, core::kNvGroup);
  check_global_scale(op, global_scale, x);
  check_rotation(op, rotation, x, x.size(-1));
  return parse_layout(op, layout);
}

struct DequantizeArgs {
  ScaleLayout layout;
  at::ScalarType out_dtype;
};
// global_scale is checked when given (NVFP4).
inline DequantizeArgs check_dequantize(const char* op, int64_t group, at::ScalarType scale_dtype,
                                       const at::Tensor& codes, const at::Tensor& scales,
                                       const at::Tensor* global_scale, const c10::optional<at::Tensor>& rotation,
                                       const std::string& layout_name, const c10::optional<at::ScalarType>& out_dtype) {
  const ScaleLayout layout = parse_layout(op, layout_name);
  check_codes(op, codes, group);
  check_scales(op, scales, codes, group, scale_dtype, layout);
  if (global_scale != nullptr) check_global_scale(op, *global_scale, codes);
  check_rotation(op, rotation, codes, 2 * codes.size(-1));
  return {layout, parse_out_dtype(op, out_dtype)};
}

inline DequantizeArgs check_dequantize_mxfp4(const at::Tensor& codes, const at::Tensor& scales,
                                             const c10::optional<at::Tensor>& rotation, const std::string& layout,
                                             const c10::optional<at::ScalarType>& out_dtype) {
  return check_dequantize("fpquant.dequantize_mxfp4", core::kMxGroup, at::kFloat8_e8m0fnu, codes, scales, nullptr,
                          rotation, layout, out_dtype);
}

inline DequantizeArgs check_dequantize_nvfp4(const at::Tensor& codes, const at::Tensor& scales,
                                             const at::Tensor& global_scale,
                                             const c10::optional<at::Tensor>& rotation, const std::string& layout,
                                             const c10::optional<at::ScalarType>& out_dtype) {
  return check_dequantize("fpquant.dequantize_nvfp4", core::kNvGroup, at::kFloat8_e4m3fn, codes, scales,
                          &global_scale, rotation, layout, out_dtype);
}

inline Format parse_format(const char* op, const std::string& format) {
  TORCH_CHECK_VALUE(format == "mxfp4" || format == "nvfp4", op, ": format must be 'mxfp4' or 'nvfp4', got '",
                    format, "'");
  return format == "mxfp4" ? Format::kMxFp4 : Format::kNvFp4;
}

// A W4A16 weight in either layout: canonical (codes [N, K/2], linear scales [N, K/G]) or packed
// (core/w4a16_layout.h: codes uint8 [N/16, K/64, 512], scales [N/16, K/64, 16 * 64/G]), told apart by the
// codes' rank. Scales are float8_e8m0fnu (MXFP4) or float8_e4m3fn (NVFP4). Returns (N, K).
struct W4A16Weight {
  bool packed;
  int64_t N, K;
};
inline W4A16Weight check_w4a16_weight(const char* op, const at::Tensor& codes, const at::Tensor& scales,
                                      Format f) {
  const bool mx = f == Format::kMxFp4;
  const int64_t group = core::group_size(f);
  const at::ScalarType sdt = mx ? at::kFloat8_e8m0fnu : at::kFloat8_e4m3fn;
  if (codes.dim() == 2) {
    check_codes(op, codes, group);
    check_scales(op, scales, codes, group, sdt, ScaleLayout::kLinear);
    return {false, codes.size(0), 2 * codes.size(1)};
  }
  TORCH_CHECK_VALUE(codes.dim() == 3, op,
                    ": w_codes must be 2-D [N, K/2] (canonical) or 3-D [N/16, K/64, 512] (packed by pack_w4a16), "
                    "got shape ", codes.sizes());
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, op, ": packed w_codes must be uint8, got ", codes.scalar_type());
  TORCH_CHECK_VALUE(codes.numel() > 0 && codes.size(2) == core::kPackAtomBytes, op,
                    ": packed w_codes must have shape [N/16, K/64, 512], got ", codes.sizes());
  TORCH_CHECK_VALUE(codes.is_contiguous(), op, ": w_codes must be contiguous");
  check_scale_tensor(op, scales, codes, sdt);
  const int64_t sb = core::pack_scale_bytes(static_cast<int>(group));
  TORCH_CHECK_VALUE(scales.dim() == 3 && scales.size(0) == codes.size(0) && scales.size(1) == codes.size(1) &&
                        scales.size(2) == sb,
                    op, ": packed scales must have shape [", codes.size(0), ", ", codes.size(1), ", ", sb, "], got ",
                    scales.sizes());
  return {true, core::kPackRows * codes.size(0), core::kPackK * codes.size(1)};
}

// pack_w4a16: a canonical weight (check_w4a16_weight) of a shape the packed layout takes.
inline W4A16Weight check_pack_w4a16(const char* op, const at::Tensor& codes, const at::Tensor& scales, Format f) {
  TORCH_CHECK_VALUE(codes.dim() == 2, op, ": w_codes must be the canonical 2-D [N, K/2], got shape ", codes.sizes());
  const W4A16Weight w = check_w4a16_weight(op, codes, scales, f);
  TORCH_CHECK_VALUE(w.N % core::kPackRows == 0 && w.K % core::kPackK == 0, op, ": the packed layout needs N a multiple of ",
                    core::kPackRows, " and K a multiple of ", core::kPackK, ", got N=", w.N, ", K=", w.K);
  return w;
}

// linear_w4a16: x [..., K] bfloat16/float16; the weight in either layout (check_w4a16_weight);
// w_global_scale required for NVFP4; for MXFP4 optional, a divisor of the weight (FP-Quant's abs_max
// checkpoints store MXFP4 codes of 3 x the weight: docs/checkpoints.md); bias [N] of x's dtype.
struct LinearW4A16Args {
  Format format;
  W4A16Weight w;
};
inline LinearW4A16Args check_linear_w4a16(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                                          const c10::optional<at::Tensor>& global_scale,
                                          const c10::optional<at::Tensor>& bias, const std::string& format) {
  constexpr const char* op = "fpquant.linear_w4a16";
  const Format f = parse_format(op, format);
  const bool mx = f == Format::kMxFp4;
  TORCH_CHECK_TYPE(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
                   ": x must be bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.numel() > 0, op, ": x is empty (shape ", x.sizes(), ")");
  TORCH_CHECK_VALUE(x.is_contiguous(), op, ": x must be contiguous");
  const W4A16Weight w = check_w4a16_weight(op, codes, scales, f);
  const int64_t K = x.size(-1);
  TORCH_CHECK_VALUE(w.K == K, op, ": w_codes has ", w.K, " elements per row but x has K=", K);
  TORCH_CHECK_VALUE(codes.device() == x.device(), op, ": w_codes is on ", codes.device(), " but x is on ",
                    x.device());
  TORCH_CHECK_VALUE(mx || global_scale.has_value(), op, ": format='nvfp4' needs w_global_scale");
  if (global_scale.has_value()) check_global_scale(op, *global_scale, x);
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, ": bias must have x's dtype ", x.scalar_type(),
                     ", got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == w.N, op, ": bias must have shape [", w.N, "], got ",
                      bias->sizes());
    TORCH_CHECK_VALUE(bias->device() == x.device(), op, ": bias is on ", bias->device(), " but x is on ", x.device());
  }
  return {f, w};
}

// ---- matmul_mxfp4 / matmul_nvfp4 ------------------------------------------------------------------------
// A [..., M, K/2] (any rank >= 1; the leading dimensions are rows), B [N, K/2], both in the format's
// groups along K; scales for either layout (blocked: A's rows flattened); NVFP4 global scales; bias [N]
// of a floating dtype. Returns (N, K).
struct MatmulArgs {
  ScaleLayout layout;
  at::ScalarType out_dtype;
  int64_t N, K;
};
inline MatmulArgs check_matmul(const char* op, int64_t group, at::ScalarType scale_dtype, const at::Tensor& a,
                               const at::Tensor& a_scales, const at::Tensor* a_global, const at::Tensor& b,
                               const at::Tensor& b_scales, const at::Tensor* b_global, const std::string& layout_name,
                               const c10::optional<at::ScalarType>& out_dtype, const c10::optional<at::Tensor>& bias) {
  const ScaleLayout layout = parse_layout(op, layout_name);
  check_codes(op, a, group, "a_codes");
  check_codes(op, b, group, "b_codes");
  TORCH_CHECK_VALUE(b.dim() == 2, op, ": b_codes must be 2-D [N, K/2], got shape ", b.sizes());
  TORCH_CHECK_VALUE(b.device() == a.device(), op, ": b_codes is on ", b.device(), " but a_codes is on ", a.device());
  TORCH_CHECK_VALUE(a.size(-1) == b.size(1), op, ": a_codes has K=", 2 * a.size(-1), " but b_codes has K=",
                    2 * b.size(1));
  check_scales(op, a_scales, a, group, scale_dtype, layout, "a_scales", "a_codes");
  check_scales(op, b_scales, b, group, scale_dtype, layout, "b_scales", "b_codes");
  if (a_global != nullptr) check_global_scale(op, *a_global, a, "a_global_scale", "a_codes");
  if (b_global != nullptr) check_global_scale(op, *b_global, a, "b_global_scale", "a_codes");
  const at::ScalarType dtype = parse_out_dtype(op, out_dtype);
  const int64_t N = b.size(0);
  if (bias.has_value()) {
    const at::ScalarType bt = bias->scalar_type();
    TORCH_CHECK_TYPE(bt == at::kFloat || bt == at::kBFloat16 || bt == at::kHalf, op,
                     ": bias must be float32, bfloat16 or float16, got ", bt);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, op, ": bias must have shape [", N, "], got ",
                      bias->sizes());
    TORCH_CHECK_VALUE(bias->device() == a.device(), op, ": bias is on ", bias->device(), " but a_codes is on ",
                      a.device());
    TORCH_CHECK_VALUE(bias->is_contiguous(), op, ": bias must be contiguous");
  }
  return {layout, dtype, N, 2 * b.size(1)};
}

inline MatmulArgs check_matmul_mxfp4(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b,
                                     const at::Tensor& b_scales, const std::string& layout,
                                     const c10::optional<at::ScalarType>& out_dtype,
                                     const c10::optional<at::Tensor>& bias) {
  return check_matmul("fpquant.matmul_mxfp4", core::kMxGroup, at::kFloat8_e8m0fnu, a, a_scales, nullptr, b, b_scales,
                      nullptr, layout, out_dtype, bias);
}

inline MatmulArgs check_matmul_nvfp4(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& a_global,
                                     const at::Tensor& b, const at::Tensor& b_scales, const at::Tensor& b_global,
                                     const std::string& layout, const c10::optional<at::ScalarType>& out_dtype,
                                     const c10::optional<at::Tensor>& bias) {
  return check_matmul("fpquant.matmul_nvfp4", core::kNvGroup, at::kFloat8_e4m3fn, a, a_scales, &a_global, b, b_scales,
                      &b_global, layout, out_dtype, bias);
}

}  // namespace fpquant
