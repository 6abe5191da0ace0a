// Block rotations for the CPU kernels: float64 accumulation in index order, one rounding to float32.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/tuning.h"

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

// The widest kernel the CPU runs, at most `cap` (fpquant_ext.tuning.plan_override(cpu_isa=...): 0 generic,
// 1 AVX2, 2 AVX-512, -1 no cap), so that tests check the narrower kernels on a machine that has more.
inline RotateRowsFn select_rotate_rows(int cap) {
#ifdef FPQ_ROT_X86
  static const int widest = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
  }();
  const int isa = cap < 0 || cap > widest ? widest : cap;
  if (isa == 2) return rot_avx512::rotate_rows;
  if (isa == 1) return rot_avx2::rotate_rows;
#else
  (void)cap;
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
    out.rotate_rows = select_rotate_rows(cpu_isa_override());
    return out;
  }

  explicit operator bool() const { return r != 0; }

  // rows x cols values (cols a multiple of r) from x (row stride ldx) into y (row stride ldy).
  void apply(const double* x, int64_t ldx, int64_t rows, int64_t cols, float* y, int64_t ldy) const {
    rotate_rows(x, ldx, rows, cols, m.data(), r, y, ldy);
  }
};

}  // namespace fpquant::cpu
