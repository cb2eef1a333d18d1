// Components as the host makes them, for the tests that drive plugins directly: the build tree's plugins
// (and two test plugins), options validated and defaulted as the host does, a fixed seed.
#pragma once

#include <memory>
#include <string>

#include "config/options.hpp"
#include "plugins/components.hpp"
#include "plugins/registry.hpp"
#include "support.hpp"

namespace cfamc::test {

inline const host::Registry& registry() {
  static const host::Registry instance =
      host::Registry::discover({CFAMC_PLUGIN_BUILD_DIR, test_plugin("c_shift"), test_plugin("throwing")}, host::host_api());
  return instance;
}

// A component of `kind` named `name`, its options `toml` validated and defaulted as the host does.
template <class K>
std::unique_ptr<K> make(cfamc_kind kind, const std::string& name, const std::string& toml = "", int64_t feature_dim = 0,
                        const std::string& device = "cpu") {
  const host::ComponentInfo& info = registry().find(kind, name);
  host::ComponentSetup setup{name, host::resolve_options(toml::parse(toml), info.options, name, "test"), 1234, device,
                             feature_dim};
  return host::instantiate<K>(registry(), info, std::move(setup));
}

}  // namespace cfamc::test
