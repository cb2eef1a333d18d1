#include "dist/world.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef CFAMC_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <optional>

#include "failure.hpp"

namespace cfamc::host {

struct World::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  c10::intrusive_ptr<c10d::Backend> control;  // Gloo on the CPU, for decisions (agreed_max)
  std::optional<c10::Device> device;          // NCCL's: where every exchanged tensor must be
};

namespace {

// Never destroyed: a process group whose peer died can block in its destructor, and the process is ending.
World*& joined() {
  static World* world = nullptr;
  return world;
}

c10::intrusive_ptr<c10d::Store> rendezvous_store(const Launch& launch, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = launch.master_port;
  options.isServer = !launch.agent_hosts_store && launch.rank == 0;
  options.numWorkers = launch.world;
  options.timeout = timeout;
  options.multiTenant = !launch.agent_hosts_store;
  auto store = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, options);
  // torchrun keeps its store across restarts of a failed job: each attempt reads only its own keys.
  return c10::make_intrusive<c10d::PrefixStore>("cfamc/" + std::to_string(launch.restart), store);
}

c10::intrusive_ptr<c10d::Backend> gloo_group(const c10::intrusive_ptr<c10d::Store>& store, const Launch& launch,
                                             std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // As PyTorch does: GLOO_SOCKET_IFNAME names the interface; otherwise the hostname's address, else loopback.
  const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
  options->devices.push_back(interface ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                       : c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, launch.rank, launch.world, options);
}

c10::intrusive_ptr<c10d::Backend> nccl_group(const c10::intrusive_ptr<c10d::Store>& store, const Launch& launch,
                                             std::chrono::milliseconds timeout) {
#ifdef CFAMC_WITH_NCCL
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, launch.rank, launch.world, options);
#else
  (void)store, (void)launch, (void)timeout;
  fail(ExitCode::usage, "run.backend = \"nccl\": this cfamc-host was built without NCCL (use \"gloo\")");
#endif
}

}  // namespace

World::World(int rank, int size, std::unique_ptr<Group> group) : rank_(rank), size_(size), group_(std::move(group)) {}
World::~World() = default;

World* World::get() { return joined(); }

bool World::has_nccl() {
#ifdef CFAMC_WITH_NCCL
  return true;
#else
  return false;
#endif
}

void World::join(const Launch& launch, CommBackend backend, const std::string& device,
                 std::chrono::milliseconds timeout) {
  auto group = std::make_unique<Group>();
  if (backend == CommBackend::nccl) group->device = c10::Device(device);
  try {
    group->store = rendezvous_store(launch, timeout);
    group->backend = backend == CommBackend::nccl ? nccl_group(group->store, launch, timeout)
                                                  : gloo_group(group->store, launch, timeout);
    group->control = gloo_group(c10::make_intrusive<c10d::PrefixStore>("control", group->store), launch, timeout);
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    fail(ExitCode::peer, "rank " + std::to_string(launch.rank) + " of " + std::to_string(launch.world) +
                             ": the job's processes did not meet at " + launch.master_addr + ":" +
                             std::to_string(launch.master_port) + ": " + message.substr(0, message.find('\n')));
  }
  joined() = new World(launch.rank, launch.world, std::move(group));
}

void World::lost(const char* what, const std::string& detail) {
  if (failure_.empty()) {
    failure_ = std::string(what) + " failed on rank " + std::to_string(rank_) +
               ": another process of the job died, hung past run.timeout_s, or cannot be reached, or the processes "
               "disagree on what to exchange (" + detail.substr(0, detail.find('\n')) + ")";
  }
  fail(ExitCode::peer, failure_);
}

template <class Body>
auto World::guarded(const char* what, Body body) -> decltype(body()) {
  if (broken()) fail(ExitCode::peer, failure_);
  try {
    return body();
  } catch (const c10::Error& e) {
    lost(what, e.what_without_backtrace());
  } catch (const std::runtime_error& e) {
    lost(what, e.what());
  }
}

template <class Body>
void World::on_backend_device(const at::Tensor& tensor, Body body) {
  if (!group_->device || tensor.device() == *group_->device) return body(tensor);
  at::Tensor there = tensor.to(*group_->device);
  body(there);
  tensor.copy_(there);
}

void World::broadcast(const std::vector<at::Tensor>& tensors) {
  guarded("broadcast", [&] {
    for (const at::Tensor& tensor : tensors) {
      on_backend_device(tensor, [&](const at::Tensor& t) {
        std::vector<at::Tensor> one{t};
        group_->backend->broadcast(one)->wait();
      });
    }
  });
}

void World::all_reduce_sum(const at::Tensor& tensor) {
  on_backend_device(tensor, [&](const at::Tensor& t) { start_all_reduce_sum(t)(); });
}

World::Pending World::start_all_reduce_sum(const at::Tensor& tensor) {
  return guarded("all_reduce", [&] {
    std::vector<at::Tensor> one{tensor};
    c10::intrusive_ptr<c10d::Work> work = group_->backend->allreduce(one);
    return Pending([this, work] { guarded("all_reduce", [&] { work->wait(); }); });
  });
}

at::Tensor World::all_gather(const at::Tensor& tensor) {
  return guarded("all_gather", [&] {
    at::Tensor input = group_->device ? tensor.to(*group_->device).contiguous() : tensor.contiguous();
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape[0] *= size_;
    at::Tensor output = at::empty(shape, input.options());
    group_->backend->_allgather_base(output, input)->wait();
    return output.to(tensor.device());
  });
}

int World::agreed_max(int value) {
  return guarded("all_reduce (control)", [&] {
    std::vector<at::Tensor> one{at::scalar_tensor(value, at::kInt).reshape({1})};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::MAX;
    group_->control->allreduce(one, options)->wait();
    return one[0].item<int>();
  });
}

void World::close() {
  group_->backend->shutdown();
  group_->control->shutdown();
}

}  // namespace cfamc::host
