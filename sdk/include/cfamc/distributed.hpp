// Data-parallel runs as plugins see them (header-only, part of the public SDK; ABI 1.4). A run of W
// processes gives each one a share of every minibatch; the host averages the weights' gradients over them.
// A loss that needs the whole batch (contrastive negatives, a coding rate's covariance) gathers its
// embeddings with `all_gather` or `all_gather_views` and computes the global loss on every process: the
// gathers are differentiable, so the gradient reaching each process's rows is the single-process one.
// Layers whose statistics must be global use `cfamc::BatchNorm`. With a host older than 1.4, or a run of
// one process, every function here is the single-process identity.
#pragma once

#include <cfamc/plugin.hpp>
#include <cfamc/precision.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <vector>

namespace cfamc {

namespace detail {

// No host at all (code outside a plugin library: a test, a tool linking the SDK) is a single process too.
inline bool host_is_data_parallel() {
  return g_host != nullptr && CFAMC_HOST_HAS(&host(), world_size) && host().world_size() > 1;
}

template <class Collective>
at::Tensor collective(const at::Tensor& tensor, Collective call) {
  cfamc_tensor* in = handle_of(tensor);
  cfamc_tensor* out = nullptr;
  cfamc_error* error = call(in, &out);
  host().tensor_release(in);
  check(error);
  return adopt(out);
}

}  // namespace detail

inline int32_t world_size() { return detail::host_is_data_parallel() ? host().world_size() : 1; }
inline int32_t world_rank() { return detail::host_is_data_parallel() ? host().world_rank() : 0; }

// Whether BatchNorm in training mode normalises with the global batch's statistics.
inline bool sync_batch_norm() {
  return detail::host_is_data_parallel() && CFAMC_HOST_HAS(&host(), sync_batch_norm) && host().sync_batch_norm() != 0;
}

// Every process's `tensor` (same shape everywhere) concatenated along dim 0 in rank order; differentiable.
inline at::Tensor all_gather(const at::Tensor& tensor) {
  if (!detail::host_is_data_parallel()) return tensor;
  return detail::collective(tensor, host().all_gather);
}

// The elementwise sum of every process's `tensor`; differentiable.
inline at::Tensor all_reduce_sum(const at::Tensor& tensor) {
  if (!detail::host_is_data_parallel()) return tensor;
  return detail::collective(tensor, host().all_reduce_sum);
}

// `tensor` laid out view-major ([V*b, ...]: all first views of this process's b images, then all second
// views, ...) gathered into the global batch's view-major layout [V*W*b, ...], the rows a single process
// holding the whole batch would have: row v*W*b + r*b + i is view v of process r's image i. One collective.
inline at::Tensor all_gather_views(const at::Tensor& tensor, int64_t views) {
  if (!detail::host_is_data_parallel()) return tensor;
  const int64_t local = tensor.size(0) / views;
  std::vector<int64_t> split_shape{views, local};
  split_shape.insert(split_shape.end(), tensor.sizes().begin() + 1, tensor.sizes().end());
  // [V, b, ...] -> [b, V, ...] so that dim 0 is the images, gathered -> [W*b, V, ...] -> [V, W*b, ...].
  const at::Tensor per_image = tensor.reshape(split_shape).transpose(0, 1).contiguous();
  const at::Tensor gathered = all_gather(per_image).transpose(0, 1);
  std::vector<int64_t> out_shape{views * gathered.size(1)};
  out_shape.insert(out_shape.end(), tensor.sizes().begin() + 1, tensor.sizes().end());
  return gathered.reshape(out_shape);
}

// This process's rows [begin, end) when `n` rows are shared out in rank order as evenly as possible (the
// first n % W processes take one more): how evaluators split the images they encode or attack.
struct RowShare {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

inline RowShare row_share(int64_t n) {
  const int64_t world = world_size(), rank = world_rank();
  const int64_t base = n / world, extra = n % world;
  const int64_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

// Every process's share (`mine`: its row_share(n) of n rows) gathered into all n rows in order.
inline at::Tensor all_gather_shares(const at::Tensor& mine, int64_t n) {
  const int64_t world = world_size();
  if (world == 1) return mine;
  const int64_t most = (n + world - 1) / world;
  std::vector<int64_t> pad_shape(mine.sizes().begin(), mine.sizes().end());
  pad_shape[0] = most - mine.size(0);
  const at::Tensor gathered = all_gather(torch::cat({mine, torch::zeros(pad_shape, mine.options())}, 0));
  std::vector<at::Tensor> rows;
  for (int64_t r = 0; r < world; ++r) {
    const int64_t size = n / world + (r < n % world ? 1 : 0);
    rows.push_back(gathered.slice(0, r * most, r * most + size));
  }
  return torch::cat(rows, 0);
}

// All n rows of something the processes compute between them, such as the features of a split's images:
// `compute(begin, end)` gives rows [begin, end) as a [end - begin, ...] tensor; this process computes its
// row_share(n), `chunk` rows at a time (as many as fit in memory at once), and every process's rows are
// gathered in order. A process with an empty share (n below the world size) computes row 0 and keeps none
// of it: the gather needs the rows' trailing shape and dtype, and every process must make it. n >= 1.
template <class Compute>
at::Tensor gathered_over_shares(int64_t n, int64_t chunk, Compute&& compute) {
  if (chunk < 1) throw Error(CFAMC_ERROR_INVALID_ARGUMENT, "gathered_over_shares: chunk must be positive");
  const RowShare share = row_share(n);
  std::vector<at::Tensor> rows;
  for (int64_t start = share.begin; start < share.end; start += chunk) {
    rows.push_back(compute(start, std::min(share.end, start + chunk)));
  }
  if (rows.empty()) rows.push_back(compute(int64_t{0}, int64_t{1}).slice(0, 0, 0));
  return all_gather_shares(torch::cat(rows, 0), n);
}

// The fraction of all n rows that are marked true, from this process's marks of its share (`correct_share`:
// a bool per row, or any tensor whose sum counts them). One all_reduce_sum, which every process makes.
inline double shared_fraction(const at::Tensor& correct_share, int64_t n) {
  const int64_t count = all_reduce_sum(correct_share.sum()).item<int64_t>();
  return static_cast<double>(count) / static_cast<double>(n);
}

// BatchNorm over dim 1 of [N, C] or [N, C, ...] inputs, with the parameters, buffers and defaults of
// torch::nn::BatchNorm1d/2d (a checkpoint of either loads into it). In training mode under
// sync_batch_norm() it normalises with the mean and biased variance of the global batch (two sums over the
// processes, in float32) and updates the running statistics with them, as PyTorch's SyncBatchNorm does;
// otherwise it is exactly torch::nn::BatchNorm.
class BatchNormImpl : public torch::nn::Module {
 public:
  explicit BatchNormImpl(int64_t features, double eps = 1e-5, double momentum = 0.1)
      : eps_(eps), momentum_(momentum) {
    weight = register_parameter("weight", torch::ones({features}));
    bias = register_parameter("bias", torch::zeros({features}));
    running_mean = register_buffer("running_mean", torch::zeros({features}));
    running_var = register_buffer("running_var", torch::ones({features}));
    num_batches_tracked = register_buffer("num_batches_tracked", torch::tensor(0, torch::kLong));
  }

  at::Tensor forward(const at::Tensor& x) {
    if (!is_training()) return torch::batch_norm(x, weight, bias, running_mean, running_var, false, momentum_, eps_, true);
    {
      torch::NoGradGuard no_grad;
      num_batches_tracked.add_(1);
    }
    if (!sync_batch_norm()) return torch::batch_norm(x, weight, bias, running_mean, running_var, true, momentum_, eps_, true);
    return synchronised(x);
  }

  at::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  at::Tensor synchronised(const at::Tensor& x) {
    const Float32Region float32;
    const at::Tensor xf = widened(x);
    std::vector<int64_t> reduce_dims{0}, channel_shape(x.dim(), 1);
    for (int64_t d = 2; d < x.dim(); ++d) reduce_dims.push_back(d);
    channel_shape[1] = x.size(1);
    const double count = static_cast<double>(x.numel() / x.size(1)) * world_size();
    const at::Tensor mean = all_reduce_sum(xf.sum(reduce_dims)) / count;
    const at::Tensor centred = xf - mean.view(channel_shape);
    const at::Tensor variance = all_reduce_sum(centred.square().sum(reduce_dims)) / count;
    {
      torch::NoGradGuard no_grad;
      running_mean.mul_(1 - momentum_).add_(mean.detach(), momentum_);
      running_var.mul_(1 - momentum_).add_(variance.detach() * (count / std::max(count - 1, 1.0)), momentum_);
    }
    const at::Tensor scale = (variance + eps_).rsqrt() * weight;
    return (centred * scale.view(channel_shape) + bias.view(channel_shape)).to(x.scalar_type());
  }

  double eps_, momentum_;
};
TORCH_MODULE(BatchNorm);

}  // namespace cfamc
