#include "run/evaluate_checkpoint.hpp"

#include <fstream>

#include <nlohmann/json.hpp>

#include "failure.hpp"
#include "files.hpp"
#include "log.hpp"
#include "run/assembly.hpp"
#include "run/evaluation.hpp"
#include "run/model_file.hpp"
#include "run/run_dir.hpp"
#include "train/checkpoint.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace cfamc::host {
namespace {

// The newest checkpoint of the run directory that verifies, as --resume would take it, or the one named.
LoadedCheckpoint checkpoint_for(const EvaluateRequest& request) {
  if (request.checkpoint) return {*request.checkpoint, open_checkpoint(*request.checkpoint, "--checkpoint")};
  if (auto newest = newest_usable_checkpoint(request.dir.checkpoints())) return std::move(*newest);
  fail(ExitCode::usage, "--evaluate-only: no usable checkpoint in " + request.dir.checkpoints().string() +
                            "; train first, or name one with --checkpoint PATH");
}

// Whether the checkpoint holds an objective of the run file's plugin (a classifier artifact holds none).
bool same_objective(const LoadedCheckpoint& checkpoint, const RunConfig& config) {
  bool has_objective = false;
  for (const auto& item : checkpoint.tensors) has_objective = has_objective || item.key().rfind("objective/", 0) == 0;
  const auto description = model_description(checkpoint.tensors);
  const std::string plugin = config.find(Role::objective)->plugin;
  return has_objective && (!description || (*description)["objective"]["plugin"].value_or(plugin) == plugin);
}

// summary.json keeps what it held (a training run's summary, earlier evaluations); each result replaces the
// one of the same id.
void merge_into_summary(const fs::path& file, const json& eval) {
  json summary = json::object();
  if (std::ifstream in(file); in) {
    summary = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!summary.is_object()) {
      log(LogLevel::warn, file.string() + " is not a JSON object; writing a new one");
      summary = json::object();
    }
  }
  for (const auto& [id, metrics] : eval.items()) summary["eval"][id] = metrics;
  write_file_atomically(file, summary.dump(2) + "\n");
}

}  // namespace

void evaluate_checkpoint(const RunConfig& config, const Registry& registry, const EvaluateRequest& request) {
  const LoadedCheckpoint checkpoint = checkpoint_for(request);
  check_same_backbone(checkpoint.tensors, config, checkpoint.file);
  const EvaluationData data = load_evaluation_data(config.data, request.compute.device);
  Assembly assembly = assemble(config, registry, request.compute.device);
  json eval = request.controls ? run_controls(assembly, data, config, registry, request.compute, request.dir.path())
                               : json::object();
  load_component(*assembly.backbone, "backbone", checkpoint.tensors, checkpoint.file);
  if (same_objective(checkpoint, config)) {
    load_component(*assembly.objective, "objective", checkpoint.tensors, checkpoint.file);
  } else {
    // An evaluation protocol's run file need not repeat the pre-training method: without the checkpoint's
    // objective there is no representation but the backbone's feature, never a random head's.
    log(LogLevel::info, checkpoint.file.string() + " holds no objective of this run file's '" +
                            config.find(Role::objective)->plugin + "': evaluators read the backbone feature");
    assembly.objective.reset();
  }
  const int64_t step = checkpoint_step(checkpoint.tensors);
  log(LogLevel::info, "evaluating " + checkpoint.file.string() + " (step " + std::to_string(step) + ")");
  json trained = run_evaluation(assembly.evaluation, assembly, data, config, request.compute.precision, request.dir.path());
  for (auto& [id, metrics] : trained.items()) {  // the controls did not come from the checkpoint
    metrics["checkpoint"] = fs::absolute(checkpoint.file).lexically_normal().string();
    metrics["checkpoint_step"] = step;
  }
  eval.update(trained);
  merge_into_summary(request.dir.summary(), eval);
  log(LogLevel::info, "summary: " + request.dir.summary().string());
}

}  // namespace cfamc::host
