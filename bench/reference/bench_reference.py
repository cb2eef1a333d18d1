"""Times the reference Python pipeline of one CF-AMC-SSL training step: PIL crops in DataLoader workers,
torchvision ResNet-18 (CIFAR stem) + EMP-SSL heads, fp32, free adversarial training (m replays), LARS-wrapped
Nesterov SGD. A step is one minibatch with all its replays (as bench/train_step.cpp counts it), so
images/s = batch x timed steps / seconds. The last line is `RESULT {json}`.

    python bench/reference/bench_reference.py [--steps 5] [--warmup 1] [--batch 8] [--workers 2] [--threads N]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree for the modules below
from crops import SyntheticCrops, patch_major
from emp_ssl_loss import emp_ssl_loss
from free_training import FreeTraining
from lars import lars_sgd
from model import EmpSslNetwork


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch", type=positive, default=8, help="images per step")
    p.add_argument("--crops", type=positive, default=16, help="crops per image")
    p.add_argument("--replays", type=positive, default=3, help="free training's m")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--threads", type=positive, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--images", type=positive, default=1000, help="synthetic images in the dataset")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--full-logdet", action="store_true",
                   help="the coding rate as EMP-SSL's code writes it (a d x d logdet per crop), not the B x B form")
    args = p.parse_args(argv)
    if args.warmup < 0 or args.workers < 0:
        p.error("--warmup and --workers must not be negative")
    if args.crops < 2:
        p.error("--crops must be at least 2 (the invariance compares crops)")
    return args


def endless_batches(loader):
    while True:
        yield from loader


def build(args, device):
    dataset = SyntheticCrops(max(args.images, args.batch), args.crops)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         pin_memory=device.type == "cuda")
    network = EmpSslNetwork().to(device).train()
    optimizer = lars_sgd(network.parameters(), lr=0.3, momentum=0.9, nesterov=True, weight_decay=1e-4, eta=0.005)
    loss = lambda z: emp_ssl_loss(z, args.crops, eps=0.2, full_logdet=args.full_logdet)
    return endless_batches(loader), FreeTraining(network, loss, optimizer, 8 / 255, 0.01, args.replays)


def synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(args, device, batches, training):
    """Seconds of the timed steps, the part of them spent waiting for crops, and the last loss."""
    waiting, loss = 0.0, float("nan")
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            synchronise(device)
            start, waiting = time.perf_counter(), 0.0
        asked = time.perf_counter()
        crops = patch_major(next(batches)).to(device, non_blocking=True)
        waiting += time.perf_counter() - asked
        loss = training.minibatch(crops).item()
    synchronise(device)
    return time.perf_counter() - start, waiting, loss


def main(argv):
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    batches, training = build(args, device)
    seconds, waiting, loss = time_steps(args, device, batches, training)
    if loss != loss or loss in (float("inf"), float("-inf")):
        sys.exit("reference: the loss became NaN or infinite")
    result = {
        "images_per_s": args.batch * args.steps / seconds, "step_s": seconds / args.steps,
        "data_wait_share": waiting / seconds, "loss": loss, "steps": args.steps, "warmup": args.warmup,
        "batch": args.batch, "crops": args.crops, "replays": args.replays, "workers": args.workers,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
        "torch_library": os.path.dirname(torch.__file__),
    }
    print(f"reference on {device}: step {result['step_s']:.4f} s  |  {result['images_per_s']:.2f} images/s  "
          f"({100 * result['data_wait_share']:.1f}% waiting for crops), torch {torch.__version__}, "
          f"{result['threads']} threads, {args.workers} workers")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
