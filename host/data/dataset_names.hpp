// What the host knows of each dataset without reading it.
#pragma once

#include <cstdint>
#include <string>

namespace cfamc::host {

bool is_known_dataset(const std::string& dataset);

// How a dataset's images are stored: channels x height x width.
struct ImageShape {
  int64_t channels, height, width;
  int64_t pixels() const { return channels * height * width; }
};
// The shape of a known dataset's images (Failure(usage) for another name).
ImageShape image_shape(const std::string& dataset);
// The dataset's default folder ("" when it has none), e.g. Debian's dataset-fashion-mnist package.
std::string default_root(const std::string& dataset);

}  // namespace cfamc::host
