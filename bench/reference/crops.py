"""The crops of CF-AMC-SSL, made as the Python papers make them: per crop, by torchvision's PIL transforms,
in DataLoader worker processes (EMP-SSL's ContrastiveLearningViewGenerator with the crop-based recipe of
configs/cfamc/cifar10_cfamc_ssl.toml [views.crops]; no normalisation, CF-AMC-SSL trains on [0,1] pixels)."""
import random

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms


class RandomPilBlur:
    """Gaussian blur with probability p and sigma ~ U(0.1, 2), by PIL's own filter, as EMP-SSL's GBlur."""

    def __init__(self, p, sigma=(0.1, 2.0)):
        self.p, self.sigma = p, sigma

    def __call__(self, image):
        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(random.uniform(*self.sigma)))


def crop_transform(size=32):
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.2)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        RandomPilBlur(p=0.1),
        transforms.RandomSolarize(threshold=128, p=0.1),  # threshold .5 of the uint8 range
        transforms.ToTensor(),
    ])


class SyntheticCrops(torch.utils.data.Dataset):
    """Synthetic uint8 HxWx3 images held as a numpy array (as torchvision's CIFAR10 holds its data), turned
    into a PIL image per access; an item is the list of `crops` augmented crops of one image."""

    def __init__(self, count, crops, size=32, seed=0):
        self.images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        self.crops = crops
        self.transform = crop_transform(size)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index])
        return [self.transform(image) for _ in range(self.crops)]


def patch_major(batch):
    """The collated list of `crops` tensors [B, C, S, S] as one crop batch [crops * B, C, S, S] (crop-major)."""
    return torch.cat(batch, dim=0)
