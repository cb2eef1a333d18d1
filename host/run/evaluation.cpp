#include "run/evaluation.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>

#include "augment/views.hpp"
#include "eval/robustness_curve.hpp"
#include "failure.hpp"
#include "log.hpp"

using json = nlohmann::json;

namespace cfamc::host {
namespace {

// Views for an evaluator, from a generator of its own: seeded by its id alone, so the controls and the
// trained encoder see the same views and neither pass changes what the other draws.
EvalServices::ViewMaker view_maker_for(const ComponentConfig& evaluator, const RunConfig& config) {
  auto generator = std::make_shared<at::Generator>(
      at::detail::createCPUGenerator(component_seed(config.seed, "evaluation views/" + evaluator.id)));
  return [generator, &config](const std::string& group, const at::Tensor& images) {
    const ViewRecipe* recipe = config.view(group);
    if (recipe == nullptr) fail(ExitCode::usage, "an evaluator asked for view group '" + group + "', which [views] lacks");
    return make_views(*recipe, images, *generator);
  };
}

void add_robustness_curve(json& metrics, const ComponentConfig& evaluator, const RunConfig& config,
                          const std::string& id, const std::filesystem::path& run_dir) {
  std::vector<std::pair<std::string, double>> epsilons;
  for (const auto& attack_id : evaluator.attacks) {
    const ComponentConfig* attack = config.named_attack(attack_id);
    if (attack != nullptr && attack->options.contains("epsilon"))
      epsilons.emplace_back(attack_id, attack->options["epsilon"].value_or(0.0));
  }
  const auto curve = robustness_curve(metrics, epsilons);
  if (curve.empty()) return;
  metrics["robustness_curve"] = to_json(curve);
  write_curve_svg(curve, id + ": accuracy under attack", run_dir / "artifacts" / id / "robustness_curve.svg");
}

std::vector<int64_t> image_shape(const EvaluationData& data) { return data.train.images.sizes().slice(1).vec(); }

std::unique_ptr<EvalEncoder> encoder_for(EvaluationPass pass, const Assembly& assembly, const EvaluationData& data) {
  if (pass == EvaluationPass::pixels) return pixel_encoder(image_shape(data));
  return component_encoder(*assembly.backbone, assembly.objective.get());
}

}  // namespace

json run_evaluation(const Evaluation& evaluation, const Assembly& assembly, const EvaluationData& data,
                    const RunConfig& config, const std::filesystem::path& run_dir) {
  json results = json::object();
  for (const auto& [component, evaluator] : evaluation.evaluators) {
    const std::string id = component->id + suffix_of(evaluation.pass);
    EvalServices services(encoder_for(evaluation.pass, assembly, data), {{"train", data.train}, {"test", data.test}},
                          evaluation.attacks_for(*component), run_dir / "artifacts" / id,
                          view_maker_for(*component, config));
    const auto start = std::chrono::steady_clock::now();
    evaluator->evaluate(*services.get());
    json metrics = services.metrics();
    metrics["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    add_robustness_curve(metrics, *component, config, id, run_dir);
    log(LogLevel::info, "evaluation " + id + ": " + services.metrics().dump());
    results[id] = metrics;
  }
  return results;
}

json run_controls(const Assembly& assembly, const EvaluationData& data, const RunConfig& config,
                  const Registry& registry, const std::string& device, const std::filesystem::path& run_dir) {
  json results = json::object();
  int64_t pixels_dim = 1;
  for (int64_t size : image_shape(data)) pixels_dim *= size;
  for (const auto& [pass, feature_dim] : {std::pair{EvaluationPass::untrained, assembly.backbone->feature_dim()},
                                          std::pair{EvaluationPass::pixels, pixels_dim}}) {
    const Evaluation controls = assemble_evaluation(config, registry, device, feature_dim, pass);
    if (controls.evaluators.empty()) continue;
    results.update(run_evaluation(controls, assembly, data, config, run_dir));
  }
  return results;
}

}  // namespace cfamc::host
