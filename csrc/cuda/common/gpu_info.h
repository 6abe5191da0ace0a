// What the plans know of the GPU a call runs on. Plain C++ (no CUDA, no torch), so that the plans are
// ordinary functions that run and are tested on any machine (fpquant_ext.tuning.plan_*).
#pragma once

namespace fpquant::cuda {

struct GpuInfo {
  int cc_major = 0, cc_minor = 0;  // compute capability
  int num_sms = 0;
  bool sm90_kernels = false;   // this build compiled the `*_sm90.cu` kernels (sm_90a in FPQUANT_CUDA_ARCHS)
  bool sm100_kernels = false;  // ... the `*_sm100.cu` kernels (sm_100a)
  bool sm120_kernels = false;  // ... the `*_sm120.cu` kernels (sm_120a)

  // Architecture-specific code (sm_90a, sm_100a, sm_120a: wgmma, tcgen05, block-scaled mma.sync) runs on
  // exactly that compute capability: it is not forward compatible, not even within the family (sm_100a code
  // does not load on a 10.3 GPU, which would need sm_100f or sm_103a).
  bool runs_sm90() const { return sm90_kernels && cc_major == 9 && cc_minor == 0; }
  bool runs_sm100() const { return sm100_kernels && cc_major == 10 && cc_minor == 0; }
  bool runs_sm120() const { return sm120_kernels && cc_major == 12 && cc_minor == 0; }
};

}  // namespace fpquant::cuda
