// Datasets from their files (IDX gzip or raw, CIFAR binary), with clear errors for bad files, and the
// seeded, resumable sampler.
#include "torch_catch.hpp"

#include <zlib.h>

#include "data/datasets.hpp"
#include "data/sampler.hpp"
#include "failure.hpp"
#include "support.hpp"

using namespace cfamc::host;
using Catch::Matchers::Contains;

namespace {

std::string big_endian(uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

// An IDX image file of n images r x c whose pixel k of image i is (i + k) % 256, and its labels i % 10.
std::pair<std::string, std::string> idx_files(uint32_t n, uint32_t r, uint32_t c) {
  std::string images = big_endian(0x803) + big_endian(n) + big_endian(r) + big_endian(c);
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t k = 0; k < r * c; ++k) images += char((i + k) % 256);
  std::string labels = big_endian(0x801) + big_endian(n);
  for (uint32_t i = 0; i < n; ++i) labels += char(i % 10);
  return {images, labels};
}

void write_gzip(const std::filesystem::path& file, const std::string& bytes) {
  gzFile out = gzopen(file.c_str(), "wb");
  gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(out);
}

std::string data_failure(const std::function<void()>& body) {
  try {
    body();
  } catch (const Failure& e) {
    CHECK(e.code() == ExitCode::data);
    return e.what();
  }
  FAIL("no data failure");
  return "";
}

}  // namespace

TEST_CASE("IDX files load gzipped or raw, with shapes and values intact", "[data]") {
  cfamc::test::TempDir dir;
  const auto [images, labels] = idx_files(12, 4, 3);
  write_gzip(dir.path() / "train-images-idx3-ubyte.gz", images);
  write_gzip(dir.path() / "train-labels-idx1-ubyte.gz", labels);
  dir.write("t10k-images-idx3-ubyte", images);
  dir.write("t10k-labels-idx1-ubyte", labels);
  for (const char* split : {"train", "test"}) {
    const ImageSet set = load_split({"mnist", dir.path().string()}, split);
    REQUIRE(set.images.sizes() == at::IntArrayRef({12, 1, 4, 3}));
    CHECK(set.images.scalar_type() == at::kByte);
    CHECK(set.images[5][0][1][2].item<int>() == (5 + 5) % 256);
    CHECK(set.labels[7].item<int64_t>() == 7);
  }
}

TEST_CASE("bad IDX files exit with a data error naming the file", "[data]") {
  cfamc::test::TempDir dir;
  auto [images, labels] = idx_files(10, 2, 2);
  dir.write("train-labels-idx1-ubyte", labels);
  CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); }),
             Contains("train-images-idx3-ubyte[.gz] does not exist"));
  dir.write("train-images-idx3-ubyte", images.substr(0, images.size() - 3));
  const std::string truncated = data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); });
  CHECK_THAT(truncated, Contains("train-images-idx3-ubyte"));
  CHECK_THAT(truncated, Contains("header announces 10 images"));
  dir.write("train-images-idx3-ubyte", "\x00\x00\x08\x01rest");
  CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); }), Contains("not an IDX image file"));
  dir.write("train-images-idx3-ubyte", images);
  dir.write("train-labels-idx1-ubyte", labels.substr(0, labels.size() - 1));
  CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); }), Contains("expected 10 labels"));
}

TEST_CASE("CIFAR binary batches load; a partial record is refused", "[data]") {
  cfamc::test::TempDir dir;
  std::string record(1 + 3072, '\0');
  std::string batch;
  for (int i = 0; i < 3; ++i) {
    record[0] = char(i);
    record[1] = char(10 * i);  // red channel, first pixel
    batch += record;
  }
  for (int i = 1; i <= 5; ++i) dir.write("data_batch_" + std::to_string(i) + ".bin", batch);
  dir.write("test_batch.bin", batch + "x");
  const ImageSet train = load_split({"cifar10", dir.path().string()}, "train");
  REQUIRE(train.images.sizes() == at::IntArrayRef({15, 3, 32, 32}));
  CHECK(train.labels[2].item<int64_t>() == 2);
  CHECK(train.images[2][0][0][0].item<int>() == 20);
  CHECK_THAT(data_failure([&] { load_split({"cifar10", dir.path().string()}, "test"); }),
             Contains("expected whole CIFAR records of 3073 bytes"));
}

TEST_CASE("CIFAR-100 reads the fine label; STL-10 is column-major with labels 1..10", "[data]") {
  cfamc::test::TempDir dir;
  std::string record(2 + 3072, '\0');
  record[0] = char(3);   // coarse
  record[1] = char(42);  // fine
  dir.write("train.bin", record + record);
  const ImageSet cifar100 = load_split({"cifar100", dir.path().string()}, "train");
  CHECK(cifar100.labels.sizes() == at::IntArrayRef({2}));
  CHECK(cifar100.labels[1].item<int64_t>() == 42);

  // One 96x96 image whose stored byte at (channel 0, column 1, row 0) is 7: pixel (row 0, column 1).
  std::string image(3 * 96 * 96, '\0');
  image[96] = char(7);
  dir.write("test_X.bin", image);
  dir.write("test_y.bin", std::string(1, char(10)));
  const ImageSet stl = load_split({"stl10", dir.path().string()}, "test");
  REQUIRE(stl.images.sizes() == at::IntArrayRef({1, 3, 96, 96}));
  CHECK(stl.images[0][0][0][1].item<int>() == 7);
  CHECK(stl.labels[0].item<int64_t>() == 9);
  dir.write("test_y.bin", "");
  CHECK_THAT(data_failure([&] { load_split({"stl10", dir.path().string()}, "test"); }), Contains("expected 1 labels"));
}

TEST_CASE("the sampler visits every sample once per epoch, reproducibly", "[data]") {
  EpochSampler sampler(103, 10, 42);
  CHECK(sampler.steps_per_epoch() == 10);  // the incomplete last batch is dropped
  std::vector<at::Tensor> epoch0;
  for (int64_t s = 0; s < 10; ++s) epoch0.push_back(sampler.batch(0, s));
  const at::Tensor seen = torch::cat(epoch0);
  CHECK(std::get<0>(at::_unique(seen)).numel() == 100);
  CHECK(seen.max().item<int64_t>() < 103);
  EpochSampler again(103, 10, 42);
  CHECK(torch::equal(again.batch(0, 3), epoch0[3]));  // a pure function of (seed, epoch, step)
  CHECK_FALSE(torch::equal(sampler.batch(1, 3), epoch0[3]));
  EpochSampler rank0(100, 10, 7, 0, 2), rank1(100, 10, 7, 1, 2);
  CHECK(rank0.steps_per_epoch() == 5);
  const at::Tensor both = torch::cat({rank0.batch(0, 0), rank1.batch(0, 0)});
  CHECK(std::get<0>(at::_unique(both)).numel() == 20);  // shards are disjoint
}

TEST_CASE("a batch larger than the dataset is a run-file error", "[data]") {
  CHECK_THROWS_AS(EpochSampler(5, 10, 0), Failure);
}
