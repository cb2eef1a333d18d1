#include "train/optimizer.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "failure.hpp"

namespace cfamc::host {

Optimizer::Optimizer(OptimizerConfig config, TensorMap parameters)
    : config_(std::move(config)), parameters_(std::move(parameters)), steps_(at::zeros({}, at::kLong)) {
  if (config_.kind != "sgd" && config_.kind != "lars" && config_.kind != "adamw") {
    fail(ExitCode::usage, "train.optimizer: '" + config_.kind + "' is not one of sgd, lars, adamw");
  }
  for (const at::Tensor& p : parameters_.values()) {
    first_.push_back(at::zeros_like(p));
    second_.push_back(config_.kind == "adamw" ? at::zeros_like(p) : at::Tensor());
  }
}

void Optimizer::zero_grad() {
  std::vector<at::Tensor> grads;
  for (auto& item : parameters_)
    if (item.value().grad().defined()) grads.push_back(item.value().mutable_grad());
  if (!grads.empty()) at::_foreach_zero_(grads);
}

Optimizer::Group Optimizer::with_gradients() const {
  Group g;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const at::Tensor& p = parameters_[i].value();
    if (!p.grad().defined()) continue;
    g.params.push_back(p);
    g.grads.push_back(p.grad());
    g.first.push_back(first_[i]);
    g.second.push_back(second_[i]);
  }
  return g;
}

void Optimizer::adamw(Group& g, double lr, int64_t t) const {
  at::_foreach_mul_(g.params, 1 - lr * config_.weight_decay);
  at::_foreach_mul_(g.first, config_.beta1);
  at::_foreach_add_(g.first, g.grads, 1 - config_.beta1);
  at::_foreach_mul_(g.second, config_.beta2);
  at::_foreach_addcmul_(g.second, g.grads, g.grads, 1 - config_.beta2);
  const double c1 = 1 - std::pow(config_.beta1, t), c2 = 1 - std::pow(config_.beta2, t);
  std::vector<at::Tensor> denom = at::_foreach_div(g.second, c2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, config_.eps);
  at::_foreach_addcdiv_(g.params, g.first, denom, -lr / c1);
}

// LARS as EMP-SSL's reference wraps SGD: for every weight that is not 1-D (when excluded) and has non-zero
// norms, g <- (g + wd*p) * min(eta*|p| / (|g| + wd*|p| + eps) / lr, 1). Weight decay lives only here. The
// norms of all weights come from one call; the per-weight factors stay on the device as 0-d tensors.
std::vector<at::Tensor> Optimizer::lars_rescaled(const Group& g, double lr) const {
  std::vector<at::Tensor> out = g.grads;
  std::vector<at::Tensor> params, grads;
  std::vector<size_t> lars_positions;
  for (size_t i = 0; i < g.params.size(); ++i) {
    if (config_.lars_exclude_1d && g.params[i].dim() == 1) continue;
    params.push_back(g.params[i]);
    grads.push_back(g.grads[i]);
    lars_positions.push_back(i);
  }
  if (params.empty()) return out;
  const double wd = config_.weight_decay;
  const at::Tensor p_norm = at::stack(at::_foreach_norm(params)), g_norm = at::stack(at::_foreach_norm(grads));
  at::Tensor local = config_.lars_eta * p_norm / (g_norm + wd * p_norm + config_.eps);
  if (config_.lars_clip) local = (local / lr).clamp_max(1.0);
  const at::Tensor usable = p_norm.ne(0) & g_norm.ne(0);
  const std::vector<at::Tensor> factor = at::where(usable, local, 1.0).unbind();
  const std::vector<at::Tensor> decay = at::where(usable, local * wd, 0.0).unbind();
  std::vector<at::Tensor> rescaled = at::_foreach_mul(grads, factor);
  at::_foreach_addcmul_(rescaled, params, decay);
  for (size_t k = 0; k < lars_positions.size(); ++k) out[lars_positions[k]] = rescaled[k];
  return out;
}

void Optimizer::sgd(Group& g, double lr, bool first_step) const {
  std::vector<at::Tensor> direction = g.grads;
  if (config_.kind == "lars") {
    direction = lars_rescaled(g, lr);
  } else if (config_.weight_decay != 0) {
    direction = at::_foreach_add(g.grads, g.params, config_.weight_decay);
  }
  if (config_.momentum != 0) {
    // torch.optim.SGD: the buffer starts as the first gradient.
    if (first_step) {
      at::_foreach_copy_(g.first, direction);
    } else {
      at::_foreach_mul_(g.first, config_.momentum);
      at::_foreach_add_(g.first, direction);
    }
    direction = config_.nesterov ? at::_foreach_add(direction, g.first, config_.momentum) : g.first;
  }
  at::_foreach_add_(g.params, direction, -lr);
}

void Optimizer::step(double lr) {
  c10::NoGradGuard no_grad;
  const bool first_step = steps_.item<int64_t>() == 0;  // a CPU tensor: no device read
  steps_ += 1;
  Group g = with_gradients();
  if (g.params.empty()) return;
  if (config_.kind == "adamw") adamw(g, lr, steps_.item<int64_t>());
  else sgd(g, lr, first_step);
}

int64_t Optimizer::updates() const { return steps_.item<int64_t>(); }

TensorMap Optimizer::state() {
  TensorMap out;
  out.insert("steps", steps_);
  for (size_t i = 0; i < parameters_.size(); ++i) {
    out.insert(parameters_[i].key() + "/first", first_[i]);
    if (second_[i].defined()) out.insert(parameters_[i].key() + "/second", second_[i]);
  }
  return out;
}

}  // namespace cfamc::host
