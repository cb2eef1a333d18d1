#include "eval/eval_services.hpp"

#include <cstring>
#include <sstream>

#include "failure.hpp"
#include "plugins/tensor_handle.hpp"

namespace cfamc::host {
namespace {

EvalServices& of(void* self) { return *static_cast<EvalServices*>(self); }

}  // namespace

EvalServices::EvalServices(Backbone& backbone, Objective* objective,
                           std::map<std::string, DatasetSplit> splits,
                           std::vector<std::pair<std::string, const Attack*>> attacks,
                           std::filesystem::path artifact_dir, ViewMaker view_maker)
    : backbone_(backbone),
      objective_(objective),
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
    return guarded([&] { *out = make_handle(of(self).encode(which, x->tensor)); });
  };
  services_.feature_dim = [](void* self, cfamc_feature which) -> int64_t {
    auto& s = of(self);
    const int64_t dim = s.backbone_.feature_dim();
    if (which == CFAMC_FEATURE_REPRESENTATION && s.objective_) return s.objective_->representation_dim(dim);
    return dim;
  };
  services_.set_encoder_training = [](void* self, int32_t training) {
    auto& s = of(self);
    s.backbone_.set_training(training != 0);
    if (s.objective_) s.objective_->set_training(training != 0);
  };
  services_.encoder_tensors = [](void* self, const cfamc_tensor_visitor* visitor) {
    auto& s = of(self);
    auto visit = [&](const Component& c) {
      for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER, CFAMC_ROLE_STATE}) {
        for (const auto& item : c.tensors(role)) {
          cfamc_tensor handle{item.value()};
          visitor->visit(visitor->self, role, item.key().c_str(), &handle);
        }
      }
    };
    visit(s.backbone_);
    if (s.objective_) visit(*s.objective_);
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
    return index < s.attacks_.size() ? s.attacks_[index].first.c_str() : nullptr;
  };
  services_.attack = [](void* self, const char* id, const cfamc_oracle* oracle, const cfamc_tensor* x,
                        cfamc_tensor** out) {
    auto& s = of(self);
    for (const auto& [name, attack] : s.attacks_) {
      if (name != (id ? id : "")) continue;
      return guarded([&] {
        TensorMap inputs;
        inputs.insert("x", x->tensor);
        *out = make_handle(attack->perturb(*oracle, inputs)["x"]);
      });
    }
    return make_error(CFAMC_ERROR_INVALID_ARGUMENT, std::string("no attack '") + (id ? id : "") +
                                                        "' is configured for this evaluator");
  };
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
}

at::Tensor EvalServices::encode(cfamc_feature which, const at::Tensor& x) const {
  at::Tensor features = backbone_.forward(x, 0);
  if (which == CFAMC_FEATURE_REPRESENTATION && objective_ != nullptr) return objective_->represent(features);
  return features;
}

}  // namespace cfamc::host
