// Rotations must be orthogonal: the dequantizer applies R^T as the inverse of R, so any other matrix
// silently scales or scrambles the data (2·H round-trips to 4x the input). Unlike every other argument
// check this one reads values, so it is cached per tensor and kept out of CUDA graph captures.
#pragma once

#include <ATen/core/Tensor.h>

namespace fpquant {

// max |R·R^T − I|, in float64, must not exceed this. Orthogonal matrices rounded to a 16-bit dtype stay well
// inside it (fpquant_ext.rotations: 1.3e-3 in bfloat16, 2.2e-4 in float16, 4e-8 in float32; random
// orthogonal matrices in bfloat16 about 3e-3), while rescaled ones (0.5·H: 0.75, 2·H: 3) and unnormalized
// or random ones are far outside.
constexpr double kRotationTolerance = 1e-2;

// Raises ValueError naming `op` and `rotation` if R (already checked square, floating, contiguous) is not
// orthogonal within kRotationTolerance. A verdict is remembered for the tensor until it is modified in
// place, given other data (`R.data = M`) or freed; a write through `R.data` (`R.data.copy_(M)`), which
// PyTorch does not count as a change of R, is not seen. While the current CUDA stream captures a graph, a
// tensor not yet checked is let through: reading it would synchronize, which a capture forbids, and the
// eager warm-up before a capture checks it.
void check_rotation_orthogonal(const char* op, const at::Tensor& R);

// Whether reading `R`'s values now would break a stream capture. Installed by the CUDA build
// (rotation_check_cuda.cpp) so that this file stays free of CUDA headers; without it, never.
using CaptureProbe = bool (*)(const at::Tensor& R);
void set_rotation_capture_probe(CaptureProbe probe);

}  // namespace fpquant
