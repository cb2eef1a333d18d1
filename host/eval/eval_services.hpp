// The services an evaluator receives: dataset splits, the encoder, the run's attacks, a place for metrics
// and artifacts. One object per `evaluate` call.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "plugins/components.hpp"

namespace cfamc::host {

struct DatasetSplit {
  at::Tensor images;  // uint8 [N, C, H, W] on the evaluation device
  at::Tensor labels;  // int64 [N]
};

class EvalServices {
 public:
  using ViewMaker = std::function<at::Tensor(const std::string& group, const at::Tensor& images)>;

  EvalServices(Backbone& backbone, Objective* objective, std::map<std::string, DatasetSplit> splits,
               std::vector<std::pair<std::string, const Attack*>> attacks, std::filesystem::path artifact_dir,
               ViewMaker view_maker = {});
  EvalServices(const EvalServices&) = delete;
  EvalServices& operator=(const EvalServices&) = delete;

  const cfamc_eval_services* get() const { return &services_; }
  // Everything reported so far; "a/b" keys nest.
  const nlohmann::json& metrics() const { return metrics_; }

 private:
  // The function table, by what each part gives the evaluator.
  void offer_data_and_encoder();
  void offer_attacks();
  void offer_outputs();
  at::Tensor encode(cfamc_feature which, const at::Tensor& x) const;

  Backbone& backbone_;
  Objective* objective_;
  std::map<std::string, DatasetSplit> splits_;
  std::vector<std::pair<std::string, const Attack*>> attacks_;
  std::filesystem::path artifact_dir_;
  ViewMaker view_maker_;
  nlohmann::json metrics_ = nlohmann::json::object();
  cfamc_eval_services services_{};
};

}  // namespace cfamc::host
