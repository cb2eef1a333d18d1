// The [data] section: which dataset, where, and how much of it.
#pragma once

#include <cstdint>
#include <string>

#include <toml++/toml.h>

#include "config/options.hpp"

namespace cfamc::host {

struct DataConfig {
  std::string dataset = "fashion_mnist";
  std::string root;                // "" : the dataset's default folder
  std::string train_split = "train";
  std::string channels = "keep";   // keep, rgb (grayscale replicated to three channels)
  int64_t train_subset = 0;        // first N images; 0: all
  int64_t test_subset = 0;
};

Schema data_schema();
DataConfig data_config_from(const toml::table& resolved);

}  // namespace cfamc::host
