// The one place where every fpquant operator's schema is declared. Backends (csrc/ops/*_cpu.cpp,
// *_cuda.cpp) only register implementations; fake (meta) implementations live in python/fpquant_ext/_fake.py.
#include <Python.h>
#include <torch/library.h>

#include "ops/tuning.h"

#ifndef FPQUANT_CUDA_ARCHS
#define FPQUANT_CUDA_ARCHS ""
#endif

extern "C" {
// `import fpquant_ext._C` loads this library, which runs the registrations below. The module itself only
// holds build facts and the tuning functions (csrc/ops/tuning.cpp); every operator is reached through
// torch.ops.fpquant.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, fpquant::tuning_methods()};
  PyObject* m = PyModule_Create(&module_def);
  // Build facts for fpquant_ext.backend_info(): the CUDA architectures compiled in ("" for a CPU build).
  if (m != nullptr) PyModule_AddStringConstant(m, "cuda_archs", FPQUANT_CUDA_ARCHS);
  return m;
}
}

TORCH_LIBRARY(fpquant, m) {
  m.def(
      "quantize_mxfp4(Tensor x, Tensor? rotation=None, str method=\"floor\", str scale_layout=\"linear\")"
      " -> (Tensor codes, Tensor scales)");
  m.def(
      "quantize_nvfp4(Tensor x, Tensor global_scale, Tensor? rotation=None, str scale_layout=\"linear\")"
      " -> (Tensor codes, Tensor scales)");
  m.def(
      "dequantize_mxfp4(Tensor codes, Tensor scales, Tensor? rotation=None, str scale_layout=\"linear\","
      " ScalarType? out_dtype=None) -> Tensor");
  m.def(
      "dequantize_nvfp4(Tensor codes, Tensor scales, Tensor global_scale, Tensor? rotation=None,"
      " str scale_layout=\"linear\", ScalarType? out_dtype=None) -> Tensor");
  m.def("nvfp4_global_scale(Tensor x, Tensor? rotation=None) -> Tensor");
  // Weight-only FP4 linear: x [..., K] (bf16/fp16) @ dequantize(w)^T + bias -> [..., N], w [N, K] either in
  // the canonical layout (codes [N, K/2], linear scales [N, K/group]) or packed by pack_w4a16 (codes
  // [N/16, K/64, 512], scales [N/16, K/64, 16 * 64/group]); NVFP4 also its global scale.
  m.def(
      "linear_w4a16(Tensor x, Tensor w_codes, Tensor w_scales, Tensor? w_global_scale=None, Tensor? bias=None,"
      " str format=\"mxfp4\") -> Tensor");
  // Canonical <-> packed W4A16 weight (core/w4a16_layout.h): the layout the CUDA kernels read.
  m.def("pack_w4a16(Tensor w_codes, Tensor w_scales, str format=\"mxfp4\") -> (Tensor codes, Tensor scales)");
  m.def("unpack_w4a16(Tensor w_codes, Tensor w_scales, str format=\"mxfp4\") -> (Tensor codes, Tensor scales)");
  // Block-scaled FP4 GEMM: dequantize(A) @ dequantize(B)^T (+ bias) -> [..., N], A [..., M, K/2], B [N, K/2],
  // scales in either layout; NVFP4 takes both encode global scales and divides by their product itself.
  m.def(
      "matmul_mxfp4(Tensor a_codes, Tensor a_scales, Tensor b_codes, Tensor b_scales,"
      " str scale_layout=\"linear\", ScalarType? out_dtype=None, Tensor? bias=None) -> Tensor");
  m.def(
      "matmul_nvfp4(Tensor a_codes, Tensor a_scales, Tensor a_global_scale, Tensor b_codes, Tensor b_scales,"
      " Tensor b_global_scale, str scale_layout=\"linear\", ScalarType? out_dtype=None, Tensor? bias=None)"
      " -> Tensor");
  m.def("swizzle_scales(Tensor scales) -> Tensor");
  m.def("unswizzle_scales(Tensor scales, int rows, int cols) -> Tensor");
}
