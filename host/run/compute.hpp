// Where and in what arithmetic a run computes, resolved from [run] device and precision (resolve_compute).
#pragma once

#include <string>

#include "train/precision.hpp"

namespace cfamc::host {

struct Compute {
  std::string device;  // "cpu", "cuda:0"
  Precision precision;
};

}  // namespace cfamc::host
