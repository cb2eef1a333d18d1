// Random parameters drawn on the CPU reach the images' device without the host waiting for that device.
#pragma once

#include <ATen/ATen.h>

namespace cfamc::host {

// `cpu` on `like`'s device. A CUDA copy from pinned memory is asynchronous, where one from pageable memory
// synchronises the stream first (and with it the host); the caching host allocator keeps the pinned buffer
// alive until the copy has run.
inline at::Tensor on_device_of(const at::Tensor& like, const at::Tensor& cpu) {
  if (!like.is_cuda()) return cpu.to(like.device());
  return cpu.pin_memory().to(like.device(), cpu.scalar_type(), /*non_blocking=*/true);
}

}  // namespace cfamc::host
