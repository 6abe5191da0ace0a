// The block rotation y = x @ M for one instruction set. cpu_rotation.h includes this file once per set,
// inside a namespace that defines FPQ_ROT_TARGET (a target attribute), Vec (kLanes doubles), FVec (kLanes
// floats), kTileRows, vsplat(v) and vfma(a, b, c) = a * b + c; hence no include guard.
//
// Every output starts from 0.0 and adds x[i] * M[i][j] for i in increasing order, as the reference does. A
// product of two float32 values is exact in float64, so a fused multiply-add rounds exactly where the
// reference's separate addition does: the bits do not depend on the instruction set. Vectorizing across the
// output columns j keeps that order; kTileRows rows share each load of M.

constexpr int kTileCols = 2 * kLanes;  // divides every rotation size (>= 16)

template <int Rows>
FPQ_ROT_TARGET inline void rotate_tile(const double* x, int64_t ldx, const double* m, int r, float* y,
                                       int64_t ldy) {
  for (int j0 = 0; j0 < r; j0 += kTileCols) {
    Vec acc[Rows][2] = {};
    for (int i = 0; i < r; ++i) {
      Vec m0, m1;
      std::memcpy(&m0, m + static_cast<int64_t>(i) * r + j0, sizeof(Vec));
      std::memcpy(&m1, m + static_cast<int64_t>(i) * r + j0 + kLanes, sizeof(Vec));
      for (int k = 0; k < Rows; ++k) {
        const Vec xv = vsplat(x[k * ldx + i]);
        acc[k][0] = vfma(xv, m0, acc[k][0]);
        acc[k][1] = vfma(xv, m1, acc[k][1]);
      }
    }
    for (int k = 0; k < Rows; ++k)
      for (int h = 0; h < 2; ++h) {
        const FVec f = __builtin_convertvector(acc[k][h], FVec);
        std::memcpy(y + k * ldy + j0 + h * kLanes, &f, sizeof(FVec));
      }
  }
}

// rows x cols values (cols a multiple of r), row stride ldx in x and ldy in y.
FPQ_ROT_TARGET inline void rotate_rows(const double* x, int64_t ldx, int64_t rows, int64_t cols, const double* m,
                                       int r, float* y, int64_t ldy) {
  int64_t row = 0;
  for (; row + kTileRows <= rows; row += kTileRows)
    for (int64_t b = 0; b < cols; b += r) rotate_tile<kTileRows>(x + row * ldx + b, ldx, m, r, y + row * ldy + b, ldy);
  for (; row < rows; ++row)
    for (int64_t b = 0; b < cols; b += r) rotate_tile<1>(x + row * ldx + b, ldx, m, r, y + row * ldy + b, ldy);
}
