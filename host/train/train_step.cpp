#include "train/train_step.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "failure.hpp"
#include "train/objective_oracle.hpp"

namespace cfamc::host {

TrainStep::TrainStep(Backbone& backbone, Objective& objective, Optimizer& optimizer,
                     TrainingAttackConfig attack_config, Precision precision, c10::DeviceType device,
                     LearningRate learning_rate, GradientAverager* averager)
    : backbone_(backbone),
      objective_(objective),
      optimizer_(optimizer),
      attack_config_(attack_config),
      precision_(precision),
      device_(device),
      learning_rate_(std::move(learning_rate)),
      averager_(averager),
      attacked_(objective.attacked_inputs()) {}

LossResult TrainStep::run(const TensorMap& inputs, const Attack* attack) {
  LossResult result;
  const int32_t replays = attack ? attack->replays() : 1;
  if (replays < 1) fail(ExitCode::plugin, attack->who() + ": replays must be at least 1");
  for (int32_t i = 0; i < replays; ++i) result = replay(inputs, attack);
  return result;
}

std::pair<TensorMap, LossResult> TrainStep::attack_and_loss(const TensorMap& inputs, const Attack* attack) {
  const AutocastScope autocast(precision_, device_);
  TensorMap adversarial = attack ? perturb(*attack, inputs) : TensorMap();
  finished(StepPhase::attack);
  LossResult result = objective_.loss(backbone_, inputs, adversarial, CFAMC_PHASE_TRAIN);
  return {std::move(adversarial), std::move(result)};
}

LossResult TrainStep::replay(const TensorMap& inputs, const Attack* attack) {
  optimizer_.zero_grad();
  auto [adversarial, result] = attack_and_loss(inputs, attack);
  if (averager_) averager_->arm();
  result.loss.backward();
  if (averager_) averager_->average();
  ++counts_.backward_passes;
  if (attack && attack->observes()) {
    // Free adversarial training: the same backward pass yields the input gradient the attack keeps.
    TensorMap gradients;
    for (const auto& item : adversarial) gradients.insert(item.key(), item.value().grad());
    attack->observe(gradients);
  }
  finished(StepPhase::forward_backward);
  optimizer_.step(learning_rate_(optimizer_.updates()));
  const at::Tensor bad = result.loss.detach().isfinite().logical_not();
  nonfinite_ = nonfinite_.defined() ? nonfinite_.logical_or_(bad) : bad.clone();
  finished(StepPhase::optimizer);
  return result;
}

TensorMap TrainStep::attacked_inputs(const TensorMap& inputs) const {
  TensorMap targets;
  for (const auto& name : attacked_) {
    if (!inputs.contains(name)) {
      fail(ExitCode::plugin, objective_.who() + ": attacked input '" + name + "' is not among its prepared inputs");
    }
    targets.insert(name, inputs[name]);
  }
  return targets;
}

TensorMap TrainStep::perturb(const Attack& attack, const TensorMap& inputs) {
  ObjectiveOracle oracle(objective_, backbone_, inputs, attack_config_.accumulate_weight_grads);
  const cfamc_oracle c_oracle = oracle.get();
  if (attack_config_.eval_mode_bn) set_encoder_training(false);
  TensorMap adversarial = attack.perturb(c_oracle, attacked_inputs(inputs));
  if (attack_config_.eval_mode_bn) set_encoder_training(true);
  counts_.oracle_calls += oracle.calls();
  ++counts_.attack_calls;
  if (attack.observes())
    for (auto& item : adversarial) item.value() = item.value().detach().requires_grad_(true);
  return adversarial;
}

void TrainStep::set_encoder_training(bool training) {
  backbone_.set_training(training);
  objective_.set_training(training);
}

bool TrainStep::diverged() const { return nonfinite_.defined() && nonfinite_.item<bool>(); }

namespace {

// 2^64: a float32 beyond it overflows when squared, so norms and variances of it are infinite. Weights or
// features that large have diverged even while every one of them is still finite.
constexpr double kLargestUsable = 18446744073709551616.0;

bool unusable(const at::Tensor& t) { return !t.detach().abs().lt(kLargestUsable).all().item<bool>(); }

}  // namespace

bool TrainStep::diverged_weights() const {
  for (const Component* c : {static_cast<const Component*>(&backbone_), static_cast<const Component*>(&objective_)})
    for (const auto& item : c->tensors(CFAMC_ROLE_PARAMETER))
      if (unusable(item.value())) return true;
  return false;
}

bool TrainStep::diverged_encoder(const TensorMap& inputs) const {
  if (diverged() || diverged_weights()) return true;
  c10::NoGradGuard no_grad;
  for (const auto& item : inputs) {
    if (!item.value().is_floating_point() || item.value().dim() != 4) continue;
    const at::Tensor features = backbone_.forward(item.value(), 0);
    if (unusable(features) || unusable(objective_.represent(features))) return true;
  }
  return false;
}

}  // namespace cfamc::host
