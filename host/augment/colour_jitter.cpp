#include "augment/colour_jitter.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>

#include <cfamc/transfer.hpp>

namespace cfamc::host {
namespace {

constexpr int64_t kParts = 4;  // brightness, contrast, saturation, hue; also the number of rounds
constexpr int64_t kHue = 3;

// Brightness, contrast and saturation are each a per-image blend x <- clamp(a x + (1 - a) reference) with
// reference 0, the mean luma or the pixel's luma. So each round is one map for the whole batch,
//   x <- clamp(a x + k luma(x) + m mean(luma(x))),
// with (a, k, m) = (b, 0, 0), (c, 0, 1 - c) or (s, 1 - s, 0) by the image's part in that round, and the
// identity (1, 0, 0) for hue (done separately) or a colour part on a 1-channel image.
// Returns double [rounds, 3, n]: (a, k, m) per round and image.
at::Tensor blend_coefficients(const ColourJitterDraw& draw, bool colour) {
  const at::Tensor factor = draw.factors.gather(1, draw.order);  // [n, rounds]: the factor each round uses
  const at::Tensor brightness = draw.order.eq(0), contrast = draw.order.eq(1);
  const at::Tensor saturation = colour ? draw.order.eq(2) : at::zeros_like(brightness);
  const at::Tensor a = at::where(brightness | contrast | saturation, factor, at::ones_like(factor));
  const at::Tensor k = at::where(saturation, 1 - factor, at::zeros_like(factor));
  const at::Tensor m = at::where(contrast, 1 - factor, at::zeros_like(factor));
  return at::stack({a.t(), k.t(), m.t()}, 1).contiguous();
}

// The images whose hue shift is not 0, grouped by the round in which they apply it.
struct HueGroups {
  at::Tensor images;  // int64 [h], round by round
  at::Tensor shifts;  // double [h], the same order
  std::array<int64_t, kParts> counts{};
};

HueGroups hue_groups(const ColourJitterDraw& draw, bool colour) {
  HueGroups groups;
  const at::Tensor shift = draw.factors.select(1, kHue);
  if (!colour) {
    groups.images = at::empty({0}, at::kLong);
    groups.shifts = at::empty({0}, at::kDouble);
    return groups;
  }
  const at::Tensor round = draw.order.eq(kHue).to(at::kLong).argmax(1);
  const at::Tensor shifted = shift.ne(0).nonzero().squeeze(1);
  const at::Tensor by_round = std::get<1>(round.index_select(0, shifted).sort(std::optional<bool>(true), /*dim=*/0));
  groups.images = shifted.index_select(0, by_round);
  groups.shifts = shift.index_select(0, groups.images);
  const at::Tensor counts = at::bincount(round.index_select(0, groups.images), {}, kParts);
  for (int64_t r = 0; r < kParts; ++r) groups.counts[r] = counts[r].item<int64_t>();  // CPU, no device sync
  return groups;
}

at::Tensor per_sample(const at::Tensor& v) { return v.view({-1, 1, 1, 1}); }

// One round's blend; `luma` and `mean` say whether any image needs k or m (known on the host).
at::Tensor blend(const at::Tensor& x, const at::Tensor& akm, bool luma, bool mean) {
  const at::Tensor a = per_sample(akm[0]);
  if (!luma && !mean) return (a * x).clamp_(0, 1);
  const at::Tensor gray = to_gray(x);
  at::Tensor offset = luma ? per_sample(akm[1]) * gray : at::Tensor();
  if (mean) {
    const at::Tensor shift = per_sample(akm[2]) * gray.mean({1, 2, 3}, true);
    offset = offset.defined() ? offset + shift : shift;
  }
  return at::addcmul(offset, a, x).clamp_(0, 1);
}

// RGB from hue (any real: only its fractional part counts), saturation and value planes [N, H, W], by the
// closed form c = v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6 and n = 5, 3, 1 for R, G, B:
// torchvision's six-sector table without building every sector.
at::Tensor rgb_from_hsv(const at::Tensor& h, const at::Tensor& s, const at::Tensor& v) {
  // Made on the device (a literal would be a blocking copy from the host).
  const at::Tensor n = at::arange(5, 0, -2, h.options()).view({1, 3, 1, 1});
  const at::Tensor k = at::add(n, h.unsqueeze(1), 6.0).remainder_(6.0);
  const at::Tensor ramp = at::minimum(k, 4.0 - k).clamp_(0, 1);
  const at::Tensor vs = (v * s).unsqueeze(1);
  return at::addcmul(v.unsqueeze(1), vs, ramp, -1.0);
}

// Hue, saturation and value planes [N, H, W] of an RGB batch, torchvision's _rgb2hsv.
std::array<at::Tensor, 3> hsv_planes(const at::Tensor& rgb) {
  const at::Tensor r = rgb.select(1, 0), g = rgb.select(1, 1), b = rgb.select(1, 2);
  const at::Tensor maxc = rgb.amax(1), minc = rgb.amin(1);
  const at::Tensor equal = maxc.eq(minc);
  const at::Tensor cr = maxc - minc;
  const at::Tensor s = cr / at::where(equal, at::ones_like(maxc), maxc);
  const at::Tensor d = at::where(equal, at::ones_like(cr), cr);
  // The hue sector of the largest channel (red first, then green), then the position inside it.
  const at::Tensor sector =
      at::where(maxc.eq(r), (g - b) / d, at::where(maxc.eq(g), (b - r) / d + 2.0, (r - g) / d + 4.0));
  const at::Tensor h = (sector / 6.0 + 1.0).fmod_(1.0);
  return {h, s, maxc};
}

at::Tensor adjust_hue(const at::Tensor& x, const at::Tensor& shift) {
  const auto [h, s, v] = hsv_planes(x);
  return rgb_from_hsv(h + shift.view({-1, 1, 1}), s, v);
}

}  // namespace

ColourJitterDraw draw_colour_jitter(int64_t n, const ViewRecipe& r, at::Generator& g) {
  const auto options = at::TensorOptions().dtype(at::kDouble);
  const auto uniform = [&](double low, double high) { return at::rand({n}, g, options) * (high - low) + low; };
  // The draws' order is part of the augmentation's reproducibility: apply, the three factors, hue, order.
  const at::Tensor apply = at::rand({n}, g, options).lt(r.jitter);
  const auto factor = [&](double v) {
    return at::where(apply, uniform(std::max(0.0, 1 - v), 1 + v), at::ones({n}, at::kDouble));
  };
  const at::Tensor brightness = factor(r.brightness), contrast = factor(r.contrast),
                   saturation = factor(r.saturation),
                   hue = at::where(apply, uniform(-r.hue, r.hue), at::zeros({n}, at::kDouble));
  const at::Tensor order = at::rand({n, kParts}, g).argsort(1, /*descending=*/false);
  return {apply, at::stack({brightness, contrast, saturation, hue}, 1), order};
}

at::Tensor apply_colour_jitter(const at::Tensor& images, const ColourJitterDraw& draw) {
  const int64_t n = images.size(0);
  const bool colour = images.size(1) == 3;
  const at::Tensor coefficients = blend_coefficients(draw, colour);  // [rounds, 3, n]
  const HueGroups hue = hue_groups(draw, colour);
  const int64_t shifted = hue.images.size(0);
  // Which rounds blend at all, and with luma or its mean, from the CPU copy.
  const at::Tensor blends = coefficients.select(1, 0).ne(1).any(1), lumas = coefficients.select(1, 1).ne(0).any(1),
                   means = coefficients.select(1, 2).ne(0).any(1);
  // One transfer of every parameter to the images' device.
  const at::Tensor packed =
      cfamc::on_device_of(images, at::cat({coefficients.flatten(), hue.shifts, hue.images.to(at::kDouble)}));
  const at::Tensor values = packed.narrow(0, 0, coefficients.numel() + shifted).to(images.scalar_type());
  const at::Tensor akm = values.narrow(0, 0, coefficients.numel()).view(coefficients.sizes());
  const at::Tensor shifts = values.narrow(0, coefficients.numel(), shifted);
  const at::Tensor indices = packed.narrow(0, coefficients.numel() + shifted, shifted).to(at::kLong);
  at::Tensor x = images;
  int64_t start = 0;
  for (int64_t round = 0; round < kParts; ++round) {
    if (blends[round].item<bool>()) {
      x = blend(x, akm[round], lumas[round].item<bool>(), means[round].item<bool>());
    }
    const int64_t count = hue.counts[round];
    if (count == 0) continue;
    const at::Tensor group = indices.narrow(0, start, count), shift = shifts.narrow(0, start, count);
    x = count == n ? adjust_hue(x, shift) : x.index_copy(0, group, adjust_hue(x.index_select(0, group), shift));
    start += count;
  }
  return x;
}

at::Tensor to_gray(const at::Tensor& x) {
  if (x.size(1) == 1) return x;
  return (0.299 * x.select(1, 0) + 0.587 * x.select(1, 1) + 0.114 * x.select(1, 2)).unsqueeze(1);
}

at::Tensor rgb_to_hsv(const at::Tensor& rgb) {
  const auto [h, s, v] = hsv_planes(rgb);
  return at::stack({h, s, v}, 1);
}

at::Tensor hsv_to_rgb(const at::Tensor& hsv) {
  return rgb_from_hsv(hsv.select(1, 0), hsv.select(1, 1), hsv.select(1, 2));
}

}  // namespace cfamc::host
