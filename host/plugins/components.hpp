// Host-side handles to plugin components: each owns one object made by a plugin's `create`, calls it
// through the kind's C table, and turns a returned error into Failure(plugin) naming the component.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "plugins/context.hpp"
#include "plugins/registry.hpp"
#include "tensor_map.hpp"

namespace cfamc::host {

// Owned handles behind a cfamc_named_tensors for the duration of one call.
class NamedTensorsView {
 public:
  explicit NamedTensorsView(const TensorMap& map);
  ~NamedTensorsView();
  NamedTensorsView(const NamedTensorsView&) = delete;
  NamedTensorsView& operator=(const NamedTensorsView&) = delete;
  const cfamc_named_tensors* get() const { return &view_; }

 private:
  std::vector<const char*> names_;
  std::vector<cfamc_tensor*> handles_;
  cfamc_named_tensors view_{};
};

TensorMap to_map(const cfamc_named_tensors* named);

// A cfamc_tensor_sink that collects into a TensorMap.
class TensorCollector {
 public:
  TensorCollector();
  const cfamc_tensor_sink* sink() const { return &sink_; }
  TensorMap take() { return std::move(map_); }

 private:
  static cfamc_error* put(void* self, const char* name, cfamc_tensor* tensor);
  TensorMap map_;
  cfamc_tensor_sink sink_{};
};

// Where a component lives and what it was given.
struct ComponentSetup {
  std::string label;    // "backbone", "attack", "evaluate.knn"
  toml::table options;  // validated and defaulted
  uint64_t seed = 0;
  std::string device = "cpu";
  int64_t feature_dim = 0;  // the backbone's, for components that build heads on it
  StageLayout stages;       // the backbone's stages (ABI 1.3), for the objective
};

class Component {
 public:
  Component(std::shared_ptr<const PluginLibrary> library, const ComponentInfo& info, ComponentSetup setup);
  virtual ~Component();
  Component(const Component&) = delete;
  Component& operator=(const Component&) = delete;

  const ComponentInfo& info() const { return info_; }
  const std::string& who() const { return who_; }  // "plugin 'pgd' (attack)"
  uint32_t abi_minor() const;                       // of the ABI its library was built against
  // The component's tensors of one role (parameters, buffers, state) by name; they alias its own.
  TensorMap tensors(cfamc_tensor_role role) const;
  std::vector<at::Tensor> parameters() const;
  void set_training(bool training);

 protected:
  template <class Table>
  const Table& table() const {
    return *static_cast<const Table*>(info_.vtable);
  }
  // Whether the plugin's table reaches the function pointer at `offset` (an optional or later-added
  // entry); the caller still checks it for NULL.
  bool reaches(size_t offset) const {
    return static_cast<const cfamc_component_vtable*>(info_.vtable)->struct_size >= offset + sizeof(void*);
  }
  void check(cfamc_error* error) const { check_plugin(error, who_); }
  void* self() const { return self_; }
  const cfamc_context& context() const { return *context_; }
  const PluginLibrary& library() const { return *library_; }

 private:
  std::shared_ptr<const PluginLibrary> library_;  // keeps the code of `self_` loaded
  const ComponentInfo& info_;
  std::unique_ptr<cfamc_context> context_;
  std::string who_;
  void* self_ = nullptr;
};

class Backbone : public Component {
 public:
  using Component::Component;
  at::Tensor forward(const at::Tensor& x, int32_t branch = 0) const;
  int64_t feature_dim() const;
  int32_t num_branches() const;
  // The tensors under the names of the network's reference implementation, BatchNorm set `branch` only
  // (ABI 1.2; an older plugin's parameters and buffers under their own names).
  TensorMap export_tensors(int32_t branch) const;
  // ABI 1.3: the stages the backbone offers (count 0 for a plugin built against an older minor, or one that
  // offers none), and running it from stage `from` to `to` (a stage or CFAMC_STAGE_FEATURE) with copy `copy`
  // of the last stage; Failure(plugin) for a backbone without stages or arguments out of range.
  StageLayout stages() const;
  at::Tensor forward_stages(const at::Tensor& x, int32_t from, int32_t to, int32_t copy = 0, int32_t branch = 0) const;
  // The callback objectives call; valid while this backbone lives.
  cfamc_encoder encoder() const;

 private:
  bool offers_stages() const;
  // Why the encoder cannot run these stages (an error for the caller), or NULL when it can.
  cfamc_error* refuse_stages(int32_t branch, int32_t from, int32_t to, int32_t copy) const;
};

struct LossResult {
  at::Tensor loss;
  TensorMap scalars;
};

class Objective : public Component {
 public:
  using Component::Component;
  std::vector<std::string> view_groups() const;
  std::vector<std::string> attacked_inputs() const;
  TensorMap prepare(const TensorMap& views, const at::Tensor& sample_indices) const;
  // `adversarial` empty: clean training.
  LossResult loss(const Backbone& backbone, const TensorMap& clean, const TensorMap& adversarial,
                  cfamc_phase phase) const;
  at::Tensor represent(const at::Tensor& features) const;
  int64_t representation_dim(int64_t feature_dim) const;

 private:
  bool has_representation() const;
};

class Attack : public Component {
 public:
  using Component::Component;
  int32_t replays() const;
  TensorMap perturb(const cfamc_oracle& oracle, const TensorMap& inputs) const;
  bool observes() const;
  void observe(const TensorMap& input_gradients) const;
};

class Evaluator : public Component {
 public:
  using Component::Component;
  void evaluate(const cfamc_eval_services& services) const;
};

// Makes a component of kind K (Backbone, ...) from `info`; Failure(plugin) if its `create` fails.
template <class K>
std::unique_ptr<K> instantiate(const Registry& registry, const ComponentInfo& info, ComponentSetup setup) {
  return std::make_unique<K>(registry.owner(info), info, std::move(setup));
}

}  // namespace cfamc::host
