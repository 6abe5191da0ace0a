// Scale layout conversion for every device at once: tensor ops (pad, view, permute) registered as a
// composite kernel, in the tile order of core::blocked_offset (the 128x4 layout of cuBLAS / Blackwell).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "core/scale_layout.h"

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

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CompositeExplicitAutograd, m) {
  m.impl("swizzle_scales", &swizzle_scales);
  m.impl("unswizzle_scales", &unswizzle_scales);
}

}  // namespace fpquant
