// The plugin side of the data-parallel worker: a tiny encoder and its loss written with the public SDK
// only, as a plugin would write them (the SDK's cfamc::host() and the host's namespace cfamc::host cannot
// meet in one translation unit).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

struct cfamc_host_api;

namespace tiny {

// Hands the SDK its host API table (a plugin receives it through its entry function).
void use_host(const cfamc_host_api* api);

class Model {
 public:
  Model();
  ~Model();
  // NT-Xent over the global batch (gathered) of the embeddings of `views` ([2*b, 6], view-major).
  at::Tensor loss(const at::Tensor& views);
  std::vector<std::pair<std::string, at::Tensor>> parameters() const;
  std::vector<std::pair<std::string, at::Tensor>> buffers() const;

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace tiny
