// Running an evaluation pass: each evaluator with the encoder, the dataset splits, its attacks and its
// view groups, then the robustness curve from its robust accuracies.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "eval/eval_services.hpp"
#include "run/assembly.hpp"

namespace cfamc::host {

struct EvaluationData {
  DatasetSplit train, test;
};

// Runs every evaluator of `evaluation` against the run's encoder. Results are keyed by evaluator id, with
// `suffix` appended ("_untrained" for the controls); artifacts go to run_dir/artifacts/<id><suffix>/.
nlohmann::json run_evaluation(const Evaluation& evaluation, const Assembly& assembly, const EvaluationData& data,
                              const RunConfig& config, const std::filesystem::path& run_dir, const std::string& suffix);

}  // namespace cfamc::host
