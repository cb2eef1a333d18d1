// Datasets from their files (IDX gzip or raw, CIFAR binary), with clear errors for bad files, and the
// seeded, resumable sampler.
#include "torch_catch.hpp"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <vector>

#include "data/datasets.hpp"
#include "data/sampler.hpp"
#include "run/evaluation.hpp"
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

// `bytes` as one gzip member, deflated in memory.
std::string gzip(const std::string& bytes) {
  z_stream z{};
  deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, bytes.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  z.avail_in = static_cast<uInt>(bytes.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
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

// A message for one line of stderr: printable, no line breaks.
bool one_printable_line(const std::string& message) {
  return std::all_of(message.begin(), message.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

TEST_CASE("IDX labels outside the classes are refused naming the file, label and index", "[data]") {
  cfamc::test::TempDir dir;
  auto [images, labels] = idx_files(12, 2, 2);
  dir.write("train-images-idx3-ubyte", images);
  dir.write("t10k-images-idx3-ubyte", images);
  std::string bad_train = labels, bad_test = labels;
  bad_train[8 + 3] = char(200);
  bad_test[8 + 5] = char(10);
  const auto train_labels = dir.write("train-labels-idx1-ubyte", bad_train);
  const auto test_labels = dir.write("t10k-labels-idx1-ubyte", bad_test);
  const std::string train = data_failure([&] { load_split({"fashion_mnist", dir.path().string()}, "train"); });
  CHECK_THAT(train, Contains(train_labels.string()) && Contains("label 200") && Contains("index 3"));
  const std::string test = data_failure([&] { load_split({"mnist", dir.path().string()}, "test"); });
  CHECK_THAT(test, Contains(test_labels.string()) && Contains("label 10") && Contains("index 5"));
}

TEST_CASE("an IDX image header with a zero dimension is refused", "[data]") {
  cfamc::test::TempDir dir;
  const auto file = dir.path() / "train-images-idx3-ubyte";
  for (const auto& [n, r, c] : std::vector<std::array<uint32_t, 3>>{{10, 0, 0}, {3, 0, 5}, {3, 5, 0}, {0, 2, 2}}) {
    const auto [images, labels] = idx_files(n, r, c);
    dir.write("train-images-idx3-ubyte", images);
    dir.write("train-labels-idx1-ubyte", labels);
    CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); }), Contains(file.string()));
  }
}

TEST_CASE("an IDX header whose size overflows is refused naming the file", "[data]") {
  cfamc::test::TempDir dir;
  const uint32_t huge = 1u << 31;
  const auto file =
      dir.write("train-images-idx3-ubyte", big_endian(0x803) + big_endian(huge) + big_endian(huge) + big_endian(huge));
  dir.write("train-labels-idx1-ubyte", big_endian(0x801) + big_endian(huge));
  CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); }),
             Contains(file.string()) && Contains("2147483648"));
  // Representable but more than a small gzip can inflate to: refused before anything is allocated.
  const uint32_t big = 1u << 16;
  write_gzip(file.string() + ".gz", big_endian(0x803) + big_endian(big) + big_endian(big) + big_endian(big));
  std::filesystem::remove(file);
  CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); }), Contains(file.string() + ".gz"));
}

TEST_CASE("a corrupt gzip IDX file is refused in one line naming the file", "[data]") {
  cfamc::test::TempDir dir;
  const auto [images, labels] = idx_files(10, 4, 4);
  dir.write("train-labels-idx1-ubyte", labels);
  std::string packed = gzip(images);
  packed[packed.size() - 8] ^= 0x5a;  // the CRC-32 in the trailer
  const auto file = dir.write("train-images-idx3-ubyte.gz", packed);
  const std::string crc = data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); });
  CHECK_THAT(crc, Contains(file.string()) && Contains("incorrect data check"));
  CHECK(one_printable_line(crc));
  packed = gzip(images);
  packed[12] ^= 0xff;  // inside the deflate stream
  dir.write("train-images-idx3-ubyte.gz", packed);
  const std::string body = data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); });
  CHECK_THAT(body, Contains(file.string()));
  CHECK(one_printable_line(body));
}

TEST_CASE("a gzip IDX file is never inflated past what its header announces", "[data]") {
  cfamc::test::TempDir dir;
  const auto [images, labels] = idx_files(10, 28, 28);
  dir.write("train-labels-idx1-ubyte", labels);
  // 200 MB of zeros after the announced images; gzip members concatenate, so one 1 MB member repeated
  // keeps the fixture small and quick to write.
  const std::string megabyte = gzip(std::string(1 << 20, '\0'));
  std::string bomb = gzip(images);
  for (int i = 0; i < 200; ++i) bomb += megabyte;
  const auto file = dir.write("train-images-idx3-ubyte.gz", bomb);
  REQUIRE(std::filesystem::file_size(file) < 1'000'000);
  const auto start = std::chrono::steady_clock::now();
  const std::string message = data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); });
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  CHECK_THAT(message, Contains(file.string()) && Contains("header announces 10 images of 28x28") && Contains("more"));
  CHECK(took.count() < 0.1);  // inflating the 200 MB takes several times that
  dir.write("train-images-idx3-ubyte.gz", gzip(images.substr(0, images.size() - 1)));
  CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, "train"); }),
             Contains(file.string()) && Contains("header announces 10 images"));
}

TEST_CASE("training and test IDX images of different sizes are refused naming both files", "[data]") {
  cfamc::test::TempDir dir;
  const auto [train_images, train_labels] = idx_files(6, 4, 3);
  const auto [test_images, test_labels] = idx_files(6, 5, 3);
  const auto train = dir.write("train-images-idx3-ubyte", train_images);
  dir.write("train-labels-idx1-ubyte", train_labels);
  write_gzip(dir.path() / "t10k-images-idx3-ubyte.gz", test_images);
  const auto test = dir.path() / "t10k-images-idx3-ubyte.gz";
  dir.write("t10k-labels-idx1-ubyte", test_labels);
  for (const char* split : {"train", "test"}) {
    CHECK_THAT(data_failure([&] { load_split({"mnist", dir.path().string()}, split); }),
               Contains(train.string()) && Contains(test.string()));
  }
}

TEST_CASE("CIFAR and STL-10 labels out of range name the file, label and index", "[data]") {
  cfamc::test::TempDir dir;
  std::string record(1 + 3072, '\0');
  std::string batch = record + record + record;
  batch[record.size()] = char(10);
  const auto cifar = dir.write("test_batch.bin", batch);
  CHECK_THAT(data_failure([&] { load_split({"cifar10", dir.path().string()}, "test"); }),
             Contains(cifar.string()) && Contains("label 10") && Contains("index 1"));
  dir.write("test_X.bin", std::string(2 * 3 * 96 * 96, '\0'));
  for (const char label : {char(0), char(11)}) {
    const auto y = dir.write("test_y.bin", std::string{char(1), label});
    CHECK_THAT(data_failure([&] { load_split({"stl10", dir.path().string()}, "test"); }),
               Contains(y.string()) && Contains("label " + std::to_string(int(label))) && Contains("index 1"));
  }
}

TEST_CASE("CIFAR binary batches load, a partial record is refused", "[data]") {
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

TEST_CASE("CIFAR-100 reads the fine label, STL-10 is column-major with labels 1..10", "[data]") {
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

TEST_CASE("STL-10 train+unlabeled: training draws all of it, classifiers see only its labeled images", "[data]") {
  cfamc::test::TempDir dir;
  const auto images = [](std::initializer_list<char> firsts) {
    std::string bytes;
    for (char first : firsts) bytes += first + std::string(3 * 96 * 96 - 1, '\0');
    return bytes;
  };
  dir.write("train_X.bin", images({11}));
  dir.write("train_y.bin", std::string(1, char(4)));
  dir.write("unlabeled_X.bin", images({21, 22}));
  dir.write("test_X.bin", images({31}));
  dir.write("test_y.bin", std::string(1, char(1)));
  const DataConfig config{"stl10", dir.path().string(), "train+unlabeled", "keep", 0, 0};
  const EvaluationData data = load_evaluation_data(config, "cpu");
  // Row i of what training draws is sample index i: the labeled image first, then the unlabeled ones.
  CHECK(data.pretrain.labels.equal(torch::tensor({3, -1, -1}, torch::kLong)));
  CHECK(data.pretrain.images.select(1, 0).select(1, 0).select(1, 0).equal(torch::tensor({11, 21, 22}, torch::kByte)));
  CHECK(data.train.labels.equal(torch::tensor({3}, torch::kLong)));
  CHECK(data.train.images.equal(data.pretrain.images.slice(0, 0, 1)));
  CHECK(data.test.labels.equal(torch::tensor({0}, torch::kLong)));
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
  // Two processes share each global batch of 10: their halves, in rank order, are the one process's batch.
  EpochSampler whole(100, 10, 7), rank0(100, 10, 7, 0, 2), rank1(100, 10, 7, 1, 2);
  CHECK(rank0.steps_per_epoch() == 10);
  CHECK(rank0.batch(0, 3).numel() == 5);
  CHECK(torch::equal(torch::cat({rank0.batch(2, 3), rank1.batch(2, 3)}), whole.batch(2, 3)));
  CHECK_THROWS_AS(EpochSampler(100, 10, 7, 0, 3), Failure);  // 10 images cannot be split 3 ways
}

TEST_CASE("a batch larger than the dataset is a run-file error", "[data]") {
  CHECK_THROWS_AS(EpochSampler(5, 10, 0), Failure);
}
