// Explicit plan overrides for measurements and tests (fpquant_ext.tuning.plan_override), set from Python and
// read by the CUDA glue when it asks a plan for a kernel. Nothing reads the environment. Process-wide: an
// override applies to every call made while it is set, from any thread.
#pragma once

#include <Python.h>

#include "cuda/matmul/matmul_plan.h"
#include "cuda/quantize/quantize_plan.h"
#include "cuda/w4a16/w4a16_plan.h"

namespace fpquant {

cuda::W4A16Override w4a16_override();
cuda::QuantizeOverride quantize_override();
cuda::MatmulOverride matmul_override();
// The widest CPU rotation kernel allowed: -1 no cap, 0 generic, 1 AVX2, 2 AVX-512 (csrc/ops/cpu_rotation.h).
int cpu_isa_override();

// The Python functions of fpquant_ext._C that set overrides and evaluate the plans (csrc/ops/tuning.cpp).
PyMethodDef* tuning_methods();

}  // namespace fpquant
