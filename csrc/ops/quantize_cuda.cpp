// CUDA implementations of the quantize family: validation (ops/checks.h, shared with the CPU), output
// allocation through torch, the kernel chosen by plan_quantize (cuda/quantize/quantize_plan.h), the current
// stream, then the framework-free launchers of cuda/quantize/quantize.h.
// Only c10/cuda headers (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers): the CI check
// compiles this file with a bare nvcc toolkit.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "core/scale_layout.h"
#include "cuda/quantize/quantize.h"
#include "ops/cuda_glue.h"
#include "ops/outputs.h"
#include "ops/tuning.h"

namespace fpquant {
namespace {


// The rotation for the split-precision kernel: R (y = x_block @ R) split into hi + lo of bfloat16 (float16
// when x is float16), as the block-diagonal diag(R, R) where the plan's kernel size is twice r (the zero
// blocks add exact zeros). Small r x r device ops: no host synchronization, capturable.
std::pair<at::Tensor, at::Tensor> split_rotation(const at::Tensor& R, at::ScalarType x_dtype, int kernel_r) {
  const at::ScalarType mt = x_dtype == at::kHalf ? at::kHalf : at::kBFloat16;
  at::Tensor r32 = R.to(at::kFloat).contiguous();
  if (r32.size(0) < kernel_r) r32 = at::block_diag({r32, r32});
  at::Tensor hi = r32.to(mt);
  at::Tensor lo = (r32 - hi.to(at::kFloat)).to(mt);
  return {hi.contiguous(), lo.contiguous()};
}

std::tuple<at::Tensor, at::Tensor> quantize_cuda(const char* op, Format format, const at::Tensor& x,
                                                 const c10::optional<at::Tensor>& rotation, core::MxRule rule,
                                                 const at::Tensor* global_scale, ScaleLayout layout) {
  check_device_and_alignment(op, x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t G = core::group_size(format);
  const int64_t K = x.size(-1), rows = x.numel() / K;
  at::Tensor codes = make_codes(x);
  at::Tensor scales =
      make_scales(x, K / G, format == Format::kMxFp4 ? at::kFloat8_e8m0fnu : at::kFloat8_e4m3fn, layout);
  cuda::QuantizeParams p;
  p.x = x.data_ptr();
  p.dtype = dtype_of(x.scalar_type());
  p.rows = rows;
  p.K = K;
  p.format = format;
  p.rule = rule;
  p.global_scale = global_scale ? global_scale->data_ptr<float>() : nullptr;
  p.layout = layout;
  p.codes = codes.data_ptr<uint8_t>();
  p.scales = reinterpret_cast<uint8_t*>(scales.data_ptr());
  const int r = rotation.has_value() ? static_cast<int>(rotation->size(0)) : 0;
  const cuda::QuantizePlan plan =
      cuda::plan_quantize(rows, K, format, p.dtype, r, gpu_info(x.get_device()), quantize_override());
  TORCH_CHECK_VALUE(plan.invalid == nullptr, op, ": plan override: ", plan.invalid);
  at::Tensor hi, lo, rot;
  if (plan.path == cuda::QuantizePath::kRotateSplit) {
    std::tie(hi, lo) = split_rotation(*rotation, x.scalar_type(), plan.kernel_r);
    p.rot_hi = hi.data_ptr();
    p.rot_lo = lo.data_ptr();
    p.r = plan.kernel_r;
  } else if (r != 0) {
    rot = rotation->to(at::kFloat).contiguous();  // no copy when it already is (the usual case)
    if (reinterpret_cast<uintptr_t>(rot.data_ptr()) % 16 != 0) rot = rot.clone();  // cp.async needs 16 B
    p.rot = rot.data_ptr<float>();
    p.r = r;  // the kernels expand r = 16 themselves
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t err = cudaErrorInvalidValue;
  switch (plan.path) {
    case cuda::QuantizePath::kGroups: err = cuda::quantize_groups(p, stream); break;
    case cuda::QuantizePath::kRotateMma: err = cuda::quantize_rotated_mma(p, stream); break;
    case cuda::QuantizePath::kRotateSplit: err = cuda::quantize_rotated_split(p, stream); break;
    case cuda::QuantizePath::kRotateSm90:
#if FPQUANT_SM90_KERNELS
      err = cuda::quantize_rotated_sm90(p, stream);
#endif
      break;
  }
  check_cuda(op, err);
  return {codes, scales};
}

std::tuple<at::Tensor, at::Tensor> quantize_mxfp4_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& rotation,
                                                       c10::string_view method, c10::string_view scale_layout) {
  const auto [rule, layout] = check_quantize_mxfp4(x, rotation, std::string(method), std::string(scale_layout));
  return quantize_cuda("fpquant.quantize_mxfp4", Format::kMxFp4, x, rotation, rule, nullptr, layout);
}

std::tuple<at::Tensor, at::Tensor> quantize_nvfp4_cuda(const at::Tensor& x, const at::Tensor& global_scale,
                                                       const c10::optional<at::Tensor>& rotation,
                                                       c10::string_view scale_layout) {
  const ScaleLayout layout = check_quantize_nvfp4(x, global_scale, rotation, std::string(scale_layout));
  const at::Tensor g = global_scale.contiguous();
  return quantize_cuda("fpquant.quantize_nvfp4", Format::kNvFp4, x, rotation, core::MxRule::kFloor, &g, layout);
}

at::Tensor nvfp4_global_scale_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& rotation) {
  constexpr const char* op = "fpquant.nvfp4_global_scale";
  check_activation(op, x, 1);
  check_rotation(op, rotation, x, x.size(-1));
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  // With a rotation the scale is taken over the rotated tensor, computed here by a float32 matmul (a second
  // pass; the fused quantizer's tensor-core rotation may differ from it in the last bits).
  at::Tensor src = x;
  if (rotation.has_value()) {
    const int64_t r = rotation->size(0);
    src = at::matmul(x.to(at::kFloat).reshape({-1, r}), rotation->to(at::kFloat));
  }
  at::Tensor scratch = at::zeros({2}, x.options().dtype(at::kInt));
  at::Tensor out = at::empty({1}, x.options().dtype(at::kFloat));
  check_cuda(op, cuda::global_scale(src.data_ptr(), dtype_of(src.scalar_type()), src.numel(),
                                    reinterpret_cast<uint32_t*>(scratch.data_ptr<int>()), out.data_ptr<float>(),
                                    c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

at::Tensor dequantize_cuda(const char* op, Format format, const at::Tensor& codes, const at::Tensor& scales,
                           const at::Tensor* global_scale, const c10::optional<at::Tensor>& rotation,
                           ScaleLayout layout, at::ScalarType out_dtype) {
  check_device_and_alignment(op, codes, "codes");
  TORCH_CHECK_VALUE(scales.is_cuda(), op, ": scales must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(codes.device());
  const int64_t K = 2 * codes.size(-1), rows = codes.numel() / codes.size(-1);
  auto shape = codes.sizes().vec();
  shape.back() = K;
  // With a rotation, dequantize to float32 and apply R^T with a float32 matmul (not yet fused).
  const at::ScalarType kernel_dtype = rotation.has_value() ? at::kFloat : out_dtype;
  at::Tensor out = at::empty(shape, codes.options().dtype(kernel_dtype));
  cuda::DequantizeParams p;
  p.codes = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  p.scales = reinterpret_cast<const uint8_t*>(scales.data_ptr());
  p.format = format;
  p.global_scale = global_scale ? global_scale->data_ptr<float>() : nullptr;
  p.layout = layout;
  p.rows = rows;
  p.K = K;
  p.out = out.data_ptr();
  p.out_dtype = dtype_of(kernel_dtype);
  check_cuda(op, cuda::dequantize(p, c10::cuda::getCurrentCUDAStream().stream()));
  if (!rotation.has_value()) return out;
  const int64_t r = rotation->size(0);
  return at::matmul(out.reshape({-1, r}), rotation->to(at::kFloat).t()).reshape(shape).to(out_dtype);
}

at::Tensor dequantize_mxfp4_cuda(const at::Tensor& codes, const at::Tensor& scales,
                                 const c10::optional<at::Tensor>& rotation, c10::string_view scale_layout,
                                 c10::optional<at::ScalarType> out_dtype) {
  const auto [layout, dtype] = check_dequantize_mxfp4(codes, scales, rotation, std::string(scale_layout), out_dtype);
  return dequantize_cuda("fpquant.dequantize_mxfp4", Format::kMxFp4, codes, scales, nullptr, rotation, layout, dtype);
}

at::Tensor dequantize_nvfp4_cuda(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& global_scale,
                                 const c10::optional<at::Tensor>& rotation, c10::string_view scale_layout,
                                 c10::optional<at::ScalarType> out_dtype) {
  const auto [layout, dtype] =
      check_dequantize_nvfp4(codes, scales, global_scale, rotation, std::string(scale_layout), out_dtype);
  const at::Tensor g = global_scale.contiguous();
  return dequantize_cuda("fpquant.dequantize_nvfp4", Format::kNvFp4, codes, scales, &g, rotation, layout, dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CUDA, m) {
  m.impl("quantize_mxfp4", &quantize_mxfp4_cuda);
  m.impl("quantize_nvfp4", &quantize_nvfp4_cuda);
  m.impl("dequantize_mxfp4", &dequantize_mxfp4_cuda);
  m.impl("dequantize_nvfp4", &dequantize_nvfp4_cuda);
  m.impl("nvfp4_global_scale", &nvfp4_global_scale_cuda);
}

}  // namespace fpquant
