// Mixed precision as plugins see it (header-only, part of the public SDK). When a run's precision is bf16
// the host runs the training step's forward passes, the attacks and the evaluators under LibTorch's autocast
// (thread-local, set by the host on the thread that calls the plugin): convolutions and matrix products then
// compute in bfloat16 and return bfloat16 tensors. A computation that bfloat16's 8-bit mantissa would spoil
// (a log-determinant, a softmax over similarities divided by a small temperature) runs inside a
// Float32Region on inputs widened with `widened`.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

namespace cfamc {

// Autocast off on this thread (CPU and CUDA) for the region's lifetime, as it was before afterwards.
class Float32Region {
 public:
  Float32Region()
      : cpu_(at::autocast::is_autocast_enabled(at::kCPU)), cuda_(at::autocast::is_autocast_enabled(at::kCUDA)) {
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::set_autocast_enabled(at::kCUDA, false);
  }
  ~Float32Region() {
    at::autocast::set_autocast_enabled(at::kCPU, cpu_);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda_);
  }
  Float32Region(const Float32Region&) = delete;
  Float32Region& operator=(const Float32Region&) = delete;

 private:
  bool cpu_, cuda_;
};

// `t` in float32 when autocast made it a 16-bit float; any other tensor (float32, float64, integers) as it is.
inline at::Tensor widened(const at::Tensor& t) {
  return t.is_floating_point() && t.element_size() < 4 ? t.to(at::kFloat) : t;
}

}  // namespace cfamc
