// Contrastive losses for objective plugins written with LibTorch (header-only, part of the public SDK):
// NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020), generalised to V
// views per image. The shipped SimCLR, ACL and RoCL objectives use it; a third-party objective can too.
#pragma once

#include <torch/torch.h>

#include <limits>

namespace cfamc {

// NT-Xent over V views laid out view-major ([V*B, d], rows L2-normalised): each row's positives are the
// other views of the same image, its negatives every other row; a row's V - 1 positive terms are averaged.
// For V = 2 this is SimCLR's loss. `detach_columns` stops the gradient through the second factor of the
// similarity matrix z z^T, as RoCL's reference code does (an accident there, reproduced on request).
inline at::Tensor nt_xent(const at::Tensor& z, int64_t views, double temperature, bool detach_columns = false) {
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
