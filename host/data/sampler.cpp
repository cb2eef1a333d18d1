#include "data/sampler.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "failure.hpp"

namespace cfamc::host {

EpochSampler::EpochSampler(int64_t dataset_size, int64_t batch_size, uint64_t seed, int64_t rank, int64_t world)
    : size_(dataset_size), batch_size_(batch_size), rank_(rank), world_(world), seed_(seed) {
  if (batch_size < 1 || dataset_size < batch_size) {
    fail(ExitCode::usage, "train.batch_size: " + std::to_string(batch_size) + " is more than the " +
                              std::to_string(dataset_size) + " training images");
  }
  if (batch_size % world != 0) {
    fail(ExitCode::usage, "train.batch_size: " + std::to_string(batch_size) + " images cannot be shared equally by " +
                              std::to_string(world) + " processes (the global batch must be a multiple of WORLD_SIZE)");
  }
  steps_per_epoch_ = dataset_size / batch_size;
}

at::Tensor EpochSampler::batch(int64_t epoch, int64_t step) {
  if (epoch != cached_epoch_) {
    at::Generator generator = at::detail::createCPUGenerator(seed_ + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(epoch + 1));
    permutation_ = at::randperm(size_, generator, at::TensorOptions().dtype(at::kLong));
    cached_epoch_ = epoch;
  }
  const int64_t start = step * batch_size_ + share_begin();
  return permutation_.slice(0, start, start + share_size());
}

}  // namespace cfamc::host
