// Hopper (sm_90a) block-scaled FP4 GEMMs: launchers, tile configurations and the workspace they need.
//
// Both formats run in two steps on the stream (matmul_sm90.cu has the design; NVFP4 tiles with decode = 1 do
// both in the GEMM kernel):
//   1. an operand pass that turns the packed codes + group scales of A and of B into a tensor-core operand
//      in the workspace: MXFP4 -> E4M3 bytes [rows, K] with each group scale folded in as a power of two
//      relative to a reference exponent per (row, 128-K block) of A and per row of B (per block for a row of
//      B whose groups do not fit one window), plus those factors as float32; NVFP4 -> bfloat16 [rows, K]
//      (code * E4M3 scale, exact);
//   2. a TMA + wgmma GEMM over those operands (MXFP4: FP8 wgmma, promoted into float32 every 128 K with
//      the two block factors; NVFP4: bf16 wgmma), epilogue scale (NVFP4: 1 / (gA gB)), bias, out_dtype.
//
// What the plan must check before choosing these launchers (nothing here re-checks it):
//   - GpuInfo::runs_sm90() and a build with FPQUANT_SM90_KERNELS=1.
//   - M >= 1, N >= 1, K >= group, K % group == 0 (MXFP4 32, NVFP4 16); M, N, K < 2^31 / 2 and the tile count
//     below 2^31 (int indexing of rows and k; every byte offset is 64-bit).
//   - a_codes, b_codes 16-byte aligned (row pitch K/2 is then 16-byte aligned for MXFP4; for NVFP4 the
//     operand pass reads 4-byte words, and the decoding tiles 16-byte words where K % 64 == 0, 8-byte ones
//     otherwise).
//   - scale pointers: any alignment (read bytewise); both layouts (linear, blocked 128x4) are handled by
//     index arithmetic (core::scale_offset).
//   - out: [M, N] row-major, any alignment of the element type; out may be uninitialized (torch.empty): every
//     element of [M, N] is written, including partial M / N tiles; nothing outside it.
//   - bias: [N] of bias_dtype (f32 / bf16 / f16) or null. NVFP4: a_global / b_global device pointers.
//   - workspace: at least matmul_sm90_workspace_bytes(format, M, N, K, config) bytes, 256-byte aligned, no
//     initial content required; it is overwritten by every call (no state between calls). NVFP4 tiles that
//     decode in the GEMM need none (null is fine).
//   - config: an index into kMatmulSm90MxTiles / kMatmulSm90NvTiles (any M, N: tails are handled).
//   - Small M: the operand pass converts all of B (N x K) on every call: the plan sends small M with a bf16
//     output to the w4a16 path instead (matmul_plan.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/matmul/matmul.h"
#include "cuda/matmul/matmul_sm90_tiles.h"

namespace fpquant::cuda {

// p.format must match the launcher. Returns cudaErrorInvalidValue for a config out of range, a workspace
// that is too small, or a tensor map the driver refuses; launch errors otherwise.
cudaError_t matmul_mxfp4_sm90(const MatmulParams& p, cudaStream_t stream);
cudaError_t matmul_nvfp4_sm90(const MatmulParams& p, cudaStream_t stream);

}  // namespace fpquant::cuda
