// A view group of the run file ([views.<name>]): how many views of each image, and the random transforms
// that make them, in the order they apply: resized crop (or padded crop), flip, colour jitter, grayscale,
// blur, solarize.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include <toml++/toml.h>

#include "config/options.hpp"

namespace cfamc::host {

// Defaults live in view_recipe_schema() only (view_recipe_defaults() for code that builds a recipe).
struct ViewRecipe {
  std::string name;
  int64_t count;  // views per image
  int64_t size;   // output side length
  bool crop;      // RandomResizedCrop; false: the whole image, resized to `size` (or the padded crop below)
  int64_t padding;  // > 0 (with crop false): RandomCrop(size, padding), fill 0
  std::array<double, 2> scale;
  std::array<double, 2> ratio;
  double flip;
  double brightness, contrast, saturation, hue;
  double jitter;  // probability that colour jitter applies
  double grayscale;
  double blur;
  std::array<double, 2> blur_sigma;
  int64_t blur_kernel;  // 0: 2*ceil(3*sigma_max)+1, capped below the image size
  double solarize;
  double solarize_threshold;
};

Schema view_recipe_schema();

// A recipe from its validated table (resolve_options with view_recipe_schema()). Failure(usage) for values
// out of range or contradictory (padding > 0 with crop = true), naming `views.<name>.<key>`.
ViewRecipe view_recipe_from(const std::string& name, const toml::table& resolved);

// The recipe with every key at its declared default.
ViewRecipe view_recipe_defaults(const std::string& name);

}  // namespace cfamc::host
