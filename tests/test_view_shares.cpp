// Views of a share of the global batch (data-parallel training): each process's views of its images are
// exactly its rows of the whole batch's views, for every kind of transform, and its generator ends where a
// whole-batch call leaves it, so the next batch's draws agree too.
#include "torch_catch.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <string>
#include <vector>

#include "augment/views.hpp"
#include "failure.hpp"

using namespace cfamc::host;

namespace {

constexpr int64_t kBatch = 8;

at::Generator generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

ViewRecipe all_off(const std::string& name, int64_t size) {
  ViewRecipe r = view_recipe_defaults(name);
  r.size = size;
  r.crop = false;
  r.flip = r.jitter = r.grayscale = r.blur = r.solarize = 0;
  return r;
}

void jitter(ViewRecipe& r) {
  r.jitter = 0.8;
  r.brightness = r.contrast = r.saturation = 0.4;
  r.hue = 0.1;
}

// Between them every kind of transform, each with a probability that varies it across the batch's views.
std::vector<ViewRecipe> recipes() {
  ViewRecipe padded = all_off("padded", 28);  // AdvCL's weak view, with colour
  padded.padding = 4;
  padded.count = 2;
  padded.flip = 0.5;
  jitter(padded);
  padded.grayscale = 0.3;
  ViewRecipe resized_crop = view_recipe_defaults("resized_crop");  // RandomResizedCrop + flip
  resized_crop.count = 3;
  resized_crop.size = 16;
  jitter(resized_crop);
  resized_crop.blur = 0.5;
  resized_crop.solarize = 0.5;
  ViewRecipe resize_only = all_off("resize_only", 24);
  resize_only.count = 2;
  resize_only.flip = 0.5;
  resize_only.grayscale = 0.5;
  resize_only.blur = 0.5;
  resize_only.blur_sigma = {0.5, 1.5};
  resize_only.solarize = 0.5;
  return {padded, resized_crop, resize_only};
}

// The whole batch's views [count*kBatch, ...] made share by share, each share with its own generator of
// `seed` as each process has, put back in view-major order. Checks every share's generator state against
// the whole batch's `state`.
at::Tensor views_by_shares(const ViewRecipe& r, const at::Tensor& images, int64_t shares, uint64_t seed,
                           const at::Tensor& state) {
  const int64_t each = kBatch / shares;
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < shares; ++s) {
    auto g = generator(seed);
    const BatchShare share{s * each, (s + 1) * each, kBatch};
    const at::Tensor views = make_views(r, images.slice(0, share.begin, share.end), g, share);
    REQUIRE(views.size(0) == r.count * each);
    INFO("share " << s << " of " << shares);
    CHECK(torch::equal(g.get_state(), state));
    parts.push_back(views.view({r.count, each, views.size(1), views.size(2), views.size(3)}));
  }
  return torch::cat(parts, 1).flatten(0, 1);
}

}  // namespace

TEST_CASE("views of a batch share: the shares' views are the whole batch's, generator state included", "[augment][view_shares]") {
  const at::Tensor images = torch::randint(0, 256, {kBatch, 3, 32, 32}, torch::kUInt8);
  for (const ViewRecipe& r : recipes()) {
    auto g = generator(21);
    const at::Tensor whole = make_views(r, images, g);
    const at::Tensor state = g.get_state();
    for (const int64_t shares : {2, 4}) {
      INFO(r.name << ", " << shares << " shares");
      CHECK(torch::equal(views_by_shares(r, images, shares, 21, state), whole));
    }
    // The whole batch as its own share is the whole batch.
    auto again = generator(21);
    CHECK(torch::equal(make_views(r, images, again, BatchShare{0, kBatch, kBatch}), whole));
    // A share drawn as a batch of its own would not agree: the test can tell the rows apart.
    auto alone = generator(21);
    const at::Tensor first = make_views(r, images.slice(0, 0, kBatch / 2), alone);
    const at::Tensor first_rows =
        whole.view({r.count, kBatch, 3, r.size, r.size}).slice(1, 0, kBatch / 2).flatten(0, 1);
    CHECK_FALSE(torch::equal(first, first_rows));
  }
}

TEST_CASE("views of a batch share: a float share stays differentiable and matches the whole batch", "[augment][view_shares]") {
  const at::Tensor images = torch::rand({kBatch, 3, 32, 32});
  const ViewRecipe r = recipes()[1];  // every transform but the padded crop
  auto g = generator(22);
  const at::Tensor whole_input = images.clone().requires_grad_(true);
  const at::Tensor whole = make_views(r, whole_input, g);
  // A weighting that differs per view row, so the gradient depends on which rows an image's views are.
  const at::Tensor weights = torch::rand({r.count * kBatch, 1, 1, 1});
  (whole * weights).sum().backward();
  const int64_t each = kBatch / 4;
  for (int64_t s = 0; s < 4; ++s) {
    INFO("share " << s);
    auto share_g = generator(22);
    const BatchShare share{s * each, (s + 1) * each, kBatch};
    const at::Tensor input = images.slice(0, share.begin, share.end).clone().requires_grad_(true);
    const at::Tensor views = make_views(r, input, share_g, share);
    const at::Tensor rows =
        (torch::arange(r.count).unsqueeze(1) * kBatch + torch::arange(share.begin, share.end)).flatten();
    CHECK(torch::equal(views.detach(), whole.detach().index_select(0, rows)));
    (views * weights.index_select(0, rows)).sum().backward();
    REQUIRE(input.grad().defined());
    CHECK(input.grad().abs().sum().item<double>() > 0);
    // Summation order in the backward passes differs with the batch size: equal to float rounding.
    CHECK(torch::allclose(input.grad(), whole_input.grad().slice(0, share.begin, share.end), 1e-5, 1e-6));
  }
}

TEST_CASE("views of a batch share: a share that does not hold its images is refused", "[augment][view_shares]") {
  const ViewRecipe r = recipes()[0];
  const at::Tensor images = torch::randint(0, 256, {2, 3, 32, 32}, torch::kUInt8);
  auto g = generator(23);
  for (const BatchShare share : {BatchShare{0, 4, 8}, BatchShare{7, 9, 8}, BatchShare{-1, 1, 8}}) {
    INFO(share.begin << ", " << share.end);
    CHECK_THROWS_AS(make_views(r, images, g, share), Failure);
  }
}
