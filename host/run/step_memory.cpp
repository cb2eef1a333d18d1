#include "run/step_memory.hpp"

#include <ATen/DeviceAccelerator.h>
#include <ATen/ops/ones.h>
#include <c10/core/CPUAllocator.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <cstdio>
#include <fstream>
#include <functional>

#include "failure.hpp"
#include "log.hpp"

namespace cfamc::host {
namespace {

// LibTorch's CPU allocator, counting what it hands out while installed. Its pointers are "simple" (the
// context is the data), as parts of LibTorch require of a CPU allocator. It is never destroyed: tensors it
// allocated may outlive the probe, and their deleters come back here.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = inner_->allocate(n);
    void* data = inner.get();
    const c10::Device device = inner.device();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      held_.emplace(data, Held{std::move(inner), static_cast<int64_t>(n)});
      current_ += static_cast<int64_t>(n);
      peak_ = std::max(peak_, current_);
    }
    return {data, data, &release, device};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  // The bytes allocated now, making that the peak so far.
  int64_t reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_ = current_;
  }
  int64_t peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }
  static CountingAllocator& instance() {
    static auto* counting = new CountingAllocator(c10::GetCPUAllocator());
    return *counting;
  }

 private:
  struct Held {
    c10::DataPtr inner;
    int64_t bytes;
  };
  static void release(void* data) {
    CountingAllocator& self = instance();
    c10::DataPtr freed;  // destroyed after the lock is released
    std::lock_guard<std::mutex> lock(self.mutex_);
    auto it = self.held_.find(data);
    if (it == self.held_.end()) return;
    self.current_ -= it->second.bytes;
    freed = std::move(it->second.inner);
    self.held_.erase(it);
  }

  c10::Allocator* inner_;
  std::mutex mutex_;
  std::unordered_map<void*, Held> held_;
  int64_t current_ = 0, peak_ = 0;
};

// Bytes allocated at the peak of `body`, beyond what was allocated before it, on `device`.
int64_t peak_bytes_of(const c10::Device& device, const std::function<void()>& body) {
  if (device.is_cpu()) {
    CountingAllocator& counting = CountingAllocator::instance();
    constexpr uint8_t kPriority = 250;  // above LibTorch's own registration
    c10::Allocator* previous = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&counting, kPriority);
    const int64_t before = counting.reset_peak();
    body();
    c10::SetCPUAllocator(previous, kPriority);
    return counting.peak() - before;
  }
  at::accelerator::resetPeakStats(device.index());
  constexpr auto kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const int64_t before = at::accelerator::getDeviceStats(device.index()).allocated_bytes[kAll].current;
  body();
  return at::accelerator::getDeviceStats(device.index()).allocated_bytes[kAll].peak - before;
}

// Peak bytes of a forward and backward through `backbone` of `views` views of side `size`.
int64_t probe(Backbone& backbone, int64_t views, int64_t channels, int64_t size, const c10::Device& device,
              Precision precision) {
  return peak_bytes_of(device, [&] {
    const AutocastScope autocast(precision, device.type());
    const at::Tensor x = at::ones({views, channels, size, size}, at::TensorOptions().device(device)).requires_grad_(true);
    const at::Tensor features = backbone.forward(x, 0);
    torch::autograd::grad({features.sum()}, {x});
  });
}

// Bytes the device can still give: MemAvailable on the host, the free memory of a GPU.
int64_t available_bytes(const c10::Device& device) {
  if (!device.is_cpu()) return static_cast<int64_t>(at::accelerator::getMemoryInfo(device.index()).first);
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    int64_t kib = 0;
    meminfo >> kib;
    if (key == "MemAvailable:") return kib * 1024;
    meminfo.ignore(256, '\n');
  }
  return INT64_MAX;  // not Linux: nothing to compare with
}

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return text;
}

}  // namespace

void check_step_memory(Backbone& backbone, const std::vector<const ViewRecipe*>& groups, int64_t channels,
                       int64_t batch_size, const Compute& compute) {
  const std::string& device_name = compute.device;
  const c10::Device device(device_name);
  backbone.set_training(false);  // no running statistics change; training sets its own mode when it starts
  double needed = 0, fixed = 0;
  std::string largest;
  double largest_bytes = -1;
  for (const ViewRecipe* group : groups) {
    const int64_t two = probe(backbone, 2, channels, group->size, device, compute.precision);
    const int64_t four = probe(backbone, 4, channels, group->size, device, compute.precision);
    const double per_view = std::max<double>(four - two, 0) / 2 + 3.0 * 4 * channels * group->size * group->size;
    fixed = std::max<double>(fixed, two - 2 * per_view);
    const double bytes = per_view * static_cast<double>(batch_size * group->count);
    needed += bytes;
    if (bytes > largest_bytes) {
      largest_bytes = bytes;
      largest = group->name;
    }
  }
  needed += std::max(fixed, 0.0);
  const int64_t available = available_bytes(device);
  log(LogLevel::debug, "a training step needs about " + gib(needed) + "; " + gib(available) + " free on " + device_name);
  if (needed <= static_cast<double>(available)) return;
  fail(ExitCode::usage, "a training step needs about " + gib(needed) + " on " + device_name + " (estimated from the " +
                            "backbone on a few views), but only " + gib(available) + " is free; lower train.batch_size, views." +
                            largest + ".count or views." + largest + ".size");
}

}  // namespace cfamc::host
