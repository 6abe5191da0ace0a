// CUDA glue of linear_w4a16: shared checks, the kernel's tile requirements, the kernel chosen by plan_w4a16
// (cuda/w4a16/w4a16_plan.h), output and split-K workspace through torch's allocator, the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/checks.h"
#include "core/scale_rules.h"
#include "cuda/quantize/quantize.h"
#include "ops/cuda_glue.h"
#include "cuda/w4a16/w4a16.h"
#include "ops/tuning.h"
#include "ops/w4a16_pack.h"
#include "core/w4a16_layout.h"

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace fpquant {
namespace {

constexpr int64_t kSlabBytes = 32LL << 20;

// The slab path: rows of the packed weight dequantized (w4a16_dequantize_rows) into a buffer of at most
// kSlabBytes, each slab multiplied by cuBLAS straight into its output columns.
at::Tensor linear_by_slabs(const at::Tensor& x2d, const cuda::W4A16Params& p, const c10::optional<at::Tensor>& bias,
                           at::Tensor out2d) {
  const int64_t N = p.N, K = p.K;
  const int64_t rows = std::min<int64_t>(N, std::max<int64_t>(256, kSlabBytes / (K * 2) / 32 * 32));
  at::Tensor wbuf = at::empty({rows, K}, x2d.options());
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t ns = std::min(rows, N - n0);
    check_cuda("fpquant.linear_w4a16",
               cuda::w4a16_dequantize_rows(p, n0, ns, wbuf.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()));
    at::Tensor dst = out2d.narrow(1, n0, ns);
    const at::Tensor w = wbuf.narrow(0, 0, ns).t();
    if (bias.has_value()) {
      at::addmm_out(dst, bias->narrow(0, n0, ns), x2d, w);
    } else {
      at::mm_out(dst, x2d, w);
    }
  }
  return out2d;
}

// fpquant.pack_w4a16 on CUDA tensors: the tensor-op version's checks and outputs, filled by one kernel.
std::tuple<at::Tensor, at::Tensor> pack_w4a16_cuda(const at::Tensor& codes, const at::Tensor& scales,
                                                   c10::string_view format) {
  constexpr const char* op = "fpquant.pack_w4a16";
  const Format f = parse_format(op, std::string(format));
  const W4A16Weight w = check_pack_w4a16(op, codes, scales, f);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor c = codes.contiguous(), s = scales.contiguous();
  const int64_t T = w.N / core::kPackRows, A = w.K / core::kPackK;
  const int64_t per_atom = core::pack_scale_bytes(core::group_size(f));
  at::Tensor packed = at::empty({T, A, core::kPackAtomBytes}, c.options().dtype(at::kByte));
  at::Tensor packed_scales = at::empty({T, A, per_atom}, s.options().dtype(at::kByte));
  const uint8_t* src = reinterpret_cast<const uint8_t*>(c.const_data_ptr());
  // The kernel reads codes in 16-byte pieces: an unaligned view (a slice) is copied first.
  at::Tensor aligned;
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    aligned = c.clone();
    src = reinterpret_cast<const uint8_t*>(aligned.const_data_ptr());
  }
  check_cuda(op, cuda::w4a16_pack(src, reinterpret_cast<const uint8_t*>(s.const_data_ptr()), w.N, w.K, f,
                                  packed.data_ptr<uint8_t>(), packed_scales.data_ptr<uint8_t>(),
                                  c10::cuda::getCurrentCUDAStream().stream()));
  return {packed, packed_scales.view(scales.scalar_type())};
}

at::Tensor linear_w4a16_cuda(const at::Tensor& x, const at::Tensor& w_codes, const at::Tensor& w_scales,
                             const c10::optional<at::Tensor>& w_global_scale, const c10::optional<at::Tensor>& bias,
                             c10::string_view format) {
  constexpr const char* op = "fpquant.linear_w4a16";
  const LinearW4A16Args args = check_linear_w4a16(x, w_codes, w_scales, w_global_scale, bias, std::string(format));
  const int64_t K = x.size(-1), N = args.w.N, M = x.numel() / K;
  TORCH_CHECK_VALUE(N % cuda::kW4A16TileN == 0 && K % cuda::kW4A16ChunkK == 0, op,
                    ": the CUDA kernel needs N a multiple of ", cuda::kW4A16TileN, " and K a multiple of ",
                    cuda::kW4A16ChunkK, ", got N=", N, ", K=", K);
  check_device_and_alignment(op, x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  // The kernels read the packed layout; a canonical weight is packed here, on every call.
  at::Tensor codes = w_codes, scales = w_scales;
  if (!args.w.packed) std::tie(codes, scales) = pack_w4a16_cuda(w_codes, w_scales, format);
  check_device_and_alignment(op, codes, "w_codes");
  check_device_and_alignment(op, scales, "w_scales");
  auto shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor out = at::empty(shape, x.options());
  cuda::W4A16Params p;
  p.x = x.data_ptr();
  p.dtype = dtype_of(x.scalar_type());
  p.M = M;
  p.N = N;
  p.K = K;
  p.codes = reinterpret_cast<const uint8_t*>(codes.data_ptr());
  p.scales = reinterpret_cast<const uint8_t*>(scales.data_ptr());
  p.format = args.format;
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
  const cuda::W4A16Plan plan = cuda::plan_w4a16(M, N, K, p.format, gpu_info(x.get_device()), w4a16_override());
  TORCH_CHECK_VALUE(plan.invalid == nullptr, op, ": plan override: ", plan.invalid);
  if (plan.path == cuda::W4A16Path::kSlab) {
    linear_by_slabs(x.view({M, K}), p, bias, out.view({M, N}));
    return out;
  }
  p.config = plan.config;
  p.splits = plan.splits;
  at::Tensor workspace;
  if (p.splits > 1 && !plan.cluster) {
    workspace = at::empty({p.splits, M, N}, x.options().dtype(at::kFloat));
    p.workspace = workspace.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t err = cudaErrorInvalidValue;
  switch (plan.path) {
    case cuda::W4A16Path::kDecode: err = cuda::w4a16_decode(p, stream); break;
    case cuda::W4A16Path::kMma: err = cuda::w4a16_mma(p, stream); break;
    case cuda::W4A16Path::kWgmma:
#if FPQUANT_SM90_KERNELS
      err = cuda::w4a16_wgmma(p, stream);
#endif
      break;
    case cuda::W4A16Path::kSlab: break;
  }
  check_cuda(op, err);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CUDA, m) {
  m.impl("linear_w4a16", &linear_w4a16_cuda);
  m.impl("pack_w4a16", &pack_w4a16_cuda);
}

}  // namespace fpquant
