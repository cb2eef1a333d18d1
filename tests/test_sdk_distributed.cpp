// The data-parallel side of the SDK (sdk/include/cfamc/distributed.hpp): cfamc::BatchNorm is torch's
// BatchNorm1d/2d exactly (a drop-in for the shipped plugins' checkpoints), every function is the identity in
// a single process, and, with a host table that simulates a second process, the gathers lay the global batch
// out as one process would hold it and SyncBatchNorm gives the global batch's statistics and gradient.
#include "torch_catch.hpp"

#include <cfamc/contrastive.hpp>
#include <cfamc/distributed.hpp>

#include <functional>

namespace {

// Names and values of a module's parameters, then of its buffers, in registration order.
std::vector<std::pair<std::string, at::Tensor>> named_tensors(torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : module.named_parameters()) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

// Both modules' tensors have the same names, in the same order, and equal values.
void check_same_tensors(torch::nn::Module& ours, torch::nn::Module& torchs) {
  const auto a = named_tensors(ours), b = named_tensors(torchs);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(a[i].second.scalar_type() == b[i].second.scalar_type());
    CHECK(torch::equal(a[i].second, b[i].second));
  }
}

// Trains both modules for three steps on the same inputs and checks outputs, gradients (input, weight,
// bias) and buffers are equal after each, then the same in eval mode, which must not count a batch.
template <class TorchNorm>
void check_equals_torch(cfamc::BatchNorm ours, TorchNorm torchs, const std::vector<int64_t>& shape) {
  {
    torch::NoGradGuard no_grad;  // weights that are not the defaults, the same in both
    const int64_t channels = shape[1];
    ours->weight.copy_(torch::rand({channels}) + 0.5);
    ours->bias.copy_(torch::randn({channels}));
    torchs->weight.copy_(ours->weight);
    torchs->bias.copy_(ours->bias);
  }
  check_same_tensors(*ours, *torchs);
  for (int step = 0; step < 3; ++step) {
    const at::Tensor x = (torch::randn(shape) * 3 + 1).requires_grad_(true);
    const at::Tensor x_torch = x.detach().clone().requires_grad_(true);
    const at::Tensor upstream = torch::randn(shape);
    const at::Tensor y = ours->forward(x), y_torch = torchs->forward(x_torch);
    CHECK(torch::equal(y, y_torch));
    (y * upstream).sum().backward();
    (y_torch * upstream).sum().backward();
    CHECK(torch::equal(x.grad(), x_torch.grad()));
    CHECK(torch::equal(ours->weight.grad(), torchs->weight.grad()));
    CHECK(torch::equal(ours->bias.grad(), torchs->bias.grad()));
    check_same_tensors(*ours, *torchs);
  }
  CHECK(ours->num_batches_tracked.item<int64_t>() == 3);
  ours->eval();
  torchs->eval();
  const at::Tensor x = torch::randn(shape);
  CHECK(torch::equal(ours->forward(x), torchs->forward(x)));
  check_same_tensors(*ours, *torchs);
  CHECK(ours->num_batches_tracked.item<int64_t>() == 3);
}

}  // namespace

TEST_CASE("sdk BatchNorm equals torch BatchNorm2d, train and eval, tensors and gradients", "[sdk][distributed]") {
  check_equals_torch(cfamc::BatchNorm(5), torch::nn::BatchNorm2d(5), {6, 5, 4, 3});
  check_equals_torch(cfamc::BatchNorm(3, 1e-3, 0.3), torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(3).eps(1e-3).momentum(0.3)),
                     {4, 3, 5, 5});
}

TEST_CASE("sdk BatchNorm equals torch BatchNorm1d, train and eval, tensors and gradients", "[sdk][distributed]") {
  check_equals_torch(cfamc::BatchNorm(7), torch::nn::BatchNorm1d(7), {10, 7});
}

TEST_CASE("sdk BatchNorm loads a torch BatchNorm2d's state by name", "[sdk][distributed]") {
  torch::nn::BatchNorm2d trained(4);
  trained->forward(torch::randn({8, 4, 3, 3}) * 2 + 5);  // running statistics away from their defaults
  cfamc::BatchNorm loaded(4);
  auto target = loaded->named_buffers();
  for (const auto& item : trained->named_buffers()) {
    REQUIRE(target.contains(item.key()));
    target[item.key()].copy_(item.value());
  }
  loaded->eval();
  trained->eval();
  const at::Tensor x = torch::randn({2, 4, 3, 3});
  CHECK(torch::equal(loaded->forward(x), trained->forward(x)));
  CHECK(loaded->num_batches_tracked.item<int64_t>() == 1);
}

TEST_CASE("sdk distributed: a single process is world 1, rank 0, and every collective is the identity", "[sdk][distributed]") {
  CHECK(cfamc::world_size() == 1);
  CHECK(cfamc::world_rank() == 0);
  CHECK_FALSE(cfamc::sync_batch_norm());
  for (int64_t n : {0, 1, 7, 100}) {
    const cfamc::RowShare share = cfamc::row_share(n);
    CHECK(share.begin == 0);
    CHECK(share.end == n);
    CHECK(share.size() == n);
  }
  const at::Tensor z = torch::randn({12, 3}).requires_grad_(true);
  const at::Tensor gathered = cfamc::all_gather_views(z, 3);
  CHECK(torch::equal(gathered, z));
  gathered.sum().backward();
  CHECK(torch::equal(z.grad(), torch::ones_like(z)));
  CHECK(torch::equal(cfamc::all_gather_shares(z, 12), z));
  CHECK(torch::equal(cfamc::all_gather(z), z));
  CHECK(torch::equal(cfamc::all_reduce_sum(z), z));
}

// ---- A simulated second process ------------------------------------------------------------------------
namespace {

// Rank `rank` of a world of two, inside this process: the other process's tensor in a collective is
// `peer(ours)`. The simulation is a host API table installed as the SDK's host while the object lives: the
// 1.4 functions and the tensor handles the SDK's collectives use (a handle is an owned at::Tensor*). It
// cannot be the host's own table: this file includes <cfamc/plugin.hpp>, whose cfamc::host() clashes with
// the host's namespace.
struct SimulatedPair {
  static inline int32_t rank = 0;
  static inline bool sync = false;
  static inline std::function<at::Tensor(const at::Tensor&)> peer;

  explicit SimulatedPair(int32_t our_rank, std::function<at::Tensor(const at::Tensor&)> other, bool sync_bn = false) {
    rank = our_rank;
    peer = std::move(other);
    sync = sync_bn;
    table_.struct_size = sizeof(cfamc_host_api);
    table_.tensor_from_aten = [](const void* t) {
      return reinterpret_cast<cfamc_tensor*>(new at::Tensor(*static_cast<const at::Tensor*>(t)));
    };
    table_.tensor_aten = [](const cfamc_tensor* t) { return static_cast<const void*>(t); };
    table_.tensor_release = [](cfamc_tensor* t) { delete reinterpret_cast<at::Tensor*>(t); };
    table_.world_rank = [] { return rank; };
    table_.world_size = [] { return int32_t{2}; };
    table_.sync_batch_norm = [] { return int32_t{sync ? 1 : 0}; };
    table_.all_gather = [](const cfamc_tensor* t, cfamc_tensor** out) { return give(gathered(cfamc::tensor_of(t)), out); };
    table_.all_reduce_sum = [](const cfamc_tensor* t, cfamc_tensor** out) {
      return give(cfamc::tensor_of(t) + peer(cfamc::tensor_of(t)), out);
    };
    previous_ = cfamc::detail::g_host;
    cfamc::detail::g_host = &table_;
  }
  ~SimulatedPair() { cfamc::detail::g_host = previous_; }
  SimulatedPair(const SimulatedPair&) = delete;
  SimulatedPair& operator=(const SimulatedPair&) = delete;

 private:
  static at::Tensor gathered(const at::Tensor& ours) {
    return rank == 0 ? torch::cat({ours, peer(ours)}) : torch::cat({peer(ours), ours});
  }
  static cfamc_error* give(const at::Tensor& result, cfamc_tensor** out) {
    *out = cfamc::handle_of(result);
    return nullptr;
  }

  cfamc_host_api table_{};
  const cfamc_host_api* previous_ = nullptr;
};

}  // namespace

TEST_CASE("sdk distributed: two processes' view-major shares gather into the global batch's view-major layout",
          "[sdk][distributed]") {
  // 3 views of 2 images per process; row v*2+i holds 10*v + i, the other process's rows 100 more.
  const at::Tensor local = (torch::arange(3).unsqueeze(1) * 10 + torch::arange(2)).reshape({6, 1}).to(torch::kFloat);
  const SimulatedPair world(0, [](const at::Tensor& t) { return t + 100; });
  CHECK(cfamc::world_size() == 2);
  const at::Tensor gathered = cfamc::all_gather_views(local, 3).reshape({-1});
  // Global view-major: view v of rank 0's images, then of rank 1's.
  const at::Tensor expected = torch::tensor({0, 1, 100, 101, 10, 11, 110, 111, 20, 21, 120, 121}, torch::kFloat);
  CHECK(torch::equal(gathered, expected));
}

TEST_CASE("sdk distributed: NT-Xent of the gathered views in a process of two is the global batch's",
          "[sdk][distributed]") {
  // 2 views of 3 images per process, view-major; the global batch holds view v of rank 0's, then rank 1's.
  const at::Tensor ours = cfamc::unit_rows(torch::randn({6, 4})), theirs = cfamc::unit_rows(torch::randn({6, 4}));
  const at::Tensor global = torch::cat({ours.slice(0, 0, 3), theirs.slice(0, 0, 3), ours.slice(0, 3, 6), theirs.slice(0, 3, 6)});
  const at::Tensor expected = cfamc::nt_xent(global, 2, 0.5);
  const at::Tensor alone = cfamc::nt_xent(ours, 2, 0.5);
  // all_gather_views gathers each process's rows image-major ([b, V, d]); the other process sends its own.
  const at::Tensor theirs_by_image = theirs.reshape({2, 3, 4}).transpose(0, 1).contiguous();
  const SimulatedPair world(0, [&](const at::Tensor&) { return theirs_by_image; });
  const at::Tensor gathered = cfamc::nt_xent(cfamc::all_gather_views(ours, 2), 2, 0.5);
  CHECK(torch::equal(gathered, expected));
  CHECK_FALSE(torch::allclose(gathered, alone));  // falsifiable: the share alone has fewer negatives
}

TEST_CASE("sdk distributed: row shares split n rows in rank order and all_gather_shares reassembles them",
          "[sdk][distributed]") {
  const at::Tensor all = torch::arange(7).to(torch::kFloat).unsqueeze(1) * torch::ones({1, 2});
  // Rank 0 holds rows [0, 4), rank 1 rows [4, 7): the peer's padded share is its 3 rows and a zero row.
  const auto rank1_padded = [&](const at::Tensor&) { return torch::cat({all.slice(0, 4, 7), torch::zeros({1, 2})}); };
  {
    const SimulatedPair world(0, rank1_padded);
    const cfamc::RowShare share = cfamc::row_share(7);
    CHECK(share.begin == 0);
    CHECK(share.end == 4);
    CHECK(torch::equal(cfamc::all_gather_shares(all.slice(0, share.begin, share.end), 7), all));
  }
  const SimulatedPair world(1, [&](const at::Tensor&) { return all.slice(0, 0, 4); });
  const cfamc::RowShare share = cfamc::row_share(7);
  CHECK(share.begin == 4);
  CHECK(share.end == 7);
  CHECK(torch::equal(cfamc::all_gather_shares(all.slice(0, share.begin, share.end), 7), all));
}

TEST_CASE("sdk BatchNorm under SyncBatchNorm: the global batch's output, statistics and input gradient",
          "[sdk][distributed]") {
  // Both processes hold the same share, so the global batch is the share twice, and the other process's
  // gradient through the sums is ours: the simulated all_reduce_sum (ours + ours) sums gradients alike.
  const at::Tensor share = torch::randn({5, 3, 2, 2}) * 2 + 1, upstream = torch::randn({5, 3, 2, 2});
  torch::nn::BatchNorm2d global(3);
  const at::Tensor x_global = torch::cat({share, share}).requires_grad_(true);
  const at::Tensor y_global = global->forward(x_global);
  (y_global * torch::cat({upstream, upstream})).sum().backward();

  const SimulatedPair world(0, [](const at::Tensor& t) { return t; }, /*sync_bn=*/true);
  REQUIRE(cfamc::sync_batch_norm());
  cfamc::BatchNorm ours(3);
  const at::Tensor x = share.clone().requires_grad_(true);
  const at::Tensor y = ours->forward(x);
  (y * upstream).sum().backward();
  CHECK(torch::allclose(y, y_global.slice(0, 0, 5), 1e-5, 1e-5));
  CHECK(torch::allclose(x.grad(), x_global.grad().slice(0, 0, 5), 1e-4, 1e-5));
  CHECK(torch::allclose(ours->running_mean, global->running_mean, 1e-6, 1e-6));
  CHECK(torch::allclose(ours->running_var, global->running_var, 1e-6, 1e-6));
  CHECK(ours->num_batches_tracked.item<int64_t>() == 1);
  // Falsifiable: the share's own statistics differ from the global batch's (its variance is unbiased over 20
  // values there, over 40 here).
  torch::nn::BatchNorm2d local(3);
  local->forward(share);
  CHECK_FALSE(torch::allclose(ours->running_var, local->running_var, 1e-6, 1e-6));
}

TEST_CASE("sdk distributed: gathered_over_shares computes this process's share in chunks and gathers all rows",
          "[sdk][distributed]") {
  // Row i of the 7 rows is (i, 10 i, 100 i) in float64: the result must keep the trailing shape and dtype.
  const at::Tensor scales = torch::tensor({1.0, 10.0, 100.0}, torch::kDouble);
  const at::Tensor all = torch::arange(7, torch::kDouble).unsqueeze(1) * scales;
  const at::Tensor rank1_padded = torch::cat({all.slice(0, 4, 7), torch::zeros({1, 3}, torch::kDouble)});
  std::vector<std::pair<int64_t, int64_t>> calls;
  const auto compute = [&](int64_t begin, int64_t end) {
    calls.emplace_back(begin, end);
    return all.slice(0, begin, end).clone();
  };
  using Calls = std::vector<std::pair<int64_t, int64_t>>;
  {
    const SimulatedPair world(0, [&](const at::Tensor&) { return rank1_padded; });
    CHECK(torch::equal(cfamc::gathered_over_shares(7, 2, compute), all));
    CHECK(calls == Calls{{0, 2}, {2, 4}});
  }
  calls.clear();
  {
    at::Tensor sent;  // what rank 1 puts into the gather: its 3 rows, padded to rank 0's 4
    const SimulatedPair world(1, [&](const at::Tensor& ours) {
      sent = ours;
      return all.slice(0, 0, 4);
    });
    CHECK(torch::equal(cfamc::gathered_over_shares(7, 2, compute), all));
    CHECK(calls == Calls{{4, 6}, {6, 7}});
    CHECK(torch::equal(sent, rank1_padded));
  }
  calls.clear();
  // A single process computes every row itself.
  CHECK(torch::equal(cfamc::gathered_over_shares(7, 3, compute), all));
  CHECK(calls == Calls{{0, 3}, {3, 6}, {6, 7}});
  CHECK_THROWS_AS(cfamc::gathered_over_shares(7, 0, compute), cfamc::Error);
}

TEST_CASE("sdk distributed: gathered_over_shares with an empty share still makes the gather, with the rows' shape",
          "[sdk][distributed]") {
  // n = 1: rank 0 holds row 0, rank 1 holds nothing; it computes row 0 to learn the shape and keeps none of it.
  const at::Tensor row = torch::tensor({{3, 4, 5}}, torch::kInt);
  std::vector<std::pair<int64_t, int64_t>> calls;
  at::Tensor sent;
  const SimulatedPair world(1, [&](const at::Tensor& ours) {
    sent = ours;
    return row;
  });
  REQUIRE(cfamc::row_share(1).size() == 0);
  const at::Tensor gathered = cfamc::gathered_over_shares(1, 2, [&](int64_t begin, int64_t end) {
    calls.emplace_back(begin, end);
    return (row + 100).slice(0, begin, end);  // rows this process would compute differ from rank 0's
  });
  CHECK(calls == std::vector<std::pair<int64_t, int64_t>>{{0, 1}});
  CHECK(torch::equal(gathered, row));  // rank 0's row only: the row rank 1 computed is not in it
  REQUIRE(sent.defined());
  CHECK(sent.scalar_type() == torch::kInt);
  CHECK(torch::equal(sent, torch::zeros({1, 3}, torch::kInt)));  // its empty share padded to rank 0's one row
}

TEST_CASE("sdk distributed: shared_fraction sums the marked rows over the processes and divides by n",
          "[sdk][distributed]") {
  const at::Tensor ours = torch::tensor({true, false, true, true});  // 3 of this process's 4 rows
  CHECK(cfamc::shared_fraction(ours, 4) == 0.75);                     // a single process: its own fraction
  at::Tensor sent;
  const SimulatedPair world(0, [&](const at::Tensor& count) {
    sent = count;
    return torch::tensor(2, torch::kLong);  // the other process marked 2 of its 3 rows
  });
  CHECK(cfamc::shared_fraction(ours, 7) == 5.0 / 7.0);
  REQUIRE(sent.defined());
  CHECK(sent.item<int64_t>() == 3);  // one collective, of this process's count
}
