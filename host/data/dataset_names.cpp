#include "data/dataset_names.hpp"

namespace cfamc::host {

bool is_known_dataset(const std::string& d) {
  return d == "fashion_mnist" || d == "mnist" || d == "cifar10" || d == "cifar100" || d == "stl10";
}

std::string default_root(const std::string& dataset) {
  return dataset == "fashion_mnist" ? "/usr/share/datasets/fashion-mnist" : "";
}

}  // namespace cfamc::host
