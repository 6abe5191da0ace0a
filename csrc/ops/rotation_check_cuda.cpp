// The CUDA half of ops/rotation_check.h: tells the orthogonality check when the current stream is
// capturing a graph, during which it must not read a rotation's values.
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "ops/rotation_check.h"

namespace fpquant {
namespace {

bool capturing(const at::Tensor& R) {
  if (!R.is_cuda()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(R.get_device()).stream();
  // An error here (e.g. an invalidated capture) also means the values must not be read now.
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky; clear it so that it is not reported by a later launch
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

[[maybe_unused]] const bool installed = (set_rotation_capture_probe(&capturing), true);

}  // namespace
}  // namespace fpquant
