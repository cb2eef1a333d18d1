#include "eval/eval_services.hpp"

#include <cstring>
#include <string>
#include <sstream>

#include "dist/world.hpp"
#include "failure.hpp"
#include "plugins/tensor_handle.hpp"

namespace cfamc::host {
namespace {

EvalServices& of(void* self) { return *static_cast<EvalServices*>(self); }

class ComponentEncoder : public EvalEncoder {
 public:
  ComponentEncoder(Backbone& backbone, Objective* objective, int32_t branch)
      : backbone_(backbone), objective_(objective), branch_(branch) {
    if (branch < 0 || branch >= backbone.num_branches()) {
      fail(ExitCode::usage, "bn_branch = " + std::to_string(branch) + ", but " + backbone.who() + " has " +
                                std::to_string(backbone.num_branches()) +
                                " BatchNorm set(s) (numbered from 0; its `branches` option, where it has one)");
    }
  }

  at::Tensor encode(cfamc_feature which, const at::Tensor& x) const override {
    at::Tensor features = backbone_.forward(x, branch_);
    if (which == CFAMC_FEATURE_REPRESENTATION && objective_ != nullptr) return objective_->represent(features);
    return features;
  }
  int64_t feature_dim(cfamc_feature which) const override {
    const int64_t dim = backbone_.feature_dim();
    if (which == CFAMC_FEATURE_REPRESENTATION && objective_ != nullptr) return objective_->representation_dim(dim);
    return dim;
  }
  void set_training(bool training) const override {
    backbone_.set_training(training);
    if (objective_ != nullptr) objective_->set_training(training);
  }
  void visit_tensors(const TensorVisitor& visit) const override {
    auto visit_component = [&](const Component& c) {
      for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER, CFAMC_ROLE_STATE})
        for (const auto& item : c.tensors(role)) visit(role, item.key(), item.value());
    };
    visit_component(backbone_);
    if (objective_ != nullptr) visit_component(*objective_);
  }
  const Backbone* backbone() const override { return &backbone_; }

 private:
  Backbone& backbone_;
  Objective* objective_;
  int32_t branch_;
};

std::string shape_text(at::IntArrayRef shape) {
  std::string text;
  for (int64_t size : shape) text += (text.empty() ? "" : "x") + std::to_string(size);
  return text;
}

class PixelEncoder : public EvalEncoder {
 public:
  explicit PixelEncoder(std::vector<int64_t> image_shape) : shape_(std::move(image_shape)) {
    for (int64_t size : shape_) dim_ *= size;
  }

  // A reshape, not a copy through a detached tensor: the attacks differentiate through it.
  at::Tensor encode(cfamc_feature, const at::Tensor& x) const override {
    if (x.dim() != static_cast<int64_t>(shape_.size()) + 1 || !x.sizes().slice(1).equals(shape_)) {
      fail(ExitCode::usage, "control = \"pixels\" encodes images of the dataset's shape " + shape_text(shape_) +
                                ", not " + shape_text(x.sizes().slice(x.dim() > 0 ? 1 : 0)) +
                                " (views of another size, as multicrop's view groups may make, have no pixel "
                                "control; use control = true for this evaluator)");
    }
    return x.reshape({x.size(0), dim_});
  }
  int64_t feature_dim(cfamc_feature) const override { return dim_; }
  void set_training(bool) const override {}
  void visit_tensors(const TensorVisitor&) const override {}
  const Backbone* backbone() const override { return nullptr; }

 private:
  std::vector<int64_t> shape_;
  int64_t dim_ = 1;
};

}  // namespace

std::unique_ptr<EvalEncoder> component_encoder(Backbone& backbone, Objective* objective, int32_t branch) {
  return std::make_unique<ComponentEncoder>(backbone, objective, branch);
}

std::unique_ptr<EvalEncoder> pixel_encoder(std::vector<int64_t> image_shape) {
  return std::make_unique<PixelEncoder>(std::move(image_shape));
}

EvalServices::EvalServices(Backbone& backbone, Objective* objective,
                           std::map<std::string, DatasetSplit> splits,
                           std::vector<EvalAttack> attacks, std::filesystem::path artifact_dir,
                           ViewMaker view_maker)
    : EvalServices(component_encoder(backbone, objective), std::move(splits), std::move(attacks),
                   std::move(artifact_dir), std::move(view_maker)) {}

EvalServices::EvalServices(std::unique_ptr<EvalEncoder> encoder, std::map<std::string, DatasetSplit> splits,
                           std::vector<EvalAttack> attacks, std::filesystem::path artifact_dir, ViewMaker view_maker)
    : encoder_(std::move(encoder)),
      splits_(std::move(splits)),
      attacks_(std::move(attacks)),
      artifact_dir_(std::move(artifact_dir)),
      view_maker_(std::move(view_maker)) {
  services_.struct_size = sizeof(cfamc_eval_services);
  services_.self = this;
  offer_data_and_encoder();
  offer_attacks();
  offer_outputs();
}

void EvalServices::offer_data_and_encoder() {
  services_.dataset = [](void* self, const char* split, cfamc_tensor** images, cfamc_tensor** labels) {
    auto& s = of(self);
    auto it = s.splits_.find(split ? split : "");
    if (it == s.splits_.end()) {
      std::string known;
      for (const auto& [name, _] : s.splits_) known += (known.empty() ? "" : ", ") + name;
      return make_error(CFAMC_ERROR_INVALID_ARGUMENT,
                        std::string("no dataset split '") + (split ? split : "") + "' (have: " + known + ")");
    }
    *images = make_handle(it->second.images);
    *labels = make_handle(it->second.labels);
    return static_cast<cfamc_error*>(nullptr);
  };
  services_.encode = [](void* self, cfamc_feature which, const cfamc_tensor* x, cfamc_tensor** out) {
    return guarded([&] { *out = make_handle(of(self).encoder_->encode(which, x->tensor)); });
  };
  services_.feature_dim = [](void* self, cfamc_feature which) -> int64_t {
    return of(self).encoder_->feature_dim(which);
  };
  services_.set_encoder_training = [](void* self, int32_t training) {
    of(self).encoder_->set_training(training != 0);
  };
  services_.encoder_tensors = [](void* self, const cfamc_tensor_visitor* visitor) {
    of(self).encoder_->visit_tensors([&](cfamc_tensor_role role, const std::string& name, const at::Tensor& value) {
      cfamc_tensor handle{value};
      visitor->visit(visitor->self, role, name.c_str(), &handle);
    });
  };
  services_.make_views = [](void* self, const char* group, const cfamc_tensor* images, cfamc_tensor** out) {
    auto& s = of(self);
    if (!s.view_maker_) {
      return make_error(CFAMC_ERROR_UNSUPPORTED, std::string("no view group '") + (group ? group : "") +
                                                     "' is defined for evaluation in this run");
    }
    return guarded([&] { *out = make_handle(s.view_maker_(group ? group : "", images->tensor)); });
  };
}

void EvalServices::offer_attacks() {
  services_.num_attacks = [](void* self) { return of(self).attacks_.size(); };
  services_.attack_id = [](void* self, size_t index) -> const char* {
    auto& s = of(self);
    return index < s.attacks_.size() ? s.attacks_[index].id.c_str() : nullptr;
  };
  services_.attack = [](void* self, const char* id, const cfamc_oracle* oracle, const cfamc_tensor* x,
                        cfamc_tensor** out) {
    auto& s = of(self);
    for (const auto& attack : s.attacks_) {
      if (attack.id != (id ? id : "")) continue;
      return guarded([&] { *out = make_handle(s.run_attack(attack, *oracle, x->tensor)); });
    }
    return make_error(CFAMC_ERROR_INVALID_ARGUMENT, std::string("no attack '") + (id ? id : "") +
                                                        "' is configured for this evaluator");
  };
}

at::Tensor EvalServices::run_attack(const EvalAttack& attack, const cfamc_oracle& oracle, const at::Tensor& x) {
  if (attack.attack != nullptr) {
    TensorMap inputs;
    inputs.insert("x", x);
    return attack.attack->perturb(oracle, inputs)["x"];
  }
  auto run = sequence_runs_.try_emplace(attack.id, attack.id, attack.sequence).first;
  at::Tensor adversarial = run->second.perturb(oracle, x);
  metrics_["attack_sequences"][attack.id] = run->second.report();
  return adversarial;
}

void EvalServices::save_classifier(const std::string& name, const TensorMap& head) const {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    fail(ExitCode::plugin, "save_classifier: '" + name + "' is not a file name (the artifact stays in its folder)");
  }
  const Backbone* backbone = encoder_->backbone();
  if (!classifier_saver_ || backbone == nullptr) {
    fail(ExitCode::plugin, "save_classifier: this evaluation has no encoder to save (a control, or no saver)");
  }
  if (!head.contains("weight") || !head.contains("bias") || head["weight"].dim() != 2 ||
      head["weight"].size(1) != backbone->feature_dim() || head["bias"].dim() != 1 ||
      head["bias"].size(0) != head["weight"].size(0)) {
    fail(ExitCode::plugin, "save_classifier: the head must be \"weight\" [C, " + std::to_string(backbone->feature_dim()) +
                               "] and \"bias\" [C] on the backbone feature");
  }
  // Every process of a data-parallel job holds the same classifier; rank 0 writes the run directory.
  if (World::get() && World::get()->rank() != 0) return;
  classifier_saver_(artifact_dir_ / name, *backbone, head);
}

void EvalServices::offer_outputs() {
  services_.report = [](void* self, const char* key, double value) {
    nlohmann::json* node = &of(self).metrics_;
    std::istringstream path(key ? key : "value");
    std::string part;
    std::vector<std::string> parts;
    while (std::getline(path, part, '/')) parts.push_back(part);
    for (size_t i = 0; i + 1 < parts.size(); ++i) node = &(*node)[parts[i]];
    (*node)[parts.empty() ? "value" : parts.back()] = value;
  };
  services_.artifact_path = [](void* self, const char* name, char* buffer, size_t capacity) -> size_t {
    const std::string path = (of(self).artifact_dir_ / (name ? name : "artifact")).string();
    if (buffer != nullptr && capacity > 0) {
      const size_t n = std::min(path.size(), capacity - 1);
      std::memcpy(buffer, path.data(), n);
      buffer[n] = '\0';
    }
    return path.size();
  };
  services_.save_classifier = [](void* self, const char* name, const cfamc_named_tensors* head) {
    return guarded([&] { of(self).save_classifier(name ? name : "classifier.pt", to_map(head)); });
  };
}

}  // namespace cfamc::host
