#include "run/resolved_run.hpp"

#include <ATen/Context.h>
#include <c10/core/Device.h>
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

std::string resolve_device(const std::string& requested, const std::string& file) {
  if (requested == "auto") return at::hasCUDA() ? "cuda:0" : "cpu";
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(requested);
  } catch (const c10::Error&) {
    fail(ExitCode::usage, file + ": run.device: '" + requested + "' is not a device (auto, cpu, cuda, cuda:N)");
  }
  if (device.is_cuda() && !at::hasCUDA()) {
    fail(ExitCode::usage, file + ": run.device = \"" + requested + "\" but this machine has no CUDA device");
  }
  return device.str();
}

}  // namespace

void configure_device(const Compute& compute) {
  if (c10::Device(compute.device).is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
}

Compute resolve_compute(const RunConfig& config) {
  const std::string device = resolve_device(config.device, config.file);
  return {device, resolve_precision(config.precision, device, config.file)};
}

}  // namespace cfamc::host
