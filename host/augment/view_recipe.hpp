// A view group of the run file ([views.<name>]): how many views of each image, and the random transforms
// that make them, in the order they apply: resized crop, flip, colour jitter, grayscale, blur, solarize.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include <toml++/toml.h>

#include "config/options.hpp"

namespace cfamc::host {

struct ViewRecipe {
  std::string name;
  int64_t count = 1;  // views per image
  int64_t size = 32;  // output side length
  bool crop = true;   // RandomResizedCrop; false: the whole image, resized to `size`
  std::array<double, 2> scale{0.08, 1.0};
  std::array<double, 2> ratio{3.0 / 4.0, 4.0 / 3.0};
  double flip = 0.5;
  double brightness = 0.4, contrast = 0.4, saturation = 0.4, hue = 0.1;
  double jitter = 0.8;  // probability that colour jitter applies
  double grayscale = 0.2;
  double blur = 0.0;
  std::array<double, 2> blur_sigma{0.1, 2.0};
  int64_t blur_kernel = 0;  // 0: 2*ceil(3*sigma_max)+1, capped below the image size
  double solarize = 0.0;
  double solarize_threshold = 0.5;
};

Schema view_recipe_schema();

// A recipe from its validated table (resolve_options with view_recipe_schema()). Failure(usage) for values
// out of range, naming `views.<name>.<key>`.
ViewRecipe view_recipe_from(const std::string& name, const toml::table& resolved);

}  // namespace cfamc::host
