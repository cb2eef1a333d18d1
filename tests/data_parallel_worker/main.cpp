// One process of a data-parallel job on a tiny model, for tests/test_data_parallel.cpp: the SDK's
// collectives and cfamc::BatchNorm as plugins use them (tiny_model.cpp), the host's GradientAverager as the
// trainer uses it. Launched like cfamc-host (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT), or without them
// as the single process that computes the whole batch. Takes this process's share of a fixed batch of 8
// inputs in two views, computes NT-Xent over the global batch through Linear -> SyncBatchNorm -> Linear,
// runs the backward pass and averages the weights' gradients over the processes; then rank 0 writes to
// argv[1] every weight's gradient, the BatchNorm buffers, and the gradient of the loss with respect to the
// whole batch's inputs, gathered from the processes and divided by their number (each process computes
// the global loss, so its rows' gradient is the sum of the processes' copies). argv[2]: "overlap" or
// "finished", how the gradients are averaged.
#include <ATen/ATen.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>

#include "dist/gradient_average.hpp"
#include "dist/launch.hpp"
#include "dist/world.hpp"
#include "plugins/context.hpp"
#include "tiny_model.hpp"
#include "train/checkpoint.hpp"

using namespace cfamc::host;

namespace {

int run(const std::string& out, bool overlap) {
  constexpr int64_t kBatch = 8;
  at::manual_seed(7);
  tiny::Model model;
  const at::Tensor inputs = at::randn({kBatch, 6});
  const at::Tensor noise = 0.1 * at::randn({kBatch, 6});
  World* world = World::get();
  const int64_t size = world ? world->size() : 1, rank = world ? world->rank() : 0, share = kBatch / size;
  const at::Tensor mine = inputs.slice(0, rank * share, (rank + 1) * share).clone().requires_grad_(true);
  const at::Tensor views = at::cat({mine, mine + noise.slice(0, rank * share, (rank + 1) * share)}, 0);
  std::vector<at::Tensor> weights;
  for (const auto& [name, weight] : model.parameters()) weights.push_back(weight);
  std::unique_ptr<GradientAverager> averager;
  if (world) averager = std::make_unique<GradientAverager>(*world, weights, overlap, /*bucket_bytes=*/64);
  if (averager) averager->arm();
  const at::Tensor loss = model.loss(views);
  loss.backward();
  if (averager) averager->average();
  TensorMap result;
  for (const auto& [name, weight] : model.parameters()) result.insert("grad/" + name, weight.grad());
  for (const auto& [name, buffer] : model.buffers()) result.insert("buffer/" + name, buffer);
  at::Tensor input_gradient = mine.grad();
  if (world) input_gradient = world->all_gather(input_gradient) / static_cast<double>(size);
  result.insert("grad/input", input_gradient);
  result.insert("loss", loss.detach().reshape({1}));
  if (rank == 0) write_checkpoint_file(out, result);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: data_parallel_worker OUT.pt overlap|finished\n";
    return 2;
  }
  try {
    tiny::use_host(host_api());
    if (const auto launch = launch_from_environment(); launch && launch->world > 1) {
      World::join(*launch, CommBackend::gloo, "cpu", std::chrono::seconds(60));
      World::get()->sync_batch_norm = true;
    }
    return run(argv[1], std::strcmp(argv[2], "overlap") == 0);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
