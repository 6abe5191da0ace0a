// Layout conversions for every device at once: tensor ops (pad, view, permute) registered as composite
// kernels. Scales: the tile order of core::blocked_offset (the 128x4 layout of cuBLAS / Blackwell). W4A16
// weights: the packed layout of core/w4a16_layout.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "ops/checks.h"
#include "core/scale_layout.h"
#include "core/w4a16_layout.h"
#include "ops/w4a16_pack.h"

namespace fpquant {
namespace {

void check_scale_bytes(const char* op, const at::Tensor& t) {
  TORCH_CHECK_TYPE((t.element_size() == 1 && at::isFloatingType(t.scalar_type())) || t.scalar_type() == at::kByte, op,
                   ": scales must be a one-byte dtype (float8_e8m0fnu, float8_e4m3fn or uint8), got ",
                   t.scalar_type());
}

at::Tensor swizzle_scales(const at::Tensor& scales) {
  constexpr const char* op = "fpquant.swizzle_scales";
  check_scale_bytes(op, scales);
  TORCH_CHECK_VALUE(scales.dim() >= 2 && scales.numel() > 0, op,
                    ": scales must be a non-empty [..., rows, groups] tensor, got shape ", scales.sizes());
  const int64_t cols = scales.size(-1), rows = scales.numel() / cols;
  const int64_t pr = core::blocked_rows(rows), pc = core::blocked_cols(cols);
  at::Tensor padded = at::zeros({pr, pc}, scales.options().dtype(at::kByte));  // zero padding
  padded.narrow(0, 0, rows).narrow(1, 0, cols).copy_(scales.reshape({rows, cols}).view(at::kByte));
  // row = tile_r * 128 + a * 32 + b, col = tile_c * 4 + c  ->  (tile_r, tile_c, b, a, c)
  return padded.view({pr / 128, 4, 32, pc / 4, 4}).permute({0, 3, 2, 1, 4}).contiguous().view({pr, pc}).view(
      scales.scalar_type());
}

at::Tensor unswizzle_scales(const at::Tensor& scales, int64_t rows, int64_t cols) {
  constexpr const char* op = "fpquant.unswizzle_scales";
  check_scale_bytes(op, scales);
  TORCH_CHECK_VALUE(rows > 0 && cols > 0, op, ": rows and cols must be positive, got ", rows, " and ", cols);
  const int64_t pr = core::blocked_rows(rows), pc = core::blocked_cols(cols);
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == pr && scales.size(1) == pc, op, ": blocked scales for ",
                    rows, " x ", cols, " must have shape [", pr, ", ", pc, "], got ", scales.sizes());
  const at::Tensor tiles =
      scales.contiguous().view(at::kByte).view({pr / 128, pc / 4, 32, 4, 4}).permute({0, 3, 2, 1, 4});
  return tiles.reshape({pr, pc}).narrow(0, 0, rows).narrow(1, 0, cols).contiguous().view(scales.scalar_type());
}

// Codes: nibble (row n = 16t + 8h + g, k = 64a + 16(2 s2 + s1) + 8j + 2q + e) of the canonical layout goes to
// atom (t, a), lane 4g + q, word 2h + s2, nibble 4e + 2 s1 + j (core/w4a16_layout.h). As tensor dimensions:
// canonical nibbles [t, h, g, a, s2, s1, j, q, e] <-> packed nibbles [t, a, g, q, h, s2, e, s1, j].
constexpr int64_t kCanonicalDims[] = {0, 3, 2, 7, 1, 4, 8, 5, 6};  // packed dim i is canonical dim [i]
constexpr int64_t kPackedDims[] = {0, 4, 2, 1, 5, 7, 8, 3, 6};     // canonical dim i is packed dim [i]

at::Tensor nibbles(const at::Tensor& bytes) {  // [..., B] uint8 -> [..., 2B] (low nibble first)
  return at::stack({at::bitwise_and(bytes, 15), at::bitwise_right_shift(bytes, 4)}, -1);
}
at::Tensor bytes_of(const at::Tensor& nib) {  // [..., 2B] -> [..., B]
  const at::Tensor pairs = nib.view({-1, 2});
  return at::bitwise_or(pairs.select(1, 0), at::bitwise_left_shift(pairs.select(1, 1), 4));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pack_w4a16(const at::Tensor& codes, const at::Tensor& scales,
                                              c10::string_view format) {
  constexpr const char* op = "fpquant.pack_w4a16";
  const Format f = parse_format(op, std::string(format));
  const W4A16Weight w = check_pack_w4a16(op, codes, scales, f);
  const int64_t N = w.N, K = w.K, T = N / core::kPackRows, A = K / core::kPackK;
  const at::Tensor nib = nibbles(codes.view(at::kByte)).view({T, 2, 8, A, 2, 2, 2, 4, 2});
  const at::Tensor packed = bytes_of(nib.permute(kCanonicalDims).contiguous()).view({T, A, core::kPackAtomBytes});
  const int64_t per_row = core::kPackK / core::group_size(f);
  const at::Tensor s = scales.view(at::kByte).view({T, core::kPackRows, A, per_row}).permute({0, 2, 1, 3});
  // A copy even where the permutation is the identity (K = 64): an op's outputs never alias its inputs.
  return {packed, s.clone(at::MemoryFormat::Contiguous).view({T, A, core::kPackRows * per_row}).view(scales.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> unpack_w4a16(const at::Tensor& codes, const at::Tensor& scales,
                                                c10::string_view format) {
  constexpr const char* op = "fpquant.unpack_w4a16";
  const Format f = parse_format(op, std::string(format));
  TORCH_CHECK_VALUE(codes.dim() == 3, op, ": w_codes must be the packed 3-D [N/16, K/64, 512], got shape ",
                    codes.sizes());
  const W4A16Weight w = check_w4a16_weight(op, codes, scales, f);
  const int64_t T = codes.size(0), A = codes.size(1), per_row = scales.size(2) / core::kPackRows;
  const at::Tensor nib = nibbles(codes).view({T, A, 8, 4, 2, 2, 2, 2, 2});
  const at::Tensor canonical = bytes_of(nib.permute(kPackedDims).contiguous()).view({w.N, w.K / 2});
  const at::Tensor s = scales.view(at::kByte).view({T, A, core::kPackRows, per_row}).permute({0, 2, 1, 3});
  return {canonical, s.clone(at::MemoryFormat::Contiguous).view({w.N, A * per_row}).view(scales.scalar_type())};
}

TORCH_LIBRARY_IMPL(fpquant, CompositeExplicitAutograd, m) {
  m.impl("swizzle_scales", &swizzle_scales);
  m.impl("unswizzle_scales", &unswizzle_scales);
  m.impl("pack_w4a16", &pack_w4a16);
  m.impl("unpack_w4a16", &unpack_w4a16);
}

}  // namespace fpquant
