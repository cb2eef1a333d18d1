// The host's definition of the opaque tensor handle: one reference to a LibTorch tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cfamc/cfamc.h>

struct cfamc_tensor {
  at::Tensor tensor;
};

namespace cfamc::host {

// A new owned handle; the caller releases it with the host API's tensor_release (or `adopt`).
inline cfamc_tensor* make_handle(at::Tensor tensor) { return new cfamc_tensor{std::move(tensor)}; }

// Takes an owned handle a plugin returned and gives its tensor.
inline at::Tensor adopt(cfamc_tensor* handle) {
  if (handle == nullptr) return at::Tensor();
  at::Tensor tensor = std::move(handle->tensor);
  delete handle;
  return tensor;
}

}  // namespace cfamc::host
