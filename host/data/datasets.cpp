#include "data/datasets.hpp"

#include <zlib.h>

#include <ATen/ATen.h>

#include <array>
#include <filesystem>
#include <vector>

#include "failure.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

// The whole of a file, gunzipped when it is gzip (zlib reads plain files unchanged).
std::vector<uint8_t> read_file(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) fail(ExitCode::data, "data file " + file.string() + " does not exist");
  gzFile in = gzopen(file.c_str(), "rb");
  if (in == nullptr) fail(ExitCode::data, "cannot open data file " + file.string());
  std::vector<uint8_t> bytes;
  std::array<uint8_t, 1 << 16> chunk{};
  int n = 0;
  while ((n = gzread(in, chunk.data(), chunk.size())) > 0) bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + n);
  int error = Z_OK;
  const char* message = gzerror(in, &error);
  gzclose(in);
  if (n < 0 || (error != Z_OK && error != Z_STREAM_END)) {
    fail(ExitCode::data, "data file " + file.string() + " is corrupt: " + message);
  }
  return bytes;
}

// The first existing of `stem` and `stem.gz` in `root`.
fs::path find_variant(const fs::path& root, const std::string& stem) {
  for (const std::string& name : {stem, stem + ".gz"}) {
    std::error_code ec;
    if (fs::is_regular_file(root / name, ec)) return root / name;
  }
  fail(ExitCode::data, "data file " + (root / stem).string() + "[.gz] does not exist");
}

uint32_t big_endian(const std::vector<uint8_t>& b, size_t at) {
  return (uint32_t(b[at]) << 24) | (uint32_t(b[at + 1]) << 16) | (uint32_t(b[at + 2]) << 8) | uint32_t(b[at + 3]);
}

// IDX (MNIST, Fashion-MNIST): magic 0x00000803 for images [N, rows, cols], 0x00000801 for labels [N].
ImageSet load_idx(const fs::path& root, const std::string& prefix) {
  const fs::path image_file = find_variant(root, prefix + "-images-idx3-ubyte");
  const fs::path label_file = find_variant(root, prefix + "-labels-idx1-ubyte");
  const std::vector<uint8_t> images = read_file(image_file), labels = read_file(label_file);
  if (images.size() < 16 || big_endian(images, 0) != 0x803) {
    fail(ExitCode::data, image_file.string() + ": not an IDX image file (expected magic 0x00000803 and a 16-byte header)");
  }
  if (labels.size() < 8 || big_endian(labels, 0) != 0x801) {
    fail(ExitCode::data, label_file.string() + ": not an IDX label file (expected magic 0x00000801 and an 8-byte header)");
  }
  const int64_t n = big_endian(images, 4), rows = big_endian(images, 8), cols = big_endian(images, 12);
  const int64_t n_labels = big_endian(labels, 4);
  if (static_cast<int64_t>(images.size()) != 16 + n * rows * cols) {
    fail(ExitCode::data, image_file.string() + ": header announces " + std::to_string(n) + " images of " +
                             std::to_string(rows) + "x" + std::to_string(cols) + " (" + std::to_string(16 + n * rows * cols) +
                             " bytes) but the file has " + std::to_string(images.size()) + " bytes");
  }
  if (n_labels != n || static_cast<int64_t>(labels.size()) != 8 + n) {
    fail(ExitCode::data, label_file.string() + ": expected " + std::to_string(n) + " labels (" + std::to_string(8 + n) +
                             " bytes), found a header of " + std::to_string(n_labels) + " and " +
                             std::to_string(labels.size()) + " bytes");
  }
  ImageSet set;
  set.images = at::from_blob(const_cast<uint8_t*>(images.data()) + 16, {n, 1, rows, cols}, at::kByte).clone();
  set.labels = at::from_blob(const_cast<uint8_t*>(labels.data()) + 8, {n}, at::kByte).to(at::kLong);
  return set;
}

// CIFAR binary: records of `label_bytes` label bytes (the last is the class) and 3x32x32 pixels.
ImageSet load_cifar(const std::vector<fs::path>& files, int64_t label_bytes, int64_t classes) {
  constexpr int64_t kPixels = 3 * 32 * 32;
  const int64_t record = label_bytes + kPixels;
  std::vector<at::Tensor> images, labels;
  for (const auto& file : files) {
    std::vector<uint8_t> bytes = read_file(file);
    if (bytes.empty() || static_cast<int64_t>(bytes.size()) % record != 0) {
      fail(ExitCode::data, file.string() + ": expected whole CIFAR records of " + std::to_string(record) +
                               " bytes, file has " + std::to_string(bytes.size()) + " bytes");
    }
    const int64_t n = static_cast<int64_t>(bytes.size()) / record;
    const at::Tensor records = at::from_blob(bytes.data(), {n, record}, at::kByte).clone();
    const at::Tensor label = records.select(1, label_bytes - 1).to(at::kLong);
    if (label.max().item<int64_t>() >= classes) {
      fail(ExitCode::data, file.string() + ": a label is >= " + std::to_string(classes) + "; is this the right CIFAR variant?");
    }
    images.push_back(records.slice(1, label_bytes).view({n, 3, 32, 32}));
    labels.push_back(label);
  }
  return ImageSet{at::cat(images), at::cat(labels)};
}

// STL-10 binary: uint8 images of 3x96x96 stored column-major per channel, labels 1..10 as bytes.
ImageSet load_stl10(const fs::path& root, const std::string& split) {
  constexpr int64_t kPixels = 3 * 96 * 96;
  const fs::path x_file = root / (split + "_X.bin");
  const std::vector<uint8_t> x = read_file(x_file);
  if (x.empty() || static_cast<int64_t>(x.size()) % kPixels != 0) {
    fail(ExitCode::data, x_file.string() + ": expected whole 3x96x96 images (" + std::to_string(kPixels) +
                             " bytes each), file has " + std::to_string(x.size()) + " bytes");
  }
  const int64_t n = static_cast<int64_t>(x.size()) / kPixels;
  ImageSet set;
  set.images = at::from_blob(const_cast<uint8_t*>(x.data()), {n, 3, 96, 96}, at::kByte).transpose(2, 3).contiguous();
  if (split == "unlabeled") {
    set.labels = at::full({n}, -1, at::kLong);
    return set;
  }
  const fs::path y_file = root / (split + "_y.bin");
  const std::vector<uint8_t> y = read_file(y_file);
  if (static_cast<int64_t>(y.size()) != n) {
    fail(ExitCode::data, y_file.string() + ": expected " + std::to_string(n) + " labels, file has " +
                             std::to_string(y.size()) + " bytes");
  }
  set.labels = at::from_blob(const_cast<uint8_t*>(y.data()), {n}, at::kByte).to(at::kLong) - 1;
  return set;
}

}  // namespace

ImageSet load_split(const DatasetSpec& spec, const std::string& split) {
  const fs::path root = spec.root.empty() ? default_root(spec.name) : spec.root;
  if (root.empty()) fail(ExitCode::usage, "data.root: dataset '" + spec.name + "' has no default folder; set data.root");
  const bool train = split == "train";
  if (spec.name == "fashion_mnist" || spec.name == "mnist") {
    if (!train && split != "test") fail(ExitCode::usage, spec.name + " has the splits train and test, not '" + split + "'");
    return load_idx(root, train ? "train" : "t10k");
  }
  if (spec.name == "cifar10") {
    std::vector<fs::path> files;
    if (train)
      for (int i = 1; i <= 5; ++i) files.push_back(root / ("data_batch_" + std::to_string(i) + ".bin"));
    else
      files.push_back(root / "test_batch.bin");
    return load_cifar(files, 1, 10);
  }
  if (spec.name == "cifar100") return load_cifar({root / (train ? "train.bin" : "test.bin")}, 2, 100);
  if (spec.name == "stl10") {
    if (split == "train+unlabeled") {
      ImageSet labeled = load_stl10(root, "train"), unlabeled = load_stl10(root, "unlabeled");
      return ImageSet{at::cat({labeled.images, unlabeled.images}), at::cat({labeled.labels, unlabeled.labels})};
    }
    return load_stl10(root, split);
  }
  fail(ExitCode::usage, "data.dataset: unknown dataset '" + spec.name + "' (fashion_mnist, mnist, cifar10, cifar100, stl10)");
}

}  // namespace cfamc::host
