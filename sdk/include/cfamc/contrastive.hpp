// Contrastive losses for objective plugins written with LibTorch (header-only, part of the public SDK):
// NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020), generalised to V
// views per image. The shipped SimCLR, ACL, RoCL and AdvCL objectives use it; a third-party objective can too.
// Both functions compute in float32 whatever the run's precision (<cfamc/precision.hpp>): a bfloat16
// similarity divided by a temperature of 0.07-0.5 would lose most of its digits before the softmax.
#pragma once

#include <cfamc/precision.hpp>
#include <torch/torch.h>

#include <limits>

namespace cfamc {

// The rows of `z` scaled to unit L2 norm, in float32: the embeddings the contrastive losses compare.
inline at::Tensor unit_rows(const at::Tensor& z) {
  return torch::nn::functional::normalize(widened(z), torch::nn::functional::NormalizeFuncOptions().dim(1));
}

// NT-Xent over V views laid out view-major ([V*B, d], rows L2-normalised): each row's positives are the
// other views of the same image, its negatives every other row; a row's V - 1 positive terms are averaged.
// For V = 2 this is SimCLR's loss. `detach_columns` stops the gradient through the second factor of the
// similarity matrix z z^T, as RoCL's reference code does (an accident there, reproduced on request).
// Data-parallel runs: the loss is that of the rows it is given. A process holds only its share of each
// batch, so an objective passes it the global batch, `nt_xent(cfamc::all_gather_views(z, views), views, T)`
// (<cfamc/distributed.hpp>; differentiable, the identity in one process), and every process computes the loss
// with every row of the global batch as a negative, as one process holding the whole batch would. The shipped
// objectives do. This header does not gather by itself because it includes no <cfamc/plugin.hpp>: the host
// and its tests use it as the reference loss, and plugin.hpp's cfamc::host() clashes with their namespace.
inline at::Tensor nt_xent(const at::Tensor& embeddings, int64_t views, double temperature, bool detach_columns = false) {
  const Float32Region float32;
  const at::Tensor z = widened(embeddings);
  const int64_t n = z.size(0);
  const int64_t batch = n / views;
  at::Tensor logits = torch::matmul(z, detach_columns ? z.detach().t() : z.t()) / temperature;
  const at::Tensor self_mask = torch::eye(n, z.options().dtype(torch::kBool));
  logits = logits.masked_fill(self_mask, -std::numeric_limits<float>::infinity());
  const at::Tensor sample = torch::arange(n, z.options().dtype(torch::kLong)).remainder(batch);
  const at::Tensor positive = sample.unsqueeze(0).eq(sample.unsqueeze(1)).logical_and(self_mask.logical_not());
  const at::Tensor log_prob = logits - torch::logsumexp(logits, 1, /*keepdim=*/true);
  const at::Tensor per_row = log_prob.masked_fill(positive.logical_not(), 0).sum(1) / (views - 1);
  return -per_row.mean();
}

}  // namespace cfamc
