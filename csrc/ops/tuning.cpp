// fpquant_ext._C's tuning functions: set the plan overrides, and evaluate the plans for a described GPU so
// that tests and docs can show which kernel a problem gets without running it.
#include "ops/tuning.h"

#include <atomic>
#include <optional>
#include <string>

namespace fpquant {
namespace {

std::atomic<int> g_w4a16_path{-1}, g_w4a16_config{-1}, g_w4a16_splits{0}, g_quantize_path{-1}, g_cpu_isa{-1},
    g_matmul_path{-1}, g_matmul_config{-1};

core::Format format_of(const char* name, bool* ok) {
  const std::string s(name);
  *ok = s == "mxfp4" || s == "nvfp4";
  return s == "nvfp4" ? core::Format::kNvFp4 : core::Format::kMxFp4;
}

// _set_plan_override(w4a16_path, w4a16_config, w4a16_splits, quantize_path, cpu_isa, matmul_path,
// matmul_config): -1 (0 for splits) =
// the plan's own choice. Validity against a problem is judged per call by the plan (an override that cannot apply
// raises there).
PyObject* set_plan_override(PyObject*, PyObject* args) {
  int wp, wc, ws, qp, isa, mp, mc;
  if (!PyArg_ParseTuple(args, "iiiiiii", &wp, &wc, &ws, &qp, &isa, &mp, &mc)) return nullptr;
  g_w4a16_path = wp;
  g_w4a16_config = wc;
  g_w4a16_splits = ws;
  g_quantize_path = qp;
  g_cpu_isa = isa;
  g_matmul_path = mp;
  g_matmul_config = mc;
  Py_RETURN_NONE;
}

PyObject* get_plan_override(PyObject*, PyObject*) {
  return Py_BuildValue("(iiiiiii)", g_w4a16_path.load(), g_w4a16_config.load(), g_w4a16_splits.load(),
                       g_quantize_path.load(), g_cpu_isa.load(), g_matmul_path.load(), g_matmul_config.load());
}

// _plan_w4a16(M, N, K, format, cc_major, cc_minor, num_sms, sm90_kernels) -> (path, config, splits, cluster),
// under the current override; ValueError if the override cannot apply.
PyObject* plan_w4a16_py(PyObject*, PyObject* args) {
  long long M, N, K;
  const char* fmt;
  cuda::GpuInfo gpu;
  int sm90;
  if (!PyArg_ParseTuple(args, "LLLsiiip", &M, &N, &K, &fmt, &gpu.cc_major, &gpu.cc_minor, &gpu.num_sms, &sm90))
    return nullptr;
  bool ok;
  const core::Format f = format_of(fmt, &ok);
  if (!ok) return PyErr_Format(PyExc_ValueError, "format must be 'mxfp4' or 'nvfp4', got '%s'", fmt);
  gpu.sm90_kernels = sm90 != 0;
  const cuda::W4A16Plan plan = cuda::plan_w4a16(M, N, K, f, gpu, w4a16_override());
  if (plan.invalid != nullptr) return PyErr_Format(PyExc_ValueError, "plan override: %s", plan.invalid);
  return Py_BuildValue("(iiiO)", static_cast<int>(plan.path), plan.config, plan.splits,
                       plan.cluster ? Py_True : Py_False);
}

// _plan_quantize(rows, K, format, dtype, r, cc_major, cc_minor, num_sms, sm90_kernels) -> (path, kernel_r);
// dtype 0 float32, 1 bfloat16, 2 float16.
PyObject* plan_quantize_py(PyObject*, PyObject* args) {
  long long rows, K;
  const char* fmt;
  int dtype, r, sm90;
  cuda::GpuInfo gpu;
  if (!PyArg_ParseTuple(args, "LLsiiiiip", &rows, &K, &fmt, &dtype, &r, &gpu.cc_major, &gpu.cc_minor, &gpu.num_sms,
                        &sm90))
    return nullptr;
  bool ok;
  const core::Format f = format_of(fmt, &ok);
  if (!ok) return PyErr_Format(PyExc_ValueError, "format must be 'mxfp4' or 'nvfp4', got '%s'", fmt);
  if (dtype < 0 || dtype > 2) return PyErr_Format(PyExc_ValueError, "dtype must be 0, 1 or 2");
  gpu.sm90_kernels = sm90 != 0;
  const cuda::QuantizePlan plan =
      cuda::plan_quantize(rows, K, f, static_cast<core::DType>(dtype), r, gpu, quantize_override());
  if (plan.invalid != nullptr) return PyErr_Format(PyExc_ValueError, "plan override: %s", plan.invalid);
  return Py_BuildValue("(ii)", static_cast<int>(plan.path), plan.kernel_r);
}

// _plan_matmul(M, N, K, format, out_dtype, scale_layout, bias_dtype, cc_major, cc_minor, num_sms, sm90_kernels,
// sm100_kernels, sm120_kernels) -> (path, config, swizzle_scales, unswizzle_scales, workspace_bytes, note or
// None); out_dtype 0 float32, 1 bfloat16, 2 float16; bias_dtype the same, or -1 for no bias; scale_layout 0
// linear, 1 blocked.
PyObject* plan_matmul_py(PyObject*, PyObject* args) {
  long long M, N, K;
  const char* fmt;
  int dtype, layout, bias_dtype, sm90, sm100, sm120;
  cuda::GpuInfo gpu;
  if (!PyArg_ParseTuple(args, "LLLsiiiiiippp", &M, &N, &K, &fmt, &dtype, &layout, &bias_dtype, &gpu.cc_major,
                        &gpu.cc_minor, &gpu.num_sms, &sm90, &sm100, &sm120))
    return nullptr;
  bool ok;
  const core::Format f = format_of(fmt, &ok);
  if (!ok) return PyErr_Format(PyExc_ValueError, "format must be 'mxfp4' or 'nvfp4', got '%s'", fmt);
  if (dtype < 0 || dtype > 2) return PyErr_Format(PyExc_ValueError, "out_dtype must be 0, 1 or 2");
  if (layout < 0 || layout > 1) return PyErr_Format(PyExc_ValueError, "scale_layout must be 0 or 1");
  if (bias_dtype < -1 || bias_dtype > 2) return PyErr_Format(PyExc_ValueError, "bias_dtype must be -1, 0, 1 or 2");
  if (M < 1 || N < 1 || K < 1) return PyErr_Format(PyExc_ValueError, "M, N and K must be positive");
  gpu.sm90_kernels = sm90 != 0;
  gpu.sm100_kernels = sm100 != 0;
  gpu.sm120_kernels = sm120 != 0;
  const std::optional<core::DType> bias =
      bias_dtype < 0 ? std::nullopt : std::optional<core::DType>(static_cast<core::DType>(bias_dtype));
  const cuda::MatmulPlan plan = cuda::plan_matmul(M, N, K, f, static_cast<core::ScaleLayout>(layout),
                                                  static_cast<core::DType>(dtype), bias, gpu, matmul_override());
  if (plan.invalid != nullptr) return PyErr_Format(PyExc_ValueError, "plan override: %s", plan.invalid);
  return Py_BuildValue("(iiOOnz)", static_cast<int>(plan.path), plan.config, plan.swizzle_scales ? Py_True : Py_False,
                       plan.unswizzle_scales ? Py_True : Py_False, static_cast<Py_ssize_t>(plan.workspace_bytes),
                       plan.note);
}

// _matmul_tiles() -> ((m, n, k, cluster_m), ...) for sm100 and for sm120: the tile tables of matmul_plan.h.
PyObject* matmul_tiles_py(PyObject*, PyObject*) {
  auto table = [](const cuda::MatmulTile* t, int n) {
    PyObject* out = PyTuple_New(n);
    for (int i = 0; i < n; ++i)
      PyTuple_SET_ITEM(out, i, Py_BuildValue("(iiii)", t[i].m, t[i].n, t[i].k, t[i].cluster_m));
    return out;
  };
  return Py_BuildValue("(NN)", table(cuda::kSm100Tiles, cuda::kSm100TileCount),
                       table(cuda::kSm120Tiles, cuda::kSm120TileCount));
}

PyMethodDef kMethods[] = {
    {"_set_plan_override", set_plan_override, METH_VARARGS, "Set the plan overrides (fpquant_ext.tuning)."},
    {"_get_plan_override", get_plan_override, METH_NOARGS, "The current plan overrides."},
    {"_plan_w4a16", plan_w4a16_py, METH_VARARGS, "Evaluate the W4A16 plan for a described GPU."},
    {"_plan_quantize", plan_quantize_py, METH_VARARGS, "Evaluate the quantize plan for a described GPU."},
    {"_plan_matmul", plan_matmul_py, METH_VARARGS, "Evaluate the matmul plan for a described GPU."},
    {"_matmul_tiles", matmul_tiles_py, METH_NOARGS, "The CUTLASS tile tables of the matmul plan."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

cuda::W4A16Override w4a16_override() {
  cuda::W4A16Override ov;
  ov.path = g_w4a16_path;
  ov.config = g_w4a16_config;
  ov.splits = g_w4a16_splits;
  return ov;
}

cuda::QuantizeOverride quantize_override() {
  cuda::QuantizeOverride ov;
  ov.path = g_quantize_path;
  return ov;
}

cuda::MatmulOverride matmul_override() {
  cuda::MatmulOverride ov;
  ov.path = g_matmul_path;
  ov.config = g_matmul_config;
  return ov;
}

int cpu_isa_override() { return g_cpu_isa; }

PyMethodDef* tuning_methods() { return kMethods; }

}  // namespace fpquant
