"""ResNet-18 (torchvision, CIFAR stem) with EMP-SSL's heads, as plugins/objectives/emp_ssl builds them:
pre_feature = Linear(512, 4096) + BN1d + ReLU; projection = Linear(4096, 4096) + BN1d + ReLU + Linear(4096, 1024);
the embedding is L2-normalised."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18


def cifar_resnet18():
    """torchvision's resnet18 with the CIFAR stem: conv1 3x3 stride 1 without bias, no max-pool, no classifier."""
    net = resnet18()
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


class EmpSslNetwork(nn.Module):
    def __init__(self, pre_feature_dim=4096, hidden_dim=4096, projection_dim=1024):
        super().__init__()
        self.backbone = cifar_resnet18()
        self.pre_feature = nn.Sequential(nn.Linear(512, pre_feature_dim), nn.BatchNorm1d(pre_feature_dim), nn.ReLU())
        self.projection = nn.Sequential(nn.Linear(pre_feature_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                        nn.Linear(hidden_dim, projection_dim))

    def forward(self, x):
        return F.normalize(self.projection(self.pre_feature(self.backbone(x))), dim=1)
