// Whether a training step fits in the device's memory, known before the first step rather than after the
// machine starts swapping: `views.crops.count = 10000` or `size = 2000` are refused with the figures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "augment/view_recipe.hpp"
#include "plugins/components.hpp"
#include "run/compute.hpp"

namespace cfamc::host {

// The backbone runs forward and backward (in eval mode, gradients to its input only, so no state changes)
// on probes of 2 and 4 views of each group's size, in the run's precision; the growth between them is what one view costs, the
// rest what the step costs whatever its size. A step is `batch_size` images times every group's views,
// each also held as pixels, an attacked copy and its gradient. Failure(usage) naming the keys to lower
// when that exceeds the memory the device has free.
void check_step_memory(Backbone& backbone, const std::vector<const ViewRecipe*>& groups, int64_t channels,
                       int64_t batch_size, const Compute& compute);

}  // namespace cfamc::host
