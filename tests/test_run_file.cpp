// The run file: TOML syntax errors, strict keys with suggestions, types with locations, --set, fractions.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <sstream>
#include <tuple>
#include <vector>

#include "config/options.hpp"
#include "run/run_config.hpp"
#include "config/run_file.hpp"
#include "failure.hpp"
#include "support.hpp"
#include "train/train_config.hpp"

using namespace cfamc::host;
using Catch::Matchers::Contains;

namespace {

const Schema kSchema = {
    {"steps", CFAMC_OPTION_INT, "10", "steps"},
    {"epsilon", CFAMC_OPTION_FLOAT, "\"8/255\"", "radius"},
    {"norm", CFAMC_OPTION_STRING, "\"linf\"", "norm"},
    {"sizes", CFAMC_OPTION_FLOAT_LIST, "[0.08, 1]", "scale range"},
    {"random_start", CFAMC_OPTION_BOOL, "true", "start"},
    {"target", CFAMC_OPTION_STRING, std::nullopt, "required"},
};

toml::table parse(const std::string& text) { return toml::parse(std::string_view(text), std::string_view("run.toml")); }

std::string failure_of(const std::function<void()>& body, ExitCode expected = ExitCode::usage) {
  try {
    body();
  } catch (const Failure& e) {
    CHECK(e.code() == expected);
    return e.what();
  }
  FAIL("no Failure thrown");
  return "";
}

// The message with which [train] given as `text` is refused.
std::string train_failure(const std::string& text) {
  return failure_of([&] { train_config_from(resolve_options(parse(text), train_schema(), "train", "run.toml")); });
}

}  // namespace

TEST_CASE("malformed TOML names file, line and column", "[run_file]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("bad.toml", "[run]\nseed = 1\ndir = \"unterminated\n");
  const std::string message = failure_of([&] { load_run_file(file, {}); });
  CHECK_THAT(message, Contains("bad.toml:3:"));
  CHECK_THAT(message, Contains("malformed TOML"));
}

TEST_CASE("a missing run file is a clear usage error", "[run_file]") {
  const std::string message = failure_of([] { load_run_file("/nonexistent/run.toml", {}); });
  CHECK_THAT(message, Contains("/nonexistent/run.toml"));
}

TEST_CASE("options: defaults filled, fractions become floats", "[run_file]") {
  const toml::table given = parse("target = \"x\"\nepsilon = \"4/255\"\nsizes = [\"1/4\", 1]\n");
  const toml::table resolved = resolve_options(given, kSchema, "attack", "run.toml");
  CHECK(resolved["steps"].value<int64_t>() == 10);
  CHECK(resolved["epsilon"].value<double>() == Approx(4.0 / 255));
  CHECK(resolved["sizes"][0].value<double>() == Approx(0.25));
  CHECK(resolved["sizes"][1].value<double>() == Approx(1.0));
  CHECK(resolved["norm"].value<std::string>() == "linf");
  CHECK(resolved["random_start"].value<bool>() == true);
}

TEST_CASE("options: an unknown key suggests the nearest declared one", "[run_file]") {
  const toml::table given = parse("target = \"x\"\n\nstpes = 3\n");
  const std::string message = failure_of([&] { resolve_options(given, kSchema, "attack", "run.toml"); });
  CHECK_THAT(message, Contains("run.toml:3:1"));
  CHECK_THAT(message, Contains("unknown key 'attack.stpes'"));
  CHECK_THAT(message, Contains("did you mean 'steps'?"));
}

TEST_CASE("options: every unknown key of a table is reported at once", "[run_file]") {
  const toml::table given = parse("target = \"x\"\nstpes = 3\nepsilom = 0.1\nnorn = \"l2\"\n");
  const std::string message = failure_of([&] { resolve_options(given, kSchema, "attack", "run.toml"); });
  CHECK_THAT(message, Contains("3 unknown keys"));
  for (const char* key : {"'attack.stpes'", "'attack.epsilom'", "'attack.norn'"}) CHECK_THAT(message, Contains(key));
  CHECK(message.find('\n') == std::string::npos);  // still one line
}

TEST_CASE("options: a wrong type names key, file, line and column", "[run_file]") {
  const toml::table given = parse("target = \"x\"\nsteps = \"ten\"\n");
  const std::string message = failure_of([&] { resolve_options(given, kSchema, "attack", "run.toml"); });
  CHECK_THAT(message, Contains("run.toml:2:9"));
  CHECK_THAT(message, Contains("attack.steps: expected integer, got a string"));
}

TEST_CASE("options: a float option rejects text that is no number or fraction", "[run_file]") {
  const toml::table given = parse("target = \"x\"\nepsilon = \"8/zero\"\n");
  CHECK_THAT(failure_of([&] { resolve_options(given, kSchema, "attack", "run.toml"); }), Contains("attack.epsilon"));
  const toml::table zero = parse("target = \"x\"\nepsilon = \"8/0\"\n");
  CHECK_THROWS_AS(resolve_options(zero, kSchema, "attack", "run.toml"), Failure);
}

TEST_CASE("options: NaN and infinities are refused, literal or text, naming key and place", "[run_file]") {
  for (const std::string value : {"nan", "inf", "-inf", "+inf", "\"nan\"", "\"inf\"", "\"-inf\"", "\"1e999\""}) {
    INFO(value);
    const toml::table given = parse("target = \"x\"\nepsilon = " + value + "\n");
    CHECK_THAT(failure_of([&] { resolve_options(given, kSchema, "attack", "run.toml"); }),
               Contains("run.toml:2:11: attack.epsilon: expected a finite number, got "));
  }
  const toml::table nan = parse("target = \"x\"\nepsilon = nan\n");
  CHECK(failure_of([&] { resolve_options(nan, kSchema, "attack", "run.toml"); }) ==
        "run.toml:2:11: attack.epsilon: expected a finite number, got nan");
  // In a list the element is located.
  const toml::table list = parse("target = \"x\"\nsizes = [0.5, -inf]\n");
  CHECK(failure_of([&] { resolve_options(list, kSchema, "attack", "run.toml"); }) ==
        "run.toml:2:15: attack.sizes: expected a finite number, got -inf");
  const toml::table text = parse("target = \"x\"\nsizes = [\"1/2\", \"inf\"]\n");
  CHECK_THAT(failure_of([&] { resolve_options(text, kSchema, "attack", "run.toml"); }),
             Contains("run.toml:2:17: attack.sizes: expected a finite number, got inf"));
  // The host's own sections go through the same check.
  CHECK(train_failure("\n\nlr = nan\n") == "run.toml:3:6: train.lr: expected a finite number, got nan");
  CHECK_THAT(train_failure("warmup_epochs = inf\n"), Contains("train.warmup_epochs: expected a finite number, got inf"));
}

TEST_CASE("options: an option declared as accepting non-finite values takes NaN and infinities", "[run_file]") {
  const Schema schema = {{"bound", CFAMC_OPTION_FLOAT, "inf", "upper bound", true},
                         {"levels", CFAMC_OPTION_FLOAT_LIST, "[]", "levels", true}};
  const toml::table resolved =
      resolve_options(parse("levels = [nan, \"-inf\", 1]\n"), schema, "attack", "run.toml");
  CHECK(resolved["bound"].value<double>() == std::numeric_limits<double>::infinity());
  CHECK(std::isnan(*resolved["levels"][0].value<double>()));
  CHECK(resolved["levels"][1].value<double>() == -std::numeric_limits<double>::infinity());
  CHECK(resolved["levels"][2].value<double>() == 1.0);
  CHECK(resolve_options(parse("bound = \"inf\"\n"), schema, "attack", "run.toml")["bound"].value<double>() ==
        std::numeric_limits<double>::infinity());
  // A default the option itself refuses is the declaration's fault, not the run file's.
  const Schema finite_only = {{"bound", CFAMC_OPTION_FLOAT, "inf", "upper bound"}};
  CHECK_THAT(failure_of([&] { resolve_options({}, finite_only, "attack", "run.toml"); }, ExitCode::plugin),
             Contains("attack.bound: declared default inf is not finite"));
}

TEST_CASE("options: a missing required option is named", "[run_file]") {
  const std::string message = failure_of([] { resolve_options(toml::table{}, kSchema, "attack", "run.toml"); });
  CHECK_THAT(message, Contains("attack.target"));
  CHECK_THAT(message, Contains("required"));
}

TEST_CASE("set: overrides with TOML typing, bare strings and array indices", "[run_file]") {
  toml::table t = parse("[attack]\nplugin = \"pgd\"\nsteps = 5\n[[evaluate]]\nplugin = \"knn\"\n");
  apply_override(t, "attack.steps=20");
  apply_override(t, "attack.plugin=fgsm_rs");
  apply_override(t, "attack.epsilon=\"4/255\"");
  apply_override(t, "evaluate.0.k=7");
  apply_override(t, "run.seed=3");
  CHECK(t["attack"]["steps"].value<int64_t>() == 20);
  CHECK(t["attack"]["plugin"].value<std::string>() == "fgsm_rs");
  CHECK(t["attack"]["epsilon"].value<std::string>() == "4/255");
  CHECK(t["evaluate"][0]["k"].value<int64_t>() == 7);
  CHECK(t["run"]["seed"].value<int64_t>() == 3);
  // A string option given a number from the command line takes its text.
  toml::table options = parse("target = \"x\"\n");
  apply_override(options, "norm=123");
  CHECK(resolve_options(options, kSchema, "attack", "run.toml")["norm"].value<std::string>() == "123");
}

TEST_CASE("set: rejects malformed assignments", "[run_file]") {
  toml::table t = parse("[attack]\nsteps = 5\n[[evaluate]]\nplugin = \"knn\"\n");
  CHECK_THAT(failure_of([&] { apply_override(t, "attack.steps"); }), Contains("expected KEY=VALUE"));
  CHECK_THAT(failure_of([&] { apply_override(t, "evaluate.3.k=1"); }), Contains("not an index"));
  CHECK_THAT(failure_of([&] { apply_override(t, "attack.steps.x=1"); }), Contains("'steps' is a value, not a table"));
}

TEST_CASE("unset: removes keys, tables and array entries, a key the file lacks is an error", "[run_file]") {
  toml::table t = parse("[attack]\nplugin = \"free\"\nreplays = 3\n[[evaluate]]\nplugin = \"knn\"\n"
                        "[[evaluate]]\nplugin = \"linear_probe\"\n");
  apply_removal(t, "attack.replays");
  CHECK_FALSE(t["attack"]["replays"]);
  CHECK(t["attack"]["plugin"].value<std::string>() == "free");
  apply_removal(t, "evaluate.0");
  CHECK(t["evaluate"].as_array()->size() == 1);
  CHECK(t["evaluate"][0]["plugin"].value<std::string>() == "linear_probe");
  apply_removal(t, "attack");
  CHECK_FALSE(t["attack"]);
  CHECK_THAT(failure_of([&] { apply_removal(t, "attack.steps"); }), Contains("--unset attack.steps: the run file has no such key"));
  CHECK_THAT(failure_of([&] { apply_removal(t, "evaluate.4"); }), Contains("no such key"));
  CHECK_THAT(failure_of([&] { apply_removal(t, ""); }), Contains("expected a key"));
}

TEST_CASE("unset applies before set, so a table can be replaced", "[run_file]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("run.toml", "[attack]\nplugin = \"free\"\nreplays = 3\n");
  const RunFile run = load_run_file(file, {"attack.plugin=pgd"}, {"attack"});
  CHECK(run.table["attack"]["plugin"].value<std::string>() == "pgd");
  CHECK_FALSE(run.table["attack"]["replays"]);
}

TEST_CASE("values set from the command line are located as --set", "[run_file]") {
  toml::table t = parse("target = \"x\"\n");
  apply_override(t, "steps=\"many\"");
  CHECK_THAT(failure_of([&] { resolve_options(t, kSchema, "attack", "run.toml"); }), Contains("--set: attack.steps"));
}

TEST_CASE("values set from the command line are checked for NaN and infinities too", "[run_file]") {
  toml::table attack = parse("target = \"x\"\n");
  apply_override(attack, "sizes=[0.1, inf]");
  CHECK(failure_of([&] { resolve_options(attack, kSchema, "attack", "run.toml"); }) ==
        "--set: attack.sizes: expected a finite number, got inf");
  toml::table run = parse("[train]\nlr = 0.1\n");
  apply_override(run, "train.lr=nan");
  CHECK(failure_of([&] { resolve_options(*run["train"].as_table(), train_schema(), "train", "run.toml"); }) ==
        "--set: train.lr: expected a finite number, got nan");
}

TEST_CASE("train: a value out of range is named, one key and its value", "[run_file]") {
  CHECK(train_failure("lr = -1\n") == "train.lr: must be positive, got -1");
  CHECK(train_failure("epochs = 0\n") == "train.epochs: must be positive, got 0");
  CHECK(train_failure("batch_size = -3\n") == "train.batch_size: must be positive, got -3");
  CHECK(train_failure("log_every = 0\n") == "train.log_every: must be positive, got 0");
  CHECK(train_failure("keep_checkpoints = 0\n") == "train.keep_checkpoints: must be positive, got 0");
  CHECK(train_failure("steps = -1\n") == "train.steps: must not be negative, got -1");
  CHECK(train_failure("checkpoint_every = -5\n") == "train.checkpoint_every: must not be negative, got -5");
  CHECK(train_failure("warmup_epochs = -0.5\n") == "train.warmup_epochs: must not be negative, got -0.5");
}

TEST_CASE("train: step counts too large to schedule are refused, not wrapped around", "[run_file]") {
  CHECK(train_failure("steps = 4000000000000000000\n") ==
        "train.steps: must be at most 4294967296, got 4000000000000000000");
  CHECK(train_failure("epochs = 9223372036854775807\n") ==
        "train.epochs: must be at most 4294967296, got 9223372036854775807");
  CHECK_THAT(train_failure("warmup_epochs = 1e300\n"), Contains("train.warmup_epochs: must be at most 4294967296"));
  CHECK_THAT(train_failure("milestones = [10, 1e19]\n"), Contains("train.milestones: must be between 0 and 4294967296"));

  // Products of epochs and steps per epoch are checked once the data's size is known.
  TrainConfig c = train_config_from(resolve_options(parse("epochs = 3000000000\n"), train_schema(), "train", "run.toml"));
  CHECK(failure_of([&] { total_steps(c, 100); }) == "train.epochs: 3000000000 epochs of 100 steps are more than 4294967296 steps");
  CHECK_THAT(failure_of([&] { total_steps(c, int64_t{1} << 62); }), Contains("train.epochs: 3000000000 epochs of"));
  c.epochs = 2;
  CHECK(total_steps(c, 100) == 200);
  c.warmup_epochs = 2e9;
  CHECK_THAT(failure_of([&] { set_steps_per_epoch(c, 10); }), Contains("train.warmup_epochs: 2e+09 epochs of 10 steps"));
  c.warmup_epochs = 0.5;
  c.milestone_epochs = {1, 4e9};
  CHECK_THAT(failure_of([&] { set_steps_per_epoch(c, 10); }), Contains("train.milestones: 4e+09 epochs of 10 steps"));
  c.milestone_epochs = {1};
  set_steps_per_epoch(c, 10);
  CHECK(c.schedule.warmup_steps == 5);
  CHECK(c.schedule.milestones == std::vector<int64_t>{10});
}

TEST_CASE("host sections: unknown section suggests, required components are demanded", "[run_file]") {
  cfamc::test::TempDir dir;
  const auto typo = dir.write("typo.toml", "[backbone]\nplugin = \"convnet\"\n[objective]\nplugin = \"simclr\"\n[atack]\n");
  CHECK_THAT(failure_of([&] { resolve_host_sections(load_run_file(typo, {})); }), Contains("did you mean 'attack'?"));
  const auto missing = dir.write("missing.toml", "[backbone]\nplugin = \"convnet\"\n");
  CHECK_THAT(failure_of([&] { resolve_host_sections(load_run_file(missing, {})); }), Contains("missing section [objective]"));
  const auto no_plugin = dir.write("noplugin.toml", "[backbone]\nwidth = 3\n[objective]\nplugin = \"simclr\"\n");
  CHECK_THAT(failure_of([&] { resolve_host_sections(load_run_file(no_plugin, {})); }), Contains("plugin = \""));
}

TEST_CASE("host sections: evaluator ids default to the plugin name and must be unique", "[run_file]") {
  cfamc::test::TempDir dir;
  const std::string head = "[backbone]\nplugin = \"convnet\"\n[objective]\nplugin = \"simclr\"\n";
  const auto two = dir.write("two.toml", head + "[[evaluate]]\nplugin = \"knn\"\n[[evaluate]]\nplugin = \"knn\"\nid = \"knn_k200\"\n");
  const RunConfig config = resolve_host_sections(load_run_file(two, {}));
  REQUIRE(config.components.size() == 4);
  CHECK(config.components[2].id == "knn");
  CHECK(config.components[3].id == "knn_k200");
  CHECK(config.components[3].label == "evaluate.knn_k200");
  const auto clash = dir.write("clash.toml", head + "[[evaluate]]\nplugin = \"knn\"\n[[evaluate]]\nplugin = \"knn\"\n");
  CHECK_THAT(failure_of([&] { resolve_host_sections(load_run_file(clash, {})); }), Contains("two [[evaluate]] entries with id 'knn'"));
}

TEST_CASE("host sections: [run] is validated like any table", "[run_file]") {
  cfamc::test::TempDir dir;
  const auto file = dir.write("run.toml", "[run]\nseed = \"zero\"\n[backbone]\nplugin = \"convnet\"\n[objective]\nplugin = \"simclr\"\n");
  CHECK_THAT(failure_of([&] { resolve_host_sections(load_run_file(file, {})); }), Contains("run.seed: expected integer"));
  const RunConfig config = resolve_host_sections(load_run_file(file, {"run.seed=4", "run.dir=out"}));
  CHECK(config.seed == 4);
  CHECK(config.dir == "out");
  CHECK(config.device == "auto");
}

TEST_CASE("component seeds differ by label and follow the run seed", "[run_file]") {
  CHECK(component_seed(0, "backbone") != component_seed(0, "attack"));
  CHECK(component_seed(0, "backbone") != component_seed(1, "backbone"));
  CHECK(component_seed(7, "backbone") == component_seed(7, "backbone"));
}

TEST_CASE("nearest suggests only plausible typos", "[run_file]") {
  CHECK(nearest("stpes", {"steps", "epsilon"}) == std::optional<std::string>("steps"));
  CHECK_FALSE(nearest("completely_different", {"steps", "epsilon"}).has_value());
}

TEST_CASE("host sections: control takes false, true, \"untrained\", \"pixels\" or a list; anything else is named",
          "[run_file][control]") {
  cfamc::test::TempDir dir;
  const std::string head = "[backbone]\nplugin = \"convnet\"\n[objective]\nplugin = \"simclr\"\n[[evaluate]]\nplugin = \"knn\"\n";
  const auto controls_of = [&](const std::string& value) {
    const auto file = dir.write("control.toml", head + "control = " + value + "\n");
    return resolve_host_sections(load_run_file(file, {})).components[2].controls;
  };
  const std::vector<std::tuple<std::string, bool, bool>> accepted = {
      {"false", false, false},       {"true", true, false},           {"\"untrained\"", true, false},
      {"\"pixels\"", false, true},   {"[\"untrained\", \"pixels\"]", true, true}, {"[]", false, false}};
  for (const auto& [value, untrained, pixels] : accepted) {
    INFO(value);
    const Controls controls = controls_of(value);
    CHECK(controls.untrained == untrained);
    CHECK(controls.pixels == pixels);
    // resolved.toml writes it back in a form that reads the same.
    const auto file = dir.write("control.toml", head + "control = " + value + "\n");
    std::ostringstream resolved;
    resolved << resolve_host_sections(load_run_file(file, {})).resolved();
    const auto again = dir.write("again.toml", resolved.str());
    const Controls reread = resolve_host_sections(load_run_file(again, {})).components[2].controls;
    CHECK(reread.untrained == untrained);
    CHECK(reread.pixels == pixels);
  }
  for (const std::string value : {"\"pixel\"", "1", "[\"pixels\", 2]", "[\"raw\"]"}) {
    INFO(value);
    const std::string message = failure_of([&] { controls_of(value); });
    CHECK_THAT(message, Contains("control.toml:7:"));
    CHECK_THAT(message, Contains("evaluate.0.control: "));
    CHECK_THAT(message, Contains("\"untrained\", \"pixels\""));
  }
  CHECK_THAT(failure_of([&] { controls_of("\"pixel\""); }), Contains("no control 'pixel'"));
  const auto misplaced = dir.write("misplaced.toml", "[backbone]\nplugin = \"convnet\"\ncontrol = \"pixels\"\n[objective]\nplugin = \"simclr\"\n");
  CHECK_THAT(failure_of([&] { resolve_host_sections(load_run_file(misplaced, {})); }), Contains("only in [[evaluate]] entries"));
}
