// Scale layouts. `linear`: [rows, groups] row-major. `blocked`: the 128x4 tiling read by Blackwell
// block-scaled tensor cores and cuBLAS (rows padded to 128, scale columns to 4; each 128x4 tile is 512
// contiguous bytes, row r of the tile at (r % 32) * 16 + (r / 32) * 4, tiles ordered row-tile major).
#pragma once

#include "fp_formats.h"

namespace fpquant::core {

FPQ_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FPQ_HD int64_t blocked_rows(int64_t rows) { return ceil_div(rows, 128) * 128; }
FPQ_HD int64_t blocked_cols(int64_t cols) { return ceil_div(cols, 4) * 4; }

// Byte offset of scale (row, col) in the blocked layout of a [rows, cols] scale matrix.
FPQ_HD int64_t blocked_offset(int64_t row, int64_t col, int64_t cols) {
  const int64_t tiles_per_row = ceil_div(cols, 4);
  const int64_t tile = (row / 128) * tiles_per_row + col / 4;
  const int64_t r = row % 128;
  return tile * 512 + (r % 32) * 16 + (r / 32) * 4 + col % 4;
}

// Byte offset of the scale of group `flat` (row-major index: row * cols + col) in either layout.
FPQ_HD int64_t scale_offset(int64_t flat, int64_t cols, ScaleLayout layout) {
  return layout == ScaleLayout::kBlocked ? blocked_offset(flat / cols, flat % cols, cols) : flat;
}

}  // namespace fpquant::core
