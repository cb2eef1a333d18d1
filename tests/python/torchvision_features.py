"""Loads an encoder exported by `cfamc-host export` into torchvision's ResNet-18 with the CIFAR stem
(3x3 conv1, no max-pool, fc = Identity) with strict=True, and checks that its features on the probe's
images equal the features cfamc computed for them.

usage: torchvision_features.py ENCODER.safetensors PROBE.safetensors   (PROBE holds "x" and "features")
Exit 0 when the largest difference is below 1e-5 of the largest feature (the two compute in other memory
formats, so their sums round differently); prints both either way.
"""
import json
import sys

import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file


def cifar_resnet18(in_channels):
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.fc = torch.nn.Identity()
    return model


def main(encoder_file, probe_file):
    state = load_file(encoder_file)
    with safe_open(encoder_file, "pt") as f:
        meta = f.metadata()
    model = cifar_resnet18(state["conv1.weight"].shape[1])
    model.load_state_dict(state, strict=True)
    model.eval()
    probe = load_file(probe_file)
    x = probe["x"]
    mean, std = json.loads(meta["input_mean"]), json.loads(meta["input_std"])
    if mean:
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        features = model(x)
    difference = (features - probe["features"]).abs().max().item()
    scale = features.abs().max().item()
    print(f"format {meta['format']} backbone {meta['backbone']} bn_branch {meta['bn_branch']} "
          f"tensors {len(state)} max |difference| {difference:.3g} of max |feature| {scale:.3g}")
    return 0 if difference < 1e-5 * max(scale, 1.0) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
