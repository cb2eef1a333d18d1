// `cfamc-host export`: a checkpoint's backbone (and, for a classifier artifact of `finetune`, its head as
// `fc`) as a safetensors file under the names of the network's reference implementation, so that
// torchvision's ResNets load it with strict=True; the metadata says what it is and how inputs are
// normalised.
#pragma once

#include <filesystem>
#include <optional>

namespace cfamc::host {

struct ExportRequest {
  std::filesystem::path checkpoint;
  std::filesystem::path out;
  std::optional<int32_t> bn_branch;  // default: the classifier's, or 0
  bool overwrite = false;            // replace an existing `out`
};

// Failure(usage) for a missing checkpoint, one without a model description, one whose tensors do not fit
// the backbone it describes, a target that exists (unless `overwrite`) or cannot be written; Failure(data)
// for a damaged checkpoint.
void export_model(const ExportRequest& request);

}  // namespace cfamc::host
