#include "data/data_config.hpp"

#include "data/dataset_names.hpp"
#include "failure.hpp"

namespace cfamc::host {

Schema data_schema() {
  return {
      {"dataset", CFAMC_OPTION_STRING, "\"fashion_mnist\"", "fashion_mnist, mnist, cifar10, cifar100 or stl10"},
      {"root", CFAMC_OPTION_STRING, "\"\"",
       "folder with the dataset's files; \"\" for the default (Fashion-MNIST: /usr/share/datasets/fashion-mnist)"},
      {"train_split", CFAMC_OPTION_STRING, "\"train\"", "the split trained on (STL-10: also \"train+unlabeled\")"},
      {"channels", CFAMC_OPTION_STRING, "\"keep\"", "\"keep\", or \"rgb\" to replicate grayscale images to three channels"},
      {"train_subset", CFAMC_OPTION_INT, "0", "use only the first N training images; 0: all"},
      {"test_subset", CFAMC_OPTION_INT, "0", "use only the first N test images; 0: all"},
  };
}

DataConfig data_config_from(const toml::table& t) {
  DataConfig c{};
  c.dataset = resolved_value<std::string>(t, "dataset");
  c.root = resolved_value<std::string>(t, "root");
  c.train_split = resolved_value<std::string>(t, "train_split");
  c.channels = resolved_value<std::string>(t, "channels");
  c.train_subset = resolved_value<int64_t>(t, "train_subset");
  c.test_subset = resolved_value<int64_t>(t, "test_subset");
  if (!is_known_dataset(c.dataset)) {
    fail(ExitCode::usage, "data.dataset: unknown dataset '" + c.dataset + "' (fashion_mnist, mnist, cifar10, cifar100, stl10)");
  }
  if (c.channels != "keep" && c.channels != "rgb") fail(ExitCode::usage, "data.channels: \"keep\" or \"rgb\"");
  if (c.train_subset < 0 || c.test_subset < 0) fail(ExitCode::usage, "data: subsets must not be negative");
  return c;
}

}  // namespace cfamc::host
