#include "run/data_parallel.hpp"

#include <ATen/ATen.h>

#include <unistd.h>

#include <fstream>
#include <iterator>

#include "files.hpp"
#include "log.hpp"
#include "run/compute.hpp"
#include "run/run_dir.hpp"
#include "train/checkpoint.hpp"
#include "train/checkpoint_files.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

constexpr const char* kWorldSize = "trainer/world_size";

// Under a name no component label can take ("ranks" is no run-file place).
constexpr const char* kRanks = "ranks/";
std::string rank_prefix(int rank) { return kRanks + std::to_string(rank) + "/"; }

// The checkpoint names of the attacks' tensors: what each process holds for its own share of the batch.
std::vector<std::string> attack_prefixes(const RunConfig& config, const Assembly& assembly) {
  std::vector<std::string> out;
  for (const auto& [place, component] : assembly.checkpointed(config))
    if (kind_of(place->role) == CFAMC_KIND_ATTACK) out.push_back(place->label + "/");
  return out;
}

bool starts_with_any(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (name.rfind(p, 0) == 0) return true;
  return false;
}

void broadcast_encoder_tensors(World& world, const Assembly& assembly, const std::vector<cfamc_tensor_role>& roles) {
  std::vector<at::Tensor> tensors;
  for (const Component* c : {static_cast<const Component*>(assembly.backbone.get()), static_cast<const Component*>(assembly.objective.get())})
    for (cfamc_tensor_role role : roles)
      for (const auto& item : c->tensors(role)) tensors.push_back(item.value().detach());
  world.broadcast(tensors);
}

}  // namespace

World* join_job(const RunConfig& config, const std::optional<Launch>& launch, const Compute& compute) {
  if (!launch || launch->world < 2) return nullptr;
  const bool cuda = c10::Device(compute.device).is_cuda();
  if (cuda && c10::Device(compute.device).index() != launch->local_rank) {
    fail(ExitCode::usage, config.file + ": run.device = \"" + config.device + "\" puts every process of the job on one GPU; "
                          "use \"auto\" or \"cuda\" (LOCAL_RANK picks each process's GPU)");
  }
  const bool nccl = config.backend == "nccl" || (config.backend == "auto" && cuda && World::has_nccl());
  if (config.backend == "auto" && cuda && !World::has_nccl()) {
    log(LogLevel::warn, "this cfamc-host was built without NCCL: the GPUs exchange tensors through Gloo (slower)");
  }
  if (nccl && !cuda) {
    fail(ExitCode::usage, config.file + ": run.backend = \"nccl\" needs a CUDA device, but run.device is " + compute.device);
  }
  const CommBackend backend = nccl ? CommBackend::nccl : CommBackend::gloo;
  const std::string rank = "rank " + std::to_string(launch->rank) + "/" + std::to_string(launch->world);
  set_log_prefix("[" + rank + "] ");
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  World::join(*launch, backend, compute.device, timeout);
  World* world = World::get();
  log(LogLevel::info, "joined a job of " + std::to_string(launch->world) + " processes through " +
                          launch->master_addr + ":" + std::to_string(launch->master_port) + " (" +
                          (backend == CommBackend::nccl ? "NCCL" : "Gloo") + ", " + compute.device +
                          (config.sync_batch_norm() ? ", SyncBatchNorm while training" : "") + ")");
  return world;
}

ScratchDirectory::ScratchDirectory(int rank)
    : path_(fs::temp_directory_path() / ("cfamc-rank" + std::to_string(rank) + "-" + std::to_string(::getpid()))) {
  fs::create_directories(path_);
}

ScratchDirectory::~ScratchDirectory() {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

void warn_single_process_plugins(const World& world, const Assembly& assembly) {
  if (world.rank() != 0) return;
  for (const Component* c : {static_cast<const Component*>(assembly.backbone.get()), static_cast<const Component*>(assembly.objective.get())}) {
    if (c->abi_minor() >= 4) continue;
    log(LogLevel::warn, c->who() + " was built against plugin ABI 1." + std::to_string(c->abi_minor()) +
                            ", before data-parallel runs: its loss and BatchNorm see only each process's share of the batch");
  }
}

void broadcast_weights(World& world, const Assembly& assembly) {
  broadcast_encoder_tensors(world, assembly, {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER});
}

void broadcast_buffers(World& world, const Assembly& assembly) {
  broadcast_encoder_tensors(world, assembly, {CFAMC_ROLE_BUFFER});
}

std::optional<LoadedCheckpoint> share_checkpoint(World& world, const RunDirectory& dir,
                                                 std::optional<LoadedCheckpoint> newest) {
  std::string bytes;
  int64_t step = -1;
  if (world.rank() == 0 && newest) {
    std::ifstream in(newest->file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    step = checkpoint_step(newest->file.filename().string()).value_or(-1);
  }
  at::Tensor header = at::tensor({step, static_cast<int64_t>(bytes.size())}, at::kLong);
  world.broadcast({header});
  step = header[0].item<int64_t>();
  if (step < 0) return std::nullopt;
  at::Tensor content = world.rank() == 0 ? at::from_blob(bytes.data(), {header[1].item<int64_t>()}, at::kByte).clone()
                                         : at::empty({header[1].item<int64_t>()}, at::kByte);
  world.broadcast({content});
  if (world.rank() == 0) return newest;
  const fs::path file = dir.checkpoints() / checkpoint_name(step);
  fs::create_directories(dir.checkpoints());
  write_file_atomically(file, std::string(static_cast<const char*>(content.data_ptr()), static_cast<size_t>(content.numel())));
  return LoadedCheckpoint{file, load_checkpoint(file)};
}

void add_rank_local_state(World* world, const RunConfig& config, const Assembly& assembly, TensorMap& state) {
  if (world == nullptr) return;
  state.insert(kWorldSize, at::scalar_tensor(world->size(), at::kLong));
  const std::vector<std::string> prefixes = attack_prefixes(config, assembly);
  std::vector<std::string> names;
  for (const auto& item : state)
    if (starts_with_any(item.key(), prefixes)) names.push_back(item.key());
  for (const auto& name : names) {
    const at::Tensor mine = state[name].detach();
    const at::Tensor all = world->all_gather(mine.reshape({1, -1}).contiguous());
    if (world->rank() != 0) continue;
    for (int r = 1; r < world->size(); ++r) state.insert(rank_prefix(r) + name, all[r].view(mine.sizes()).cpu());
  }
}

void take_rank_local_state(World* world, const RunConfig& config, const Assembly& assembly, TensorMap& saved,
                           const fs::path& file) {
  const int size = world ? world->size() : 1, rank = world ? world->rank() : 0;
  const int64_t saved_size = saved.contains(kWorldSize) ? saved[kWorldSize].item<int64_t>() : 1;
  const std::vector<std::string> prefixes = attack_prefixes(config, assembly);
  TensorMap kept;
  for (const auto& item : saved) {
    const std::string& name = item.key();
    if (name == kWorldSize || name.rfind(kRanks, 0) == 0) continue;
    if (!starts_with_any(name, prefixes)) {
      kept.insert(name, item.value());
    } else if (saved_size == size) {
      const std::string own = rank == 0 ? name : rank_prefix(rank) + name;
      if (saved.contains(own)) kept.insert(name, saved[own]);
    }
  }
  if (saved_size != size && kept.size() + 1 < saved.size()) {
    log(LogLevel::warn, "resume: " + file.string() + " was written by a job of " + std::to_string(saved_size) +
                            " processes, this one has " + std::to_string(size) +
                            "; each process's attack state (its share of the batch) starts afresh");
  }
  saved = std::move(kept);
}

std::vector<double> averaged(World* world, const std::vector<at::Tensor>& values) {
  std::vector<at::Tensor> scalars;
  for (const at::Tensor& v : values) scalars.push_back(v.detach().to(at::kCPU, at::kDouble).reshape({}));
  at::Tensor all = at::stack(scalars);
  if (world != nullptr) {
    world->all_reduce_sum(all);
    all.div_(world->size());
  }
  std::vector<double> out(all.data_ptr<double>(), all.data_ptr<double>() + all.numel());
  return out;
}

bool on_any_process(World* world, bool flag) {
  return world ? world->agreed_max(flag ? 1 : 0) > 0 : flag;
}

}  // namespace cfamc::host
