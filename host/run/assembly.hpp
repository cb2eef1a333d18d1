// The components of a run, created from the resolved run file in the order the ABI promises: the
// backbone first, then the others with its feature dimension.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "eval/eval_services.hpp"
#include "plugins/components.hpp"
#include "run/run_config.hpp"

namespace cfamc::host {

// What an evaluation pass evaluates: the trained encoder, or one of the controls (`control` of an
// [[evaluate]] entry), which are evaluated before the first step.
enum class EvaluationPass {
  trained,    // every evaluator, results under "<id>"
  untrained,  // the encoder as initialised, "<id>_untrained"
  pixels,     // the raw pixels in place of the encoder, "<id>_pixels"
};

// The key suffix of a pass's results: "", "_untrained", "_pixels".
std::string suffix_of(EvaluationPass pass);

// The evaluators and the [attacks.<id>] they name. Each evaluation pass (each control, the trained
// encoder) gets its own, made from the same seeds, so that one pass draws nothing from the random
// streams of another.
struct Evaluation {
  EvaluationPass pass = EvaluationPass::trained;
  std::vector<std::pair<const ComponentConfig*, std::unique_ptr<Evaluator>>> evaluators;
  std::vector<std::pair<std::string, std::unique_ptr<Attack>>> attacks;  // by id

  // The attacks and attack sequences an evaluator names, by id.
  std::vector<EvalAttack> attacks_for(const ComponentConfig& evaluator, const RunConfig& config) const;
  const Attack* attack(const std::string& id) const;
};

struct Assembly {
  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> objective;
  std::unique_ptr<Attack> attack;                                      // [attack]; null: clean training
  std::vector<std::pair<std::string, std::unique_ptr<Attack>>> named_attacks;  // for [[attack_schedule]]
  Evaluation evaluation;                                               // of the trained encoder

  // What the optimiser updates: the backbone's and the objective's parameters, as "backbone/<name>" and
  // "objective/<name>" (the names checkpoints keep the optimiser state under).
  TensorMap trainable() const;
  // Every component whose tensors a checkpoint keeps, with the run-file place that names them.
  std::vector<std::pair<const ComponentConfig*, Component*>> checkpointed(const RunConfig& config) const;
  const Attack* named_attack(const std::string& id) const;
};

Assembly assemble(const RunConfig& config, const Registry& registry, const std::string& device);

// An evaluation pass: for the trained encoder every evaluator and [attacks.<id>] of `config`; for a control
// only the evaluators that ask for it and the attacks they name. `feature_dim` is what the pass's encoder
// gives (the backbone's, or C*H*W for the pixels).
Evaluation assemble_evaluation(const RunConfig& config, const Registry& registry, const std::string& device,
                               int64_t feature_dim, EvaluationPass pass);

// The run file's recipes of the view groups the objective consumes, in its order; Failure(usage) naming a
// group the run file lacks.
std::vector<const ViewRecipe*> view_groups_of(const RunConfig& config, const Objective& objective);

}  // namespace cfamc::host
