// torchvision's ColorJitter with its four parts (brightness, contrast, saturation, hue) in a random order
// per image, batched on the images' device. The draws are separate from their application so that tests
// can replay them image by image.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "augment/view_recipe.hpp"

namespace cfamc::host {

// One batch's random draws, on the CPU. Parts are numbered 0 brightness, 1 contrast, 2 saturation, 3 hue.
struct ColourJitterDraw {
  at::Tensor apply;    // bool [n]: whether the image is jittered at all
  at::Tensor factors;  // double [n, 4]: brightness, contrast, saturation factors and the hue shift; the
                       // identity (1, 1, 1, 0) where `apply` is false
  at::Tensor order;    // int64 [n, 4]: the part each image applies in each of the four rounds
};

// Draws in the order and from the distributions torchvision's ColorJitter uses (factors uniform in
// [max(0, 1-v), 1+v], hue shift in [-hue, hue]), with an independent random order per image.
ColourJitterDraw draw_colour_jitter(int64_t n, const ViewRecipe& recipe, at::Generator& generator);

// `x` float [n, C, H, W] in [0,1]. Every image gets each of its parts once, in its own order; a hue shift
// of 0 is skipped, and colour parts (saturation, hue) only act on 3-channel images.
at::Tensor apply_colour_jitter(const at::Tensor& x, const ColourJitterDraw& draw);

inline at::Tensor colour_jitter(const at::Tensor& x, const ViewRecipe& recipe, at::Generator& generator) {
  return apply_colour_jitter(x, draw_colour_jitter(x.size(0), recipe, generator));
}

// The luma plane [N, 1, H, W] of an RGB batch (a 1-channel batch is its own).
at::Tensor to_gray(const at::Tensor& x);

// torchvision's RGB <-> HSV on [N, 3, H, W] in [0,1].
at::Tensor rgb_to_hsv(const at::Tensor& rgb);
at::Tensor hsv_to_rgb(const at::Tensor& hsv);

}  // namespace cfamc::host
