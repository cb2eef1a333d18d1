#include "run/evaluation.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <chrono>

#include "augment/views.hpp"
#include "data/datasets.hpp"
#include "eval/robustness_curve.hpp"
#include "failure.hpp"
#include "log.hpp"
#include "run/model_file.hpp"
#include "train/checkpoint.hpp"

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

std::unique_ptr<EvalEncoder> encoder_for(EvaluationPass pass, const Assembly& assembly, const EvaluationData& data,
                                         const ComponentConfig& evaluator) {
  if (pass == EvaluationPass::pixels) return pixel_encoder(image_shape(data));
  return component_encoder(*assembly.backbone, assembly.objective.get(), evaluator.bn_branch);
}

// A classifier artifact: the backbone as the evaluator left it, its head, and what export needs to rebuild it.
EvalServices::ClassifierSaver classifier_saver(const RunConfig& config, const ComponentConfig& evaluator) {
  return [&config, &evaluator](const std::filesystem::path& file, const Backbone& backbone, const TensorMap& head) {
    TensorMap tensors;
    for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER, CFAMC_ROLE_STATE})
      for (const auto& item : backbone.tensors(role)) tensors.insert("backbone/" + item.key(), item.value());
    for (const auto& item : head) tensors.insert("head/" + item.key(), item.value());
    add_model_description(tensors, describe_model(config, evaluator.bn_branch));
    std::filesystem::create_directories(file.parent_path());
    write_checkpoint_file(file, tensors);
    log(LogLevel::info, evaluator.label + ": classifier saved to " + file.string());
  };
}

// The encoder's tensors and mode as they were before an evaluator ran, put back after it, so that an
// evaluator that fine-tunes the encoder leaves the next one the pre-trained weights.
class EncoderSnapshot {
 public:
  explicit EncoderSnapshot(const EvalEncoder& encoder) : encoder_(encoder) {
    encoder.visit_tensors([&](cfamc_tensor_role, const std::string& name, const at::Tensor& value) {
      saved_.emplace_back(name, value.detach().clone());
    });
  }
  // The visit order is the components' (backbone, then objective), so the i-th tensor is the i-th saved one;
  // its name and shape are checked all the same.
  void restore() const {
    c10::NoGradGuard no_grad;
    size_t next = 0;
    encoder_.visit_tensors([&](cfamc_tensor_role, const std::string& name, const at::Tensor& value) {
      if (next >= saved_.size() || saved_[next].first != name || saved_[next].second.sizes() != value.sizes()) {
        fail(ExitCode::plugin, "the encoder's tensor '" + name + "' changed its name or shape during an evaluation");
      }
      value.copy_(saved_[next++].second);
    });
    encoder_.set_training(false);
  }

 private:
  const EvalEncoder& encoder_;
  std::vector<std::pair<std::string, at::Tensor>> saved_;
};

DatasetSplit prepare_split(ImageSet set, int64_t subset, const DataConfig& config, const std::string& device) {
  if (subset > 0 && subset < set.images.size(0)) {
    set.images = set.images.slice(0, 0, subset);
    set.labels = set.labels.slice(0, 0, subset);
  }
  if (config.channels == "rgb" && set.images.size(1) == 1) set.images = set.images.expand({-1, 3, -1, -1});
  return DatasetSplit{set.images.contiguous().to(device), set.labels.to(device)};
}

// The rows of `split` that have a label (all of them but STL-10's unlabeled images).
DatasetSplit labeled_rows(const DatasetSplit& split) {
  const at::Tensor labeled = split.labels.ge(0);
  if (labeled.all().item<bool>()) return split;
  const at::Tensor rows = labeled.nonzero().squeeze(1);
  return DatasetSplit{split.images.index_select(0, rows), split.labels.index_select(0, rows)};
}

}  // namespace

EvaluationData load_evaluation_data(const DataConfig& config, const std::string& device) {
  const DatasetSpec spec{config.dataset, config.root};
  EvaluationData data;
  data.pretrain = prepare_split(load_split(spec, config.train_split), config.train_subset, config, device);
  data.train = labeled_rows(data.pretrain);
  data.test = prepare_split(load_split(spec, "test"), config.test_subset, config, device);
  const std::string labeled = data.train.images.size(0) == data.pretrain.images.size(0)
                                  ? ""
                                  : " (" + std::to_string(data.train.images.size(0)) + " of them labeled)";
  log(LogLevel::info, config.dataset + ": " + std::to_string(data.pretrain.images.size(0)) + " training images" +
                          labeled + " and " + std::to_string(data.test.images.size(0)) + " test images of " +
                          c10::str(data.pretrain.images.sizes().slice(1)) + " on " + device);
  return data;
}

json run_evaluation(const Evaluation& evaluation, const Assembly& assembly, const EvaluationData& data,
                    const RunConfig& config, Precision precision, const std::filesystem::path& run_dir) {
  json results = json::object();
  for (const auto& [component, evaluator] : evaluation.evaluators) {
    const std::string id = component->id + suffix_of(evaluation.pass);
    EvalServices services(encoder_for(evaluation.pass, assembly, data, *component),
                          {{"train", data.train}, {"test", data.test}, {"pretrain", data.pretrain}},
                          evaluation.attacks_for(*component, config), run_dir / "artifacts" / id,
                          view_maker_for(*component, config));
    services.set_classifier_saver(classifier_saver(config, *component));
    const auto start = std::chrono::steady_clock::now();
    const EncoderSnapshot snapshot(services.encoder());
    try {
      const AutocastScope autocast(precision, data.test.images.device().type());
      evaluator->evaluate(*services.get());
    } catch (...) {
      snapshot.restore();  // the next command in this process (a test, a later pass) sees the encoder intact
      throw;
    }
    snapshot.restore();
    json metrics = services.metrics();
    metrics["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    add_robustness_curve(metrics, *component, config, id, run_dir);
    log(LogLevel::info, "evaluation " + id + ": " + services.metrics().dump());
    results[id] = metrics;
  }
  return results;
}

json run_controls(const Assembly& assembly, const EvaluationData& data, const RunConfig& config,
                  const Registry& registry, const Compute& compute, const std::filesystem::path& run_dir) {
  json results = json::object();
  int64_t pixels_dim = 1;
  for (int64_t size : image_shape(data)) pixels_dim *= size;
  for (const auto& [pass, feature_dim] : {std::pair{EvaluationPass::untrained, assembly.backbone->feature_dim()},
                                          std::pair{EvaluationPass::pixels, pixels_dim}}) {
    const Evaluation controls = assemble_evaluation(config, registry, compute.device, feature_dim, pass);
    if (controls.evaluators.empty()) continue;
    results.update(run_evaluation(controls, assembly, data, config, compute.precision, run_dir));
  }
  return results;
}

}  // namespace cfamc::host
