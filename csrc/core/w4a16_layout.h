// The packed W4A16 weight layout: FP4 codes and scales reordered once, at load (fpquant.pack_w4a16), so that
// every W4A16 kernel reads a thread's weights as whole 16-byte pieces of contiguous memory and decodes them
// straight into tensor-core fragments.
//
// An atom is 16 weight rows (features) x 64 k. Atoms are stored [N/16][K/64] (row tile major), so the 16 rows
// of a tile are contiguous over all of K: a warp walking K reads consecutive 512-byte atoms.
// - codes: 512 bytes per atom, lane l = 4g + q (g = l / 4, q = l % 4) owns bytes [16 l, 16 l + 16): four
//   32-bit words, word u = 2h + s2 holding row 8h + g of the atom and k-steps s = 2 s2, 2 s2 + 1 (16 k each).
//   Nibble p of the word (p = 4e + 2 s1 + j) is the code of k = 16 (2 s2 + s1) + 8j + 2q + e. So nibbles
//   (j, j + 4) are the pair (k, k + 1) with k = 16s + 2q (j = 0, 2) or 16s + 2q + 8 (j = 1, 3): exactly the
//   register pairs of the mma.m16n8k16 / wgmma m64k16 A fragment (a0a1 / a4a5 of row g, a2a3 / a6a7 of row
//   g + 8) and of the m16n8k16 B fragment (b0b1, b2b3 of column g), in natural k order, so no lane exchange
//   and no activation permute is needed.
// - scales: 16 x (64 / G) bytes per atom (MXFP4: 2 per row, NVFP4: 4), row-major within the atom: byte
//   r * (64 / G) + i is the scale of row r for k in [64A + G i, 64A + G (i + 1)).
// The kernels need N % 32 == 0 and K % 128 == 0; the layout itself N % 16 == 0 and K % 64 == 0.
#pragma once

#include "fp_formats.h"

namespace fpquant::core {

constexpr int kPackRows = 16;       // weight rows per atom
constexpr int kPackK = 64;          // k per atom
constexpr int kPackAtomBytes = 512;  // code bytes per atom (16 x 64 / 2)

FPQ_HD constexpr int pack_scale_bytes(int group) { return kPackRows * (kPackK / group); }  // per atom

// Byte offset of atom (row tile t, k tile a) in the packed codes of a weight with K columns.
FPQ_HD int64_t packed_atom(int64_t t, int64_t a, int64_t K) { return (t * (K / kPackK) + a) * kPackAtomBytes; }

}  // namespace fpquant::core
