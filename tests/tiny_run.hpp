// A run small enough for a test, and readers for what a run writes. Shared by the whole-run tests.
#pragma once

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace cfamc::test {

// A run small enough for a test: a narrow CNN, EMP-SSL with 2 crops, no evaluators. On the CPU, where runs
// are bit-exact (GPU kernels need not be).
inline const char* const kTinyRun = R"(
[run]
device = "cpu"

[data]
dataset = "fashion_mnist"
train_subset = 400
test_subset = 100

[views.crops]
count = 2
size = 20
jitter = 0.0
grayscale = 0.0
blur = 0.2

[train]
epochs = 2
batch_size = 50
log_every = 2
checkpoint_every = 2
keep_checkpoints = 10

[backbone]
plugin = "convnet"
in_channels = 1
width = 8

[objective]
plugin = "emp_ssl"
num_crops = 2
pre_feature_dim = 32
hidden_dim = 32
projection_dim = 16
)";

inline nlohmann::json read_json(const std::filesystem::path& file) {
  std::ifstream in(file);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

inline std::vector<nlohmann::json> read_lines(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace cfamc::test
