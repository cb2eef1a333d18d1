// cfamc-host as a user runs it: exit codes, one-line errors, --list-plugins --json, --validate, --set.
#include <catch2/catch.hpp>

#include <cfamc/cfamc.h>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "support.hpp"

using cfamc::test::run_host;
using cfamc::test::run_shell;
using cfamc::test::test_plugin;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

const std::string kQuickstart = std::string(CFAMC_SOURCE_DIR) + "/configs/quickstart.toml";
const std::string kSimclrPgd = std::string(CFAMC_SOURCE_DIR) + "/tests/runs/simclr_pgd.toml";
const std::string kAbi = std::to_string(CFAMC_ABI_MAJOR) + "." + std::to_string(CFAMC_ABI_MINOR);

// Errors are exactly one line, starting with "error:".
void check_one_line_error(const cfamc::test::Outcome& outcome) {
  CHECK_THAT(outcome.output, StartsWith("error: "));
  CHECK(outcome.output.find('\n') == outcome.output.size() - 1);
}

// The output's last line: the error after any warnings (a skipped plugin file is warned about first).
std::string last_line(std::string output) {
  while (!output.empty() && output.back() == '\n') output.pop_back();
  return output.substr(output.rfind('\n') + 1);  // npos + 1 is 0: a single line
}

}  // namespace

TEST_CASE("version names host, ABI and LibTorch", "[cli]") {
  const auto out = run_host("--version");
  CHECK(out.exit_code == 0);
  CHECK_THAT(out.output, Contains("cfamc-host "));
  CHECK_THAT(out.output, Contains("plugin ABI " + kAbi));
  CHECK_THAT(out.output, Contains("LibTorch " CFAMC_TORCH_VERSION));
  CHECK_THAT(out.output, Contains("CUDA available: "));
}

TEST_CASE("list-plugins --json lists every shipped plugin with its fields", "[cli]") {
  const auto out = run_host("--list-plugins --json");
  REQUIRE(out.exit_code == 0);
  const auto list = nlohmann::json::parse(out.output);
  CHECK(list["skipped"].empty());
  std::set<std::string> names;
  for (const auto& entry : list["components"]) {
    for (const char* field : {"kind", "name", "version", "abi", "fingerprint", "file", "options"})
      CHECK(entry.contains(field));
    CHECK(entry["abi"] == kAbi);
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
    CHECK_THAT(out.output, Contains("plugin 'pgd' (attack): epsilon, step_size, steps and normal_start must not be negative"));
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
  // The run file's step_size and steps belong to pgd: swapping to c_shift drops them, saying so on one line.
  const auto swapped =
      run_host("--config " + kSimclrPgd + " --validate --set attack.plugin=c_shift --set attack.epsilon=0.5",
               test_plugin("c_shift"));
  INFO(swapped.output);
  CHECK(swapped.exit_code == 0);
  CHECK_THAT(swapped.output,
             Contains("attack: plugin set to 'c_shift' by --set; dropping keys it does not declare: step_size, steps"));
}

TEST_CASE("a swap drops only other plugins' keys from the file: typos and keys given with --set stay errors", "[cli]") {
  const auto typo = run_host("--config " + kSimclrPgd + " --validate --set attack.plugin=fgsm --set attack.epsilom=0.1");
  CHECK(typo.exit_code == 2);
  CHECK_THAT(last_line(typo.output), Contains("unknown key 'attack.epsilom'"));
  const auto asked = run_host("--config " + kSimclrPgd + " --validate --set attack.plugin=c_shift --set attack.steps=1",
                              test_plugin("c_shift"));
  CHECK(asked.exit_code == 2);
  CHECK_THAT(last_line(asked.output), Contains("unknown key 'attack.steps'"));
  // Without --set of the plugin, the run file is held to its plugin's keys.
  cfamc::test::TempDir dir;
  std::ifstream in(kSimclrPgd);
  std::stringstream text;
  text << in.rdbuf();
  const auto file = dir.write("run.toml", text.str() + "\n[attacks.fast]\nplugin = \"fgsm\"\nsteps = 3\n");
  const auto strict = run_host("--config " + file.string() + " --validate");
  CHECK(strict.exit_code == 2);
  CHECK_THAT(strict.output, Contains("unknown key 'attacks.fast.steps'"));
}

// What the attack swap depends on in a run file: its [attack] table's plugin and keys (the rest of the file
// is validated by "every shipped run file validates").
std::string attack_table_shape(const std::filesystem::path& file) {
  const toml::table run = toml::parse_file(file.string());
  std::string shape;
  if (const toml::table* attack = run["attack"].as_table()) {
    shape = attack->get("plugin") ? attack->get("plugin")->value_or(std::string()) : std::string();
    for (const auto& [key, value] : *attack) shape += " " + std::string(key.str());
  }
  return shape;
}

TEST_CASE("the training attack of every shipped run file swaps to every shipped attack", "[cli][configs]") {
  // Every distinct [attack] table is swapped to every attack; each other file with that table to one of them,
  // in turn, so that every file is swapped at least once without validating ~40 files x 5 attacks.
  const std::vector<std::string> attacks = {"pgd", "fgsm", "fgsm_rs", "free", "apgd"};
  std::map<std::string, size_t> seen;  // table shape -> files with it so far
  int64_t checked = 0, files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(std::string(CFAMC_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".toml") continue;
    ++files;
    const size_t earlier = seen[attack_table_shape(entry.path())]++;
    std::vector<std::string> swaps = attacks;
    if (earlier > 0) swaps = {attacks[earlier % attacks.size()]};
    for (const std::string& attack : swaps) {
      INFO(entry.path().string() << " with attack " << attack);
      const auto out = run_host("--config " + entry.path().string() + " --validate --set attack.plugin=" + attack);
      INFO(out.output);
      CHECK(out.exit_code == 0);
      ++checked;
    }
  }
  CHECK(files >= 30);
  CHECK(checked >= static_cast<int64_t>(files + 4 * seen.size()));
}

TEST_CASE("unset removes a key from the command line, one the file lacks exits 2", "[cli]") {
  const auto dropped = run_host("--config " + kQuickstart + " --validate --unset attack.replays --unset evaluate.1");
  INFO(dropped.output);
  CHECK(dropped.exit_code == 0);
  const auto absent = run_host("--config " + kQuickstart + " --validate --unset attack.steps");
  CHECK(absent.exit_code == 2);
  check_one_line_error(absent);
  CHECK_THAT(absent.output, Contains("--unset attack.steps: the run file has no such key"));
}

TEST_CASE("relative [plugins] paths resolve against the run file's folder", "[cli]") {
  cfamc::test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "runs" / "mine");
  const auto file = dir.write("runs/mine/run.toml",
                              "[plugins]\npaths = [\"../../extra\"]\n[backbone]\nplugin = \"convnet\"\nin_channels = 1\n"
                              "[objective]\nplugin = \"simclr\"\n[views.views]\ncount = 2\nsize = 28\n"
                              "[attack]\nplugin = \"c_shift\"\n");
  std::filesystem::create_directory_symlink(test_plugin("c_shift"), dir.path() / "extra");
  // Run from elsewhere: the path is the file's, not the working directory's.
  const auto out = run_shell("cd / && env -u CFAMC_PLUGIN_PATH " + std::string(CFAMC_HOST_EXE) + " --config " +
                             file.string() + " --validate");
  INFO(out.output);
  CHECK(out.exit_code == 0);
  const auto missing = run_host("--config " + file.string() + " --validate --set 'plugins.paths=[\"nowhere\"]'");
  CHECK(missing.exit_code == 3);
  CHECK_THAT(missing.output, Contains("[plugins] paths entry nowhere does not exist"));  // warned, by name
  CHECK_THAT(last_line(missing.output), Contains("c_shift"));
}

TEST_CASE("a broken plugin file is listed, and a run that needs it exits 3 naming the problem", "[cli]") {
  // Each folder holds one file that cannot be used; its component is `broken` (c_shift for the duplicate).
  for (const char* folder : {"entry_v2", "no_entry", "foreign_fingerprint", "missing_function", "duplicate"}) {
    INFO(folder);
    const bool duplicate = std::string(folder) == "duplicate";
    const auto listed = run_host("--list-plugins", test_plugin(folder));
    CHECK(listed.exit_code == 0);
    CHECK_THAT(listed.output, Contains("skipped, not usable:"));
    CHECK_THAT(listed.output, Contains("attack  pgd"));  // the usable plugins are still there

    const auto run = run_host("--config " + kSimclrPgd + " --validate --set attack.plugin=" +
                                  (duplicate ? "c_shift" : "broken"),
                              test_plugin(folder));
    CHECK(run.exit_code == 3);
    const std::string error = last_line(run.output);
    CHECK_THAT(error, StartsWith("error: "));
    CHECK_THAT(error, Contains(test_plugin(folder)));  // the file, with what is wrong with it
    if (duplicate) CHECK_THAT(error, Contains("two attack plugins named 'c_shift'"));
  }
}

TEST_CASE("junk on the plugin path leaves --list-plugins and runs that do not need it working", "[cli]") {
  cfamc::test::TempDir dir;
  dir.write("libjunk.so", "not an ELF file");
  std::string path = dir.path().string();
  for (const char* folder : {"entry_v2", "no_entry", "described_major", "foreign_fingerprint", "missing_function"})
    path += std::string(":") + test_plugin(folder);

  const auto listed = run_host("--list-plugins --json --log-level error", path);
  REQUIRE(listed.exit_code == 0);
  const auto list = nlohmann::json::parse(listed.output);
  CHECK(list["skipped"].size() == 6);
  bool foreign_listed = false;
  for (const auto& s : list["skipped"]) {
    CHECK(s.contains("problem"));
    if (s["fingerprint"].is_object() && s["fingerprint"]["torch"] == "1.13.1") foreign_listed = true;
  }
  CHECK(foreign_listed);  // a foreign build shows what it was built with
  for (const auto& c : list["components"]) CHECK(c["fingerprint"]["cxx11_abi"].is_number());

  const auto table = run_host("--list-plugins", path);
  CHECK(table.exit_code == 0);
  CHECK_THAT(table.output, Contains("[LibTorch " CFAMC_TORCH_VERSION));  // each library's build fingerprint
  CHECK_THAT(table.output, Contains("libjunk.so: cannot load"));

  const auto validated = run_host("--config " + kSimclrPgd + " --validate", path);
  INFO(validated.output);
  CHECK(validated.exit_code == 0);
  CHECK_THAT(validated.output, Contains("skipped plugin"));  // one warning line per skipped file
}

TEST_CASE("a CFAMC_PLUGIN_PATH entry that does not exist is warned about by name", "[cli]") {
  const auto out = run_host("--list-plugins", "/nonexistent/cfamc-plugins:" + test_plugin("c_shift"));
  CHECK(out.exit_code == 0);
  CHECK_THAT(out.output, Contains("CFAMC_PLUGIN_PATH entry /nonexistent/cfamc-plugins does not exist"));
  CHECK_THAT(out.output, Contains("attack  c_shift"));
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
