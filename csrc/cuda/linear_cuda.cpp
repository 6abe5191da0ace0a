// CUDA glue of linear_w4a16: shared checks, the kernel's tile requirements, output and split-K workspace
// through torch's allocator, the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "core/scale_rules.h"
#include "cuda/quantize.h"
#include "cuda/torch_glue.h"
#include "cuda/w4a16.h"
#include "w4a16_pack.h"

#include <algorithm>
#include <cstdlib>
#include <tuple>

namespace fpquant {
namespace {

// Paths by M (the fused kernels read the packed weight once per tile and never hold a bf16 copy of it):
// - M <= 16: the decode kernel (w4a16_decode.cu);
// - 17 <= M <= 2048 on an H100-class GPU (compute capability 9.0,
//   w4a16_wgmma_applies): the wgmma kernel (w4a16_wgmma.cu);
// - elsewhere up to 64 rows: the mma.sync kernel of w4a16_gemm.cu;
// - otherwise: the weight is dequantized in slabs of rows (at most ~32 MiB of bf16 at a time, never the
//   whole weight) by w4a16_dequantize_rows and multiplied by cuBLAS straight into the output columns.
// The bounds are measured (benchmarks/NOTES.md, sessions 8 and 10): on the packed layout the wgmma kernel
// takes 64 rows in about the time of 128 (8192^2: ~35 us, where the mma.sync kernel, bound by its 32-bit
// activation loads, takes ~115); at M = 2048 it beats the slab path for both formats (NVFP4, 8192^2: 438 us
// against 465 us; 8192 x 28672: 1507 against 1947), at M = 8192 the slab path wins.
// FPQUANT_W4A16_WGMMA (read per call, for measurements and tests): "0" never takes the wgmma kernel, "1"
// takes it for every M where it applies.
constexpr int64_t kWgmmaMinM = 17;
constexpr int64_t kSlabMinM = 65;
constexpr int64_t kWgmmaMaxM = 2048;
constexpr int64_t kSlabBytes = 32LL << 20;

// Tuning knobs for measurements and tests (benchmarks/NOTES.md), read per call: the environment variable
// `name`, when set to an integer in [lo, hi], replaces `value`.
void env_override(const char* name, int lo, int hi, int& value) {
  if (const char* env = std::getenv(name)) {
    const int v = std::atoi(env);
    if (v >= lo && v <= hi) value = v;
  }
}

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
  if (!args.w.packed) std::tie(codes, scales) = pack_w4a16(w_codes, w_scales, format);
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
  p.format = args.format == WeightFormat::kMxFp4 ? cuda::Format::kMxFp4 : cuda::Format::kNvFp4;
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
  const char* wgmma_env = std::getenv("FPQUANT_W4A16_WGMMA");
  const int wgmma_mode = wgmma_env == nullptr || wgmma_env[0] == '\0' ? -1 : (std::atoi(wgmma_env) != 0 ? 1 : 0);
  const bool wgmma = wgmma_mode != 0 && (wgmma_mode == 1 || (M >= kWgmmaMinM && M <= kWgmmaMaxM)) &&
                     cuda::w4a16_wgmma_applies(p);
  if (M >= kSlabMinM && !wgmma) {
    linear_by_slabs(x.view({M, K}), p, bias, out.view({M, N}));
    return out;
  }
  if (wgmma) {
    p.wgmma_tile = cuda::w4a16_wgmma_tile(M, N, p.format);
    env_override("FPQUANT_W4A16_WGMMA_TILE", 0, cuda::w4a16_wgmma_tiles() - 1, p.wgmma_tile);
    p.splits = cuda::w4a16_wgmma_splits(M, N, K, p.wgmma_tile);
  } else {
    p.decode_config = cuda::w4a16_decode_config(M, N);
    env_override("FPQUANT_W4A16_DECODE_CONFIG", 0, cuda::kW4A16DecodeConfigs - 1, p.decode_config);  // M <= 16
    p.splits = cuda::w4a16_splits(M, N, K, p.decode_config);
  }
  env_override("FPQUANT_W4A16_SPLITS", 1, static_cast<int>(K / cuda::kW4A16ChunkK), p.splits);
  // A cluster decode configuration sums its splits in distributed shared memory, at most a cluster's worth;
  // the other paths through a float32 workspace and a second kernel.
  const bool cluster = !wgmma && cuda::w4a16_m_tiles(M) == 1 && cuda::kW4A16DecodeShapes[p.decode_config].cluster;
  if (cluster) p.splits = std::min(p.splits, cuda::kW4A16MaxClusterSplits);
  at::Tensor workspace;
  if (p.splits > 1 && !cluster) {
    workspace = at::empty({p.splits, M, N}, x.options().dtype(at::kFloat));
    p.workspace = workspace.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  check_cuda(op, wgmma ? cuda::w4a16_wgmma(p, stream) : cuda::w4a16_gemm(p, stream));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpquant, CUDA, m) { m.impl("linear_w4a16", &linear_w4a16_cuda); }

}  // namespace fpquant
