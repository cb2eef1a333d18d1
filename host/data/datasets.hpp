// Image classification datasets read from their standard files, held as uint8 tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "data/dataset_names.hpp"

namespace cfamc::host {

struct ImageSet {
  at::Tensor images;  // uint8 [N, C, H, W]
  at::Tensor labels;  // int64 [N]; -1 where unlabeled (STL-10's unlabeled split)
};

struct DatasetSpec {
  std::string name;  // fashion_mnist, mnist, cifar10, cifar100, stl10
  std::string root;  // the folder with the dataset's files
};

// Reads `split` ("train", "test"; STL-10 also "unlabeled" and "train+unlabeled") on the CPU.
// Failure(data) names the file and what was expected: a missing, short, overlong or corrupt file, a bad
// header, a label out of range, IDX training and test images of different sizes. A gzip file is never
// inflated past what its header (or, without one, the dataset's largest file) allows.
ImageSet load_split(const DatasetSpec& spec, const std::string& split);

}  // namespace cfamc::host
