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
  DataConfig c;
  c.dataset = t["dataset"].value_or(c.dataset);
  c.root = t["root"].value_or(std::string());
  c.train_split = t["train_split"].value_or(c.train_split);
  c.channels = t["channels"].value_or(c.channels);
  c.train_subset = t["train_subset"].value_or(int64_t{0});
  c.test_subset = t["test_subset"].value_or(int64_t{0});
  if (!is_known_dataset(c.dataset)) {
    fail(ExitCode::usage, "data.dataset: unknown dataset '" + c.dataset + "' (fashion_mnist, mnist, cifar10, cifar100, stl10)");
  }
  if (c.channels != "keep" && c.channels != "rgb") fail(ExitCode::usage, "data.channels: \"keep\" or \"rgb\"");
  if (c.train_subset < 0 || c.test_subset < 0) fail(ExitCode::usage, "data: subsets must not be negative");
  return c;
}

}  // namespace cfamc::host
