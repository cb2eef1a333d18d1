// The processes of a data-parallel run and the c10d process group through which they exchange tensors
// (Gloo on the CPU, NCCL on CUDA). A process joins once, before its run starts; in a single-process run
// there is no World and World::get() is null.
//
// Every collective here is blocking for the caller's device stream and bounded by the run's timeout. With
// Gloo a process that died makes its peers' next collective fail at once (the connection closes), one that
// hangs makes it fail after the timeout; the first failure marks the World broken and is Failure(peer), so
// that every process of a failed job exits with the same documented code. With NCCL a wait only orders the
// device stream: PyTorch's NCCL watchdog ends a process whose collective outlasts the timeout (SIGABRT).
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/launch.hpp"

namespace cfamc::host {

enum class CommBackend { gloo, nccl };

class World {
 public:
  // Rendezvous through c10d's TCPStore at the launch's MASTER_ADDR:MASTER_PORT (as its client when
  // torchrun's agent hosts it, else rank 0 hosts it), then the process group. Failure(peer) when the
  // others do not arrive within `timeout`; Failure(usage) for NCCL in a build without it.
  // `device`: the run's; NCCL exchanges only tensors there, so CPU tensors travel through it.
  static void join(const Launch& launch, CommBackend backend, const std::string& device,
                   std::chrono::milliseconds timeout);
  // The joined world, or null in a single-process run.
  static World* get();
  // Whether this build has NCCL's process group (a CUDA LibTorch with nccl.h at build time).
  static bool has_nccl();

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Whether a collective has failed: the job is lost and the process is on its way out.
  bool broken() const { return !failure_.empty(); }
  const std::string& failure() const { return failure_; }
  // `[backbone] sync_bn`, while the loop trains: BatchNorm in training mode normalises with the global
  // batch's statistics. Off elsewhere: an evaluator that trains the encoder does so on every process alike.
  bool sync_batch_norm = false;

  // In place: every tensor takes rank 0's values.
  void broadcast(const std::vector<at::Tensor>& tensors);
  // In place: the elementwise sum over the processes.
  void all_reduce_sum(const at::Tensor& tensor);
  // Every process's `tensor` (same shape everywhere) concatenated along dim 0 in rank order.
  at::Tensor all_gather(const at::Tensor& tensor);
  // An in-place sum started now; `wait` blocks until it is done (and throws what the collective threw).
  using Pending = std::function<void()>;
  Pending start_all_reduce_sum(const at::Tensor& tensor);
  // The largest of every process's `value`, through a Gloo group of its own on the CPU: a decision all
  // processes must take together (stop after this step?) without waiting for a device.
  int agreed_max(int value);
  // After a run that ended well: the backends let go of their devices and threads.
  void close();

  ~World();

 private:
  struct Group;
  World(int rank, int size, std::unique_ptr<Group> group);
  // `body` on `tensor` where the backend can exchange it (copied there and back when it is not).
  template <class Body>
  void on_backend_device(const at::Tensor& tensor, Body body);
  template <class Body>
  auto guarded(const char* what, Body body) -> decltype(body());
  [[noreturn]] void lost(const char* what, const std::string& detail);

  int rank_, size_;
  std::unique_ptr<Group> group_;
  std::string failure_;
};

// What the host API's collectives do (<cfamc/distributed.hpp>): differentiable, their backward sums each
// process's gradient of the result over the processes. The identity without a World.
at::Tensor all_gather_differentiable(const at::Tensor& tensor);
at::Tensor all_reduce_sum_differentiable(const at::Tensor& tensor);

}  // namespace cfamc::host
