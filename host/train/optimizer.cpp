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
  for (auto& item : parameters_)
    if (item.value().grad().defined()) item.value().mutable_grad().zero_();
}

// LARS as EMP-SSL's reference wraps SGD: for every weight that is not 1-D (when excluded) and has non-zero
// norms, g <- (g + wd*p) * min(eta*|p| / (|g| + wd*|p| + eps) / lr, 1). Weight decay lives only here.
void Optimizer::lars_rescale(at::Tensor& grad, const at::Tensor& param, double lr) const {
  if (config_.lars_exclude_1d && param.dim() == 1) return;
  const double wd = config_.weight_decay;
  const at::Tensor p_norm = param.norm(), g_norm = grad.norm();
  at::Tensor local = config_.lars_eta * p_norm / (g_norm + wd * p_norm + config_.eps);
  if (config_.lars_clip) local = (local / lr).clamp_max(1.0);
  const at::Tensor usable = p_norm.ne(0) & g_norm.ne(0);
  grad = at::where(usable, (grad + wd * param) * local, grad);
}

void Optimizer::step(double lr) {
  c10::NoGradGuard no_grad;
  const bool first_step = steps_.item<int64_t>() == 0;
  steps_ += 1;
  const int64_t t = steps_.item<int64_t>();
  for (size_t i = 0; i < parameters_.size(); ++i) {
    at::Tensor& p = parameters_[i].value();
    if (!p.grad().defined()) continue;
    at::Tensor g = p.grad();
    if (config_.kind == "adamw") {
      p.mul_(1 - lr * config_.weight_decay);
      first_[i].mul_(config_.beta1).add_(g, 1 - config_.beta1);
      second_[i].mul_(config_.beta2).addcmul_(g, g, 1 - config_.beta2);
      const double c1 = 1 - std::pow(config_.beta1, t), c2 = 1 - std::pow(config_.beta2, t);
      const at::Tensor denom = (second_[i] / c2).sqrt_().add_(config_.eps);
      p.addcdiv_(first_[i], denom, -lr / c1);
      continue;
    }
    if (config_.kind == "lars") {
      lars_rescale(g, p, lr);
    } else if (config_.weight_decay != 0) {
      g = g + config_.weight_decay * p;
    }
    if (config_.momentum != 0) {
      // torch.optim.SGD: the buffer starts as the first gradient.
      if (first_step) first_[i].copy_(g);
      else first_[i].mul_(config_.momentum).add_(g);
      g = config_.nesterov ? g + config_.momentum * first_[i] : first_[i];
    }
    p.add_(g, -lr);
  }
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
