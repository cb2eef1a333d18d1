// The differentiable collectives. A loss that every process computes on the gathered batch depends on each
// process's rows through every process's copy of the gathered tensor, so the gradient reaching a process's
// rows is the sum over processes of their gradients of the gathered tensor, at those rows: an all-reduce
// of the gradient, then this process's slice. The same holds for a sum over processes.
#include <torch/csrc/autograd/custom_function.h>

#include "dist/world.hpp"

namespace cfamc::host {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor summed_over_processes(const at::Tensor& gradient) {
  at::Tensor sum = gradient.contiguous().clone();
  World::get()->all_reduce_sum(sum);
  return sum;
}

struct AllGather : torch::autograd::Function<AllGather> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& tensor) {
    ctx->saved_data["rows"] = tensor.size(0);
    return World::get()->all_gather(tensor);
  }
  static variable_list backward(AutogradContext* ctx, variable_list gradients) {
    const int64_t rows = ctx->saved_data["rows"].toInt(), rank = World::get()->rank();
    return {summed_over_processes(gradients[0]).slice(0, rank * rows, (rank + 1) * rows)};
  }
};

struct AllReduceSum : torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& tensor) {
    at::Tensor sum = tensor.contiguous().clone();
    World::get()->all_reduce_sum(sum);
    return sum;
  }
  static variable_list backward(AutogradContext*, variable_list gradients) { return {summed_over_processes(gradients[0])}; }
};

}  // namespace

at::Tensor all_gather_differentiable(const at::Tensor& tensor) {
  return World::get() ? AllGather::apply(tensor) : tensor;
}

at::Tensor all_reduce_sum_differentiable(const at::Tensor& tensor) {
  return World::get() ? AllReduceSum::apply(tensor) : tensor;
}

}  // namespace cfamc::host
