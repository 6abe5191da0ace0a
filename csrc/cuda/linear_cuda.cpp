// CUDA glue of linear_w4a16: shared checks, the kernel's tile requirements, output and split-K workspace
// through torch's allocator, the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/w4a16.h"

namespace fpquant {
namespace {

at::Tensor linear_w4a16_cuda(const at::Tensor& x, const at::Tensor& w_codes, const at::Tensor& w_scales,
                             const c10::optional<at::Tensor>& w_global_scale, const c10::optional<at::Tensor>& bias,
                             c10::string_view format) {
  constexpr const char* op = "fpquant.linear_w4a16";
  const WeightFormat f = check_linear_w4a16(x, w_codes, w_scales, w_global_scale, bias, std::string(format));
  const int64_t K = x.size(-1), N = w_codes.size(0), M = x.numel() / K;
  TORCH_CHECK_VALUE(N % cuda::kW4A16TileN == 0 && K % cuda::kW4A16ChunkK == 0, op,
                    ": the CUDA kernel needs N a multiple of ", cuda::kW4A16TileN, " and K a multiple of ",
                    cuda::kW4A16ChunkK, ", got N=", N, ", K=", K);
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(w_codes.data_ptr()) % 16 == 0,
                    op, ": x and w_codes must be 16-byte aligned on CUDA (use .clone() on offset views)");
  const c10::cuda::CUDAGuard guard(x.device());
  auto shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor out = at::empty(shape, x.options());
  cuda::W4A16Params p;
  p.x = x.data_ptr();
  p.dtype = x.scalar_type() == at::kBFloat16 ? cuda::DType::kBF16 : cuda::DType::kF16;
  p.M = M;
  p.N = N;
  p.K = K;
  p.codes = reinterpret_cast<const uint8_t*>(w_codes.data_ptr());
  p.scales = reinterpret_cast<const uint8_t*>(w_scales.data_ptr());
  p.format = f == WeightFormat::kMxFp4 ? cuda::Format::kMxFp4 : cuda::Format::kNvFp4;
  at::Tensor g;
  if (w_global_scale.has_value()) {
    g = w_global_scale->contiguous();
    p.global_scale = g.data_ptr<float>();
  }
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    p.bias = b.data_ptr();
  }
  p.out = out.data_ptr();
  p.splits = cuda::w4a16_splits(M, N, K);
  at::Tensor workspace;
  if (p.splits > 1) {
    workspace = at::empty({p.splits, M, N}, x.options().dtype(at::kFloat));
    p.workspace = workspace.data_ptr<float>();
  }
  const cudaError_t err = cuda::w4a16_gemm(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CUDA, m) { m.impl("linear_w4a16", &linear_w4a16_cuda); }

}  // namespace fpquant
