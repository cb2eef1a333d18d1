// Small CPU tensors (random draws, labels, permutations) onto the device without the host waiting for it
// (header-only, part of the public SDK).
#pragma once

#include <ATen/ATen.h>

namespace cfamc {

// `cpu` on `like`'s device. A CUDA copy from pageable memory synchronises the stream first (and with it the
// host); one from pinned memory is asynchronous, and the caching host allocator keeps the pinned buffer alive
// until the copy has run. Use it for what a training step draws on the CPU.
inline at::Tensor on_device_of(const at::Tensor& like, const at::Tensor& cpu) {
  if (!like.is_cuda() || !cpu.is_cpu()) return cpu.to(like.device());
  return cpu.pin_memory().to(like.device(), cpu.scalar_type(), /*non_blocking=*/true);
}

}  // namespace cfamc
