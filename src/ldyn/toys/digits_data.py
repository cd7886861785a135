"""The digits toy's settings (`DigitsConfig`) and images: scikit-learn's 8×8 digits (offline) or MNIST's idx
files, and the seeded split into training, held-out and observed images."""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ldyn.errors import LdynError, did_you_mean

CLASSES = 10
MAX_HELD_OUT = 10_000


def _option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class DigitsConfig:
    data: str = _option("digits", "digits: scikit-learn's 1,797 8×8 images (offline); mnist: 28×28")
    mnist_path: str | None = _option(None, "folder with the MNIST idx files (else torchvision downloads them)")
    model: str = _option("mlp", "mlp: two 128-wide ReLU layers; cnn: the notebook's LeNet, tanh")
    n_train: int = _option(1000, "training images; the rest are held out")
    observed_per_class: int = _option(10, "held-out images per class whose predictions are tracked")
    epochs: int = _option(20, "passes over the training images")
    batch_size: int = _option(32, "images per SGD update")
    lr: float = _option(0.1, "SGD learning rate η")
    record_every: int = _option(8, "decompose every k-th update")
    kernel_every: int = _option(0, "measure ‖K‖ between classes every k updates (0: once per epoch)")
    seed: int = _option(0, "split, initialisation and data order")
    float64: bool = _option(False, "train and decompose in float64")


def read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file (optionally gzipped) of unsigned bytes as an array of its declared shape."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LdynError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 8:
        raise LdynError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != math.prod(shape):
        raise LdynError(f"{path}: header declares {shape} = {math.prod(shape)} values, the file holds {values.size}")
    return values.reshape(shape)


def find_idx(folder: Path, stem: str) -> Path:
    for candidate in (
        folder / stem,
        folder / f"{stem}.gz",
        folder / "MNIST" / "raw" / stem,
        folder / "MNIST" / "raw" / f"{stem}.gz",
    ):
        if candidate.is_file():
            return candidate
    raise LdynError(f"{folder}: no {stem} or {stem}.gz (expected the MNIST training files there)")


def load_mnist(path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if path is None:
        try:
            import torchvision
        except ImportError:
            raise LdynError(
                "MNIST needs --mnist-path (a folder with train-images-idx3-ubyte[.gz] and "
                "train-labels-idx1-ubyte[.gz]) or torchvision installed to download it"
            ) from None
        from ldyn.models.pretrained import cache_dir

        try:
            data = torchvision.datasets.MNIST(cache_dir() / "mnist", train=True, download=True)
        except Exception as e:  # noqa: BLE001 -- any download failure becomes one clear line
            raise LdynError(f"could not download MNIST ({e}); pass --mnist-path to local idx files") from None
        return data.data[:, None].float() / 255, data.targets
    folder = Path(path)
    if not folder.is_dir():
        raise LdynError(f"{folder}: not a folder (--mnist-path takes the folder holding the MNIST idx files)")
    images = read_idx(find_idx(folder, "train-images-idx3-ubyte"))
    labels = read_idx(find_idx(folder, "train-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise LdynError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return torch.from_numpy(images.copy())[:, None].float() / 255, torch.from_numpy(labels.astype(np.int64))


def load_images(cfg: DigitsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, H, W) in [0, 1], labels (N,))."""
    if cfg.data == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(digits.target)
    if cfg.data == "mnist":
        return load_mnist(cfg.mnist_path)
    raise LdynError(f"unknown data '{cfg.data}'{did_you_mean(cfg.data, ['digits', 'mnist'])}")


@dataclass
class Split:
    train_x: torch.Tensor
    train_y: torch.Tensor
    held_x: torch.Tensor
    held_y: torch.Tensor
    observed: torch.Tensor  # indices into the held-out images, observed_per_class of each class, sorted by class


def split(images: torch.Tensor, labels: torch.Tensor, cfg: DigitsConfig) -> Split:
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.n_train >= len(labels):
        raise LdynError(f"n_train={cfg.n_train} leaves no held-out images ({cfg.data} has {len(labels)})")
    train, held = order[: cfg.n_train], order[cfg.n_train : cfg.n_train + MAX_HELD_OUT]
    held_y = labels[held]
    observed = []
    for c in range(CLASSES):
        members = (held_y == c).nonzero().squeeze(-1)[: cfg.observed_per_class]
        if len(members) < cfg.observed_per_class:
            raise LdynError(f"only {len(members)} held-out images of class {c}; lower observed_per_class")
        observed.append(members)
    return Split(images[train], labels[train], images[held], held_y, torch.cat(observed))
