// What the plans know of the GPU a call runs on. Plain C++ (no CUDA, no torch), so that the plans are
// ordinary functions that run and are tested on any machine (fpquant_ext.tuning.plan_*).
#pragma once

namespace fpquant::cuda {

struct GpuInfo {
  int cc_major = 0, cc_minor = 0;  // compute capability
  int num_sms = 0;
  bool sm90_kernels = false;  // this build compiled the `*_sm90.cu` kernels (sm_90a in FPQUANT_CUDA_ARCHS)

  // The sm_90a kernels (wgmma, TMA, setmaxnreg) run on compute capability 9.0 alone: sm_90a code is not
  // forward compatible.
  bool runs_sm90() const { return sm90_kernels && cc_major == 9 && cc_minor == 0; }
};

}  // namespace fpquant::cuda
