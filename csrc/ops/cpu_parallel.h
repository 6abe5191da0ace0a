// Parallel loop for the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <cstdint>

namespace fpquant::cpu {

// Runs fn(begin, end) over disjoint ranges covering [0, n), in parallel over torch's intra-op threads.
//
// at::parallel_for is a header template whose OpenMP branch is compiled only where _OPENMP is defined, and
// this extension is not compiled with -fopenmp, so here it would run everything on the calling thread.
// TensorIterator::for_each is compiled inside libtorch with its parallel backend and honours
// torch.set_num_threads; iterating over an n-byte dummy tensor hands each range's start back as the
// distance of its data pointer from the base.
template <typename Fn>
void parallel_ranges(int64_t n, int64_t grain, const Fn& fn) {
  if (n <= 0) return;
  if (n <= grain || at::get_num_threads() == 1 || at::in_parallel_region()) {
    fn(int64_t{0}, n);
    return;
  }
  at::Tensor index = at::empty({n}, at::TensorOptions().dtype(at::kByte));
  const char* base = reinterpret_cast<const char*>(index.data_ptr());
  at::TensorIterator iter = at::TensorIteratorConfig()
                                .add_output(index)
                                .check_all_same_dtype(false)
                                .resize_outputs(false)
                                .build();
  iter.for_each(
      [&](char** data, const int64_t* /*strides*/, int64_t size0, int64_t size1) {
        TORCH_INTERNAL_ASSERT(size1 == 1);
        const int64_t begin = data[0] - base;
        fn(begin, begin + size0);
      },
      grain);
}

}  // namespace fpquant::cpu
