// The C++ layer over cfamc.h for plugins written with LibTorch: header-only, like ONNX Runtime's C++ API
// over its C API. An author derives from one of Backbone, Objective, Attack or Evaluator, declares
// `name`, `summary` and `options()`, and exports the library with CFAMC_PLUGIN. This layer builds the C
// tables, converts handles to at::Tensor and back, and turns every exception into a cfamc_error at the
// boundary. See docs/plugin-guide.md.
#pragma once

#include <cfamc/cfamc.h>
#include <cfamc/precision.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/ordered_dict.h>
#include <torch/version.h>

#include <cmath>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef CFAMC_TORCH_CUDA_VERSION
#error "CFAMC_TORCH_CUDA_VERSION is not defined: build the plugin with cfamc_add_plugin() from find_package(cfamc_sdk)"
#endif

namespace cfamc {

using TensorMap = torch::OrderedDict<std::string, at::Tensor>;

namespace detail {
// One per plugin library: hidden visibility keeps each library's copy its own.
inline const cfamc_host_api* g_host = nullptr;
}  // namespace detail

inline const cfamc_host_api& host() { return *detail::g_host; }

// ---- Errors ------------------------------------------------------------------------------------------

// Throw this (or anything derived from std::exception) from plugin code; the layer turns it into a
// cfamc_error with `code` at the boundary.
class Error : public std::runtime_error {
 public:
  Error(cfamc_error_code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  cfamc_error_code code() const noexcept { return code_; }

 private:
  cfamc_error_code code_;
};

// Rethrows an error returned by a host call; the error object is released.
inline void check(cfamc_error* error) {
  if (error == nullptr) return;
  const cfamc_error_code code = host().error_code(error);
  std::string message = host().error_message(error);
  host().error_release(error);
  throw Error(code, message);
}

namespace detail {
// Runs `body` and maps whatever it throws to a cfamc_error; nothing escapes.
template <class Body>
cfamc_error* guard(Body&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const Error& e) {
    return host().error_create(e.code(), e.what());
  } catch (const c10::Error& e) {
    return host().error_create(CFAMC_ERROR_RUNTIME, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return host().error_create(CFAMC_ERROR_RUNTIME, e.what());
  } catch (...) {
    return host().error_create(CFAMC_ERROR_INTERNAL, "unknown exception");
  }
}

// Runs `body`, a query whose C signature cannot return an error; 0 when it throws.
template <class Body>
auto or_zero(Body&& body) noexcept -> decltype(body()) {
  try {
    return body();
  } catch (...) {
    return 0;
  }
}
}  // namespace detail

// ---- Tensors -----------------------------------------------------------------------------------------

// The at::Tensor behind a borrowed handle.
inline const at::Tensor& tensor_of(const cfamc_tensor* handle) {
  return *static_cast<const at::Tensor*>(host().tensor_aten(handle));
}

// A new owned handle referring to `tensor` (no copy of the data).
inline cfamc_tensor* handle_of(const at::Tensor& tensor) { return host().tensor_from_aten(&tensor); }

// Owned handles kept alive while a cfamc_named_tensors built from a TensorMap is in use.
class NamedTensorsView {
 public:
  explicit NamedTensorsView(const TensorMap& map) {
    for (const auto& item : map) {
      names_.push_back(item.key().c_str());
      handles_.push_back(handle_of(item.value()));
    }
    view_ = {sizeof(cfamc_named_tensors), handles_.size(), names_.data(), handles_.data()};
  }
  ~NamedTensorsView() {
    for (cfamc_tensor* h : handles_) host().tensor_release(h);
  }
  NamedTensorsView(const NamedTensorsView&) = delete;
  NamedTensorsView& operator=(const NamedTensorsView&) = delete;
  const cfamc_named_tensors* get() const { return &view_; }

 private:
  std::vector<const char*> names_;
  std::vector<cfamc_tensor*> handles_;
  cfamc_named_tensors view_{};
};

inline TensorMap to_map(const cfamc_named_tensors* named) {
  TensorMap map;
  if (named == nullptr) return map;
  for (size_t i = 0; i < named->count; ++i) map.insert(named->names[i], tensor_of(named->tensors[i]));
  return map;
}

inline void put_all(const cfamc_tensor_sink* sink, const TensorMap& map) {
  for (const auto& item : map) check(sink->put(sink->self, item.key().c_str(), handle_of(item.value())));
}

// Takes an owned handle returned by a host call.
inline at::Tensor adopt(cfamc_tensor* handle) {
  at::Tensor tensor = tensor_of(handle);
  host().tensor_release(handle);
  return tensor;
}

// ---- Host services for one component -----------------------------------------------------------------

class Context {
 public:
  explicit Context(const cfamc_context* ctx) : ctx_(ctx) {}

  bool flag(const char* key) const {
    int32_t v = 0;
    check(host().option_bool(ctx_, key, &v));
    return v != 0;
  }
  int64_t integer(const char* key) const {
    int64_t v = 0;
    check(host().option_int(ctx_, key, &v));
    return v;
  }
  double real(const char* key) const {
    double v = 0;
    check(host().option_float(ctx_, key, &v));
    return v;
  }
  std::string text(const char* key) const {
    const char* v = nullptr;
    check(host().option_string(ctx_, key, &v));
    return v;
  }
  std::vector<int64_t> integers(const char* key) const { return list<int64_t>(key, host().option_int_list); }
  std::vector<double> reals(const char* key) const { return list<double>(key, host().option_float_list); }
  std::vector<std::string> texts(const char* key) const {
    auto raw = list<const char*>(key, host().option_string_list);
    return std::vector<std::string>(raw.begin(), raw.end());
  }

  void debug(const std::string& message) const { host().log(ctx_, CFAMC_LOG_DEBUG, message.c_str()); }
  void info(const std::string& message) const { host().log(ctx_, CFAMC_LOG_INFO, message.c_str()); }
  void warn(const std::string& message) const { host().log(ctx_, CFAMC_LOG_WARN, message.c_str()); }

  // The stages of the run's backbone (ABI 1.3, cfamc.h at CFAMC_STAGE_FEATURE), in an objective's `create`:
  // 0 where the backbone offers none, outside the objective's context, and with a host older than 1.3.
  int32_t num_stages() const { return CFAMC_HOST_HAS(&host(), num_stages) ? host().num_stages(ctx_) : 0; }
  int32_t num_stage_copies() const {
    return CFAMC_HOST_HAS(&host(), num_stage_copies) ? host().num_stage_copies(ctx_) : 0;
  }
  int64_t stage_channels(int32_t stage) const {
    return CFAMC_HOST_HAS(&host(), stage_channels) ? host().stage_channels(ctx_, stage) : 0;
  }

  uint64_t seed() const { return host().seed(ctx_); }
  // A CPU generator seeded for this component: independent of LibTorch's global generator and of every
  // other component's.
  at::Generator generator() const { return at::detail::createCPUGenerator(seed()); }
  int64_t feature_dim() const { return host().feature_dim(ctx_); }
  torch::Device device() const {
    std::string name(host().device(ctx_, nullptr, 0), '\0');
    host().device(ctx_, name.data(), name.size() + 1);
    return torch::Device(name);
  }
  const cfamc_context* raw() const { return ctx_; }

 private:
  template <class T, class Getter>
  std::vector<T> list(const char* key, Getter getter) const {
    size_t count = 0;
    check(getter(ctx_, key, nullptr, 0, &count));
    std::vector<T> values(count);
    check(getter(ctx_, key, values.data(), values.size(), &count));
    return values;
  }
  const cfamc_context* ctx_;
};

// Declares one option; `default_value` is a TOML literal, nullptr for a required option.
inline cfamc_option_decl option(const char* name, cfamc_option_type type, const char* default_value,
                                const char* doc) {
  return cfamc_option_decl{sizeof(cfamc_option_decl), name, type, default_value, doc};
}

// A float or float-list option that also takes NaN and infinities, which the host otherwise refuses (ABI 1.1).
inline cfamc_option_decl option_accepting_nonfinite(const char* name, cfamc_option_type type,
                                                    const char* default_value, const char* doc) {
  return option(name, static_cast<cfamc_option_type>(type | CFAMC_OPTION_ACCEPTS_NONFINITE), default_value, doc);
}

// ---- Callbacks from the host -------------------------------------------------------------------------

class Encoder {
 public:
  explicit Encoder(const cfamc_encoder* encoder) : encoder_(encoder) {}
  at::Tensor operator()(const at::Tensor& x, int32_t branch = 0) const {
    cfamc_tensor* in = handle_of(x);
    cfamc_tensor* out = nullptr;
    cfamc_error* error = encoder_->encode(encoder_->self, in, branch, &out);
    host().tensor_release(in);
    check(error);
    return adopt(out);
  }
  int64_t feature_dim() const { return encoder_->feature_dim; }
  int32_t num_branches() const { return encoder_->num_branches; }

  // ABI 1.3 (cfamc.h at CFAMC_STAGE_FEATURE): the backbone's stages, 0 where it offers none or the host
  // predates 1.3; the copies of the last stage; the channels of stage 0..S.
  int32_t num_stages() const { return has_stages() ? encoder_->num_stages : 0; }
  int32_t num_stage_copies() const { return has_stages() ? encoder_->num_stage_copies : 0; }
  int64_t stage_channels(int32_t stage) const {
    return has_stages() ? encoder_->stage_channels(encoder_->self, stage) : 0;
  }
  // The backbone from `from_stage` to `to_stage` (a stage, or CFAMC_STAGE_FEATURE) with copy `copy` of the
  // last stage; `x` is the input at `from_stage`. Differentiable to any order.
  at::Tensor stages(const at::Tensor& x, int32_t from_stage, int32_t to_stage, int32_t copy = 0,
                    int32_t branch = 0) const {
    if (!has_stages()) {
      throw Error(CFAMC_ERROR_UNSUPPORTED, "this host predates plugin ABI 1.3: it cannot run a backbone by stages");
    }
    cfamc_tensor* in = handle_of(x);
    cfamc_tensor* out = nullptr;
    cfamc_error* error = encoder_->encode_stages(encoder_->self, in, branch, from_stage, to_stage, copy, &out);
    host().tensor_release(in);
    check(error);
    return adopt(out);
  }

 private:
  bool has_stages() const {
    return encoder_->struct_size >= offsetof(cfamc_encoder, encode_stages) + sizeof(encoder_->encode_stages) &&
           encoder_->encode_stages != nullptr;
  }
  const cfamc_encoder* encoder_;
};

// What an attack asks of the thing it attacks. Losses and logits come back in float32 even when the oracle
// computed them under a bf16 run's autocast, so an attack's margins and buffers keep float32 arithmetic.
class Oracle {
 public:
  explicit Oracle(const cfamc_oracle* oracle) : oracle_(oracle) {}
  // The loss to maximise, with its graph: a scalar or [N].
  at::Tensor loss(const TensorMap& inputs) const { return call(oracle_->loss, inputs); }
  bool has_logits() const { return oracle_->logits != nullptr; }
  at::Tensor logits(const TensorMap& inputs) const {
    if (!has_logits()) throw Error(CFAMC_ERROR_UNSUPPORTED, "this oracle has no logits (not a classifier)");
    return call(oracle_->logits, inputs);
  }
  // The labels of a classification oracle, or an undefined tensor.
  at::Tensor labels() const { return oracle_->labels ? tensor_of(oracle_->labels) : at::Tensor(); }

 private:
  template <class Fn>
  at::Tensor call(Fn fn, const TensorMap& inputs) const {
    NamedTensorsView view(inputs);
    cfamc_tensor* out = nullptr;
    check(fn(oracle_->self, view.get(), &out));
    return widened(adopt(out));
  }
  const cfamc_oracle* oracle_;
};

// An oracle made of C++ functions, for a plugin that attacks something of its own (an evaluator attacking
// its classifier through the host's attacks). `loss` maps inputs to a per-sample loss [N]; `logits` and
// `labels` are optional. Valid while this object lives.
class FunctionOracle {
 public:
  using Function = std::function<at::Tensor(const TensorMap&)>;
  FunctionOracle(Function loss, Function logits = {}, const at::Tensor& labels = {})
      : loss_(std::move(loss)), logits_(std::move(logits)), labels_(labels.defined() ? handle_of(labels) : nullptr) {
    oracle_ = {sizeof(cfamc_oracle), this, &FunctionOracle::call_loss, logits_ ? &FunctionOracle::call_logits : nullptr,
               labels_};
  }
  ~FunctionOracle() {
    if (labels_ != nullptr) host().tensor_release(labels_);
  }
  FunctionOracle(const FunctionOracle&) = delete;
  FunctionOracle& operator=(const FunctionOracle&) = delete;
  const cfamc_oracle* get() const { return &oracle_; }

 private:
  static cfamc_error* call(const Function& f, const cfamc_named_tensors* inputs, cfamc_tensor** out) {
    return detail::guard([&] { *out = handle_of(f(to_map(inputs))); });
  }
  static cfamc_error* call_loss(void* self, const cfamc_named_tensors* inputs, cfamc_tensor** out) {
    return call(static_cast<FunctionOracle*>(self)->loss_, inputs, out);
  }
  static cfamc_error* call_logits(void* self, const cfamc_named_tensors* inputs, cfamc_tensor** out) {
    return call(static_cast<FunctionOracle*>(self)->logits_, inputs, out);
  }
  Function loss_, logits_;
  cfamc_tensor* labels_;
  cfamc_oracle oracle_{};
};

class EvalServices {
 public:
  explicit EvalServices(const cfamc_eval_services* services) : s_(services) {}

  std::pair<at::Tensor, at::Tensor> dataset(const std::string& split) const {
    cfamc_tensor* images = nullptr;
    cfamc_tensor* labels = nullptr;
    check(s_->dataset(s_->self, split.c_str(), &images, &labels));
    return {adopt(images), adopt(labels)};
  }
  at::Tensor encode(const at::Tensor& x, cfamc_feature which = CFAMC_FEATURE_BACKBONE) const {
    cfamc_tensor* in = handle_of(x);
    cfamc_tensor* out = nullptr;
    cfamc_error* error = s_->encode(s_->self, which, in, &out);
    host().tensor_release(in);
    check(error);
    return adopt(out);
  }
  int64_t feature_dim(cfamc_feature which = CFAMC_FEATURE_BACKBONE) const {
    return s_->feature_dim(s_->self, which);
  }
  void set_encoder_training(bool training) const { s_->set_encoder_training(s_->self, training ? 1 : 0); }
  // The encoder's tensors of `role`, aliasing its own (an evaluator that fine-tunes the encoder trains its
  // parameters; the host puts them back after `evaluate`).
  std::vector<at::Tensor> encoder_tensors(cfamc_tensor_role role = CFAMC_ROLE_PARAMETER) const {
    struct Visit {
      cfamc_tensor_role role;
      std::vector<at::Tensor> out;
    } visit{role, {}};
    const cfamc_tensor_visitor visitor{sizeof(cfamc_tensor_visitor), &visit,
                                       [](void* self, cfamc_tensor_role r, const char*, const cfamc_tensor* tensor) {
                                         auto* v = static_cast<Visit*>(self);
                                         if (r == v->role) v->out.push_back(tensor_of(tensor));
                                       }};
    s_->encoder_tensors(s_->self, &visitor);
    return visit.out;
  }
  at::Tensor make_views(const std::string& group, const at::Tensor& images) const {
    cfamc_tensor* in = handle_of(images);
    cfamc_tensor* out = nullptr;
    cfamc_error* error = s_->make_views(s_->self, group.c_str(), in, &out);
    host().tensor_release(in);
    check(error);
    return adopt(out);
  }
  std::vector<std::string> attack_ids() const {
    std::vector<std::string> ids;
    for (size_t i = 0; i < s_->num_attacks(s_->self); ++i) ids.emplace_back(s_->attack_id(s_->self, i));
    return ids;
  }
  at::Tensor attack(const std::string& id, const cfamc_oracle* oracle, const at::Tensor& x) const {
    cfamc_tensor* in = handle_of(x);
    cfamc_tensor* out = nullptr;
    cfamc_error* error = s_->attack(s_->self, id.c_str(), oracle, in, &out);
    host().tensor_release(in);
    check(error);
    return adopt(out);
  }
  void report(const std::string& key, double value) const { s_->report(s_->self, key.c_str(), value); }
  std::string artifact_path(const std::string& name) const {
    std::string path(s_->artifact_path(s_->self, name.c_str(), nullptr, 0), '\0');
    s_->artifact_path(s_->self, name.c_str(), path.data(), path.size() + 1);
    return path;
  }
  // ABI 1.2: the encoder as it is now and `head` ("weight" [C, D], "bias" [C] on the backbone feature) as
  // the artifact `name`, a classifier that cfamc-host export reads.
  bool can_save_classifier() const {
    return s_->struct_size >= offsetof(cfamc_eval_services, save_classifier) + sizeof(s_->save_classifier) &&
           s_->save_classifier != nullptr;
  }
  void save_classifier(const std::string& name, const TensorMap& head) const {
    if (!can_save_classifier()) {
      throw Error(CFAMC_ERROR_UNSUPPORTED, "this host cannot save classifiers (it predates plugin ABI 1.2)");
    }
    NamedTensorsView named(head);
    check(s_->save_classifier(s_->self, name.c_str(), named.get()));
  }

 private:
  const cfamc_eval_services* s_;
};

// The view group `group` of `views` ([V*B, ...], view-major, as the host makes it) as inputs "view1" ..
// "view<V>"; `who` names the objective in the error for a group that is not V views of each image.
inline TensorMap split_views(const TensorMap& views, const std::string& group, int64_t count, const std::string& who) {
  const at::Tensor& all = views[group];
  if (all.size(0) % count != 0) {
    throw Error(CFAMC_ERROR_INVALID_ARGUMENT, who + ": group '" + group + "' has " + std::to_string(all.size(0)) +
                                                  " images, not " + std::to_string(count) + " views of each");
  }
  TensorMap inputs;
  const auto chunks = all.chunk(count, 0);
  for (int64_t v = 0; v < count; ++v) inputs.insert("view" + std::to_string(v + 1), chunks[v]);
  return inputs;
}

// ---- Helpers for modules -----------------------------------------------------------------------------

// PyTorch's default initialisation of every Linear layer inside `module`, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
// for weight and bias, drawn from `generator` (a component's, see Context::generator) instead of LibTorch's
// global generator, so that a run's initialisation depends on its seed and on nothing else.
inline void initialise_linear_layers(torch::nn::Module& module, at::Generator generator) {
  torch::NoGradGuard no_grad;
  const auto initialise = [&](torch::nn::Module& m) {
    if (auto* linear = m.as<torch::nn::Linear>()) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(linear->options.in_features()));
      linear->weight.uniform_(-bound, bound, generator);
      if (linear->bias.defined()) linear->bias.uniform_(-bound, bound, generator);
    }
  };
  // The module itself may live outside a shared_ptr (a component), so it is not asked for as a child.
  initialise(module);
  for (auto& child : module.modules(/*include_self=*/false)) initialise(*child);
}

// Per-channel normalisation applied inside a backbone's forward (inputs always arrive in [0,1]). Register it
// as a submodule; empty `mean` and `std` mean no normalisation.
class PixelNormalisationImpl : public torch::nn::Module {
 public:
  PixelNormalisationImpl(int64_t channels, const std::vector<double>& mean, const std::vector<double>& std) {
    if (mean.size() != std.size() || (!mean.empty() && static_cast<int64_t>(mean.size()) != channels)) {
      throw Error(CFAMC_ERROR_OPTION, "mean and std need one value per input channel (" + std::to_string(channels) +
                                          "), or both []");
    }
    for (double s : std)
      if (s <= 0) throw Error(CFAMC_ERROR_OPTION, "std values must be positive");
    if (mean.empty()) return;
    mean_ = register_buffer("mean", torch::tensor(mean, torch::kFloat).view({1, -1, 1, 1}));
    std_ = register_buffer("std", torch::tensor(std, torch::kFloat).view({1, -1, 1, 1}));
  }
  at::Tensor forward(const at::Tensor& x) { return mean_.defined() ? (x - mean_) / std_ : x; }

 private:
  at::Tensor mean_, std_;
};
TORCH_MODULE(PixelNormalisation);

// ---- The four kinds ----------------------------------------------------------------------------------
// Parameters and buffers registered on the torch::nn::Module are the component's named tensors; the
// host trains, moves and checkpoints them. Attack buffers are reported as state.

class Component : public torch::nn::Module {
 public:
  explicit Component(const Context& ctx) : ctx_(ctx) {}
  const Context& context() const { return ctx_; }

 private:
  Context ctx_;
};

class Backbone : public Component {
 public:
  using Component::Component;
  virtual at::Tensor forward(const at::Tensor& x, int32_t branch) = 0;
  virtual int64_t feature_dim() const = 0;
  virtual int32_t num_branches() const { return 1; }
  // The tensors under the names of the network's reference implementation, with BatchNorm set `branch` as
  // the only one (cfamc-host export). Default: parameters and buffers under their own names.
  virtual TensorMap export_tensors(int32_t /*branch*/) {
    TensorMap out;
    for (const auto& item : named_parameters(/*recurse=*/true)) out.insert(item.key(), item.value());
    for (const auto& item : named_buffers(/*recurse=*/true)) out.insert(item.key(), item.value());
    return out;
  }
  // ABI 1.3 stages (cfamc.h at CFAMC_STAGE_FEATURE). Default: none, which the host reports to objectives that
  // need them. A backbone that offers them overrides all four; the host checks the arguments before
  // `forward_stages` (from 0..S, to from+1..S or CFAMC_STAGE_FEATURE, copy 0..num_stage_copies-1).
  virtual int32_t num_stages() const { return 0; }
  virtual int32_t num_stage_copies() const { return 1; }
  virtual int64_t stage_channels(int32_t /*stage*/) const { return 0; }
  virtual at::Tensor forward_stages(const at::Tensor& /*x*/, int32_t /*branch*/, int32_t /*from_stage*/,
                                    int32_t /*to_stage*/, int32_t /*copy*/) {
    throw Error(CFAMC_ERROR_UNSUPPORTED, "this backbone offers no stages");
  }
};

class Objective : public Component {
 public:
  using Component::Component;
  virtual std::vector<std::string> view_groups() const = 0;
  virtual std::vector<std::string> attacked_inputs() const = 0;
  // Default: the inputs are the views themselves.
  virtual TensorMap prepare(const TensorMap& views, const at::Tensor& /*sample_indices*/) { return views; }
  // `adversarial` is empty when training clean. Scalars for the log go into `log` (0-d tensors).
  virtual at::Tensor loss(const Encoder& encoder, const TensorMap& clean, const TensorMap& adversarial,
                          cfamc_phase phase, TensorMap& log) = 0;
  // Override both to give evaluators a representation other than the backbone feature.
  virtual bool has_representation() const { return false; }
  virtual at::Tensor represent(const at::Tensor& features) { return features; }
  virtual int64_t representation_dim(int64_t feature_dim) const { return feature_dim; }
};

class Attack : public Component {
 public:
  using Component::Component;
  virtual int32_t replays() const { return 1; }
  virtual TensorMap perturb(const Oracle& oracle, const TensorMap& inputs) = 0;
  virtual void observe(const TensorMap& /*input_gradients*/) {}
};

class Evaluator : public Component {
 public:
  using Component::Component;
  virtual void evaluate(const EvalServices& services) = 0;
};

// ---- Trampolines: C table entries that call the C++ object ------------------------------------------

namespace detail {

template <class T>
T& self_of(void* self) {
  return *static_cast<T*>(self);
}

template <class T>
cfamc_error* create(const cfamc_context* ctx, void** out_self) {
  return guard([&] { *out_self = new T(Context(ctx)); });
}

template <class T>
void destroy(void* self) {
  delete static_cast<T*>(self);
}

template <class T>
void named_tensors(void* self, const cfamc_tensor_visitor* visitor) {
  constexpr bool is_attack = std::is_base_of_v<Attack, T>;
  auto& module = self_of<T>(self);
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    cfamc_tensor* h = handle_of(item.value());
    visitor->visit(visitor->self, is_attack ? CFAMC_ROLE_STATE : CFAMC_ROLE_PARAMETER, item.key().c_str(), h);
    host().tensor_release(h);
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    cfamc_tensor* h = handle_of(item.value());
    visitor->visit(visitor->self, is_attack ? CFAMC_ROLE_STATE : CFAMC_ROLE_BUFFER, item.key().c_str(), h);
    host().tensor_release(h);
  }
}

template <class T>
void set_training(void* self, int32_t training) {
  // Module::train cannot fail for a well-formed module; guard anyway so nothing escapes.
  cfamc_error* e = guard([&] { self_of<T>(self).train(training != 0); });
  if (e) host().error_release(e);
}

template <class T>
cfamc_error* to_device(void* self, const char* device) {
  return guard([&] { self_of<T>(self).to(torch::Device(device)); });
}

// Names that live as long as the object: the C table hands out borrowed arrays of them.
struct NameList {
  std::vector<std::string> owned;
  std::vector<const char*> pointers;
  size_t assign(std::vector<std::string> names, const char* const** out) {
    owned = std::move(names);
    pointers.clear();
    for (const auto& n : owned) pointers.push_back(n.c_str());
    *out = pointers.data();
    return pointers.size();
  }
};

template <class T>
const cfamc_backbone_vtable* backbone_vtable() {
  static const cfamc_backbone_vtable table = {
      sizeof(cfamc_backbone_vtable), &create<T>, &destroy<T>, &named_tensors<T>, &set_training<T>,
      &to_device<T>,
      [](void* self) -> int64_t { return self_of<T>(self).feature_dim(); },
      [](void* self) -> int32_t { return self_of<T>(self).num_branches(); },
      [](void* self, const cfamc_tensor* x, int32_t branch, cfamc_tensor** out) {
        return guard([&] { *out = handle_of(self_of<T>(self).forward(tensor_of(x), branch)); });
      },
      [](void* self, int32_t branch, const cfamc_tensor_visitor* visitor) {
        return guard([&] {
          for (const auto& item : self_of<T>(self).export_tensors(branch)) {
            cfamc_tensor* h = handle_of(item.value());
            visitor->visit(visitor->self, CFAMC_ROLE_PARAMETER, item.key().c_str(), h);
            host().tensor_release(h);
          }
        });
      },
      // These cannot return an error: one that throws offers no stages (0), rather than end the process.
      [](void* self) -> int32_t { return or_zero([&] { return self_of<T>(self).num_stages(); }); },
      [](void* self) -> int32_t { return or_zero([&] { return self_of<T>(self).num_stage_copies(); }); },
      [](void* self, int32_t stage) -> int64_t {
        return or_zero([&] { return self_of<T>(self).stage_channels(stage); });
      },
      [](void* self, const cfamc_tensor* x, int32_t branch, int32_t from, int32_t to, int32_t copy,
         cfamc_tensor** out) {
        return guard([&] { *out = handle_of(self_of<T>(self).forward_stages(tensor_of(x), branch, from, to, copy)); });
      }};
  return &table;
}

// Objectives keep their name lists in a side object so that the borrowed arrays outlive the call.
template <class T>
struct ObjectiveBox {
  T object;
  NameList groups;
  NameList attacked;
  explicit ObjectiveBox(const Context& ctx) : object(ctx) {}
};

template <class T>
T& objective_of(void* self) {
  return static_cast<ObjectiveBox<T>*>(self)->object;
}

template <class T>
const cfamc_objective_vtable* objective_vtable() {
  using Box = ObjectiveBox<T>;
  static const cfamc_objective_vtable table = {
      sizeof(cfamc_objective_vtable),
      &create<Box>,
      &destroy<Box>,
      [](void* self, const cfamc_tensor_visitor* visitor) { named_tensors<T>(&objective_of<T>(self), visitor); },
      [](void* self, int32_t training) { set_training<T>(&objective_of<T>(self), training); },
      [](void* self, const char* device) { return to_device<T>(&objective_of<T>(self), device); },
      [](void* self, const char* const** out) -> size_t {
        auto* box = static_cast<Box*>(self);
        return box->groups.assign(box->object.view_groups(), out);
      },
      [](void* self, const char* const** out) -> size_t {
        auto* box = static_cast<Box*>(self);
        return box->attacked.assign(box->object.attacked_inputs(), out);
      },
      [](void* self, const cfamc_named_tensors* views, const cfamc_tensor* indices, const cfamc_tensor_sink* out) {
        return guard([&] {
          at::Tensor idx = indices ? tensor_of(indices) : at::Tensor();
          put_all(out, objective_of<T>(self).prepare(to_map(views), idx));
        });
      },
      [](void* self, const cfamc_encoder* encoder, const cfamc_named_tensors* clean,
         const cfamc_named_tensors* adversarial, cfamc_phase phase, const cfamc_tensor_sink* log,
         cfamc_tensor** out) {
        return guard([&] {
          TensorMap scalars;
          at::Tensor loss =
              objective_of<T>(self).loss(Encoder(encoder), to_map(clean), to_map(adversarial), phase, scalars);
          if (log != nullptr) put_all(log, scalars);
          *out = handle_of(loss);
        });
      },
      [](void* self, const cfamc_tensor* features, cfamc_tensor** out) {
        return guard([&] { *out = handle_of(objective_of<T>(self).represent(tensor_of(features))); });
      },
      [](void* self, int64_t feature_dim) -> int64_t {
        return objective_of<T>(self).representation_dim(feature_dim);
      }};
  return &table;
}

template <class T>
const cfamc_attack_vtable* attack_vtable() {
  static const cfamc_attack_vtable table = {
      sizeof(cfamc_attack_vtable), &create<T>, &destroy<T>, &named_tensors<T>, &set_training<T>, &to_device<T>,
      [](void* self) -> int32_t { return self_of<T>(self).replays(); },
      [](void* self, const cfamc_oracle* oracle, const cfamc_named_tensors* inputs, const cfamc_tensor_sink* out) {
        return guard([&] { put_all(out, self_of<T>(self).perturb(Oracle(oracle), to_map(inputs))); });
      },
      [](void* self, const cfamc_named_tensors* grads) {
        return guard([&] { self_of<T>(self).observe(to_map(grads)); });
      }};
  return &table;
}

template <class T>
const cfamc_evaluator_vtable* evaluator_vtable() {
  static const cfamc_evaluator_vtable table = {
      sizeof(cfamc_evaluator_vtable), &create<T>, &destroy<T>, &named_tensors<T>, &set_training<T>, &to_device<T>,
      [](void* self, const cfamc_eval_services* services) {
        return guard([&] { self_of<T>(self).evaluate(EvalServices(services)); });
      }};
  return &table;
}

template <class T>
const std::vector<cfamc_option_decl>& options_of() {
  static const std::vector<cfamc_option_decl> declared = T::options();
  return declared;
}

#define CFAMC_DETAIL_STR2(x) #x
#define CFAMC_DETAIL_STR(x) CFAMC_DETAIL_STR2(x)

inline cfamc_build_fingerprint fingerprint() {
  return cfamc_build_fingerprint{sizeof(cfamc_build_fingerprint),
                                 CFAMC_DETAIL_STR(TORCH_VERSION_MAJOR) "." CFAMC_DETAIL_STR(
                                     TORCH_VERSION_MINOR) "." CFAMC_DETAIL_STR(TORCH_VERSION_PATCH),
                                 CFAMC_TORCH_CUDA_VERSION, _GLIBCXX_USE_CXX11_ABI};
}

}  // namespace detail

// The description of one component class T for CFAMC_PLUGIN. T derives from one of the four kinds and
// has `static constexpr const char* name`, `summary`, and `static std::vector<cfamc_option_decl> options()`.
template <class T>
cfamc_component_desc component() {
  const auto& options = detail::options_of<T>();
  cfamc_component_desc desc{sizeof(cfamc_component_desc), CFAMC_KIND_BACKBONE, T::name, T::summary,
                            options.data(), options.size(), nullptr};
  if constexpr (std::is_base_of_v<Backbone, T>) {
    desc.vtable = detail::backbone_vtable<T>();
  } else if constexpr (std::is_base_of_v<Objective, T>) {
    desc.kind = CFAMC_KIND_OBJECTIVE;
    desc.vtable = detail::objective_vtable<T>();
  } else if constexpr (std::is_base_of_v<Attack, T>) {
    desc.kind = CFAMC_KIND_ATTACK;
    desc.vtable = detail::attack_vtable<T>();
  } else {
    static_assert(std::is_base_of_v<Evaluator, T>, "a component derives from Backbone, Objective, Attack or Evaluator");
    desc.kind = CFAMC_KIND_EVALUATOR;
    desc.vtable = detail::evaluator_vtable<T>();
  }
  return desc;
}

}  // namespace cfamc

// Exports the plugin: its name, version and component classes. Use once per library.
#define CFAMC_PLUGIN(NAME, VERSION, ...)                                                               \
  extern "C" CFAMC_EXPORT const cfamc_plugin_desc* cfamc_plugin_entry_v1(const cfamc_host_api* api) { \
    ::cfamc::detail::g_host = api;                                                                     \
    static const ::std::vector<cfamc_component_desc> components = {__VA_ARGS__};                       \
    static const cfamc_plugin_desc desc = {                                                            \
        sizeof(cfamc_plugin_desc), CFAMC_ABI_MAJOR, CFAMC_ABI_MINOR, NAME, VERSION,                    \
        ::cfamc::detail::fingerprint(), components.data(), components.size()};                         \
    return &desc;                                                                                      \
  }
