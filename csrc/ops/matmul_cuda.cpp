// CUDA glue of matmul_mxfp4 / matmul_nvfp4: the shared checks, the kernel chosen by plan_matmul
// (cuda/matmul/matmul_plan.h), output and workspace through torch's allocator, torch's current stream. No
// host synchronization on any path, so calls can be captured in CUDA graphs. The w4a16 path calls other
// operators (unswizzle_scales, linear_w4a16) through the dispatcher rather than their glue's internals.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "cuda/matmul/matmul.h"
#include "cuda/matmul/matmul_generic.h"
#include "cuda/matmul/matmul_plan.h"
#include "cuda/matmul/matmul_sm100.h"
#include "cuda/matmul/matmul_sm120.h"
#include "cuda/matmul/matmul_sm90.h"
#include "cuda/w4a16/w4a16_plan.h"
#include "cuda/quantize/quantize.h"
#include "ops/checks.h"
#include "ops/cuda_glue.h"
#include "ops/tuning.h"

namespace fpquant {
namespace {

const uint8_t* bytes_of(const at::Tensor& t) { return reinterpret_cast<const uint8_t*>(t.const_data_ptr()); }

// The blocked layout of linear scales, through the swizzle_scales operator (layout.cpp).
at::Tensor swizzled(const at::Tensor& scales) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fpquant::swizzle_scales", "")
                             .typed<at::Tensor(const at::Tensor&)>();
  return op.call(scales);
}

// The linear layout of blocked scales for rows x groups, through the unswizzle_scales operator (layout.cpp).
at::Tensor unswizzled(const at::Tensor& scales, int64_t rows, int64_t groups) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fpquant::unswizzle_scales", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  return op.call(scales, rows, groups);
}

// linear_w4a16 through the dispatcher, which runs its CUDA glue (w4a16_cuda.cpp) and thereby its plan.
at::Tensor call_linear_w4a16(const at::Tensor& x, const at::Tensor& w_codes, const at::Tensor& w_scales,
                             const c10::optional<at::Tensor>& w_global_scale, const c10::optional<at::Tensor>& bias,
                             c10::string_view format) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fpquant::linear_w4a16", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                               c10::string_view)>();
  return op.call(x, w_codes, w_scales, w_global_scale, bias, format);
}

// Codes [rows, K] dequantized by the dequantize kernel into `out` (float32 or bfloat16, contiguous), NVFP4 with
// a global scale of 1 (`one`): code * scale, exact in both; MXFP4 code * 2^e, exact below 2^128 in both.
void dequantize_into(const char* op, const at::Tensor& codes, const at::Tensor& scales, core::Format f,
                     core::ScaleLayout layout, int64_t rows, int64_t K, const at::Tensor& one, at::Tensor& out,
                     cudaStream_t stream) {
  cuda::DequantizeParams d;
  d.codes = bytes_of(codes);
  d.scales = bytes_of(scales);
  d.format = f;
  d.global_scale = f == core::Format::kNvFp4 ? one.const_data_ptr<float>() : nullptr;
  d.layout = layout;
  d.rows = rows;
  d.K = K;
  d.out = out.data_ptr();
  d.out_dtype = dtype_of(out.scalar_type());
  check_cuda(op, cuda::dequantize(d, stream));
}

// One operand [rows, K] dequantized to float32 (exact), then widened to float64 (exact).
at::Tensor dequantized(const char* op, const at::Tensor& codes, const at::Tensor& scales, core::Format f,
                       core::ScaleLayout layout, int64_t rows, int64_t K, const at::Tensor& one, cudaStream_t stream) {
  at::Tensor v = at::empty({rows, K}, codes.options().dtype(at::kFloat));
  dequantize_into(op, codes, scales, f, layout, rows, K, one, v, stream);
  return v.to(at::kDouble);
}

// The generic path: exact operands, their product summed in float64 by cuBLAS, then matmul_generic_finish.
void matmul_generic(const char* op, const at::Tensor& a, const at::Tensor& sa, const at::Tensor& b,
                    const at::Tensor& sb, cuda::MatmulParams& p, cudaStream_t stream) {
  const at::Tensor one = at::ones({1}, a.options().dtype(at::kFloat));
  const at::Tensor A = dequantized(op, a, sa, p.format, p.layout, p.M, p.K, one, stream);
  const at::Tensor B = dequantized(op, b, sb, p.format, p.layout, p.N, p.K, one, stream);
  const at::Tensor acc = at::mm(A, B.t());
  check_cuda(op, cuda::matmul_generic_finish(p, acc.const_data_ptr<double>(), stream));
}

// The w4a16 path: A [..., K] dequantized to bfloat16, then linear_w4a16 with B [N, K] as its canonical weight,
// whose output [..., N] (bfloat16, the bias added there) is the result. NVFP4: out = A B^T / (gA gB), and
// linear_w4a16 divides by its weight's global scale, so it gets gA * gB, multiplied on the device (no host
// synchronization: the call stays capturable in a CUDA graph).
at::Tensor matmul_w4a16(const char* op, core::Format f, const MatmulArgs& args, const cuda::MatmulPlan& plan,
                        const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor* a_global,
                        const at::Tensor& b, const at::Tensor& b_scales, const at::Tensor* b_global,
                        const c10::optional<at::Tensor>& bias, int64_t M, cudaStream_t stream) {
  const bool nv = f == core::Format::kNvFp4;
  const int64_t K = args.K;
  auto shape = a.sizes().vec();
  shape.back() = K;
  at::Tensor x = at::empty(shape, a.options().dtype(at::kBFloat16));
  at::Tensor one;
  if (nv) one = at::ones({1}, a.options().dtype(at::kFloat));
  dequantize_into(op, a, a_scales, f, args.layout, M, K, one, x, stream);
  const at::Tensor sb = plan.unswizzle_scales ? unswizzled(b_scales, args.N, K / core::group_size(f)) : b_scales;
  c10::optional<at::Tensor> g;
  if (nv) g = at::mul(*a_global, *b_global);
  return call_linear_w4a16(x, b, sb, g, bias, nv ? "nvfp4" : "mxfp4");
}

at::Tensor matmul_cuda(const char* op, core::Format f, const MatmulArgs& args, const at::Tensor& a,
                       const at::Tensor& a_scales, const at::Tensor* a_global, const at::Tensor& b,
                       const at::Tensor& b_scales, const at::Tensor* b_global, const c10::optional<at::Tensor>& bias) {
  check_device_and_alignment(op, a, "a_codes");
  check_device_and_alignment(op, b, "b_codes");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t N = args.N, K = args.K, M = a.numel() / a.size(-1);
  const cuda::GpuInfo gpu = gpu_info(a.get_device());
  std::optional<core::DType> bias_dtype;
  if (bias.has_value()) bias_dtype = dtype_of(bias->scalar_type());
  const cuda::MatmulPlan plan =
      cuda::plan_matmul(M, N, K, f, args.layout, dtype_of(args.out_dtype), bias_dtype, gpu, matmul_override());
  TORCH_CHECK_VALUE(plan.invalid == nullptr, op, ": plan override: ", plan.invalid);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (plan.path == cuda::MatmulPath::kW4a16) {
    TORCH_CHECK_VALUE(cuda::plan_w4a16(M, N, K, f, gpu, w4a16_override()).path != cuda::W4A16Path::kSlab, op,
                      ": plan override: the w4a16 matmul path cannot run the W4A16 slab path (cuBLAS on bf16 slabs "
                      "rounds more than once)");
    return matmul_w4a16(op, f, args, plan, a, a_scales, a_global, b, b_scales, b_global, bias, M, stream);
  }

  auto shape = a.sizes().vec();
  shape.back() = N;
  at::Tensor out = at::empty(shape, a.options().dtype(args.out_dtype));
  cuda::MatmulParams p;
  p.format = f;
  p.layout = args.layout;
  p.M = M;
  p.N = N;
  p.K = K;
  p.out = out.data_ptr();
  p.out_dtype = dtype_of(args.out_dtype);
  at::Tensor ga, gb;
  if (a_global != nullptr) {
    ga = a_global->contiguous();
    gb = b_global->contiguous();
    p.a_global = ga.const_data_ptr<float>();
    p.b_global = gb.const_data_ptr<float>();
  }
  p.num_sms = gpu.num_sms;

  at::Tensor bias_t;
  if (bias.has_value()) {
    // The CUTLASS epilogues read a float32 bias (widening is exact); the generic path reads any dtype.
    const bool any_dtype = plan.path == cuda::MatmulPath::kGeneric || plan.path == cuda::MatmulPath::kSm90;
    bias_t = any_dtype ? bias->contiguous() : bias->to(at::kFloat);
    p.bias = bias_t.const_data_ptr();
    p.bias_dtype = dtype_of(bias_t.scalar_type());
  }
  if (plan.path == cuda::MatmulPath::kGeneric) {
    matmul_generic(op, a, a_scales, b, b_scales, p, stream);
    return out;
  }

  at::Tensor sa = a_scales, sb = b_scales;
  if (plan.swizzle_scales) {
    sa = swizzled(a_scales);
    sb = swizzled(b_scales);
    p.layout = core::ScaleLayout::kBlocked;
  }
  if (plan.path != cuda::MatmulPath::kSm90) {  // TMA reads the scales as well as the codes
    check_device_and_alignment(op, sa, "a_scales");
    check_device_and_alignment(op, sb, "b_scales");
  }
  p.a_codes = bytes_of(a);
  p.a_scales = bytes_of(sa);
  p.b_codes = bytes_of(b);
  p.b_scales = bytes_of(sb);
  p.config = plan.config;
  at::Tensor workspace;
  if (plan.workspace_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes)}, a.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
    p.workspace_bytes = plan.workspace_bytes;
  }
  cudaError_t err = cudaErrorInvalidValue;
  switch (plan.path) {
    case cuda::MatmulPath::kSm100:
#if FPQUANT_SM100_KERNELS
      err = cuda::matmul_sm100(p, stream);
#endif
      break;
    case cuda::MatmulPath::kSm120:
#if FPQUANT_SM120_KERNELS
      err = cuda::matmul_sm120(p, stream);
#endif
      break;
    case cuda::MatmulPath::kSm90:
#if FPQUANT_SM90_KERNELS
      err = f == core::Format::kMxFp4 ? cuda::matmul_mxfp4_sm90(p, stream) : cuda::matmul_nvfp4_sm90(p, stream);
#endif
      break;
    case cuda::MatmulPath::kGeneric:
    case cuda::MatmulPath::kW4a16: break;
  }
  check_cuda(op, err);
  return out;
}

at::Tensor matmul_mxfp4_cuda(const at::Tensor& a_codes, const at::Tensor& a_scales, const at::Tensor& b_codes,
                             const at::Tensor& b_scales, c10::string_view scale_layout,
                             c10::optional<at::ScalarType> out_dtype, const c10::optional<at::Tensor>& bias) {
  const MatmulArgs args =
      check_matmul_mxfp4(a_codes, a_scales, b_codes, b_scales, std::string(scale_layout), out_dtype, bias);
  return matmul_cuda("fpquant.matmul_mxfp4", core::Format::kMxFp4, args, a_codes, a_scales, nullptr, b_codes,
                     b_scales, nullptr, bias);
}

at::Tensor matmul_nvfp4_cuda(const at::Tensor& a_codes, const at::Tensor& a_scales, const at::Tensor& a_global_scale,
                             const at::Tensor& b_codes, const at::Tensor& b_scales, const at::Tensor& b_global_scale,
                             c10::string_view scale_layout, c10::optional<at::ScalarType> out_dtype,
                             const c10::optional<at::Tensor>& bias) {
  const MatmulArgs args = check_matmul_nvfp4(a_codes, a_scales, a_global_scale, b_codes, b_scales, b_global_scale,
                                             std::string(scale_layout), out_dtype, bias);
  return matmul_cuda("fpquant.matmul_nvfp4", core::Format::kNvFp4, args, a_codes, a_scales, &a_global_scale, b_codes,
                     b_scales, &b_global_scale, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CUDA, m) {
  m.impl("matmul_mxfp4", &matmul_mxfp4_cuda);
  m.impl("matmul_nvfp4", &matmul_nvfp4_cuda);
}

}  // namespace fpquant
