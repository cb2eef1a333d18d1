// TensorBoard event files: what the host writes is read back by TensorBoard's own reader (tests/python/read_events.py
// under CFAMC_TEST_PYTHON), so framing, CRCs and protobuf encoding are checked against the real consumer.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "failure.hpp"
#include "run/event_file.hpp"
#include "support.hpp"

using cfamc::host::ExitCode;
using cfamc::host::Failure;
using cfamc::host::TensorBoardEvents;
using nlohmann::json;

namespace {

struct Point {
  int64_t step;
  double value;
};

void check_points(const json& read, const std::string& tag, const std::vector<Point>& expected) {
  INFO("tag " << tag << ": " << read.dump());
  REQUIRE(read.contains(tag));
  REQUIRE(read[tag].size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    CHECK(read[tag][i][0].get<int64_t>() == expected[i].step);
    // TensorBoard keeps simple_value as a float32: equal after the same rounding, exactly.
    CHECK(static_cast<float>(read[tag][i][1].get<double>()) == static_cast<float>(expected[i].value));
  }
}

}  // namespace

TEST_CASE("CRC-32C of the standard check string is 0xE3069283", "[tensorboard]") {
  CHECK(cfamc::host::crc32c("123456789") == 0xE3069283u);
  CHECK(cfamc::host::crc32c("") == 0u);
}

TEST_CASE("TensorBoard reads back the scalars the host writes, across two writers", "[tensorboard]") {
  cfamc::test::TempDir dir;
  const std::vector<Point> loss = {{0, 2.5}, {1, -0.75}, {2, 1.0 / 3}, {10'000'000'000LL, -1234.5678}};
  const std::vector<Point> lr = {{0, 0.1}, {2, 1e-7}, {3, 0.0}};
  {
    TensorBoardEvents events(dir.path());
    const std::string name = events.path().filename().string();
    CHECK(name.rfind("events.out.tfevents.", 0) == 0);
    CHECK(name.size() > std::string("events.out.tfevents.1700000000.").size());
    for (size_t i = 0; i < 3; ++i) events.scalar("train/loss", loss[i].value, loss[i].step);
    events.scalar("train/lr", lr[0].value, lr[0].step);
    events.flush();
  }
  // A resumed run: a new writer in the same directory, moved before use as the trainer may do.
  TensorBoardEvents first(dir.path());
  TensorBoardEvents events = std::move(first);
  events.scalar("train/lr", lr[1].value, lr[1].step);
  events.scalar("train/lr", lr[2].value, lr[2].step);
  events.scalar("train/loss", loss[3].value, loss[3].step);
  events.flush();

  const json read = cfamc::test::read_with_tensorboard(dir.path());
  check_points(read, "train/loss", loss);
  check_points(read, "train/lr", lr);
  CHECK(read.size() == 2);
}

TEST_CASE("an events file where none can be written is a Failure naming it", "[tensorboard]") {
  cfamc::test::TempDir dir;
  const auto not_a_directory = dir.write("plain-file", "x");
  for (const auto& target : {dir.path() / "missing", not_a_directory}) {
    INFO(target.string());
    try {
      TensorBoardEvents events(target);
      FAIL("no Failure");
    } catch (const Failure& failure) {
      CHECK(failure.code() == ExitCode::other);
      const std::string message = failure.what();
      CHECK(message.rfind("cannot write " + target.string() + "/events.out.tfevents.", 0) == 0);
      CHECK(message.find('\n') == std::string::npos);
    }
  }
}
