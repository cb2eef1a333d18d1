// Running an evaluation pass: each evaluator with the encoder, the dataset splits, its attacks and its
// view groups, then the robustness curve from its robust accuracies.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "eval/eval_services.hpp"
#include "run/assembly.hpp"
#include "run/compute.hpp"

namespace cfamc::host {

// The images of [data]. `pretrain` is the split the objective trains on, row i being sample index i (STL-10's
// train+unlabeled: label -1 on its unlabeled rows); `train` is its labeled rows, what classifiers fit (the same
// tensors when every row is labeled). Evaluators see all three by these names.
struct EvaluationData {
  DatasetSplit pretrain, train, test;
};

// The splits of [data] on `device`, cut to their subsets, grey expanded to RGB when asked.
EvaluationData load_evaluation_data(const DataConfig& config, const std::string& device);

// Runs every evaluator of `evaluation` against its pass's encoder (the run's, or the pixels). Results are
// keyed by evaluator id with the pass's suffix ("_untrained", "_pixels" for the controls); artifacts go to
// run_dir/artifacts/<id><suffix>/. Each evaluator runs under autocast when `precision` is bf16.
nlohmann::json run_evaluation(const Evaluation& evaluation, const Assembly& assembly, const EvaluationData& data,
                              const RunConfig& config, Precision precision, const std::filesystem::path& run_dir);

// Every control the evaluators ask for, each pass with evaluators and attacks of its own (the untrained
// encoder, then the pixels), before the first step; their results together.
nlohmann::json run_controls(const Assembly& assembly, const EvaluationData& data, const RunConfig& config,
                            const Registry& registry, const Compute& compute, const std::filesystem::path& run_dir);

}  // namespace cfamc::host
