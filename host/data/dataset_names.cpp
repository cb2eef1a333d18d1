#include "data/dataset_names.hpp"

#include "failure.hpp"

namespace cfamc::host {

bool is_known_dataset(const std::string& d) {
  return d == "fashion_mnist" || d == "mnist" || d == "cifar10" || d == "cifar100" || d == "stl10";
}

ImageShape image_shape(const std::string& d) {
  if (d == "fashion_mnist" || d == "mnist") return {1, 28, 28};
  if (d == "cifar10" || d == "cifar100") return {3, 32, 32};
  if (d == "stl10") return {3, 96, 96};
  fail(ExitCode::usage, "data.dataset: '" + d + "' is not a dataset this host knows");
}

std::string default_root(const std::string& dataset) {
  return dataset == "fashion_mnist" ? "/usr/share/datasets/fashion-mnist" : "";
}

}  // namespace cfamc::host
