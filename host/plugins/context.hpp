// The host's definitions of the opaque C types a plugin sees: errors and per-component contexts.
#pragma once

#include <cfamc/cfamc.h>

#include <cstdint>
#include <string>
#include <vector>

#include <toml++/toml.h>

namespace cfamc::host {
// What a backbone offers of ABI 1.3's stages: `count` S (0: none), the copies of stage S and the channels of
// stages 0..S.
struct StageLayout {
  int32_t count = 0;
  int32_t copies = 0;
  std::vector<int64_t> channels;
};
}  // namespace cfamc::host

struct cfamc_error {
  cfamc_error_code code;
  std::string message;
};

struct cfamc_context {
  std::string plugin;   // the component's plugin name ("pgd")
  std::string label;    // where it sits in the run file ("attack", "evaluate.knn")
  toml::table options;  // validated, defaults filled in
  uint64_t seed = 0;
  std::string device = "cpu";
  int64_t feature_dim = 0;  // the run's backbone feature dimension; 0 for the backbone itself
  cfamc::host::StageLayout stages;  // the run's backbone's stages, in the objective's context only
};

namespace cfamc::host {

// The table of host functions handed to every plugin's entry point.
const cfamc_host_api* host_api();

cfamc_error* make_error(cfamc_error_code code, std::string message);

// The one translation of a C++ exception into an error for a plugin, used wherever host code runs on a
// plugin's behalf (the oracle, the evaluation services, the host API): nothing crosses the C boundary,
// and LibTorch's messages arrive without their backtraces. Call it only inside a catch block.
cfamc_error* error_from_current_exception() noexcept;

// Runs `body`; an exception becomes the error returned.
template <class Body>
cfamc_error* guarded(Body&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (...) {
    return error_from_current_exception();
  }
}

// Releases `error` (if any) and throws Failure(plugin) prefixed with `who` ("plugin 'pgd' (attack)").
void check_plugin(cfamc_error* error, const std::string& who);

}  // namespace cfamc::host
