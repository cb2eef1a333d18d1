// cfamc-host as a user runs it: exit codes, one-line errors, --list-plugins --json, --validate, --set.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <set>
#include <sstream>

#include "support.hpp"

using cfamc::test::run_host;
using cfamc::test::test_plugin;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

const std::string kQuickstart = std::string(CFAMC_SOURCE_DIR) + "/configs/quickstart.toml";
const std::string kSimclrPgd = std::string(CFAMC_SOURCE_DIR) + "/tests/runs/simclr_pgd.toml";

// Errors are exactly one line, starting with "error:".
void check_one_line_error(const cfamc::test::Outcome& outcome) {
  CHECK_THAT(outcome.output, StartsWith("error: "));
  CHECK(outcome.output.find('\n') == outcome.output.size() - 1);
}

}  // namespace

TEST_CASE("version names host, ABI and LibTorch", "[cli]") {
  const auto out = run_host("--version");
  CHECK(out.exit_code == 0);
  CHECK_THAT(out.output, Contains("cfamc-host "));
  CHECK_THAT(out.output, Contains("plugin ABI 1.0"));
  CHECK_THAT(out.output, Contains("LibTorch " CFAMC_TORCH_VERSION));
  CHECK_THAT(out.output, Contains("CUDA available: "));
}

TEST_CASE("list-plugins --json lists every shipped plugin with its fields", "[cli]") {
  const auto out = run_host("--list-plugins --json");
  REQUIRE(out.exit_code == 0);
  const auto list = nlohmann::json::parse(out.output);
  std::set<std::string> names;
  for (const auto& entry : list) {
    for (const char* field : {"kind", "name", "version", "abi", "file", "options"}) CHECK(entry.contains(field));
    CHECK(entry["abi"] == "1.0");
    names.insert(entry["kind"].get<std::string>() + "/" + entry["name"].get<std::string>());
  }
  CHECK(names.count("backbone/convnet"));
  CHECK(names.count("objective/simclr"));
  CHECK(names.count("attack/pgd"));
  CHECK(names.count("evaluator/knn"));
}

TEST_CASE("validate accepts the quickstart", "[cli]") {
  const auto out = run_host("--config " + kQuickstart + " --validate");
  CHECK(out.exit_code == 0);
  CHECK_THAT(out.output, Contains("ok"));
}

TEST_CASE("bad run files exit 2 with one line", "[cli]") {
  SECTION("unknown plugin option, with a suggestion") {
    const auto out = run_host("--config " + kSimclrPgd + " --validate --set attack.stepz=3");
    CHECK(out.exit_code == 2);
    check_one_line_error(out);
    CHECK_THAT(out.output, Contains("did you mean 'steps'?"));
  }
  SECTION("wrong type from --set") {
    const auto out = run_host("--config " + kQuickstart + " --validate --set backbone.width=wide");
    CHECK(out.exit_code == 2);
    CHECK_THAT(out.output, Contains("backbone.width: expected integer"));
  }
  SECTION("a value the plugin itself rejects") {
    const auto out = run_host("--config " + kSimclrPgd + " --validate --set attack.epsilon=-1");
    CHECK(out.exit_code == 2);
    check_one_line_error(out);
    CHECK_THAT(out.output, Contains("plugin 'pgd' (attack): epsilon, step_size and steps must not be negative"));
  }
  SECTION("missing file") {
    const auto out = run_host("--config /nonexistent.toml --validate");
    CHECK(out.exit_code == 2);
    check_one_line_error(out);
  }
  SECTION("bad command line") {
    const auto out = run_host("--no-such-flag");
    CHECK(out.exit_code == 2);
    check_one_line_error(out);
  }
}

TEST_CASE("set swaps a plugin: an unknown one exits 3, a known one validates", "[cli]") {
  const auto missing = run_host("--config " + kSimclrPgd + " --validate --set attack.plugin=deepfool");
  CHECK(missing.exit_code == 3);
  check_one_line_error(missing);
  CHECK_THAT(missing.output, Contains("no attack plugin named 'deepfool'"));
  const auto swapped =
      run_host("--config " + kSimclrPgd + " --validate --set attack.plugin=c_shift --set attack.epsilon=0.5 " +
                   "--set attack.steps=1",
               test_plugin("c_shift"));
  // c_shift has no `step_size`: the run file is checked against the plugin actually chosen.
  CHECK(swapped.exit_code == 2);
  CHECK_THAT(swapped.output, Contains("unknown key 'attack.step_size'"));
}

TEST_CASE("plugin problems exit 3 with one line and never crash", "[cli]") {
  for (const char* folder : {"entry_v2", "no_entry", "foreign_fingerprint", "missing_function", "duplicate"}) {
    INFO(folder);
    const auto out = run_host("--list-plugins", test_plugin(folder));
    CHECK(out.exit_code == 3);
    check_one_line_error(out);
  }
}

TEST_CASE("a throwing constructor is an error, not a crash", "[cli]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("run.toml", "[backbone]\nplugin = \"throws_in_create\"\n[objective]\nplugin = \"simclr\"\n");
  const auto out = run_host("--config " + file.string() + " --validate", test_plugin("throwing"));
  CHECK(out.exit_code == 3);
  check_one_line_error(out);
  CHECK_THAT(out.output, Contains("boom in the constructor"));
}

TEST_CASE("a run writes the resolved run file into [run] dir", "[cli]") {
  cfamc::test::TempDir dir;
  const auto out = run_host("--config " + kQuickstart + " --set run.dir=" + (dir.path() / "run").string() +
                            " --set data.train_subset=200 --until-step 1");
  INFO(out.output);
  CHECK(out.exit_code == 0);
  std::ifstream resolved(dir.path() / "run" / "resolved.toml");
  REQUIRE(resolved.good());
  std::stringstream text;
  text << resolved.rdbuf();
  CHECK_THAT(text.str(), Contains("nesterov = true"));     // a default, written out
  CHECK_THAT(text.str(), Contains("train_subset = 200"));  // the --set value
  CHECK_THAT(text.str(), Contains("control = true"));
}

TEST_CASE("every shipped run file validates", "[cli][configs]") {
  int64_t files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(std::string(CFAMC_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".toml") continue;
    INFO(entry.path());
    const auto out = run_host("--config " + entry.path().string() + " --validate");
    CHECK(out.exit_code == 0);
    ++files;
  }
  CHECK(files >= 18);  // quickstart, 3 paper settings, 14 rows of the CF-AMC-SSL table
}

TEST_CASE("docs/config.md is the generated reference", "[cli][docs]") {
  const auto out = run_host("--config-reference");
  REQUIRE(out.exit_code == 0);
  std::ifstream file(std::string(CFAMC_SOURCE_DIR) + "/docs/config.md");
  std::stringstream text;
  text << file.rdbuf();
  INFO("regenerate with: build/bin/cfamc-host --config-reference > docs/config.md");
  CHECK(text.str() == out.output);
}
