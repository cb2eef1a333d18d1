// Which samples make each minibatch: a seeded permutation per epoch. The batch at (epoch, step) is a pure
// function of the seed, so a resumed run draws exactly the batches it would have drawn, and a data-parallel
// run draws the same global batches as a single process: process `rank` of `world` takes the rank-th of
// `world` equal slices of each.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cfamc::host {

class EpochSampler {
 public:
  // `batch_size`: the global batch, which `world` must divide (Failure(usage) otherwise). Incomplete last
  // batches are dropped.
  EpochSampler(int64_t dataset_size, int64_t batch_size, uint64_t seed, int64_t rank = 0, int64_t world = 1);

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  // This process's rows of every global batch: [share_begin, share_begin + share_size).
  int64_t share_begin() const { return rank_ * share_size(); }
  int64_t share_size() const { return batch_size_ / world_; }
  // int64 [batch_size / world] sample indices on the CPU: this process's share of the global batch.
  at::Tensor batch(int64_t epoch, int64_t step);

 private:
  int64_t size_, batch_size_, rank_, world_, steps_per_epoch_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  at::Tensor permutation_;
};

}  // namespace cfamc::host
