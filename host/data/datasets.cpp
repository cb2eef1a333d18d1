#include "data/datasets.hpp"

#include <zlib.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <limits>
#include <vector>

#include "failure.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

// Deflate expands at most 1032:1, so a gzip file cannot hold more than this many bytes per stored byte;
// a header that announces more is refused before anything is allocated or inflated.
constexpr uint64_t kMaxInflateRatio = 1040;

// A data file read through zlib, which reads plain files unchanged. Reads stop where the caller says, so a
// small gzip is never inflated past what its header announces.
class DataFile {
 public:
  explicit DataFile(fs::path file) : file_(std::move(file)) {
    std::error_code ec;
    if (!fs::is_regular_file(file_, ec)) fail(ExitCode::data, "data file " + file_.string() + " does not exist");
    size_ = fs::file_size(file_, ec);
    if (!ec) in_ = gzopen(file_.c_str(), "rb");
    if (in_ == nullptr) fail(ExitCode::data, "cannot open data file " + file_.string());
  }
  ~DataFile() { gzclose(in_); }
  DataFile(const DataFile&) = delete;
  DataFile& operator=(const DataFile&) = delete;

  std::string name() const { return file_.string(); }
  // The most bytes still to come: the rest of a plain file, or all a gzip file could inflate to.
  uint64_t room() {
    constexpr uint64_t kMost = std::numeric_limits<uint64_t>::max();
    const uint64_t inflated = size_ > kMost / kMaxInflateRatio ? kMost : size_ * kMaxInflateRatio;
    const uint64_t total = gzdirect(in_) != 0 ? size_ : inflated;
    return total > consumed_ ? total - consumed_ : 0;
  }

  // Up to `n` bytes; fewer only where the data ends. A zlib error is a Failure.
  uint64_t read(void* into, uint64_t n) {
    uint64_t done = 0;
    while (done < n) {
      const auto want = static_cast<unsigned>(std::min<uint64_t>(n - done, 1u << 30));
      const int got = gzread(in_, static_cast<char*>(into) + done, want);
      if (got <= 0) break;
      done += static_cast<uint64_t>(got);
    }
    check();
    consumed_ += done;
    return done;
  }
  bool at_end() {
    uint8_t byte = 0;
    return read(&byte, 1) == 0;
  }

 private:
  void check() {
    int error = Z_OK;
    const char* text = gzerror(in_, &error);
    if (error == Z_OK) return;
    // Copied here: gzclose (in the destructor, as the Failure leaves) frees zlib's text.
    std::string reason = text == nullptr ? "unknown error" : text;
    const std::string prefix = file_.string() + ": ";  // zlib names the file itself; once is enough
    if (reason.rfind(prefix, 0) == 0) reason.erase(0, prefix.size());
    std::replace_if(reason.begin(), reason.end(), [](char c) { return c < 0x20 || c == 0x7f; }, ' ');
    fail(ExitCode::data, "data file " + file_.string() + " is corrupt (" + reason + ")");
  }

  fs::path file_;
  uint64_t size_ = 0, consumed_ = 0;
  gzFile in_ = nullptr;
};

// The next `bytes` bytes as a uint8 tensor of `shape`, insisting the data ends there; `announced` says
// what the header promised. Nothing is allocated for a payload the file cannot hold.
at::Tensor read_payload(DataFile& in, at::IntArrayRef shape, uint64_t bytes, const std::string& announced) {
  if (bytes > in.room()) {
    fail(ExitCode::data, in.name() + ": " + announced + " but the file is too small to hold them (" +
                             std::to_string(in.room()) + " bytes at most)");
  }
  at::Tensor payload = at::empty(shape, at::kByte);
  const uint64_t got = in.read(payload.data_ptr(), bytes);
  if (got < bytes) {
    fail(ExitCode::data,
         in.name() + ": " + announced + " but the data ends " + std::to_string(bytes - got) + " bytes short");
  }
  if (!in.at_end()) fail(ExitCode::data, in.name() + ": " + announced + " but the file holds more data after them");
  return payload;
}

// The first existing of `stem` and `stem.gz` in `root`; empty when neither exists.
fs::path existing_variant(const fs::path& root, const std::string& stem) {
  for (const std::string& name : {stem, stem + ".gz"}) {
    std::error_code ec;
    if (fs::is_regular_file(root / name, ec)) return root / name;
  }
  return {};
}

fs::path find_variant(const fs::path& root, const std::string& stem) {
  fs::path file = existing_variant(root, stem);
  if (file.empty()) fail(ExitCode::data, "data file " + (root / stem).string() + "[.gz] does not exist");
  return file;
}

uint32_t big_endian(const uint8_t* b) {
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

// Reads a header of `words` big-endian words and insists on its magic number.
std::vector<int64_t> read_header(DataFile& in, size_t words, uint32_t magic, const std::string& kind) {
  std::array<uint8_t, 16> bytes{};
  if (in.read(bytes.data(), 4 * words) < 4 * words || big_endian(bytes.data()) != magic) {
    fail(ExitCode::data, in.name() + ": not an IDX " + kind + " file (expected magic " +
                             (magic == 0x803 ? "0x00000803" : "0x00000801") + " and a " + std::to_string(4 * words) +
                             "-byte header)");
  }
  std::vector<int64_t> values;
  for (size_t i = 1; i < words; ++i) values.push_back(big_endian(bytes.data() + 4 * i));
  return values;
}

struct IdxImages {
  int64_t n = 0, rows = 0, cols = 0;
  uint64_t bytes = 0;  // n * rows * cols
  std::string announced;
};

// IDX images: magic 0x00000803 and [N, rows, cols], each at least 1, their product representable.
IdxImages read_image_header(DataFile& in) {
  const std::vector<int64_t> h = read_header(in, 4, 0x803, "image");
  IdxImages images{h[0], h[1], h[2]};
  images.announced = "header announces " + std::to_string(images.n) + " images of " + std::to_string(images.rows) + "x" +
                     std::to_string(images.cols);
  if (images.n == 0 || images.rows == 0 || images.cols == 0) {
    fail(ExitCode::data, in.name() + ": " + images.announced + " (expected at least one image of at least 1x1)");
  }
  int64_t pixels = 0, bytes = 0;
  if (__builtin_mul_overflow(images.rows, images.cols, &pixels) || __builtin_mul_overflow(images.n, pixels, &bytes)) {
    fail(ExitCode::data, in.name() + ": " + images.announced + ", more bytes than can be counted; the header is corrupt");
  }
  images.bytes = static_cast<uint64_t>(bytes);
  images.announced += " (" + std::to_string(bytes) + " bytes)";
  return images;
}

// Training and test images must be the same size; the other split's header is enough to tell. When the
// other file is missing its own load says so.
void check_same_size(const fs::path& root, const std::string& prefix, const DataFile& in, const IdxImages& images) {
  const bool train = prefix == "train";
  const fs::path other_file = existing_variant(root, std::string(train ? "t10k" : "train") + "-images-idx3-ubyte");
  if (other_file.empty()) return;
  DataFile other(other_file);
  const IdxImages theirs = read_image_header(other);
  if (theirs.rows == images.rows && theirs.cols == images.cols) return;
  const auto size = [](const IdxImages& i) { return std::to_string(i.rows) + "x" + std::to_string(i.cols); };
  const std::string train_part = (train ? in.name() : other.name()) + " holds " + size(train ? images : theirs);
  const std::string test_part = (train ? other.name() : in.name()) + " holds " + size(train ? theirs : images);
  fail(ExitCode::data, "training images " + train_part + " but test images " + test_part + "; they must be the same size");
}

// Insists every label lies in [first, first + classes); names the first that does not.
void check_labels(const at::Tensor& labels, int64_t first, int64_t classes, const std::string& file) {
  const at::Tensor bad = at::nonzero((labels < first) | (labels >= first + classes));
  if (bad.numel() == 0) return;
  const int64_t index = bad[0][0].item<int64_t>();
  fail(ExitCode::data, file + ": label " + std::to_string(labels[index].item<int64_t>()) + " at index " +
                           std::to_string(index) + " is out of range (expected " + std::to_string(first) + ".." +
                           std::to_string(first + classes - 1) + ")");
}

// IDX (MNIST, Fashion-MNIST): magic 0x00000803 for images [N, rows, cols], 0x00000801 for labels [N].
ImageSet load_idx(const fs::path& root, const std::string& prefix, int64_t classes) {
  DataFile image_in(find_variant(root, prefix + "-images-idx3-ubyte"));
  const IdxImages header = read_image_header(image_in);
  check_same_size(root, prefix, image_in, header);
  ImageSet set;
  set.images = read_payload(image_in, {header.n, 1, header.rows, header.cols}, header.bytes, header.announced);
  DataFile label_in(find_variant(root, prefix + "-labels-idx1-ubyte"));
  const int64_t n_labels = read_header(label_in, 2, 0x801, "label")[0];
  const std::string expected = "expected " + std::to_string(header.n) + " labels (one per image)";
  if (n_labels != header.n) {
    fail(ExitCode::data, label_in.name() + ": " + expected + ", the header announces " + std::to_string(n_labels));
  }
  set.labels = read_payload(label_in, {header.n}, static_cast<uint64_t>(header.n), expected).to(at::kLong);
  check_labels(set.labels, 0, classes, label_in.name());
  return set;
}

// The whole of a file of whole `record`-byte records, at most `max_records` of them: CIFAR and STL-10
// are read without a header, so that bound is what stops a small gzip inflating without end.
std::vector<uint8_t> read_records(const fs::path& file, uint64_t record, uint64_t max_records,
                                  const std::string& expected) {
  DataFile in(file);
  std::vector<uint8_t> bytes;
  std::array<uint8_t, 1 << 16> chunk{};
  while (const uint64_t n = in.read(chunk.data(), chunk.size())) {
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
    if (bytes.size() > record * max_records) {
      fail(ExitCode::data, in.name() + ": " + expected + ", at most " + std::to_string(max_records) +
                               " of them; the file holds more");
    }
  }
  if (bytes.empty() || bytes.size() % record != 0) {
    fail(ExitCode::data, in.name() + ": " + expected + ", file has " + std::to_string(bytes.size()) + " bytes");
  }
  return bytes;
}

// CIFAR binary: records of `label_bytes` label bytes (the last is the class) and 3x32x32 pixels.
ImageSet load_cifar(const std::vector<fs::path>& files, int64_t label_bytes, int64_t classes) {
  const ImageShape shape = image_shape("cifar10");
  const int64_t pixels = shape.pixels();
  constexpr uint64_t kMaxRecords = 60000;  // the whole of CIFAR-10 or CIFAR-100
  const int64_t record = label_bytes + pixels;
  std::vector<at::Tensor> images, labels;
  for (const auto& file : files) {
    std::vector<uint8_t> bytes =
        read_records(file, record, kMaxRecords, "expected whole CIFAR records of " + std::to_string(record) + " bytes");
    const int64_t n = static_cast<int64_t>(bytes.size()) / record;
    const at::Tensor records = at::from_blob(bytes.data(), {n, record}, at::kByte).clone();
    const at::Tensor label = records.select(1, label_bytes - 1).to(at::kLong);
    check_labels(label, 0, classes, file.string());
    images.push_back(records.slice(1, label_bytes).view({n, shape.channels, shape.height, shape.width}));
    labels.push_back(label);
  }
  return ImageSet{at::cat(images), at::cat(labels)};
}

// STL-10 binary: uint8 images of 3x96x96 stored column-major per channel, labels 1..10 as bytes.
ImageSet load_stl10(const fs::path& root, const std::string& split) {
  const ImageShape shape = image_shape("stl10");
  const int64_t pixels = shape.pixels();
  constexpr uint64_t kMaxImages = 100000;  // the unlabeled split, the largest
  const fs::path x_file = root / (split + "_X.bin");
  const std::vector<uint8_t> x = read_records(
      x_file, pixels, kMaxImages, "expected whole 3x96x96 images (" + std::to_string(pixels) + " bytes each)");
  const int64_t n = static_cast<int64_t>(x.size()) / pixels;
  ImageSet set;
  set.images = at::from_blob(const_cast<uint8_t*>(x.data()), {n, shape.channels, shape.width, shape.height}, at::kByte)
                   .transpose(2, 3)
                   .contiguous();  // column-major on disk
  if (split == "unlabeled") {
    set.labels = at::full({n}, -1, at::kLong);
    return set;
  }
  DataFile y_in(root / (split + "_y.bin"));
  const std::string expected = "expected " + std::to_string(n) + " labels (one byte per image)";
  set.labels = read_payload(y_in, {n}, static_cast<uint64_t>(n), expected).to(at::kLong);
  check_labels(set.labels, 1, 10, y_in.name());
  set.labels -= 1;
  return set;
}

}  // namespace

ImageSet load_split(const DatasetSpec& spec, const std::string& split) {
  const fs::path root = spec.root.empty() ? default_root(spec.name) : spec.root;
  if (root.empty()) fail(ExitCode::usage, "data.root: dataset '" + spec.name + "' has no default folder; set data.root");
  const bool train = split == "train";
  if (spec.name == "fashion_mnist" || spec.name == "mnist") {
    if (!train && split != "test") fail(ExitCode::usage, spec.name + " has the splits train and test, not '" + split + "'");
    return load_idx(root, train ? "train" : "t10k", 10);
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
