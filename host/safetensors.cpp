#include "safetensors.hpp"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "failure.hpp"
#include "files.hpp"

namespace cfamc::host {
namespace {

std::string dtype_name(at::ScalarType type, const std::string& tensor, const std::filesystem::path& file) {
  switch (type) {
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default:
      fail(ExitCode::usage, file.string() + ": tensor '" + tensor + "' has dtype " + std::string(c10::toString(type)) +
                                ", which safetensors cannot hold");
  }
}

}  // namespace

void write_safetensors(const std::filesystem::path& file, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string data;
  for (const auto& item : tensors) {
    const at::Tensor cpu = item.value().detach().to(at::kCPU).contiguous();
    const size_t begin = data.size();
    data.append(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes());
    header[item.key()] = {{"dtype", dtype_name(cpu.scalar_type(), item.key(), file)},
                          {"shape", cpu.sizes().vec()},
                          {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as the reference writes it
  std::string content(8, '\0');
  for (int i = 0; i < 8; ++i) content[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  content += text;
  content += data;
  try {
    write_file_atomically(file, content);
  } catch (const Failure& e) {
    // The target is the user's choice: a usage error, naming the file rather than its temporary.
    const std::string why = e.what();
    const size_t colon = why.rfind(':');
    fail(ExitCode::usage, "cannot write " + file.string() + (colon == std::string::npos ? ": " + why : why.substr(colon)));
  }
}

}  // namespace cfamc::host
