// Random streams that checkpoints keep, for plugins written with LibTorch (header-only, part of the public SDK).
// A plugin that draws random numbers during training (an attack's random start, an objective's per-batch
// labels) holds a CheckpointedGenerator instead of a bare at::Generator, so that a run interrupted and resumed
// draws exactly what the uninterrupted run would have.
#pragma once

#include <cfamc/plugin.hpp>
#include <torch/torch.h>

#include <memory>
#include <utility>

namespace cfamc {

// A CPU random stream whose state is a buffer of its owner: register it as a submodule of the component,
// `rng_ = register_module("rng", std::make_shared<cfamc::CheckpointedGenerator>(ctx.generator()))`, and
// its state is the component's tensor "rng.state", which the host saves in every checkpoint and restores on
// --resume. The state stays on the CPU whatever device the component moves to, so keeping it never waits on
// a device. Draw only through a lease: it starts from the buffer (as a resume may have restored it) and
// writes the advanced state back when it ends.
class CheckpointedGenerator : public torch::nn::Module {
 public:
  explicit CheckpointedGenerator(at::Generator generator) : generator_(std::move(generator)) {
    state_ = register_buffer("state", generator_.get_state());
  }

  class Lease {
   public:
    explicit Lease(CheckpointedGenerator& owner) : owner_(owner) {
      // A second lease would restart from the buffer and draw the first one's numbers again.
      if (owner_.leased_) throw Error(CFAMC_ERROR_INTERNAL, "a CheckpointedGenerator was leased twice at once");
      owner_.generator_.set_state(owner_.state_);
      owner_.leased_ = true;
    }
    ~Lease() {
      torch::NoGradGuard no_grad;
      owner_.state_.copy_(owner_.generator_.get_state());
      owner_.leased_ = false;
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    at::Generator& operator*() const { return owner_.generator_; }

   private:
    CheckpointedGenerator& owner_;
  };

  // The generator, for as long as the returned lease lives.
  Lease lease() { return Lease(*this); }

  // A CPU generator's state is a CPU tensor: moving the component leaves it where it is.
  void to(torch::Device, torch::Dtype, bool) override {}
  void to(torch::Dtype, bool) override {}
  void to(torch::Device, bool) override {}

 private:
  at::Generator generator_;
  at::Tensor state_;
  bool leased_ = false;
};

}  // namespace cfamc
