#include "tiny_model.hpp"

#include <cfamc/contrastive.hpp>
#include <cfamc/distributed.hpp>

#include <torch/torch.h>

namespace tiny {

struct Model::Impl : torch::nn::Module {
  Impl() {
    first = register_module("first", torch::nn::Linear(6, 5));
    norm = register_module("norm", cfamc::BatchNorm(5));
    last = register_module("last", torch::nn::Linear(5, 4));
  }
  torch::nn::Linear first{nullptr}, last{nullptr};
  cfamc::BatchNorm norm{nullptr};
};

void use_host(const cfamc_host_api* api) { cfamc::detail::g_host = api; }

Model::Model() : impl_(new Impl) {}
Model::~Model() { delete impl_; }

at::Tensor Model::loss(const at::Tensor& views) {
  const at::Tensor z = impl_->last->forward(torch::relu(impl_->norm->forward(impl_->first->forward(views))));
  return cfamc::nt_xent(cfamc::all_gather_views(cfamc::unit_rows(z), 2), 2, 0.5);
}

std::vector<std::pair<std::string, at::Tensor>> Model::parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : impl_->named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> Model::buffers() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : impl_->named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace tiny
