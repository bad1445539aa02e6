"""The data layer: datamodules behind one contract (base.BaseDataModule). The classes are exported
here because configs, and the data config saved in every checkpoint, name them as vae_cli.data.<Class>."""

from .base import BaseDataModule, Feed
from .image_folder import ImageFolder
from .in_memory import Digits, InMemoryDataModule
from .torchvision_sets import CIFAR10, DEBIAN_FASHION_MNIST, MNIST, FashionMNIST

__all__ = [
    "BaseDataModule",
    "Feed",
    "InMemoryDataModule",
    "Digits",
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "ImageFolder",
    "DEBIAN_FASHION_MNIST",
]
