// Block rotations for the CPU kernels: float64 accumulation in index order, one rounding to float32.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FPQ_ROT_X86 1
#endif

namespace fpquant::cpu {

// The portable version: 2-lane vectors (SSE2 on x86-64, NEON on AArch64), no FMA.
namespace rot_generic {
#define FPQ_ROT_TARGET
constexpr int kLanes = 2, kTileRows = 4;
typedef double Vec __attribute__((vector_size(16)));
typedef float FVec __attribute__((vector_size(8)));
inline Vec vfma(Vec a, Vec b, Vec c) { return c + a * b; }
inline Vec vsplat(double v) { return Vec{v, v}; }
#include "ops/cpu_rotation_kernel.h"
#undef FPQ_ROT_TARGET
}  // namespace rot_generic

#ifdef FPQ_ROT_X86
namespace rot_avx2 {
#define FPQ_ROT_TARGET __attribute__((target("avx2,fma")))
constexpr int kLanes = 4, kTileRows = 4;
typedef double Vec __attribute__((vector_size(32)));
typedef float FVec __attribute__((vector_size(16)));
FPQ_ROT_TARGET inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_pd(a, b, c); }
FPQ_ROT_TARGET inline Vec vsplat(double v) { return _mm256_set1_pd(v); }
#include "ops/cpu_rotation_kernel.h"
#undef FPQ_ROT_TARGET
}  // namespace rot_avx2

namespace rot_avx512 {
#define FPQ_ROT_TARGET __attribute__((target("avx512f")))
constexpr int kLanes = 8, kTileRows = 8;
typedef double Vec __attribute__((vector_size(64)));
typedef float FVec __attribute__((vector_size(32)));
FPQ_ROT_TARGET inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_pd(a, b, c); }
FPQ_ROT_TARGET inline Vec vsplat(double v) { return _mm512_set1_pd(v); }
#include "ops/cpu_rotation_kernel.h"
#undef FPQ_ROT_TARGET
}  // namespace rot_avx512
#endif

using RotateRowsFn = void (*)(const double*, int64_t, int64_t, int64_t, const double*, int, float*, int64_t);

// The widest kernel the CPU runs. FPQUANT_CPU_ISA=generic or avx2 caps the choice, so that tests can
// check the narrower kernels on a machine that has more.
inline RotateRowsFn select_rotate_rows() {
#ifdef FPQ_ROT_X86
  const char* cap = std::getenv("FPQUANT_CPU_ISA");
  const std::string limit = cap ? cap : "";
  __builtin_cpu_init();
  if ((limit.empty() || limit == "avx512") && __builtin_cpu_supports("avx512f")) return rot_avx512::rotate_rows;
  if (limit != "generic" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return rot_avx2::rotate_rows;
#endif
  return rot_generic::rotate_rows;
}

// y_block = x_block @ R (forward) or y_block @ R^T (inverse) on consecutive blocks of r values.
struct Rotation {
  int r = 0;                  // 0: no rotation
  std::vector<double> m;      // m[i * r + j]: the matrix applied, R or R^T
  RotateRowsFn rotate_rows = nullptr;

  static Rotation make(const c10::optional<at::Tensor>& rot, bool inverse) {
    Rotation out;
    if (!rot.has_value()) return out;
    // The reference rounds R to float32 first; R^T is a transposed copy.
    at::Tensor R = rot->to(at::kFloat).to(at::kDouble);
    if (inverse) R = R.t();
    R = R.contiguous();
    out.r = static_cast<int>(R.size(0));
    out.m.assign(R.data_ptr<double>(), R.data_ptr<double>() + R.numel());
    static const RotateRowsFn fn = select_rotate_rows();
    out.rotate_rows = fn;
    return out;
  }

  explicit operator bool() const { return r != 0; }

  // rows x cols values (cols a multiple of r) from x (row stride ldx) into y (row stride ldy).
  void apply(const double* x, int64_t ldx, int64_t rows, int64_t cols, float* y, int64_t ldy) const {
    rotate_rows(x, ldx, rows, cols, m.data(), r, y, ldy);
  }
};

}  // namespace fpquant::cpu
