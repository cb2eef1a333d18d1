// Averages the weights' gradients over the processes of a data-parallel run at every optimiser update,
// in buckets of about 25 MB (PyTorch's DistributedDataParallel's size). With overlap, a hook on each weight
// copies its gradient into its bucket as the backward pass produces it, and a bucket's all-reduce starts as
// soon as its last gradient arrives, so communication runs beside the rest of the backward pass. Without
// (when something besides the backward pass adds to the gradients, as free training's attack may), every
// bucket is filled from the finished gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "dist/world.hpp"

namespace cfamc::host {

class GradientAverager {
 public:
  GradientAverager(World& world, std::vector<at::Tensor> weights, bool overlap, int64_t bucket_bytes = 25 << 20);
  ~GradientAverager();
  GradientAverager(const GradientAverager&) = delete;
  GradientAverager& operator=(const GradientAverager&) = delete;

  // Around one backward pass: `arm` before it, `average` after it (waits for every bucket and writes the
  // averages into the weights' gradients). Hooks do nothing outside that window (an attack's or an
  // evaluator's backward pass).
  void arm();
  void average();

 private:
  struct Bucket {
    at::Tensor flat;
    std::vector<size_t> members;  // in the order of their offsets
    size_t arrived = 0;
    World::Pending pending;
  };
  void place(size_t weight, const at::Tensor& gradient);
  void on_gradient(size_t weight, const at::Tensor& gradient);
  void start(Bucket& bucket);
  at::Tensor slot(size_t weight) const;

  World& world_;
  std::vector<at::Tensor> weights_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;
  std::vector<int64_t> offset_of_;
  std::vector<bool> arrived_;
  std::vector<unsigned> hooks_;
  size_t started_ = 0;  // buckets_[0, started_) have their all-reduce running
  bool armed_ = false;
};

}  // namespace cfamc::host
