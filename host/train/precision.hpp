// The arithmetic a run computes in: float32 throughout, or bfloat16 under LibTorch's autocast for the
// convolutions and matrix products of the training step, the attacks and the evaluators (BatchNorm
// statistics, the optimiser and the losses' sensitive parts stay float32: <cfamc/precision.hpp>).
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace cfamc::host {

enum class Precision { fp32, bf16 };

// [run] precision as written ("auto", "bf16", "fp32") made concrete for `device`: "auto" is bf16 where the
// device computes it natively (a CUDA GPU of compute capability 8.0 or later; a CPU with AVX512-BF16 or
// AMX-BF16), fp32 elsewhere. Failure(usage) naming `file` for any other value.
Precision resolve_precision(const std::string& requested, const std::string& device, const std::string& file);
const char* name_of(Precision precision);

// Autocast to bfloat16 on `device` for the scope's lifetime when `precision` is bf16 (nothing for fp32).
// Autocast is thread-local: a scope covers the calls made on the thread that opened it. Its cache of weight
// casts is off: it is keyed by tensor, not by version, so a weight updated inside a scope (an evaluator
// training its head) would be seen as it was, and with LibTorch releases before the end of 2025 a cast made
// under no-grad (PGD's restarts) lost its gradient; casting a ResNet-18's weights again costs a few
// milliseconds a forward on the CPU, microseconds on a GPU.
class AutocastScope {
 public:
  AutocastScope(Precision precision, c10::DeviceType device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_;
  c10::DeviceType device_;
  bool was_enabled_, cache_was_enabled_;
  c10::ScalarType dtype_was_;
};

}  // namespace cfamc::host
