#include "run/resolved_run.hpp"

#include <ATen/Context.h>
#include <c10/core/Device.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include "config/run_file.hpp"
#include "failure.hpp"
#include "plugins/context.hpp"

namespace cfamc::host {

ResolvedRun resolve_run(const std::filesystem::path& path, const std::vector<std::string>& overrides,
                        const std::vector<std::string>& removals) {
  const RunFile run_file = load_run_file(path, overrides, removals);
  RunConfig config = resolve_host_sections(run_file);
  Registry registry = Registry::discover(plugin_search_path(config.plugin_paths), host_api());
  resolve_components(config, run_file, registry);
  return ResolvedRun{std::move(config), std::move(registry)};
}

namespace {

std::string resolve_device(const std::string& requested, const std::string& file, int local_rank) {
  const std::string local_gpu = "cuda:" + std::to_string(local_rank);
  if (requested == "auto") return at::hasCUDA() ? local_gpu : "cpu";
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(requested);
  } catch (const c10::Error&) {
    fail(ExitCode::usage, file + ": run.device: '" + requested + "' is not a device (auto, cpu, cuda, cuda:N)");
  }
  if (device.is_cuda() && !at::hasCUDA()) {
    fail(ExitCode::usage, file + ": run.device = \"" + requested + "\" but this machine has no CUDA device");
  }
  return device.is_cuda() && !device.has_index() ? local_gpu : device.str();
}

}  // namespace

void configure_device(const Compute& compute) {
  const c10::Device device(compute.device);
  if (!device.is_cuda()) return;
  at::globalContext().setBenchmarkCuDNN(true);
  // NCCL and every kernel launch without a guard use the current device: the process's own GPU.
  c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(device);
}

Compute resolve_compute(const RunConfig& config, int local_rank) {
  const std::string device = resolve_device(config.device, config.file, local_rank);
  return {device, resolve_precision(config.precision, device, config.file)};
}

}  // namespace cfamc::host
