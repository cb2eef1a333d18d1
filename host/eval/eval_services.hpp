// The services an evaluator receives: dataset splits, the encoder, the run's attacks, a place for metrics
// and artifacts. One object per `evaluate` call.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/attack_sequence.hpp"
#include "plugins/components.hpp"

namespace cfamc::host {

struct DatasetSplit {
  at::Tensor images;  // uint8 [N, C, H, W] on the evaluation device
  at::Tensor labels;  // int64 [N]
};

// What an evaluator names as an attack: one attack component, or a sequence of them ([attack_sequences]).
struct EvalAttack {
  std::string id;
  const Attack* attack = nullptr;       // one attack
  AttackSequenceRun::Members sequence;  // or these, in order
};

// What an evaluator sees as the encoder: the run's backbone (with the objective's representation), or a
// host-side stand-in for a baseline such as the raw-pixel control.
class EvalEncoder {
 public:
  using TensorVisitor = std::function<void(cfamc_tensor_role, const std::string& name, const at::Tensor&)>;
  virtual ~EvalEncoder() = default;
  // Images in [0,1] -> features, differentiable with respect to the images (the attacks go through it).
  virtual at::Tensor encode(cfamc_feature which, const at::Tensor& x) const = 0;
  virtual int64_t feature_dim(cfamc_feature which) const = 0;
  virtual void set_training(bool training) const = 0;
  virtual void visit_tensors(const TensorVisitor& visit) const = 0;
  // The backbone itself, for saving a classifier; null for a stand-in.
  virtual const Backbone* backbone() const = 0;
};

// The backbone run with BatchNorm set `branch`, and the objective's representation when there is an
// objective. Failure(usage) for a branch the backbone lacks.
std::unique_ptr<EvalEncoder> component_encoder(Backbone& backbone, Objective* objective, int32_t branch = 0);

// The identity on images of `image_shape` ([C, H, W]): their pixels, flattened, are the features (both the
// backbone's and the representation), so an evaluator measures what a classifier on raw pixels achieves.
// It has no tensors and no training mode. Images of any other shape (views that crop to another size) are
// refused with Failure(usage): their pixels would not have the feature dimension it reports.
std::unique_ptr<EvalEncoder> pixel_encoder(std::vector<int64_t> image_shape);

class EvalServices {
 public:
  using ViewMaker = std::function<at::Tensor(const std::string& group, const at::Tensor& images)>;
  // Writes a classifier (the backbone as it is now, and `head`) to `file`.
  using ClassifierSaver = std::function<void(const std::filesystem::path& file, const Backbone& backbone, const TensorMap& head)>;

  EvalServices(Backbone& backbone, Objective* objective, std::map<std::string, DatasetSplit> splits,
               std::vector<EvalAttack> attacks, std::filesystem::path artifact_dir, ViewMaker view_maker = {});
  EvalServices(std::unique_ptr<EvalEncoder> encoder, std::map<std::string, DatasetSplit> splits,
               std::vector<EvalAttack> attacks, std::filesystem::path artifact_dir, ViewMaker view_maker = {});
  // Enables save_classifier (ABI 1.2); without a saver it reports CFAMC_ERROR_UNSUPPORTED.
  void set_classifier_saver(ClassifierSaver saver) { classifier_saver_ = std::move(saver); }
  EvalServices(const EvalServices&) = delete;
  EvalServices& operator=(const EvalServices&) = delete;

  const cfamc_eval_services* get() const { return &services_; }
  const EvalEncoder& encoder() const { return *encoder_; }
  // Everything reported so far; "a/b" keys nest.
  const nlohmann::json& metrics() const { return metrics_; }

 private:
  // The function table, by what each part gives the evaluator.
  void offer_data_and_encoder();
  void offer_attacks();
  void offer_outputs();
  at::Tensor run_attack(const EvalAttack& attack, const cfamc_oracle& oracle, const at::Tensor& x);
  void save_classifier(const std::string& name, const TensorMap& head) const;

  std::unique_ptr<EvalEncoder> encoder_;
  std::map<std::string, DatasetSplit> splits_;
  std::vector<EvalAttack> attacks_;
  std::map<std::string, AttackSequenceRun> sequence_runs_;  // their figures accumulate over the batches
  std::filesystem::path artifact_dir_;
  ViewMaker view_maker_;
  ClassifierSaver classifier_saver_;
  nlohmann::json metrics_ = nlohmann::json::object();
  cfamc_eval_services services_{};
};

}  // namespace cfamc::host
