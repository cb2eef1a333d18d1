#include "dist/gradient_average.hpp"

#include <ATen/ATen.h>

namespace cfamc::host {

GradientAverager::GradientAverager(World& world, std::vector<at::Tensor> weights, bool overlap, int64_t bucket_bytes)
    : world_(world), weights_(std::move(weights)) {
  bucket_of_.resize(weights_.size());
  offset_of_.resize(weights_.size());
  arrived_.assign(weights_.size(), false);
  // Backward produces the last layers' gradients first: buckets follow the weights in reverse.
  int64_t filled = bucket_bytes, elements = 0;
  for (size_t i = weights_.size(); i-- > 0;) {
    const at::Tensor& w = weights_[i];
    const bool fits = !buckets_.empty() && filled + static_cast<int64_t>(w.nbytes()) <= bucket_bytes &&
                      weights_[buckets_.back().members.front()].scalar_type() == w.scalar_type();
    if (!fits) {
      buckets_.emplace_back();
      filled = elements = 0;
    }
    bucket_of_[i] = buckets_.size() - 1;
    offset_of_[i] = elements;
    buckets_.back().members.push_back(i);
    elements += w.numel();
    filled += static_cast<int64_t>(w.nbytes());
  }
  for (Bucket& bucket : buckets_) {
    const size_t last = bucket.members.back();
    bucket.flat = at::empty({offset_of_[last] + weights_[last].numel()}, weights_[last].options());
  }
  if (!overlap) return;
  for (size_t i = 0; i < weights_.size(); ++i)
    hooks_.push_back(weights_[i].register_hook([this, i](const at::Tensor& gradient) { on_gradient(i, gradient); }));
}

GradientAverager::~GradientAverager() {
  for (size_t i = 0; i < hooks_.size(); ++i) weights_[i].remove_hook(hooks_[i]);
}

at::Tensor GradientAverager::slot(size_t weight) const {
  const at::Tensor& w = weights_[weight];
  return buckets_[bucket_of_[weight]].flat.narrow(0, offset_of_[weight], w.numel()).view(w.sizes());
}

void GradientAverager::arm() {
  for (Bucket& bucket : buckets_) {
    bucket.arrived = 0;
    bucket.pending = nullptr;
  }
  arrived_.assign(weights_.size(), false);
  started_ = 0;
  armed_ = true;
}

void GradientAverager::place(size_t weight, const at::Tensor& gradient) {
  slot(weight).copy_(gradient);
  arrived_[weight] = true;
  ++buckets_[bucket_of_[weight]].arrived;
}

void GradientAverager::on_gradient(size_t weight, const at::Tensor& gradient) {
  if (!armed_ || arrived_[weight]) return;
  place(weight, gradient);
  // Buckets start strictly in order, so that every process issues its all-reduces in the same order even
  // where the backward pass finishes them in another.
  while (started_ < buckets_.size() && buckets_[started_].arrived == buckets_[started_].members.size()) start(buckets_[started_]);
}

void GradientAverager::start(Bucket& bucket) {
  bucket.pending = world_.start_all_reduce_sum(bucket.flat);
  ++started_;
}

void GradientAverager::average() {
  armed_ = false;
  while (started_ < buckets_.size()) {
    Bucket& bucket = buckets_[started_];
    // Weights whose gradient no hook saw: the finished gradient, or zero where the pass did not reach them.
    for (size_t i : bucket.members) {
      if (arrived_[i]) continue;
      if (weights_[i].grad().defined()) place(i, weights_[i].grad());
      else slot(i).zero_();
    }
    start(bucket);
  }
  for (Bucket& bucket : buckets_) {
    bucket.pending();
    bucket.flat.div_(world_.size());
  }
  for (size_t i = 0; i < weights_.size(); ++i) {
    at::Tensor& gradient = weights_[i].mutable_grad();
    if (gradient.defined()) gradient.copy_(slot(i));
    else if (arrived_[i]) gradient = slot(i).clone();
  }
}

}  // namespace cfamc::host
