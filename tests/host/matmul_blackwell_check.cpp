// Host checks of the Blackwell block-scaled GEMMs (csrc/cuda/matmul/matmul_*_sm100.cu, *_sm120.cu), which no
// GPU here can run. They evaluate on the CPU the same CUTLASS layout algebra the kernels are given:
//   1. scale layouts: CUTLASS's Sm1xxBlockScaledConfig layouts for A and B, built for M, N, K, put every
//      (row, group) of the padded scale matrix at the byte core::blocked_offset gives it (our blocked
//      layout, written by the quantizers and swizzle_scales), for MXFP4 (32 per scale) and NVFP4 (16);
//   2. arguments: the geometry of matmul_cutlass_args.h (problem shape, strides of A, B, D and the bias)
//      addresses our row-major packed codes, output and bias; CUTLASS's E2M1 / UE8M0 / UE4M3 types decode
//      our bytes to our values and pack two codes a byte as we do; alpha = 1 / (gA gB) applied to a float32
//      sum is within an ulp of the reference's division; plan_matmul admits exactly the problems whose
//      strides pass CUTLASS's TMA alignment checks;
//   3. (built with FPQUANT_CHECK_KERNEL_TYPES) every instantiated kernel type: its CUTLASS strides and
//      scale layouts are the geometry's types (static_asserts in matmul_cutlass.cuh) and its shared memory
//      fits the target; printed per kernel. Registers come from ptxas (tools/kernel_resources.py).
// `--wrong-swizzle=NAME` replaces blocked_offset by a deliberately wrong variant: check 1 must then fail.
// Exit status 0 when every check passes, 1 otherwise. Run by tests/matmul/test_blackwell_host.py.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/scale_layout.h"
#include "cuda/matmul/matmul.h"
#include "cuda/matmul/matmul_cutlass_args.h"
#include "cuda/matmul/matmul_plan.h"
#include "cutlass/float8.h"
#include "cutlass/float_subbyte.h"
#include "cutlass/numeric_types.h"
#include "cute/pointer.hpp"
#ifdef FPQUANT_CHECK_KERNEL_TYPES
#include "cuda/matmul/matmul_cutlass.cuh"
#endif

namespace {

using fpquant::core::DType;
namespace cg = fpquant::cuda::cutlass_gemm;

int g_failures = 0;
std::string g_wrong;  // the deliberately wrong swizzle, if any

void fail(const char* what, const std::string& detail) {
  if (g_failures < 20) std::printf("  mismatch: %s: %s\n", what, detail.c_str());
  ++g_failures;
}

// Our blocked layout, or one of the wrong variants the negative test uses.
int64_t expected_offset(int64_t row, int64_t col, int64_t rows, int64_t cols) {
  using fpquant::core::ceil_div;
  if (g_wrong.empty()) return fpquant::core::blocked_offset(row, col, cols);
  const int64_t tiles_per_row = ceil_div(cols, 4), r = row % 128;
  if (g_wrong == "row-major-tile")  // each 128 x 4 tile row-major
    return ((row / 128) * tiles_per_row + col / 4) * 512 + r * 4 + col % 4;
  if (g_wrong == "swapped-32x4")  // the 32 and 4 row factors exchanged
    return ((row / 128) * tiles_per_row + col / 4) * 512 + (r % 4) * 128 + (r / 4) * 4 + col % 4;
  if (g_wrong == "k-tiles-outer")  // tiles ordered column-tile major
    return ((col / 4) * ceil_div(rows, 128) + row / 128) * 512 + (r % 32) * 16 + (r / 32) * 4 + col % 4;
  std::printf("unknown --wrong-swizzle=%s\n", g_wrong.c_str());
  std::exit(2);
}

// ---- 1. scale layouts ------------------------------------------------------------------------------------
template <int V>
int64_t check_scale_layout(int64_t rows, int64_t groups, bool operand_a) {
  const int64_t K = groups * V;
  const auto g = operand_a ? cg::make_geometry<V>(rows, 64, K) : cg::make_geometry<V>(64, rows, K);
  const auto& layout = operand_a ? g.layout_sfa : g.layout_sfb;
  const int64_t pr = fpquant::core::blocked_rows(rows), pc = fpquant::core::blocked_cols(groups);
  // The layout spans the padded matrix our tensors hold, no more.
  const int64_t cosize = static_cast<int64_t>(cute::cosize(layout));
  if (cosize != pr * pc)
    fail("scale layout size", "V=" + std::to_string(V) + " rows=" + std::to_string(rows) + " groups=" +
                                  std::to_string(groups) + ": CUTLASS spans " + std::to_string(cosize) +
                                  " bytes, blocked holds " + std::to_string(pr * pc));
  int64_t n = 0;
  for (int64_t r = 0; r < pr; ++r) {
    for (int64_t c = 0; c < pc; ++c) {
      const int64_t want = expected_offset(r, c, rows, groups);
      // Every element of the group reads the same scale: the first and the last.
      for (int64_t k : {c * V, c * V + V - 1}) {
        const int64_t got = static_cast<int64_t>(layout(cute::make_coord(static_cast<int>(r), static_cast<int>(k), 0)));
        ++n;
        if (got != want) {
          fail(operand_a ? "SFA offset" : "SFB offset",
               "V=" + std::to_string(V) + " rows=" + std::to_string(rows) + " groups=" + std::to_string(groups) +
                   " (row " + std::to_string(r) + ", group " + std::to_string(c) + ", k " + std::to_string(k) +
                   "): CUTLASS " + std::to_string(got) + ", ours " + std::to_string(want));
          return n;
        }
      }
    }
  }
  return n;
}

void check_scale_layouts() {
  const int64_t rows[] = {1, 2, 31, 32, 33, 100, 127, 128, 129, 200, 255, 256, 257, 383, 1000, 4100};
  const int64_t groups[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 33, 100, 257};
  int64_t offsets = 0, shapes = 0;
  const int before = g_failures;
  for (int64_t r : rows)
    for (int64_t gr : groups) {
      if (r * gr > 200000) continue;  // keep the run short; the large shapes still cover many tiles both ways
      for (bool a : {true, false}) {
        offsets += check_scale_layout<32>(r, gr, a) + check_scale_layout<16>(r, gr, a);
        shapes += 2;
      }
    }
  std::printf("check 1 (scale layouts, MXFP4 and NVFP4, A and B, sm100 and sm120 share Sm1xxBlockScaledConfig): "
              "%s, %lld shapes, %lld offsets\n",
              g_failures == before ? "OK" : "FAILED", static_cast<long long>(shapes), static_cast<long long>(offsets));
}

// ---- 2. arguments ----------------------------------------------------------------------------------------
template <int V>
void check_geometry(int64_t M, int64_t N, int64_t K) {
  const auto g = cg::make_geometry<V>(M, N, K);
  const std::string shape = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
  if (cute::get<0>(g.problem) != M || cute::get<1>(g.problem) != N || cute::get<2>(g.problem) != K ||
      cute::get<3>(g.problem) != 1)
    fail("problem shape", shape);
  const auto la = cute::make_layout(cute::make_shape(int(M), int(K), 1), g.stride_a);
  const auto lb = cute::make_layout(cute::make_shape(int(N), int(K), 1), g.stride_b);
  const auto ld = cute::make_layout(cute::make_shape(int(M), int(N), 1), g.stride_d);
  const auto lbias = cute::make_layout(cute::make_shape(int(M), int(N), 1), g.stride_bias);
  std::mt19937_64 rng(static_cast<uint64_t>(M * 1000003 + N * 1009 + K));
  for (int i = 0; i < 2000; ++i) {
    const int64_t m = i == 0 ? M - 1 : static_cast<int64_t>(rng() % M);
    const int64_t n = i == 0 ? N - 1 : static_cast<int64_t>(rng() % N);
    const int64_t k = i == 0 ? K - 1 : static_cast<int64_t>(rng() % K);
    // Element index e of a 4-bit operand is byte e / 2, nibble e % 2: our codes [rows, K/2] row-major.
    const int64_t ea = la(int(m), int(k), 0), eb = lb(int(n), int(k), 0);
    if (ea != m * K + k || ea / 2 != m * (K / 2) + k / 2) fail("A offset", shape);
    if (eb != n * K + k || eb / 2 != n * (K / 2) + k / 2) fail("B offset", shape);
    if (ld(int(m), int(n), 0) != m * N + n) fail("D offset", shape);
    if (lbias(int(m), int(n), 0) != n) fail("bias offset", shape);
  }
}

void check_arguments() {
  const int before = g_failures;
  for (int64_t M : {1, 5, 128, 129, 1000})
    for (int64_t N : {8, 24, 136, 4096})
      for (int64_t K : {32, 64, 96, 4096, 8224}) {
        check_geometry<32>(M, N, K);
        check_geometry<16>(M, N, K);
      }

  // Element and scale decoding: CUTLASS's types read our bytes as our formats do.
  for (int c = 0; c < 16; ++c) {
    const float ours = fpquant::core::e2m1_decode(static_cast<uint8_t>(c));
    const float theirs = static_cast<float>(cutlass::float_e2m1_t::bitcast(static_cast<uint8_t>(c)));
    if (!(ours == theirs || (c == 8 && theirs == 0.0f))) fail("E2M1 decode", std::to_string(c));
  }
  for (int s = 0; s < 256; ++s) {
    const float ours = fpquant::core::e8m0_decode(static_cast<uint8_t>(s));
    const float theirs = static_cast<float>(cutlass::float_ue8m0_t::bitcast(static_cast<uint8_t>(s)));
    if (!(ours == theirs || (std::isnan(ours) && std::isnan(theirs)))) fail("UE8M0 decode", std::to_string(s));
  }
  for (int s = 0; s < 128; ++s) {  // our quantizers write E4M3 scales >= 0: the sign bit is always clear
    const float ours = fpquant::core::e4m3_decode(static_cast<uint8_t>(s));
    const float theirs = static_cast<float>(cutlass::float_ue4m3_t::bitcast(static_cast<uint8_t>(s)));
    if (!(ours == theirs || (std::isnan(ours) && std::isnan(theirs)))) fail("UE4M3 decode", std::to_string(s));
  }
  // Packing: element 2i in the low nibble of byte i.
  uint8_t buf[2] = {0, 0};
  auto it = cute::recast_ptr<cutlass::float_e2m1_t>(buf);
  it[0] = cutlass::float_e2m1_t::bitcast(0x3);
  it[1] = cutlass::float_e2m1_t::bitcast(0xA);
  it[2] = cutlass::float_e2m1_t::bitcast(0x5);
  if (buf[0] != 0xA3 || buf[1] != 0x05) fail("E2M1 packing", "bytes " + std::to_string(buf[0]) + " " + std::to_string(buf[1]));

  // alpha: float32 sum times alpha vs the reference's float64 quotient, within an ulp of float32.
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> ex(-40.0, 40.0), mant(1.0, 2.0);
  for (int i = 0; i < 100000; ++i) {
    const float ga = static_cast<float>(mant(rng) * std::exp2(std::floor(ex(rng))));
    const float gb = static_cast<float>(mant(rng) * std::exp2(std::floor(ex(rng))));
    const float acc = static_cast<float>(mant(rng) * std::exp2(std::floor(ex(rng) / 2)));
    const double ref = static_cast<double>(acc) / (static_cast<double>(ga) * static_cast<double>(gb));
    const float got = acc * fpquant::cuda::matmul_alpha(ga, gb);
    const float want = static_cast<float>(ref);
    if (std::fabs(ref) < 1e-37 || std::fabs(ref) > 1e37) continue;  // float32's normal range only
    if (std::fabs(static_cast<double>(got) - static_cast<double>(want)) >
        std::fabs(std::nextafter(want, 2.0f * want) - want) * 1.0000001)
      fail("alpha", std::to_string(ga) + " " + std::to_string(gb));
  }
  if (!std::isnan(fpquant::cuda::matmul_alpha(NAN, 1.0f))) fail("alpha", "NaN global scale gives a number");

  // The plan's shape rule is CUTLASS's TMA alignment rule on these strides.
  for (int64_t M : {1, 3, 128})
    for (int64_t N = 1; N <= 40; ++N)
      for (int64_t K = 16; K <= 160; K += 16)
        for (DType d : {DType::kF32, DType::kBF16, DType::kF16}) {
          const auto g = cg::make_geometry<16>(M, N, K);
          const int out_align = d == DType::kF32 ? 4 : 8;  // elements of 16 bytes
          const bool cutlass_ok =
              cutlass::detail::check_alignment<32>(cute::make_shape(int(M), int(K), 1), g.stride_a) &&
              cutlass::detail::check_alignment<32>(cute::make_shape(int(N), int(K), 1), g.stride_b) &&
              (out_align == 4 ? cutlass::detail::check_alignment<4>(cute::make_shape(int(M), int(N), 1), g.stride_d)
                              : cutlass::detail::check_alignment<8>(cute::make_shape(int(M), int(N), 1), g.stride_d));
          const bool plan_ok = fpquant::cuda::matmul_kernel_shape_issue(M, N, K, d) == nullptr;
          if (cutlass_ok != plan_ok)
            fail("plan vs CUTLASS alignment", "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" +
                                                  std::to_string(K) + " out " + std::to_string(int(d)));
        }
  std::printf("check 2 (arguments: shapes, strides of A, B, D, bias; decoding; packing; alpha; plan alignment "
              "rule): %s\n",
              g_failures == before ? "OK" : "FAILED");
}

// ---- 3. kernel types -------------------------------------------------------------------------------------
#ifdef FPQUANT_CHECK_KERNEL_TYPES
template <class Arch, fpquant::core::Format F, DType D, int I>
void report(const char* arch, int limit) {
  using Facts = cg::KernelFacts<Arch, F, D, I>;
  const auto& t = cg::tile_of<Arch>(I);
  const char* dn = D == DType::kF32 ? "float32" : (D == DType::kBF16 ? "bfloat16" : "float16");
  const bool ok = Facts::kSmem <= limit;
  std::printf("  %-6s %-5s out %-8s tile %dx%dx%d cluster %dx1: shared memory %6d bytes of %6d, %d threads %s\n",
              arch, F == fpquant::core::Format::kMxFp4 ? "mxfp4" : "nvfp4", dn, t.m, t.n, t.k, t.cluster_m,
              Facts::kSmem, limit, Facts::kThreads, ok ? "" : "OVER");
  if (!ok) fail("shared memory", arch);
}

template <class Arch, fpquant::core::Format F, int I>
void report_dtypes(const char* arch, int limit) {
  report<Arch, F, DType::kF32, I>(arch, limit);
  report<Arch, F, DType::kBF16, I>(arch, limit);
  report<Arch, F, DType::kF16, I>(arch, limit);
}

template <class Arch>
void report_arch(const char* arch, int limit) {
  using fpquant::core::Format;
  static_assert(fpquant::cuda::kSm100TileCount == 2 && fpquant::cuda::kSm120TileCount == 2, "tiles 0 and 1 below");
  report_dtypes<Arch, Format::kMxFp4, 0>(arch, limit);
  report_dtypes<Arch, Format::kMxFp4, 1>(arch, limit);
  report_dtypes<Arch, Format::kNvFp4, 0>(arch, limit);
  report_dtypes<Arch, Format::kNvFp4, 1>(arch, limit);
}

void check_kernel_types() {
  const int before = g_failures;
  std::printf("check 3 (kernel types: CUTLASS strides and scale layouts are the geometry's; shared memory):\n");
  report_arch<cutlass::arch::Sm100>("sm100a", fpquant::cuda::kSm100SmemPerBlock);
  report_arch<cutlass::arch::Sm120>("sm120a", fpquant::cuda::kSm120SmemPerBlock);
  std::printf("check 3: %s\n", g_failures == before ? "OK" : "FAILED");
}
#endif

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--wrong-swizzle=", 0) == 0) g_wrong = a.substr(16);
  }
  if (!g_wrong.empty()) std::printf("using a deliberately wrong swizzle: %s\n", g_wrong.c_str());
  check_scale_layouts();
  check_arguments();
#ifdef FPQUANT_CHECK_KERNEL_TYPES
  check_kernel_types();
#endif
  std::printf("%s (%d mismatches)\n", g_failures == 0 ? "ALL OK" : "FAILED", g_failures);
  return g_failures == 0 ? 0 : 1;
}
