// On-device multi-view augmentation: shapes and ranges, identity when every transform is off, crop boxes
// that follow the configured distribution, probabilities honoured, determinism; the padded crop (RandomCrop
// with padding) exact, spread over every offset, and refused where contradictory or too large; colour jitter
// equal to a one-image-at-a-time replay of its draws, and HSV conversions equal to torchvision's.
#include "torch_catch.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <functional>
#include <string>
#include <vector>

#include "augment/colour_jitter.hpp"
#include "augment/views.hpp"
#include "failure.hpp"

using namespace cfamc::host;
using Catch::Matchers::Contains;

namespace {

at::Generator generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

ViewRecipe all_off(int64_t size) {
  ViewRecipe r = view_recipe_defaults("test");
  r.name = "test";
  r.size = size;
  r.crop = false;
  r.flip = r.jitter = r.grayscale = r.blur = r.solarize = 0;
  return r;
}

at::Tensor random_images(int64_t n, int64_t c, int64_t side) {
  return torch::randint(0, 256, {n, c, side, side}, torch::kUInt8);
}

// AdvCL's weak view: RandomCrop(size, padding) and the flip, nothing else.
ViewRecipe padded_crop(int64_t size, int64_t padding) {
  ViewRecipe r = all_off(size);
  r.padding = padding;
  return r;
}

std::string failure_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Failure& failure) {
    CHECK(failure.code() == ExitCode::usage);
    return failure.what();
  }
  return "(no failure)";
}

// Where `view` [C, size, size] sits in the zero-padded `image` [C, H, W]: 0 none, 1 a window at some offset,
// 2 the mirror of one (a flipped view). Every offset of the padded image is tried.
int match_in_padded(const at::Tensor& view, const at::Tensor& image, int64_t padding) {
  const int64_t size = view.size(1);
  const at::Tensor padded = at::constant_pad_nd(image, {padding, padding, padding, padding}, 0);
  const at::Tensor windows = padded.unfold(1, size, 1).unfold(2, size, 1);  // [C, oy, ox, size, size]
  const auto found = [&](const at::Tensor& v) {
    return (windows == v.unsqueeze(1).unsqueeze(1)).all(4).all(3).all(0).any().item<bool>();
  };
  if (found(view)) return 1;
  return found(view.flip({2})) ? 2 : 0;
}

// torchvision's _rgb2hsv as written there, on [N, 3, H, W].
at::Tensor torchvision_rgb2hsv(const at::Tensor& rgb) {
  const at::Tensor r = rgb.select(1, 0), g = rgb.select(1, 1), b = rgb.select(1, 2);
  const at::Tensor maxc = std::get<0>(rgb.max(1)), minc = std::get<0>(rgb.min(1));
  const at::Tensor equal = maxc.eq(minc), cr = maxc - minc, ones = torch::ones_like(maxc);
  const at::Tensor s = cr / torch::where(equal, ones, maxc);
  const at::Tensor divisor = torch::where(equal, ones, cr);
  const at::Tensor rc = (maxc - r) / divisor, gc = (maxc - g) / divisor, bc = (maxc - b) / divisor;
  const at::Tensor hr = maxc.eq(r) * (bc - gc);
  const at::Tensor hg = (maxc.eq(g) & maxc.ne(r)) * (2.0 + rc - bc);
  const at::Tensor hb = (maxc.ne(g) & maxc.ne(r)) * (4.0 + gc - rc);
  return torch::stack({((hr + hg + hb) / 6.0 + 1.0).remainder(1.0), s, maxc}, 1);
}

// torchvision's _hsv2rgb as written there: the six-sector table.
at::Tensor torchvision_hsv2rgb(const at::Tensor& hsv) {
  const at::Tensor h = hsv.select(1, 0), s = hsv.select(1, 1), v = hsv.select(1, 2);
  const at::Tensor i = (h * 6.0).floor(), f = h * 6.0 - i;
  const at::Tensor sector = i.to(torch::kInt).remainder(6);
  const at::Tensor p = (v * (1.0 - s)).clamp(0, 1), q = (v * (1.0 - s * f)).clamp(0, 1),
                   t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1);
  const at::Tensor mask = sector.unsqueeze(1).eq(torch::arange(6, sector.options()).view({1, 6, 1, 1}));
  const at::Tensor table = torch::stack({torch::stack({v, q, p, p, t, v}, 1), torch::stack({t, v, v, q, p, p}, 1),
                                         torch::stack({p, p, t, v, v, q}, 1)}, 1);
  return (mask.unsqueeze(1).to(hsv.scalar_type()) * table).sum(2);
}

at::Tensor luma(const at::Tensor& x) {
  if (x.size(1) == 1) return x;
  return (0.299 * x.select(1, 0) + 0.587 * x.select(1, 1) + 0.114 * x.select(1, 2)).unsqueeze(1);
}

// torchvision's ColorJitter replayed one image at a time from the batch's draws: each image's parts in its
// order, each once (colour parts only on 3-channel images).
at::Tensor jitter_one_by_one(const at::Tensor& x, const ColourJitterDraw& draw) {
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < x.size(0); ++i) {
    at::Tensor image = x.slice(0, i, i + 1);
    for (int64_t round = 0; round < 4; ++round) {
      const int64_t part = draw.order[i][round].item<int64_t>();
      const double f = draw.factors[i][part].item<double>();
      if (part == 0) image = (f * image).clamp(0, 1);
      if (part == 1) image = (f * image + (1 - f) * luma(image).mean()).clamp(0, 1);
      if (x.size(1) == 1) continue;
      if (part == 2) image = (f * image + (1 - f) * luma(image)).clamp(0, 1);
      if (part == 3) {
        const at::Tensor hsv = torchvision_rgb2hsv(image);
        hsv.select(1, 0).add_(f).remainder_(1.0);
        image = torchvision_hsv2rgb(hsv);
      }
    }
    out.push_back(image);
  }
  return torch::cat(out);
}

ViewRecipe jitter_only(double probability) {
  ViewRecipe r = all_off(8);
  r.jitter = probability;
  r.brightness = r.contrast = r.saturation = 0.4;
  r.hue = 0.2;
  return r;
}

}  // namespace

TEST_CASE("views: shapes, range, view-major layout", "[augment]") {
  ViewRecipe r = view_recipe_defaults("test");  // EMP-SSL's crop recipe with every transform on
  r.count = 3;
  r.size = 16;
  r.blur = 0.5;
  r.solarize = 0.5;
  auto g = generator(1);
  const at::Tensor views = make_views(r, random_images(5, 3, 32), g);
  REQUIRE(views.sizes() == at::IntArrayRef({15, 3, 16, 16}));
  CHECK(views.scalar_type() == at::kFloat);
  CHECK(views.min().item<double>() >= 0);
  CHECK(views.max().item<double>() <= 1);
  CHECK(torch::isfinite(views).all().item<bool>());
}

TEST_CASE("views: every transform off is the identity", "[augment]") {
  auto g = generator(2);
  const at::Tensor images = random_images(4, 3, 8);
  ViewRecipe r = all_off(8);
  r.count = 2;
  const at::Tensor views = make_views(r, images, g);
  const at::Tensor expected = images.to(torch::kFloat).div(255.0);
  CHECK(torch::equal(views.slice(0, 0, 4), expected));
  CHECK(torch::equal(views.slice(0, 4, 8), expected));
  // A crop of the whole image at the same size resamples exactly onto the pixel centres.
  ViewRecipe whole = all_off(8);
  whole.crop = true;
  whole.scale = {1.0, 1.0};
  whole.ratio = {1.0, 1.0};
  CHECK(torch::allclose(make_views(whole, images, g), expected, 1e-5, 1e-5));
}

TEST_CASE("crop boxes follow the configured scale and ratio", "[augment]") {
  auto g = generator(3);
  SECTION("a fixed box size") {
    const at::Tensor boxes = sample_crop_boxes(32, 32, 1000, {0.25, 0.25}, {1.0, 1.0}, g);
    CHECK((boxes.select(1, 2) == 16).all().item<bool>());
    CHECK((boxes.select(1, 3) == 16).all().item<bool>());
    CHECK((boxes.select(1, 0) + 16 <= 32).all().item<bool>());
    CHECK(boxes.select(1, 0).min().item<int64_t>() == 0);
    CHECK(boxes.select(1, 0).max().item<int64_t>() == 16);  // every position reachable
  }
  SECTION("scale (0.08, 1) and ratio (3/4, 4/3) as torchvision samples them") {
    const int64_t n = 20000;
    const at::Tensor boxes = sample_crop_boxes(224, 224, n, {0.08, 1.0}, {3.0 / 4, 4.0 / 3}, g).to(torch::kDouble);
    const at::Tensor area = boxes.select(1, 2) * boxes.select(1, 3) / (224.0 * 224.0);
    const at::Tensor log_ratio = (boxes.select(1, 3) / boxes.select(1, 2)).log();
    // Rounding to whole pixels blurs the edges a little.
    CHECK(area.min().item<double>() >= 0.075);
    CHECK(area.max().item<double>() <= 1.0);
    CHECK(log_ratio.abs().max().item<double>() <= std::log(4.0 / 3) + 0.02);
    // Reference figures from a direct simulation of torchvision's sampler (200000 boxes): large areas with
    // a non-square ratio overflow and are redrawn, so the mean area is 0.479, below the uniform 0.54, and
    // 23.1% of the boxes have a log ratio above half the log range.
    CHECK(area.mean().item<double>() == Approx(0.479).margin(0.01));
    CHECK(log_ratio.mean().item<double>() == Approx(0.0).margin(0.01));
    const double half_range = std::log(4.0 / 3) / 2;
    CHECK((log_ratio > half_range).to(torch::kDouble).mean().item<double>() == Approx(0.231).margin(0.015));
  }
  SECTION("an impossible ratio falls back to the central crop") {
    const at::Tensor boxes = sample_crop_boxes(10, 40, 50, {0.99, 1.0}, {1.0, 1.0}, g);
    CHECK((boxes.select(1, 2) == 10).all().item<bool>());
    CHECK((boxes.select(1, 3) == 10).all().item<bool>());
    CHECK((boxes.select(1, 1) == 15).all().item<bool>());
  }
}

TEST_CASE("transform probabilities are honoured", "[augment]") {
  auto g = generator(4);
  const int64_t n = 4000;
  // A left-dark, right-bright image: a flipped view has its bright half on the left.
  at::Tensor images = torch::zeros({n, 1, 4, 4}, torch::kUInt8);
  images.slice(3, 2, 4).fill_(255);
  ViewRecipe flip = all_off(4);
  flip.flip = 0.3;
  const at::Tensor flipped = make_views(flip, images, g).select(1, 0).select(1, 0).select(1, 0).gt(0.5);
  CHECK(flipped.to(torch::kDouble).mean().item<double>() == Approx(0.3).margin(0.03));

  ViewRecipe solarize = all_off(4);
  solarize.solarize = 0.25;
  const at::Tensor white = torch::full({n, 1, 4, 4}, 255, torch::kUInt8);
  const at::Tensor inverted = make_views(solarize, white, g).amax({1, 2, 3}).lt(0.5);
  CHECK(inverted.to(torch::kDouble).mean().item<double>() == Approx(0.25).margin(0.03));

  ViewRecipe gray = all_off(4);
  gray.grayscale = 0.5;
  const at::Tensor colour = random_images(n, 3, 4);
  const at::Tensor out = make_views(gray, colour, g);
  const at::Tensor is_gray = (out.select(1, 0) == out.select(1, 1)).all(2).all(1) & (out.select(1, 1) == out.select(1, 2)).all(2).all(1);
  CHECK(is_gray.to(torch::kDouble).mean().item<double>() == Approx(0.5).margin(0.03));
}

TEST_CASE("colour jitter keeps pixels in range and changes colour images", "[augment]") {
  auto g = generator(5);
  ViewRecipe jitter = all_off(8);
  jitter.jitter = 1.0;
  jitter.brightness = jitter.contrast = jitter.saturation = 0.4;
  jitter.hue = 0.1;
  const at::Tensor images = random_images(64, 3, 8);
  const at::Tensor out = make_views(jitter, images, g);
  CHECK(out.min().item<double>() >= 0);
  CHECK(out.max().item<double>() <= 1);
  CHECK_FALSE(torch::allclose(out, images.to(torch::kFloat) / 255));
}

TEST_CASE("RGB to HSV and back is the identity", "[augment]") {
  const at::Tensor rgb = torch::rand({8, 3, 5, 5});
  CHECK(torch::allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, 1e-5, 1e-5));
  // Pure red is hue 0, pure green 1/3.
  const at::Tensor pure = torch::tensor({1.f, 0.f, 0.f, 0.f, 1.f, 0.f}).view({2, 3, 1, 1});
  const at::Tensor hsv = rgb_to_hsv(pure);
  CHECK(hsv[0][0].item<double>() == Approx(0.0));
  CHECK(hsv[1][0].item<double>() == Approx(1.0 / 3));
}

TEST_CASE("blur spreads an impulse symmetrically and keeps its mass", "[augment]") {
  auto g = generator(6);
  ViewRecipe blur = all_off(9);
  blur.blur = 1.0;
  blur.blur_sigma = {1.0, 1.0};
  at::Tensor impulse = torch::zeros({1, 1, 9, 9}, torch::kUInt8);
  impulse[0][0][4][4] = 255;
  const at::Tensor out = make_views(blur, impulse, g)[0][0];
  CHECK(out.sum().item<double>() == Approx(1.0).margin(1e-4));
  CHECK(out[4][4].item<double>() < 0.5);
  CHECK(out[4][3].item<double>() == Approx(out[4][5].item<double>()));
  CHECK(out[3][4].item<double>() == Approx(out[4][3].item<double>()));
}

TEST_CASE("the same generator state gives the same views", "[augment]") {
  ViewRecipe r = view_recipe_defaults("test");
  r.count = 2;
  r.size = 12;
  r.blur = 0.5;
  const at::Tensor images = random_images(6, 3, 16);
  auto a = generator(9), b = generator(9), c = generator(10);
  const at::Tensor va = make_views(r, images, a);
  CHECK(torch::equal(va, make_views(r, images, b)));
  CHECK_FALSE(torch::equal(va, make_views(r, images, c)));
}

TEST_CASE("padded crop: every view is an exact window of its zero-padded image", "[augment]") {
  const auto check = [](int64_t size, int64_t padding, double flip) {
    ViewRecipe r = padded_crop(size, padding);
    r.count = 2;
    r.flip = flip;
    auto g = generator(11);
    const at::Tensor images = random_images(6, 3, 32);
    const at::Tensor views = make_views(r, images, g);
    REQUIRE(views.sizes() == at::IntArrayRef({12, 3, size, size}));
    const at::Tensor expected = images.to(torch::kFloat).div(255.0);  // make_views' own scaling
    int flipped = 0;
    for (int64_t k = 0; k < views.size(0); ++k) {
      INFO("view " << k << ", size " << size << ", padding " << padding);
      const int where = match_in_padded(views[k], expected[k % 6], padding);
      REQUIRE(where != 0);
      if (flip == 0) CHECK(where == 1);
      flipped += where == 2;
    }
    if (flip > 0) CHECK(flipped > 0);
  };
  check(32, 4, 0.0);
  check(28, 4, 0.0);
  check(32, 4, 0.5);  // the flip mirrors the window, as RandomCrop then RandomHorizontalFlip does
}

TEST_CASE("padded crop: offsets cover every position, corners included, centred on the padding", "[augment]") {
  // Each pixel holds its own position, (1 + 32*row + col) / 1024, exactly representable and never 0. The
  // view's centre pixel (16, 16) always lies inside the image, at row top + 12, column left + 12.
  const int64_t n = 4000, padding = 4;
  const at::Tensor position = (at::arange(1024, torch::kFloat) + 1).div(1024).view({1, 1, 32, 32});
  auto g = generator(12);
  const at::Tensor views = make_views(padded_crop(32, padding), position.expand({n, 1, 32, 32}), g);
  const at::Tensor centre = (views.select(1, 0).select(1, 16).select(1, 16) * 1024 - 1).round().to(torch::kLong);
  const at::Tensor top = centre.div(32, "floor") - 12, left = centre.remainder(32) - 12;
  for (const at::Tensor& offset : {top, left}) {
    CHECK(offset.min().item<int64_t>() == 0);
    CHECK(offset.max().item<int64_t>() == 2 * padding);
    CHECK(offset.to(torch::kDouble).mean().item<double>() == Approx(padding).margin(0.15));
    // Uniform over the 9 positions: each about 1/9 of the draws.
    const at::Tensor counts = at::bincount(offset, {}, 2 * padding + 1).to(torch::kDouble) / n;
    CHECK(counts.min().item<double>() > 0.08);
    CHECK(counts.max().item<double>() < 0.145);
  }
}

TEST_CASE("padded crop: the same generator state gives the same views", "[augment]") {
  ViewRecipe r = padded_crop(28, 4);
  r.count = 2;
  r.flip = 0.5;
  const at::Tensor images = random_images(8, 3, 32);
  auto a = generator(13), b = generator(13), c = generator(14);
  const at::Tensor va = make_views(r, images, a);
  CHECK(torch::equal(va, make_views(r, images, b)));
  CHECK_FALSE(torch::equal(va, make_views(r, images, c)));
}

TEST_CASE("padded crop: padding with crop = true, or a window larger than the padded image, is refused", "[augment]") {
  const auto recipe = [](const char* text) {
    return view_recipe_from("weak", resolve_options(toml::parse(text), view_recipe_schema(), "views.weak", "run.toml"));
  };
  CHECK(recipe("crop = false\npadding = 4").padding == 4);
  CHECK(view_recipe_defaults("weak").padding == 0);
  const std::string both = failure_of([&] { recipe("padding = 4"); });  // crop defaults to true
  CHECK_THAT(both, Contains("views.weak.padding") && Contains("views.weak.crop") && Contains("crop = false"));
  CHECK_THAT(failure_of([&] { recipe("crop = false\npadding = -1"); }), Contains("views.weak.padding"));

  ViewRecipe large = padded_crop(41, 4);
  large.name = "weak";
  auto g = generator(15);
  const std::string too_large = failure_of([&] { make_views(large, random_images(2, 3, 32), g); });
  CHECK_THAT(too_large, Contains("views.weak.size") && Contains("views.weak.padding"));
  large.size = 40;  // exactly the padded image: the one window at offset 0
  const at::Tensor whole = make_views(large, random_images(2, 3, 32), g);
  CHECK(whole.sizes() == at::IntArrayRef({2, 3, 40, 40}));
}


TEST_CASE("HSV conversions equal torchvision's", "[augment]") {
  const at::Tensor rgb = torch::rand({4, 3, 9, 9});
  CHECK(torch::allclose(rgb_to_hsv(rgb), torchvision_rgb2hsv(rgb), 1e-5, 1e-5));
  const at::Tensor hsv = torch::rand({4, 3, 9, 9});
  CHECK(torch::allclose(hsv_to_rgb(hsv), torchvision_hsv2rgb(hsv), 1e-5, 1e-5));
}

TEST_CASE("colour jitter applies each image's parts once, in its own order", "[augment]") {
  const ViewRecipe r = jitter_only(1.0);
  auto g = generator(16);
  const int64_t n = 48;
  const ColourJitterDraw draw = draw_colour_jitter(n, r, g);
  SECTION("colour images") {
    const at::Tensor x = torch::rand({n, 3, 6, 6});
    const at::Tensor out = apply_colour_jitter(x, draw);
    CHECK(torch::allclose(out, jitter_one_by_one(x, draw), 1e-5, 1e-5));
    // The replay is sensitive to the order: one fixed order for every image gives other images.
    ColourJitterDraw fixed = draw;
    fixed.order = torch::arange(4).expand({n, 4});
    CHECK((out - jitter_one_by_one(x, fixed)).abs().max().item<double>() > 1e-2);
    // colour_jitter draws then applies.
    auto again = generator(16);
    CHECK(torch::equal(colour_jitter(x, r, again), out));
  }
  SECTION("1-channel images: brightness and contrast only") {
    const at::Tensor x = torch::rand({n, 1, 6, 6});
    CHECK(torch::allclose(apply_colour_jitter(x, draw), jitter_one_by_one(x, draw), 1e-5, 1e-5));
  }
}

TEST_CASE("colour jitter leaves an image unchanged where its apply draw is false", "[augment]") {
  auto g = generator(17);
  const int64_t n = 64;
  const ColourJitterDraw draw = draw_colour_jitter(n, jitter_only(0.5), g);
  const at::Tensor applied = draw.apply;
  REQUIRE(applied.any().item<bool>());
  REQUIRE_FALSE(applied.all().item<bool>());
  const at::Tensor x = torch::rand({n, 3, 6, 6});
  const at::Tensor out = apply_colour_jitter(x, draw);
  CHECK(torch::equal(out.index({~applied}), x.index({~applied})));
  const at::Tensor change = (out - x).abs().amax({1, 2, 3});
  CHECK(change.index({applied}).min().item<double>() > 0);
}

TEST_CASE("colour jitter orders are a uniform random permutation per image", "[augment]") {
  auto g = generator(18);
  const int64_t n = 4000;
  const at::Tensor order = draw_colour_jitter(n, jitter_only(0.8), g).order;
  REQUIRE(order.sizes() == at::IntArrayRef({n, 4}));
  CHECK(torch::equal(std::get<0>(order.sort(1)), torch::arange(4).expand({n, 4})));
  const at::Tensor code = (order * torch::tensor({64, 16, 4, 1})).sum(1);
  CHECK(std::get<0>(at::_unique(code)).size(0) == 24);  // every one of the 4! orders occurs
  for (int64_t part = 0; part < 4; ++part) {
    // Each part lands in each round about a quarter of the time.
    const at::Tensor rounds = at::bincount(order.eq(part).to(torch::kLong).argmax(1), {}, 4).to(torch::kDouble) / n;
    CHECK(rounds.min().item<double>() > 0.22);
    CHECK(rounds.max().item<double>() < 0.28);
  }
}
