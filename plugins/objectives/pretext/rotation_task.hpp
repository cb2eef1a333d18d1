// Rotation prediction (Gidaris et al. 2018) as Chen et al. (CVPR 2020) train it: every image of the batch is
// rotated by 0, 90, 180 or 270 degrees (torch::rot90 over H, W: exact, no resampling) and a linear head on the
// backbone feature predicts which.
//
// Balance: each image gets one rotation, from a seeded shuffle of the balanced list 0,1,2,3,0,1,.. of the
// batch's length, so the four classes appear equally often in every batch (within one when the batch is not
// a multiple of 4). The reference draws one rotation per image the same way (a shuffled [0,1,2,3] * (B/4+1),
// cut to B; cutting can leave the classes up to 3 apart, the list of length B cannot). All four rotations of
// every image would be balanced too, but would make each step four batches and attack four times as many
// images, which is neither the paper's recipe nor affordable in the three-task ensemble.
//
// Randomness: the generator it is given initialises the head, then draws each batch's shuffle. It is a
// cfamc::CheckpointedGenerator (buffer `rng.state`), so a resumed run draws the rotations an uninterrupted
// one would.
#pragma once

#include <cfamc/random.hpp>
#include <cfamc/transfer.hpp>

#include "pretext_terms.hpp"

namespace cfamc::pretext {

class RotationTaskImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kClasses = 4;
  static constexpr const char* kInput = "rotated";

  RotationTaskImpl(int64_t feature_dim, at::Generator generator, TaskRole role) : role_(std::move(role)) {
    if (feature_dim < 1) throw cfamc::Error(CFAMC_ERROR_OPTION, "the backbone feature dim must be positive");
    head_ = register_module("head", torch::nn::Linear(feature_dim, kClasses));
    cfamc::initialise_linear_layers(*this, generator);
    rng_ = register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(generator));
  }

  // Puts the rotated images of view group `group` and their labels into `inputs`.
  void prepare(const at::Tensor& images, const std::string& group, cfamc::TensorMap& inputs) {
    if (images.dim() != 4 || images.size(2) != images.size(3)) {
      throw cfamc::Error(CFAMC_ERROR_INVALID_ARGUMENT, "view group '" + group +
                                                           "' must hold square images [N, C, S, S], got " +
                                                           c10::str(images.sizes()));
    }
    const at::Tensor labels = cfamc::on_device_of(images, balanced_labels(images.size(0)));
    inputs.insert(kInput, rotate(images, labels));
    inputs.insert(label_name(), labels);
  }

  // The cross-entropy of the head on `rotated` (the clean input or its adversarial counterpart).
  at::Tensor cross_entropy(const cfamc::Encoder& encoder, const at::Tensor& rotated, const cfamc::TensorMap& clean,
                           const std::string& term, cfamc::TensorMap& log) {
    return logged_cross_entropy(head_->forward(feature_of(encoder, rotated, role_)), clean[label_name()], role_, term,
                                log);
  }

 private:
  std::string label_name() const { return role_.prefix + "label"; }

  // A shuffle of 0,1,2,3,0,1,.. (length `batch`) from the checkpointed stream, which it advances.
  at::Tensor balanced_labels(int64_t batch) {
    torch::NoGradGuard no_grad;
    const at::Tensor order = torch::randperm(batch, *rng_->lease(), torch::kLong);
    return torch::arange(batch, torch::kLong).remainder(kClasses).index_select(0, order);
  }

  // Image i rotated label[i] quarter turns (torch::rot90 over H, W), without leaving the device: all four
  // rotations of the batch, then each image's own.
  static at::Tensor rotate(const at::Tensor& images, const at::Tensor& labels) {
    std::vector<at::Tensor> turns;
    for (int64_t k = 0; k < kClasses; ++k) turns.push_back(torch::rot90(images, k, {2, 3}));
    const at::Tensor rows = torch::arange(images.size(0), labels.options());
    return torch::stack(turns, 0).index({labels, rows});
  }

  TaskRole role_;
  torch::nn::Linear head_{nullptr};
  std::shared_ptr<cfamc::CheckpointedGenerator> rng_;
};
TORCH_MODULE(RotationTask);

}  // namespace cfamc::pretext
