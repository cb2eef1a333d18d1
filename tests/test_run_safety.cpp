// Nothing the user made is lost: the run directory holds only what the host made (or is refused), one
// process at a time; checkpoints are recognised by their exact names, verified, and fallen back from;
// signals checkpoint before exiting; a resume is the run it continues or says why not.
#include "torch_catch.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fstream>

#include "support.hpp"
#include "tiny_run.hpp"
#include "train/checkpoint.hpp"

using cfamc::test::kTinyRun;
using cfamc::test::read_json;
using cfamc::test::read_lines;
using cfamc::test::run_host;
using cfamc::test::run_shell;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

// The tiny run (16 steps) in `dir`/run, its run file beside the run directory.
struct TinyRun {
  cfamc::test::TempDir dir;
  fs::path run_dir = dir.path() / "run";
  fs::path file;
  explicit TinyRun(const std::string& extra = "") { file = dir.write("tiny.toml", std::string(kTinyRun) + extra); }
  std::string args(const std::string& more = "") const {
    return "--config " + file.string() + " --set run.dir=" + run_dir.string() + " " + more;
  }
  cfamc::test::Outcome run(const std::string& more = "") const { return run_host(args(more)); }
  fs::path checkpoint(int step) const {
    char name[32];
    std::snprintf(name, sizeof(name), "step-%09d.pt", step);
    return run_dir / "checkpoints" / name;
  }
};

void write(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary) << text;
}

std::string read(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// `metrics` without its timings, which no two runs share.
nlohmann::json without_seconds(nlohmann::json metrics) {
  if (!metrics.is_object()) return metrics;
  metrics.erase("seconds");
  for (auto& [key, value] : metrics.items()) value = without_seconds(value);
  return metrics;
}

}  // namespace

TEST_CASE("a fresh start never deletes what the host did not make", "[run][safety]") {
  TinyRun tiny;
  write(tiny.run_dir / "checkpoints" / "my_model.pth", "weights");
  fs::create_directories(tiny.run_dir / "checkpoints" / "sub");
  const auto refused = tiny.run("--until-step 1");
  CHECK(refused.exit_code == 2);
  CHECK_THAT(refused.output, Contains("holds files cfamc did not make (checkpoints/my_model.pth, checkpoints/sub)"));
  CHECK(fs::exists(tiny.run_dir / "checkpoints" / "my_model.pth"));

  // --fresh starts over, removing the host's outputs only.
  REQUIRE(tiny.run("--until-step 2 --fresh").exit_code == 0);
  write(tiny.run_dir / "notes.txt", "mine");
  const auto again = tiny.run("--until-step 2 --fresh");
  INFO(again.output);
  CHECK(again.exit_code == 0);
  CHECK(read(tiny.run_dir / "checkpoints" / "my_model.pth") == "weights");
  CHECK(fs::is_directory(tiny.run_dir / "checkpoints" / "sub"));
  CHECK(read(tiny.run_dir / "notes.txt") == "mine");
  CHECK(fs::exists(tiny.checkpoint(2)));
  CHECK(read_lines(tiny.run_dir / "metrics.jsonl").size() == 1);  // the earlier run's lines are gone
}

TEST_CASE("an earlier run's metrics are not overwritten without --fresh, a file named checkpoints stops the run",
          "[run][safety]") {
  TinyRun tiny;
  write(tiny.run_dir / "metrics.jsonl", "{\"step\": 2}\n");
  const auto refused = tiny.run("--until-step 1");
  CHECK(refused.exit_code == 2);
  CHECK_THAT(refused.output, Contains("already holds a run (metrics.jsonl) with no checkpoint to resume from"));
  CHECK(read(tiny.run_dir / "metrics.jsonl") == "{\"step\": 2}\n");

  TinyRun plain_file;
  write(plain_file.run_dir / "checkpoints", "not a folder");
  CHECK(plain_file.run("--until-step 1").exit_code == 2);
  const auto fresh = plain_file.run("--until-step 1 --fresh");
  CHECK(fresh.exit_code == 2);
  CHECK_THAT(fresh.output, Contains("checkpoints is not a folder"));
  CHECK(read(plain_file.run_dir / "checkpoints") == "not a folder");
}

TEST_CASE("only the exact checkpoint names count: stray copies are neither resumed from nor pruned",
          "[run][safety][resume]") {
  TinyRun tiny;
  REQUIRE(tiny.run("--until-step 2").exit_code == 0);
  const fs::path backup = tiny.run_dir / "checkpoints" / "step-000000002.backup.pt";
  const fs::path old = tiny.run_dir / "checkpoints" / "step-000000099.old.pt";
  fs::copy_file(tiny.checkpoint(2), backup);
  fs::copy_file(tiny.checkpoint(2), old);
  const auto resumed = tiny.run("--resume --set train.keep_checkpoints=1");
  INFO(resumed.output);
  CHECK(resumed.exit_code == 0);
  CHECK_THAT(resumed.output, Contains("at step 2"));
  CHECK(fs::exists(backup));
  CHECK(fs::exists(old));
  CHECK(fs::exists(tiny.checkpoint(16)));  // kept: the newest of the host's own
  CHECK_FALSE(fs::exists(tiny.checkpoint(14)));
}

TEST_CASE("one process per run directory: the second is refused naming the holder, a dead holder does not block",
          "[run][safety]") {
  TinyRun tiny;
  fs::create_directories(tiny.run_dir);
  const fs::path lock = tiny.run_dir / "cfamc.lock";
  {
    const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
    const std::string pid = std::to_string(::getpid()) + "\n";
    REQUIRE(::write(fd, pid.data(), pid.size()) == static_cast<ssize_t>(pid.size()));
    const auto refused = tiny.run("--until-step 1 --fresh");
    CHECK(refused.exit_code == 2);
    CHECK_THAT(refused.output, Contains("is in use by process " + std::to_string(::getpid())));
    CHECK_FALSE(fs::exists(tiny.run_dir / "checkpoints"));  // --fresh deleted nothing
    ::close(fd);
  }
  write(lock, "999999\n");  // a holder that is gone: its pid stays in the file, its lock does not
  const auto after = tiny.run("--until-step 1");
  INFO(after.output);
  CHECK(after.exit_code == 0);
}

TEST_CASE("SIGINT and SIGTERM finish the step, write a checkpoint and exit 130 and 143, a second signal stops at once",
          "[run][safety][signals]") {
  for (const auto& [signal, code] : {std::pair<std::string, int>{"INT", 130}, {"TERM", 143}}) {
    INFO("SIG" << signal);
    TinyRun tiny;  // checkpoint_every = 0: without the signal's checkpoint, nothing would survive
    const std::string log = (tiny.dir.path() / "log").string();
    // --foreground: otherwise timeout(1) passes a SIGTERM on to its child and then to its whole process
    // group, so the run would see two signals, the second of which stops it at once (a race under load).
    const auto out = run_shell("env -u CFAMC_PLUGIN_PATH timeout --foreground 120 " + std::string(CFAMC_HOST_EXE) + " " +
                               tiny.args("--set train.checkpoint_every=0 --set train.epochs=50") + " >" + log +
                               " 2>&1 & pid=$!; for i in $(seq 600); do grep -q 'epoch 0: training' " + log +
                               " && break; sleep 0.1; done; kill -" + signal + " $pid; wait $pid; echo rc=$?");
    const std::string output = read(log);
    INFO(output);
    CHECK_THAT(out.output, Contains("rc=" + std::to_string(code)));
    CHECK_THAT(output, Contains("stopped by SIG" + signal + " after step"));
    CHECK_THAT(output, Contains("continue with --resume"));
    REQUIRE(fs::exists(tiny.run_dir / "checkpoints"));
    CHECK(std::distance(fs::directory_iterator(tiny.run_dir / "checkpoints"), fs::directory_iterator{}) == 1);
  }
  TinyRun twice;
  const std::string log = (twice.dir.path() / "log").string();
  // Not under timeout(1), which forwards only the first signal. The run is 4 steps: it ends by itself.
  const auto out = run_shell("env -u CFAMC_PLUGIN_PATH " + std::string(CFAMC_HOST_EXE) + " " +
                             twice.args("--set data.train_subset=4000 --set train.batch_size=2000 --set "
                                        "views.crops.count=8 --set objective.num_crops=8") +
                             " >" + log + " 2>&1 & pid=$!; for i in $(seq 600); do grep -q 'epoch 0: training' " + log +
                             " && break; sleep 0.1; done; kill -INT $pid; sleep 0.05; kill -INT $pid; wait $pid; echo rc=$?");
  INFO(read(log));
  CHECK_THAT(out.output, Contains("rc=130"));
  CHECK_THAT(read(log), !Contains("stopped by SIGINT after step"));
}

TEST_CASE("resume: --resume --until-step below the checkpoint stops at once, --resume --fresh is a usage error",
          "[run][safety][resume]") {
  TinyRun tiny;
  REQUIRE(tiny.run("--until-step 6").exit_code == 0);
  const auto early = tiny.run("--resume --until-step 4");
  INFO(early.output);
  CHECK(early.exit_code == 0);
  CHECK_THAT(early.output, Contains("already at step 6, not before --until-step 4; nothing to do"));
  CHECK_FALSE(fs::exists(tiny.run_dir / "summary.json"));  // no training to the end, no evaluation
  CHECK_FALSE(fs::exists(tiny.checkpoint(8)));
  const auto both = tiny.run("--resume --fresh");
  CHECK(both.exit_code == 2);
  CHECK_THAT(both.output, Contains("excludes"));
}

TEST_CASE("a damaged newest checkpoint is named in one line and the resume falls back to an older one",
          "[run][safety][resume]") {
  for (const char* damage : {"truncated", "flipped", "empty"}) {
    INFO(damage);
    TinyRun tiny;
    REQUIRE(tiny.run("--until-step 4").exit_code == 0);
    const std::string bytes = read(tiny.checkpoint(4));
    std::string damaged = bytes;
    if (std::string(damage) == "truncated") damaged = bytes.substr(0, bytes.size() / 2);
    if (std::string(damage) == "flipped") damaged[bytes.size() / 2] = static_cast<char>(damaged[bytes.size() / 2] ^ 0x5a);
    if (std::string(damage) == "empty") damaged.clear();
    write(tiny.checkpoint(4), damaged);
    const auto out = tiny.run("--resume --until-step 6");
    INFO(out.output);
    CHECK(out.exit_code == 0);
    CHECK_THAT(out.output, Contains(tiny.checkpoint(4).string()));
    CHECK_THAT(out.output, Contains("trying the one before it"));
    CHECK_THAT(out.output, Contains("resumed from " + tiny.checkpoint(2).string() + " at step 2"));
    CHECK_THAT(out.output, !Contains("Exception raised from"));  // no LibTorch backtrace
  }
  // Flipped bytes are caught by the checksum, not later by a plugin.
  TinyRun flipped;
  REQUIRE(flipped.run("--until-step 2").exit_code == 0);
  std::string bytes = read(flipped.checkpoint(2));
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x01);
  write(flipped.checkpoint(2), bytes);
  CHECK_THROWS_WITH(cfamc::host::load_checkpoint(flipped.checkpoint(2)), Contains("does not match its checksum"));
}

TEST_CASE("a folder or FIFO in a checkpoint's place is named, never waited on", "[run][safety][resume]") {
  for (const char* kind : {"folder", "fifo"}) {
    INFO(kind);
    TinyRun tiny;
    REQUIRE(tiny.run("--until-step 2").exit_code == 0);
    const std::string path = tiny.checkpoint(4).string();
    REQUIRE(run_shell(std::string(kind) == "folder" ? "mkdir " + path : "mkfifo " + path).exit_code == 0);
    const auto out = run_shell("env -u CFAMC_PLUGIN_PATH timeout 60 " + std::string(CFAMC_HOST_EXE) + " " +
                               tiny.args("--resume"));
    CHECK(out.exit_code == 2);
    CHECK_THAT(out.output, Contains(path + " is named like a checkpoint but is not a regular file"));
  }
}

TEST_CASE("the host's stale temporaries are removed at start, nobody else's", "[run][safety]") {
  TinyRun tiny;
  REQUIRE(tiny.run("--until-step 2").exit_code == 0);
  const fs::path stale_checkpoint = tiny.run_dir / "checkpoints" / "step-000000004.pt.tmp.4242";
  const fs::path stale_summary = tiny.run_dir / "summary.json.tmp.4242";
  const fs::path users = tiny.run_dir / "checkpoints" / "notes.txt.tmp.1";
  for (const auto& file : {stale_checkpoint, stale_summary, users}) write(file, "x");
  const auto out = tiny.run("--resume --until-step 4");
  INFO(out.output);
  CHECK(out.exit_code == 0);
  CHECK_FALSE(fs::exists(stale_checkpoint));
  CHECK_FALSE(fs::exists(stale_summary));
  CHECK(fs::exists(users));
}

TEST_CASE("a resume drops the metrics lines logged past its checkpoint", "[run][safety][resume]") {
  TinyRun tiny;
  REQUIRE(tiny.run("--until-step 4").exit_code == 0);
  // As a run killed at step 7 leaves it: lines up to 6 and half of one more, with checkpoints up to 4.
  std::ofstream(tiny.run_dir / "metrics.jsonl", std::ios::app) << "{\"step\": 6, \"loss\": 1.0}\n{\"step\": 7, \"lo";
  REQUIRE(tiny.run("--resume").exit_code == 0);
  std::vector<int64_t> steps;
  for (const auto& line : read_lines(tiny.run_dir / "metrics.jsonl")) steps.push_back(line["step"].get<int64_t>());
  CHECK(steps == std::vector<int64_t>{2, 4, 6, 8, 10, 12, 14, 16});
}

TEST_CASE("a resumed run's summary equals the uninterrupted run's", "[run][safety][resume]") {
  const std::string evaluators = R"(
[attacks.rs]
plugin = "fgsm_rs"
epsilon = "8/255"

[[evaluate]]
plugin = "linear_probe"
epochs = 2
control = true
attacks = ["rs"]
robust_max_images = 40

[[evaluate]]
plugin = "knn"
k = 5
control = true
)";
  TinyRun whole(evaluators), split(evaluators);
  REQUIRE(whole.run("--set train.epochs=1").exit_code == 0);
  REQUIRE(split.run("--set train.epochs=1 --until-step 4").exit_code == 0);
  const auto resumed = split.run("--set train.epochs=1 --resume");
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(without_seconds(read_json(whole.run_dir / "summary.json")["eval"]) ==
        without_seconds(read_json(split.run_dir / "summary.json")["eval"]));
}

TEST_CASE("resuming with a changed run file names every changed key, unless --accept-changes", "[run][safety][resume]") {
  TinyRun tiny;
  REQUIRE(tiny.run("--until-step 2").exit_code == 0);
  const auto refused = tiny.run("--resume --set train.batch_size=25 --set run.seed=7 --until-step 4");
  CHECK(refused.exit_code == 2);
  CHECK_THAT(refused.output, Contains("changed 2 key(s)"));
  CHECK_THAT(refused.output, Contains("train.batch_size: 50 -> 25"));
  CHECK_THAT(refused.output, Contains("run.seed: 0 -> 7"));
  CHECK_FALSE(fs::exists(tiny.checkpoint(4)));
  // Where the run reports, and how often, may change.
  CHECK(tiny.run("--resume --set train.log_every=1 --until-step 3").exit_code == 0);
  const auto accepted = tiny.run("--resume --set train.batch_size=25 --accept-changes --until-step 4");
  INFO(accepted.output);
  CHECK(accepted.exit_code == 0);
  CHECK_THAT(accepted.output, Contains("resuming with a changed run file (--accept-changes): train.batch_size: 50 -> 25"));
}

TEST_CASE("a learning rate that blows the weights up exits 5, not as a plugin error", "[run][safety]") {
  for (const char* extra : {"", " --resume"}) {
    INFO(extra);
    TinyRun tiny;
    if (std::string(extra) == " --resume") REQUIRE(tiny.run("--until-step 2").exit_code == 0);
    const auto out = tiny.run(std::string("--set train.lr=1e30") + (*extra ? " --accept-changes" : "") + extra);
    INFO(out.output);
    CHECK(out.exit_code == 5);
    CHECK_THAT(out.output, Contains("became NaN, infinite or too large for float32"));
    CHECK_THAT(out.output, !Contains("plugin"));
  }
}

TEST_CASE("a step too large for the machine is refused before training, naming the keys to lower", "[run][safety]") {
  for (const char* views : {"--set views.crops.count=100000 --set objective.num_crops=100000",
                            "--set views.crops.size=2000 --set train.batch_size=400"}) {
    INFO(views);
    TinyRun tiny;
    const auto out = tiny.run(std::string(views) + " --until-step 1");
    INFO(out.output);
    CHECK(out.exit_code == 2);
    CHECK_THAT(out.output, Contains("a training step needs about"));
    CHECK_THAT(out.output, Contains("lower train.batch_size, views.crops.count or views.crops.size"));
    CHECK_FALSE(fs::exists(tiny.run_dir / "checkpoints"));
  }
}
