// Output allocation shared by the CPU and CUDA quantizers, so both return the same shapes and padding.
#pragma once

#include <ATen/ATen.h>

#include "ops/checks.h"
#include "core/scale_layout.h"

namespace fpquant {

// Packed codes [..., K/2] uint8 for an input x [..., K].
inline at::Tensor make_codes(const at::Tensor& x) {
  auto shape = x.sizes().vec();
  shape.back() /= 2;
  return at::empty(shape, x.options().dtype(at::kByte));
}

// Scales for x [..., K] with `groups` per row: linear [..., groups], or the blocked layout's 2-D
// [ceil128(rows), ceil4(groups)] with zero padding.
inline at::Tensor make_scales(const at::Tensor& x, int64_t groups, at::ScalarType dtype, ScaleLayout layout) {
  if (layout == ScaleLayout::kLinear) {
    auto shape = x.sizes().vec();
    shape.back() = groups;
    return at::empty(shape, x.options().dtype(dtype));
  }
  const int64_t rows = x.numel() / x.size(-1);
  return at::zeros({core::blocked_rows(rows), core::blocked_cols(groups)}, x.options().dtype(dtype));
}

}  // namespace fpquant
