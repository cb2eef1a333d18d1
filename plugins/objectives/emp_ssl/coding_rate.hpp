// The two terms of the EMP-SSL loss, on embeddings laid out [crops V, images B, dimension d].
#pragma once

#include <cfamc/precision.hpp>
#include <torch/torch.h>

namespace cfamc::emp_ssl {

// R(Z) = 1/2 logdet(I + d/(B eps) Z^T Z) for each of the V batches of embeddings Z [V, B, d]; computed in
// the B x B form (Sylvester's identity) when B < d. `eps` is the reference code's eps (the paper's eps^2).
// In float32 under any precision: the Cholesky factor of a bfloat16 Gram matrix is too coarse to train on.
inline at::Tensor total_coding_rate(const at::Tensor& embeddings, double eps) {
  const cfamc::Float32Region float32;
  const at::Tensor z = cfamc::widened(embeddings);
  const int64_t batch = z.size(1), dim = z.size(2);
  const double scale = static_cast<double>(dim) / (static_cast<double>(batch) * eps);
  const at::Tensor gram = batch < dim ? torch::matmul(z, z.transpose(1, 2)) : torch::matmul(z.transpose(1, 2), z);
  const at::Tensor identity = torch::eye(gram.size(1), gram.options()).expand_as(gram);
  const at::Tensor chol = torch::linalg_cholesky(identity + scale * gram);
  return chol.diagonal(0, -2, -1).log().sum(-1);  // 1/2 logdet = sum log diag(L)
}

// D = mean over crops i and images b of cos(z_i^b, zbar^b), zbar the (not renormalised) mean over crops.
inline at::Tensor invariance(const at::Tensor& z) {
  namespace F = torch::nn::functional;
  const at::Tensor mean = z.mean(0, /*keepdim=*/true);
  return F::cosine_similarity(z, mean.expand_as(z), F::CosineSimilarityFuncOptions().dim(2)).mean();
}

}  // namespace cfamc::emp_ssl
