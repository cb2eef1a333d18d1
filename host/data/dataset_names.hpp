// What the host knows of each dataset without reading it.
#pragma once

#include <cstdint>
#include <string>

namespace cfamc::host {

bool is_known_dataset(const std::string& dataset);
// The dataset's default folder ("" when it has none), e.g. Debian's dataset-fashion-mnist package.
std::string default_root(const std::string& dataset);

}  // namespace cfamc::host
