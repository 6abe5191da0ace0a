// fpquant.pack_w4a16 / unpack_w4a16 (layout_ops.cpp): canonical <-> packed W4A16 weight layout
// (core/w4a16_layout.h), as tensor operations that run on any device. The linear_w4a16 backends call them
// directly: the CPU reference unpacks, the CUDA glue packs a canonical weight per call.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <tuple>

namespace fpquant {

std::tuple<at::Tensor, at::Tensor> pack_w4a16(const at::Tensor& codes, const at::Tensor& scales,
                                              c10::string_view format);
std::tuple<at::Tensor, at::Tensor> unpack_w4a16(const at::Tensor& codes, const at::Tensor& scales,
                                                c10::string_view format);

}  // namespace fpquant
