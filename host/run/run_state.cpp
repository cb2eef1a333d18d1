#include "run/run_state.hpp"

#include <ATen/ops/scalar_tensor.h>
#include <c10/core/GradMode.h>

#include "failure.hpp"
#include "log.hpp"
#include "run/model_file.hpp"
#include "train/checkpoint.hpp"

namespace cfamc::host {
namespace {

constexpr const char* kStep = "trainer/step";
constexpr const char* kAugmentRng = "trainer/augment_rng";

void copy_into(at::Tensor& live, const at::Tensor& saved, const std::string& name, const std::filesystem::path& file) {
  if (saved.sizes() != live.sizes()) {
    fail(ExitCode::other, "resume: '" + name + "' has shape " + c10::str(saved.sizes()) + " in " + file.string() +
                              " but " + c10::str(live.sizes()) + " in this run");
  }
  live.copy_(saved);
}

}  // namespace

RunState::RunState(const RunConfig& config, const Assembly& assembly, Optimizer& optimizer, at::Generator& augment)
    : config_(config), assembly_(assembly), optimizer_(optimizer), augment_(augment) {}

TensorMap RunState::gather(int64_t step) const {
  TensorMap out;
  for (const auto& [place, component] : assembly_.checkpointed(config_))
    for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER, CFAMC_ROLE_STATE})
      for (const auto& item : component->tensors(role)) out.insert(place->label + "/" + item.key(), item.value());
  for (const auto& item : optimizer_.state()) out.insert("optimizer/" + item.key(), item.value());
  out.insert(kStep, at::scalar_tensor(step, at::kLong));
  out.insert(kAugmentRng, augment_.get_state());
  add_model_description(out, describe_model(config_));
  return out;
}

int64_t RunState::restore(const TensorMap& saved, const std::filesystem::path& file) {
  c10::NoGradGuard no_grad;
  const auto saved_tensor = [&](const std::string& name) -> const at::Tensor* {
    if (saved.contains(name)) return &saved[name];
    fail(ExitCode::other, "resume: checkpoint " + file.string() + " lacks '" + name + "'; was it made by another run file?");
  };
  for (const auto& [place, component] : assembly_.checkpointed(config_)) {
    const bool attack = kind_of(place->role) == CFAMC_KIND_ATTACK;
    for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER, CFAMC_ROLE_STATE}) {
      for (auto& item : component->tensors(role)) {
        const std::string name = place->label + "/" + item.key();
        if (attack && !saved.contains(name)) {
          log(LogLevel::warn, "resume: " + file.string() + " has no '" + name + "' (another attack?); starting it fresh");
        } else if (attack) {
          // An attack's state may change shape (free training's perturbation follows the batch), never type.
          if (saved[name].scalar_type() != item.value().scalar_type()) {
            fail(ExitCode::other, "resume: " + file.string() + " holds '" + name + "' as " +
                                      std::string(c10::toString(saved[name].scalar_type())) + ", but the attack keeps it as " +
                                      c10::toString(item.value().scalar_type()) + "; was it made by another attack?");
          }
          item.value().set_data(saved[name].to(item.value().device()));
        } else {
          copy_into(item.value(), *saved_tensor(name), name, file);
        }
      }
    }
  }
  for (auto& item : optimizer_.state()) copy_into(item.value(), *saved_tensor("optimizer/" + item.key()), item.key(), file);
  augment_.set_state(*saved_tensor(kAugmentRng));
  return saved_tensor(kStep)->item<int64_t>();
}

}  // namespace cfamc::host
