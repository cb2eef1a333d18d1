// The ensemble's penalty on the input gradients of its tasks (Chen et al. CVPR 2020), as the reference's
// calculate_log_det computes it: each task's input gradient is flattened per sample and divided by its L2 norm
// (+ 1e-10); the normalised gradients of sample n are the columns of G_n [D, T]; the penalty is the mean over
// the samples of log det(G_n^T G_n + 1e-5 I): about log T - (T - 1) log 1e5 when the T tasks' gradients coincide,
// about 0 when they are orthogonal. Differentiable (twice, when the gradients carry their graphs). Plain LibTorch, so tests can
// drive it. In float32 under any precision: a determinant near 1e-10 has no digits left in bfloat16.
#pragma once

#include <cfamc/precision.hpp>
#include <torch/torch.h>

#include <vector>

namespace cfamc::pretext {

inline at::Tensor gradient_diversity(const std::vector<at::Tensor>& gradients) {
  const cfamc::Float32Region float32;
  std::vector<at::Tensor> columns;
  for (const at::Tensor& gradient : gradients) {
    const at::Tensor flat = cfamc::widened(gradient).flatten(1);
    columns.push_back(flat / (flat.norm(2, {1}, /*keepdim=*/true) + 1e-10));
  }
  const at::Tensor g = torch::stack(columns, 2);  // [N, D, T]
  const int64_t tasks = static_cast<int64_t>(gradients.size());
  const at::Tensor gram = g.transpose(1, 2).bmm(g) + 1e-5 * torch::eye(tasks, g.options());
  return torch::linalg_det(gram).log().mean();
}

}  // namespace cfamc::pretext
