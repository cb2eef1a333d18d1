#include "augment/view_recipe.hpp"

#include "failure.hpp"

namespace cfamc::host {
namespace {

std::array<double, 2> pair_of(const toml::table& t, const char* key, const std::string& where) {
  const toml::array* a = t[key].as_array();
  if (a == nullptr || a->size() != 2) fail(ExitCode::usage, where + "." + key + ": expected two numbers [low, high]");
  std::array<double, 2> out{a->get(0)->value_or(0.0), a->get(1)->value_or(0.0)};
  if (out[0] > out[1]) fail(ExitCode::usage, where + "." + key + ": low is above high");
  return out;
}

void check_probability(double p, const std::string& where, const char* key) {
  if (p < 0 || p > 1) fail(ExitCode::usage, where + "." + key + ": a probability in [0, 1], got " + std::to_string(p));
}

}  // namespace

Schema view_recipe_schema() {
  return {
      {"count", CFAMC_OPTION_INT, "1", "views made of each image"},
      {"size", CFAMC_OPTION_INT, "32", "side length of every view, in pixels"},
      {"crop", CFAMC_OPTION_BOOL, "true", "RandomResizedCrop (torchvision's sampling and fallback); false: whole image"},
      {"padding", CFAMC_OPTION_INT, "0",
       "> 0: torchvision's RandomCrop(size, padding) instead of RandomResizedCrop: the image zero-padded by this "
       "many pixels on each side, then a size x size window at a uniformly random offset (AdvCL's weak view: 4); "
       "needs crop = false and size <= image side + 2*padding"},
      {"scale", CFAMC_OPTION_FLOAT_LIST, "[0.08, 1.0]", "crop area as a fraction of the image, [low, high]"},
      {"ratio", CFAMC_OPTION_FLOAT_LIST, "[\"3/4\", \"4/3\"]", "crop aspect ratio, [low, high], sampled log-uniformly"},
      {"flip", CFAMC_OPTION_FLOAT, "0.5", "probability of a horizontal flip"},
      {"brightness", CFAMC_OPTION_FLOAT, "0.4", "colour jitter: brightness factor in [1-b, 1+b]"},
      {"contrast", CFAMC_OPTION_FLOAT, "0.4", "colour jitter: contrast factor in [1-c, 1+c]"},
      {"saturation", CFAMC_OPTION_FLOAT, "0.4", "colour jitter: saturation factor in [1-s, 1+s]"},
      {"hue", CFAMC_OPTION_FLOAT, "0.1", "colour jitter: hue shift in [-h, h] (at most 0.5)"},
      {"jitter", CFAMC_OPTION_FLOAT, "0.8", "probability that colour jitter applies (its four parts in random order)"},
      {"grayscale", CFAMC_OPTION_FLOAT, "0.2", "probability of converting to grayscale"},
      {"blur", CFAMC_OPTION_FLOAT, "0.0", "probability of a Gaussian blur"},
      {"blur_sigma", CFAMC_OPTION_FLOAT_LIST, "[0.1, 2.0]", "blur sigma range, in pixels, sampled uniformly"},
      {"blur_kernel", CFAMC_OPTION_INT, "0", "blur kernel side (odd); 0: 2*ceil(3*sigma_max)+1, below the image size"},
      {"solarize", CFAMC_OPTION_FLOAT, "0.0", "probability of solarizing (inverting pixels above the threshold)"},
      {"solarize_threshold", CFAMC_OPTION_FLOAT, "0.5", "solarize threshold, as a fraction of the pixel range"},
  };
}

ViewRecipe view_recipe_from(const std::string& name, const toml::table& t) {
  const std::string where = "views." + name;
  ViewRecipe r{};
  r.name = name;
  r.count = resolved_value<int64_t>(t, "count");
  r.size = resolved_value<int64_t>(t, "size");
  r.crop = resolved_value<bool>(t, "crop");
  r.padding = resolved_value<int64_t>(t, "padding");
  r.scale = pair_of(t, "scale", where);
  r.ratio = pair_of(t, "ratio", where);
  r.flip = resolved_value<double>(t, "flip");
  r.brightness = resolved_value<double>(t, "brightness");
  r.contrast = resolved_value<double>(t, "contrast");
  r.saturation = resolved_value<double>(t, "saturation");
  r.hue = resolved_value<double>(t, "hue");
  r.jitter = resolved_value<double>(t, "jitter");
  r.grayscale = resolved_value<double>(t, "grayscale");
  r.blur = resolved_value<double>(t, "blur");
  r.blur_sigma = pair_of(t, "blur_sigma", where);
  r.blur_kernel = resolved_value<int64_t>(t, "blur_kernel");
  r.solarize = resolved_value<double>(t, "solarize");
  r.solarize_threshold = resolved_value<double>(t, "solarize_threshold");

  if (r.count < 1 || r.size < 1) fail(ExitCode::usage, where + ": count and size must be positive");
  if (r.padding < 0) fail(ExitCode::usage, where + ".padding: pixels on each side, 0 or more");
  // Two different crops: silently ignoring either would train on views the run file did not ask for.
  if (r.padding > 0 && r.crop) {
    fail(ExitCode::usage, where + ".padding > 0 (RandomCrop) contradicts " + where +
                              ".crop = true (RandomResizedCrop): set crop = false to use padding");
  }
  if (r.scale[0] <= 0 || r.scale[1] > 1) fail(ExitCode::usage, where + ".scale: fractions in (0, 1]");
  if (r.ratio[0] <= 0) fail(ExitCode::usage, where + ".ratio: aspect ratios must be positive");
  for (auto [p, key] : {std::pair{r.flip, "flip"}, {r.jitter, "jitter"}, {r.grayscale, "grayscale"},
                        {r.blur, "blur"}, {r.solarize, "solarize"}}) {
    check_probability(p, where, key);
  }
  if (r.brightness < 0 || r.contrast < 0 || r.saturation < 0 || r.hue < 0 || r.hue > 0.5) {
    fail(ExitCode::usage, where + ": brightness, contrast, saturation must be >= 0 and hue in [0, 0.5]");
  }
  if (r.blur_sigma[0] <= 0) fail(ExitCode::usage, where + ".blur_sigma: sigmas must be positive");
  if (r.blur_kernel < 0 || (r.blur_kernel > 0 && r.blur_kernel % 2 == 0)) {
    fail(ExitCode::usage, where + ".blur_kernel: an odd size, or 0 for automatic");
  }
  return r;
}

ViewRecipe view_recipe_defaults(const std::string& name) {
  return view_recipe_from(name, resolve_options({}, view_recipe_schema(), "views." + name, "(defaults)"));
}

}  // namespace cfamc::host
