// Loading plugins: the ABI handshake, the build fingerprint, malformed tables, discovery and duplicates.
#include <catch2/catch.hpp>

#include "config/options.hpp"
#include "failure.hpp"
#include "plugins/registry.hpp"
#include "support.hpp"

using namespace cfamc::host;
using Catch::Matchers::Contains;

namespace {

// Loading calls only the entry point, which keeps the table; no host function runs in these tests.
const cfamc_host_api* loader_api() {
  static const cfamc_host_api api = {sizeof(cfamc_host_api), CFAMC_ABI_MAJOR, CFAMC_ABI_MINOR};
  return &api;
}

std::filesystem::path library_in(const std::string& folder) {
  for (const auto& entry : std::filesystem::directory_iterator(cfamc::test::test_plugin(folder)))
    if (entry.path().extension() == ".so") return entry.path();
  FAIL("no library in " << folder);
  return {};
}

std::string load_failure(const std::string& folder) {
  try {
    PluginLibrary::load(library_in(folder), loader_api());
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::plugin);
    return e.what();
  }
  FAIL("loading " << folder << " did not fail");
  return "";
}

}  // namespace

TEST_CASE("a plugin built for another ABI major is refused by name", "[abi]") {
  const std::string message = load_failure("entry_v2");
  CHECK_THAT(message, Contains("built for plugin ABI v2"));
  CHECK_THAT(message, Contains("this host speaks ABI v1"));
}

TEST_CASE("a description claiming another ABI major is refused", "[abi]") {
  CHECK_THAT(load_failure("described_major"), Contains("describes itself as plugin ABI v2"));
}

TEST_CASE("a library without an entry symbol is not a plugin", "[abi]") {
  CHECK_THAT(load_failure("no_entry"), Contains("no cfamc_plugin_entry_v1 symbol"));
}

TEST_CASE("a foreign build fingerprint is refused, naming both sides", "[abi]") {
  const std::string message = load_failure("foreign_fingerprint");
  CHECK_THAT(message, Contains("LibTorch version differs"));
  CHECK_THAT(message, Contains("plugin built with LibTorch 1.13.1"));
  CHECK_THAT(message, Contains("host built with LibTorch " CFAMC_TORCH_VERSION));
}

TEST_CASE("a table without its required functions is refused", "[abi]") {
  CHECK_THAT(load_failure("missing_function"), Contains("attack table lacks required functions"));
}

TEST_CASE("a file that is no shared library is refused", "[abi]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("libfake.so", "not an ELF file");
  try {
    PluginLibrary::load(file, loader_api());
    FAIL("loaded a text file");
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Contains("cannot load"));
  }
}

TEST_CASE("fingerprint rules", "[abi]") {
  const Fingerprint host{"2.11.0", "13.0", 1};
  CHECK(fingerprint_mismatch({"2.11.3", "13.2", 1}, host).empty());
  CHECK(fingerprint_mismatch({"", "none", 0}, host).empty());  // no LibTorch: nothing to compare
  CHECK(fingerprint_mismatch({"2.10.0", "13.0", 1}, host) == "LibTorch version differs");
  CHECK(fingerprint_mismatch({"2.11.0", "none", 1}, host) == "CUDA support differs");
  CHECK(fingerprint_mismatch({"2.11.0", "12.8", 1}, host) == "CUDA major version differs");
  CHECK(fingerprint_mismatch({"2.11.0", "13.0", 0}, host) == "C++11 ABI flag differs");
}

TEST_CASE("a plain C plugin loads with its declared options", "[abi]") {
  const auto plugin = PluginLibrary::load(library_in("c_shift"), loader_api());
  CHECK(plugin->name() == "c_shift");
  CHECK(plugin->abi_major() == 1);
  REQUIRE(plugin->components().size() == 1);
  const ComponentInfo& c = plugin->components()[0];
  CHECK(c.kind == CFAMC_KIND_ATTACK);
  REQUIRE(c.options.size() == 1);
  CHECK(c.options[0].name == "epsilon");
  CHECK(c.options[0].default_literal == std::optional<std::string>("\"1/255\""));
  CHECK_FALSE(c.options[0].accepts_nonfinite);
}

TEST_CASE("option declarations: the non-finite modifier is read from the type, malformed ones refused", "[abi]") {
  const auto accepting = [](cfamc_option_type type) {
    return static_cast<cfamc_option_type>(type | CFAMC_OPTION_ACCEPTS_NONFINITE);
  };
  const cfamc_option_decl decls[] = {
      {sizeof(cfamc_option_decl), "bound", accepting(CFAMC_OPTION_FLOAT), "inf", "upper bound"},
      {sizeof(cfamc_option_decl), "epsilon", CFAMC_OPTION_FLOAT, "0.1", "radius"}};
  const Schema schema = schema_from_decls(decls, 2);
  REQUIRE(schema.size() == 2);
  CHECK(schema[0].type == CFAMC_OPTION_FLOAT);
  CHECK(schema[0].accepts_nonfinite);
  CHECK_FALSE(schema[1].accepts_nonfinite);
  cfamc_option_decl unsized = decls[1];
  unsized.struct_size = 0;
  CHECK_THROWS_WITH(schema_from_decls(&unsized, 1), Contains("option 0 is malformed"));
  // The modifier means nothing for an integer: a declaration that uses it so is the plugin's mistake.
  const cfamc_option_decl integer = {sizeof(cfamc_option_decl), "steps", accepting(CFAMC_OPTION_INT), "1", ""};
  CHECK_THROWS_WITH(schema_from_decls(&integer, 1), Contains("option 0 is malformed"));
}

TEST_CASE("discovery finds shipped plugins and names both files of a duplicate", "[discovery]") {
  const Registry registry = Registry::discover({CFAMC_PLUGIN_BUILD_DIR}, loader_api());
  CHECK(registry.find(CFAMC_KIND_BACKBONE, "convnet").name == "convnet");
  CHECK(registry.find(CFAMC_KIND_ATTACK, "pgd").library->name() == "pgd");
  CHECK(registry.skipped().empty());
  try {
    registry.find(CFAMC_KIND_ATTACK, "pdg");
    FAIL("found a plugin that does not exist");
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Contains("no attack plugin named 'pdg'; did you mean 'pgd'?"));
  }
  // The second file is skipped, not fatal; asking for the component it duplicates names both files.
  const Registry duplicate = Registry::discover({cfamc::test::test_plugin("duplicate")}, loader_api());
  REQUIRE(duplicate.libraries().size() == 1);
  REQUIRE(duplicate.skipped().size() == 1);
  CHECK(duplicate.skipped()[0].duplicate_of == duplicate.libraries()[0]->file());
  try {
    duplicate.find(CFAMC_KIND_ATTACK, "c_shift");
    FAIL("a duplicate was accepted");
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Contains("two attack plugins named 'c_shift'"));
    CHECK_THAT(std::string(e.what()), Contains("libduplicate_a.so"));
    CHECK_THAT(std::string(e.what()), Contains("libduplicate_b.so"));
  }
}

TEST_CASE("junk on the plugin path is skipped, only a run that needs it fails, with its problem", "[discovery]") {
  cfamc::test::TempDir dir;
  const auto text_file = dir.write("libjunk.so", "not an ELF file");
  std::vector<std::filesystem::path> path = {text_file};
  for (const char* folder : {"entry_v2", "no_entry", "described_major", "foreign_fingerprint", "missing_function"})
    path.push_back(cfamc::test::test_plugin(folder));
  path.push_back(cfamc::test::test_plugin("c_shift"));
  const Registry registry = Registry::discover(path, loader_api());

  REQUIRE(registry.libraries().size() == 1);
  CHECK(registry.find(CFAMC_KIND_ATTACK, "c_shift").name == "c_shift");
  REQUIRE(registry.skipped().size() == 6);
  for (const auto& s : registry.skipped()) {
    INFO(s.file);
    CHECK_THAT(s.problem, Contains(s.file.string()));
  }
  // The foreign build's description is readable: its components and fingerprint are known.
  const SkippedPlugin& foreign = registry.skipped()[4];
  CHECK_THAT(foreign.problem, Contains("LibTorch version differs"));
  CHECK(foreign.plugin == "broken");
  REQUIRE(foreign.fingerprint);
  CHECK(foreign.fingerprint->torch_version == "1.13.1");
  REQUIRE(foreign.components.size() == 1);
  CHECK(foreign.components[0].name == "broken");

  const auto failure = [&](const std::string& name) -> std::string {
    try {
      registry.find(CFAMC_KIND_ATTACK, name);
    } catch (const Failure& e) {
      CHECK(e.code() == ExitCode::plugin);
      return e.what();
    }
    FAIL("found " << name);
    return "";
  };
  // `broken` is offered only by refused files: the first one's problem is the answer.
  const std::string broken = failure("broken");
  CHECK_THAT(broken, Contains("attack 'broken' cannot be used"));
  CHECK_THAT(broken, Contains("LibTorch version differs"));
  // An unknown name lists what was skipped and why, including the files whose names are unknown.
  const std::string unknown = failure("deepfool");
  CHECK_THAT(unknown, Contains("no attack plugin named 'deepfool'"));
  CHECK_THAT(unknown, Contains("skipped:"));
  CHECK_THAT(unknown, Contains("built for plugin ABI v2"));
  CHECK_THAT(unknown, Contains("no cfamc_plugin_entry_v1 symbol"));
  CHECK_THAT(unknown, Contains("libjunk.so: cannot load"));
  CHECK(unknown.find('\n') == std::string::npos);
}

TEST_CASE("a component offered by a usable file and by a refused one is ambiguous", "[discovery]") {
  // `healthy` is broken.c without a defect: a usable attack named `broken`.
  const Registry registry = Registry::discover(
      {cfamc::test::test_plugin("healthy"), cfamc::test::test_plugin("foreign_fingerprint")}, loader_api());
  try {
    registry.find(CFAMC_KIND_ATTACK, "broken");
    FAIL("an ambiguous component was found");
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::plugin);
    CHECK_THAT(std::string(e.what()), Contains("libbroken_healthy.so and by a file that cannot be used"));
    CHECK_THAT(std::string(e.what()), Contains("libbroken_foreign_fingerprint.so"));
  }
}

TEST_CASE("the same file reached twice on the path is loaded once", "[discovery]") {
  const std::string dir = cfamc::test::test_plugin("c_shift");
  const Registry registry = Registry::discover({dir, dir}, loader_api());
  CHECK(registry.libraries().size() == 1);
}
