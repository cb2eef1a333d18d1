#include "plugins/components.hpp"

#include <cstddef>

#include "failure.hpp"
#include "plugins/tensor_handle.hpp"

namespace cfamc::host {

NamedTensorsView::NamedTensorsView(const TensorMap& map) {
  for (const auto& item : map) {
    names_.push_back(item.key().c_str());
    handles_.push_back(make_handle(item.value()));
  }
  view_ = {sizeof(cfamc_named_tensors), handles_.size(), names_.data(), handles_.data()};
}

NamedTensorsView::~NamedTensorsView() {
  for (cfamc_tensor* h : handles_) delete h;
}

TensorMap to_map(const cfamc_named_tensors* named) {
  TensorMap map;
  if (named == nullptr) return map;
  for (size_t i = 0; i < named->count; ++i) map.insert(named->names[i], named->tensors[i]->tensor);
  return map;
}

TensorCollector::TensorCollector() { sink_ = {sizeof(cfamc_tensor_sink), this, &TensorCollector::put}; }

cfamc_error* TensorCollector::put(void* self, const char* name, cfamc_tensor* tensor) {
  auto* collector = static_cast<TensorCollector*>(self);
  at::Tensor value = adopt(tensor);
  if (name == nullptr) return make_error(CFAMC_ERROR_INVALID_ARGUMENT, "tensor sink: NULL name");
  if (collector->map_.contains(name)) {
    return make_error(CFAMC_ERROR_INVALID_ARGUMENT, std::string("tensor sink: '") + name + "' put twice");
  }
  collector->map_.insert(name, std::move(value));
  return nullptr;
}

// ---- Component -----------------------------------------------------------------------------------------

Component::Component(std::shared_ptr<const PluginLibrary> library, const ComponentInfo& info,
                     ComponentSetup setup)
    : library_(std::move(library)),
      info_(info),
      context_(std::make_unique<cfamc_context>()),
      who_("plugin '" + info.name + "' (" + setup.label + ")") {
  context_->plugin = info.name;
  context_->label = setup.label;
  context_->options = std::move(setup.options);
  context_->seed = setup.seed;
  context_->device = setup.device;
  context_->feature_dim = setup.feature_dim;
  context_->stages = std::move(setup.stages);
  check(table<cfamc_component_vtable>().create(context_.get(), &self_));
  if (self_ == nullptr) fail(ExitCode::plugin, who_ + ": create returned no object");
}

uint32_t Component::abi_minor() const { return library_->abi_minor(); }

Component::~Component() {
  if (self_ != nullptr) table<cfamc_component_vtable>().destroy(self_);
}

TensorMap Component::tensors(cfamc_tensor_role role) const {
  // The visitor runs inside the plugin's call: it must not throw, so a duplicate is noted and failed after.
  struct Visit {
    cfamc_tensor_role role;
    TensorMap out;
    std::string duplicate;
  } visit{role, {}, {}};
  const auto& t = table<cfamc_component_vtable>();
  if (!reaches(offsetof(cfamc_component_vtable, named_tensors)) || t.named_tensors == nullptr) return visit.out;
  cfamc_tensor_visitor visitor{sizeof(cfamc_tensor_visitor), &visit,
                               [](void* self, cfamc_tensor_role role, const char* name, const cfamc_tensor* tensor) {
                                 auto* v = static_cast<Visit*>(self);
                                 const std::string key = name ? name : "";
                                 if (role != v->role) return;
                                 if (v->out.contains(key)) v->duplicate = key;
                                 else v->out.insert(key, tensor->tensor);
                               }};
  t.named_tensors(self_, &visitor);
  if (!visit.duplicate.empty()) fail(ExitCode::plugin, who_ + ": two tensors named '" + visit.duplicate + "'");
  return visit.out;
}

std::vector<at::Tensor> Component::parameters() const { return tensors(CFAMC_ROLE_PARAMETER).values(); }

void Component::set_training(bool training) {
  const auto& t = table<cfamc_component_vtable>();
  if (reaches(offsetof(cfamc_component_vtable, set_training)) && t.set_training) t.set_training(self_, training);
}

// ---- Backbone ------------------------------------------------------------------------------------------

at::Tensor Backbone::forward(const at::Tensor& x, int32_t branch) const {
  cfamc_tensor input{x};
  cfamc_tensor* out = nullptr;
  check(table<cfamc_backbone_vtable>().forward(self(), &input, branch, &out));
  if (out == nullptr) fail(ExitCode::plugin, who() + ": forward returned no tensor");
  return adopt(out);
}

int64_t Backbone::feature_dim() const { return table<cfamc_backbone_vtable>().feature_dim(self()); }
int32_t Backbone::num_branches() const { return table<cfamc_backbone_vtable>().num_branches(self()); }

TensorMap Backbone::export_tensors(int32_t branch) const {
  const auto& t = table<cfamc_backbone_vtable>();
  if (!reaches(offsetof(cfamc_backbone_vtable, export_tensors)) || t.export_tensors == nullptr) {
    TensorMap out = tensors(CFAMC_ROLE_PARAMETER);
    for (const auto& item : tensors(CFAMC_ROLE_BUFFER)) out.insert(item.key(), item.value());
    return out;
  }
  struct Visit {
    TensorMap out;
    std::string duplicate;
  } visit;
  cfamc_tensor_visitor visitor{sizeof(cfamc_tensor_visitor), &visit,
                               [](void* self, cfamc_tensor_role, const char* name, const cfamc_tensor* tensor) {
                                 auto* v = static_cast<Visit*>(self);
                                 const std::string key = name ? name : "";
                                 if (v->out.contains(key)) v->duplicate = key;
                                 else v->out.insert(key, tensor->tensor);
                               }};
  check(t.export_tensors(self(), branch, &visitor));
  if (!visit.duplicate.empty()) fail(ExitCode::plugin, who() + ": exports two tensors named '" + visit.duplicate + "'");
  return visit.out;
}

bool Backbone::offers_stages() const {
  const auto& t = table<cfamc_backbone_vtable>();
  return reaches(offsetof(cfamc_backbone_vtable, forward_stages)) && t.num_stages && t.num_stage_copies &&
         t.stage_channels && t.forward_stages && t.num_stages(self()) > 0;
}

StageLayout Backbone::stages() const {
  StageLayout layout;
  if (!offers_stages()) return layout;
  const auto& t = table<cfamc_backbone_vtable>();
  layout.count = t.num_stages(self());
  layout.copies = t.num_stage_copies(self());
  if (layout.copies < 1) fail(ExitCode::plugin, who() + ": num_stage_copies is " + std::to_string(layout.copies) + ", not at least 1");
  for (int32_t stage = 0; stage <= layout.count; ++stage) layout.channels.push_back(t.stage_channels(self(), stage));
  return layout;
}

namespace {
std::string stage_name(int32_t stage) {
  return stage == CFAMC_STAGE_FEATURE ? "the feature" : "stage " + std::to_string(stage);
}
}  // namespace

cfamc_error* Backbone::refuse_stages(int32_t branch, int32_t from, int32_t to, int32_t copy) const {
  if (!offers_stages()) {
    const bool older = !reaches(offsetof(cfamc_backbone_vtable, forward_stages));
    return make_error(CFAMC_ERROR_UNSUPPORTED,
                      who() + " offers no stages" +
                          (older ? " (it was built against plugin ABI " + std::to_string(library().abi_major()) + "." +
                                       std::to_string(library().abi_minor()) + "; stages came in 1.3)"
                                 : "") +
                          ", which this objective needs to run the backbone by stages: use a backbone that offers "
                          "them, such as resnet18 or resnet50v2");
  }
  const auto& t = table<cfamc_backbone_vtable>();
  const int32_t count = t.num_stages(self()), copies = t.num_stage_copies(self());
  std::string problem;
  if (branch < 0 || branch >= num_branches()) {
    problem = "branch " + std::to_string(branch) + " of a backbone with " + std::to_string(num_branches()) + " BatchNorm sets";
  } else if (from < 0 || from > count || (to != CFAMC_STAGE_FEATURE && (to <= from || to > count))) {
    problem = "from " + stage_name(from) + " to " + stage_name(to) + " of a backbone with stages 0.." +
              std::to_string(count) + " (the end must come after the start)";
  } else if (copy < 0 || copy >= copies) {
    problem = "copy " + std::to_string(copy) + " of the last stage, of which the backbone has " + std::to_string(copies);
  }
  return problem.empty() ? nullptr : make_error(CFAMC_ERROR_INVALID_ARGUMENT, who() + ": " + problem);
}

at::Tensor Backbone::forward_stages(const at::Tensor& x, int32_t from, int32_t to, int32_t copy, int32_t branch) const {
  if (cfamc_error* refused = refuse_stages(branch, from, to, copy)) {
    const std::string message = refused->message;
    delete refused;
    fail(ExitCode::plugin, message);
  }
  cfamc_tensor input{x};
  cfamc_tensor* out = nullptr;
  check(table<cfamc_backbone_vtable>().forward_stages(self(), &input, branch, from, to, copy, &out));
  if (out == nullptr) fail(ExitCode::plugin, who() + ": forward_stages returned no tensor");
  return adopt(out);
}

cfamc_encoder Backbone::encoder() const {
  const StageLayout layout = stages();
  cfamc_encoder encoder{sizeof(cfamc_encoder), const_cast<Backbone*>(this), feature_dim(), num_branches(),
                        [](void* self, const cfamc_tensor* x, int32_t branch, cfamc_tensor** out) -> cfamc_error* {
                          auto* backbone = static_cast<Backbone*>(self);
                          if (branch < 0 || branch >= backbone->num_branches()) {
                            return make_error(CFAMC_ERROR_INVALID_ARGUMENT,
                                              "encoder: branch " + std::to_string(branch) + " of a backbone with " +
                                                  std::to_string(backbone->num_branches()) + " BatchNorm sets");
                          }
                          return backbone->table<cfamc_backbone_vtable>().forward(backbone->self(), x, branch, out);
                        }};
  encoder.num_stages = layout.count;
  encoder.num_stage_copies = layout.copies;
  encoder.stage_channels = [](void* self, int32_t stage) -> int64_t {
    auto* backbone = static_cast<Backbone*>(self);
    if (!backbone->offers_stages()) return 0;
    if (stage == CFAMC_STAGE_FEATURE) return backbone->feature_dim();
    const int32_t count = backbone->table<cfamc_backbone_vtable>().num_stages(backbone->self());
    return stage < 0 || stage > count ? 0 : backbone->table<cfamc_backbone_vtable>().stage_channels(backbone->self(), stage);
  };
  encoder.encode_stages = [](void* self, const cfamc_tensor* x, int32_t branch, int32_t from, int32_t to, int32_t copy,
                             cfamc_tensor** out) -> cfamc_error* {
    auto* backbone = static_cast<Backbone*>(self);
    if (cfamc_error* refused = backbone->refuse_stages(branch, from, to, copy)) return refused;
    return backbone->table<cfamc_backbone_vtable>().forward_stages(backbone->self(), x, branch, from, to, copy, out);
  };
  return encoder;
}

// ---- Objective -----------------------------------------------------------------------------------------

namespace {
std::vector<std::string> names_from(size_t count, const char* const* names) {
  std::vector<std::string> out;
  for (size_t i = 0; i < count; ++i) out.emplace_back(names[i]);
  return out;
}
}  // namespace

std::vector<std::string> Objective::view_groups() const {
  const char* const* names = nullptr;
  const size_t n = table<cfamc_objective_vtable>().view_groups(self(), &names);
  return names_from(n, names);
}

std::vector<std::string> Objective::attacked_inputs() const {
  const char* const* names = nullptr;
  const size_t n = table<cfamc_objective_vtable>().attacked_inputs(self(), &names);
  return names_from(n, names);
}

TensorMap Objective::prepare(const TensorMap& views, const at::Tensor& sample_indices) const {
  const auto& t = table<cfamc_objective_vtable>();
  if (!reaches(offsetof(cfamc_objective_vtable, prepare)) || t.prepare == nullptr) return views;
  NamedTensorsView in(views);
  cfamc_tensor indices{sample_indices};
  TensorCollector out;
  check(t.prepare(self(), in.get(), sample_indices.defined() ? &indices : nullptr, out.sink()));
  return out.take();
}

LossResult Objective::loss(const Backbone& backbone, const TensorMap& clean, const TensorMap& adversarial,
                           cfamc_phase phase) const {
  const cfamc_encoder encoder = backbone.encoder();
  NamedTensorsView clean_arg(clean);
  NamedTensorsView adv_arg(adversarial);
  TensorCollector scalars;
  cfamc_tensor* out = nullptr;
  check(table<cfamc_objective_vtable>().loss(self(), &encoder, clean_arg.get(),
                                             adversarial.is_empty() ? nullptr : adv_arg.get(), phase,
                                             scalars.sink(), &out));
  if (out == nullptr) fail(ExitCode::plugin, who() + ": loss returned no tensor");
  return LossResult{adopt(out), scalars.take()};
}

bool Objective::has_representation() const {
  return reaches(offsetof(cfamc_objective_vtable, represent)) && table<cfamc_objective_vtable>().represent;
}

at::Tensor Objective::represent(const at::Tensor& features) const {
  if (!has_representation()) return features;
  cfamc_tensor in{features};
  cfamc_tensor* out = nullptr;
  check(table<cfamc_objective_vtable>().represent(self(), &in, &out));
  return adopt(out);
}

int64_t Objective::representation_dim(int64_t feature_dim) const {
  const auto& t = table<cfamc_objective_vtable>();
  if (!has_representation() || !reaches(offsetof(cfamc_objective_vtable, representation_dim)) ||
      !t.representation_dim) {
    return feature_dim;
  }
  return t.representation_dim(self(), feature_dim);
}

// ---- Attack --------------------------------------------------------------------------------------------

int32_t Attack::replays() const { return table<cfamc_attack_vtable>().replays(self()); }

TensorMap Attack::perturb(const cfamc_oracle& oracle, const TensorMap& inputs) const {
  NamedTensorsView in(inputs);
  TensorCollector out;
  check(table<cfamc_attack_vtable>().perturb(self(), &oracle, in.get(), out.sink()));
  TensorMap adversarial = out.take();
  for (const auto& item : inputs) {
    if (!adversarial.contains(item.key())) {
      fail(ExitCode::plugin, who() + ": perturb returned no adversarial '" + item.key() + "'");
    }
  }
  return adversarial;
}

bool Attack::observes() const {
  return reaches(offsetof(cfamc_attack_vtable, observe)) && table<cfamc_attack_vtable>().observe;
}

void Attack::observe(const TensorMap& input_gradients) const {
  if (!observes()) return;
  NamedTensorsView in(input_gradients);
  check(table<cfamc_attack_vtable>().observe(self(), in.get()));
}

// ---- Evaluator -----------------------------------------------------------------------------------------

void Evaluator::evaluate(const cfamc_eval_services& services) const {
  check(table<cfamc_evaluator_vtable>().evaluate(self(), &services));
}

}  // namespace cfamc::host
