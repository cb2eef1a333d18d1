// Which samples make each minibatch: a seeded permutation per epoch. The batch at (epoch, step) is a pure
// function of the seed, so a resumed run draws exactly the batches it would have drawn.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cfamc::host {

class EpochSampler {
 public:
  // Incomplete last batches are dropped. `rank` of `world` takes every world-th batch of the epoch.
  EpochSampler(int64_t dataset_size, int64_t batch_size, uint64_t seed, int64_t rank = 0, int64_t world = 1);

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  // int64 [batch_size] sample indices on the CPU.
  at::Tensor batch(int64_t epoch, int64_t step);

 private:
  int64_t size_, batch_size_, rank_, world_, steps_per_epoch_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  at::Tensor permutation_;
};

}  // namespace cfamc::host
