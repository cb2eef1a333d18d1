// One training step on one minibatch, as both the run's loop and bench/train_step run it: for each replay
// of the attack (once when training clean) attack -> loss -> backward -> observe -> update. In bf16 the
// attack and the loss's forward pass run under autocast, one scope per replay: the weights change at every
// update, so the casts autocast keeps of them must not outlive it.
#pragma once

#include <functional>

#include "dist/gradient_average.hpp"
#include "plugins/components.hpp"
#include "train/optimizer.hpp"
#include "train/precision.hpp"

namespace cfamc::host {

// What the steps so far have done, for summary.json.
struct StepCounts {
  int64_t attack_calls = 0, oracle_calls = 0, backward_passes = 0;
};

// The phases of a step, for an observer that times them (bench/train_step); the loop has none.
enum class StepPhase { attack, forward_backward, optimizer };

class TrainStep {
 public:
  using LearningRate = std::function<double(int64_t update)>;
  using PhaseObserver = std::function<void(StepPhase finished)>;

  // `precision` on `device`: the arithmetic of the attack and the loss (the device the inputs live on).
  // `averager`: in a data-parallel run, what averages the gradients over the processes before each update.
  TrainStep(Backbone& backbone, Objective& objective, Optimizer& optimizer, TrainingAttackConfig attack_config,
            Precision precision, c10::DeviceType device, LearningRate learning_rate,
            GradientAverager* averager = nullptr);

  // Trains on `inputs` (the objective's prepared minibatch) against `attack` (null: clean) and returns the
  // last replay's loss. Failure(plugin) when the objective names an attacked input it did not prepare.
  LossResult run(const TensorMap& inputs, const Attack* attack);

  // Whether any loss so far was NaN or infinite. Reads the device: call it at log and checkpoint steps only.
  bool diverged() const;
  // Whether a parameter of the backbone or the objective is NaN, infinite, or too large to square in
  // float32 (beyond 2^64) (reads the device).
  bool diverged_weights() const;
  // After a step failed: whether the loss, the weights, or the encoder's features or representation of
  // `inputs` have diverged so, which explains the failure as divergence rather than a plugin's fault.
  bool diverged_encoder(const TensorMap& inputs) const;
  const StepCounts& counts() const { return counts_; }
  void set_phase_observer(PhaseObserver observer) { observer_ = std::move(observer); }

 private:
  TensorMap attacked_inputs(const TensorMap& inputs) const;
  TensorMap perturb(const Attack& attack, const TensorMap& inputs);
  LossResult replay(const TensorMap& inputs, const Attack* attack);
  // The attack's perturbation (empty when clean) and the objective's loss on it, in the run's precision.
  std::pair<TensorMap, LossResult> attack_and_loss(const TensorMap& inputs, const Attack* attack);
  void set_encoder_training(bool training);
  void finished(StepPhase phase) const {
    if (observer_) observer_(phase);
  }

  Backbone& backbone_;
  Objective& objective_;
  Optimizer& optimizer_;
  TrainingAttackConfig attack_config_;
  Precision precision_;
  c10::DeviceType device_;
  LearningRate learning_rate_;
  GradientAverager* averager_;
  std::vector<std::string> attacked_;
  at::Tensor nonfinite_;  // on the loss's device, so that no step waits for it
  StepCounts counts_;
  PhaseObserver observer_;
};

}  // namespace cfamc::host
