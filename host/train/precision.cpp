#include "train/precision.hpp"

#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/Device.h>

#include "failure.hpp"

namespace cfamc::host {

namespace {

bool native_bf16(const c10::Device& device) {
  if (device.is_cuda()) return at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8();
  const auto capabilities = at::cpu::get_cpu_capabilities();
  const auto has = [&](const char* name) {
    const auto it = capabilities.find(name);
    return it != capabilities.end() && it->second.isBool() && it->second.toBool();
  };
  return has("avx512_bf16") || has("amx_bf16");
}

}  // namespace

Precision resolve_precision(const std::string& requested, const std::string& device, const std::string& file) {
  if (requested == "fp32") return Precision::fp32;
  if (requested == "bf16") return Precision::bf16;
  if (requested != "auto") {
    fail(ExitCode::usage, file + ": run.precision: '" + requested + "' is not one of auto, bf16, fp32");
  }
  return native_bf16(c10::Device(device)) ? Precision::bf16 : Precision::fp32;
}

const char* name_of(Precision precision) { return precision == Precision::bf16 ? "bf16" : "fp32"; }

AutocastScope::AutocastScope(Precision precision, c10::DeviceType device)
    : active_(precision == Precision::bf16),
      device_(device),
      was_enabled_(at::autocast::is_autocast_enabled(device)),
      cache_was_enabled_(at::autocast::is_autocast_cache_enabled()),
      dtype_was_(at::autocast::get_autocast_dtype(device)) {
  if (!active_) return;
  at::autocast::set_autocast_enabled(device_, true);
  at::autocast::set_autocast_dtype(device_, at::kBFloat16);
  at::autocast::set_autocast_cache_enabled(false);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_cache_enabled(cache_was_enabled_);
  at::autocast::set_autocast_dtype(device_, dtype_was_);
  at::autocast::set_autocast_enabled(device_, was_enabled_);
}

}  // namespace cfamc::host
