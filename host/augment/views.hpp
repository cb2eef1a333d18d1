// Multi-view augmentation as batched tensor operations on the images' device: no per-image loop, no
// worker processes. Random parameters are drawn from one CPU generator (a few numbers per view, copied
// to the device in one transfer), so the views are a pure function of the generator's state.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <optional>

#include "augment/view_recipe.hpp"

namespace cfamc::host {

// One process's share of a global batch of `batch` images in a data-parallel run: images [begin, end).
struct BatchShare {
  int64_t begin, end, batch;
};

// `images`: uint8 [B, C, H, W], or float in [0,1] (then differentiable). Returns float
// [count*B, C, size, size] in [0,1], view-major (all first views, then all second views, ...).
// `share`: when given, `images` holds only the share's end - begin images of a global batch; the random
// parameters are drawn for the whole batch (the generator advances as a whole-batch call's would) and the
// share's views are exactly the rows v*batch + [begin, end) of the whole batch's views, in view-major order.
// Failure(usage) naming `views.<name>.size` and `.padding` when a padded crop's window exceeds the padded
// image (the one recipe check that needs the image size).
at::Tensor make_views(const ViewRecipe& recipe, const at::Tensor& images, at::Generator& generator,
                      const std::optional<BatchShare>& share = std::nullopt);

// RandomResizedCrop boxes as torchvision samples them (10 attempts, then the central fallback): int64
// [n, 4] rows of (top, left, height, width). Exposed for tests.
at::Tensor sample_crop_boxes(int64_t height, int64_t width, int64_t n, const std::array<double, 2>& scale,
                             const std::array<double, 2>& ratio, at::Generator& generator);

}  // namespace cfamc::host
