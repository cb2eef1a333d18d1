// Named tensors, in the order they were added: inputs and views by group, component and optimiser state,
// checkpoints. The same type as the SDK's cfamc::TensorMap, so one name means one thing on both sides.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/ordered_dict.h>

#include <string>

namespace cfamc::host {

using TensorMap = torch::OrderedDict<std::string, at::Tensor>;

}  // namespace cfamc::host
