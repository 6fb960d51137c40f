"""Models defined outside the library and the registry, as a user's own script would define them."""
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.conv2(self.act(self.bn1(self.conv1(x))))


class SmallCNN(nn.Module):
    """Grouped conv, residual add, SiLU, adaptive pooling and a Linear classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(Residual(16, groups=4), Residual(16, groups=16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def settled(model: nn.Module, size: int = 32, seed: int = 0) -> nn.Module:
    """``model`` with BatchNorm statistics of random images (as after training) and in eval mode,
    so that its activations have the scale of a trained network's."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, size, size, generator=generator))
    return model.eval()


def imagenet_small_cnn() -> nn.Module:
    """A factory for ``-a model_factories:imagenet_small_cnn``: 1000 ImageNet classes."""
    return settled(SmallCNN(classes=1000), size=64)

