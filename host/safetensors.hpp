// The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data. What Python's `safetensors`
// reads and torchvision's models load.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "tensor_map.hpp"

namespace cfamc::host {

// Writes `tensors` (contiguous copies on the CPU) and `metadata` (the header's "__metadata__", strings
// only) to `file`, atomically. Failure(usage) naming the file when it cannot be written or a tensor's
// dtype has no safetensors name.
void write_safetensors(const std::filesystem::path& file, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace cfamc::host
