// The [data] section: which dataset, where, and how much of it.
#pragma once

#include <cstdint>
#include <string>

#include <toml++/toml.h>

#include "config/options.hpp"

namespace cfamc::host {

// Defaults live in data_schema() only.
struct DataConfig {
  std::string dataset;
  std::string root;  // "" : the dataset's default folder
  std::string train_split;
  std::string channels;  // keep, rgb (grayscale replicated to three channels)
  int64_t train_subset;  // first N images; 0: all
  int64_t test_subset;
};

Schema data_schema();
DataConfig data_config_from(const toml::table& resolved);

}  // namespace cfamc::host
