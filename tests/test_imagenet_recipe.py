"""ImageNet's training pipeline is fb.resnet.torch's (the ResNeXt paper's): crop, flip, colour jitter, lighting.

The folders are small JPEGs of varied sizes in ImageNet's layout; the lighting
noise is checked against its analytic per-channel mean and standard deviation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_lab.data import build_datamodule
from resnext_lab.data.imagenet import MEAN, PCA_EIGVAL, PCA_EIGVEC, STD, Lighting
from resnext_lab.errors import ConfigError
from resnext_lab.job import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
SIZES = ((300, 200), (200, 300), (256, 256), (320, 180))
CLASSES = ("n01440764", "n01443537", "n01484850")


def write_folders(root: Path, train: int = 3, val: int = 2) -> Path:
    """root/train/<class>/*.JPEG and root/val/<class>/*.JPEG, images of several sizes and aspect ratios."""
    rng = np.random.default_rng(7)
    for split, count in (("train", train), ("val", val)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SIZES[(c + i) % len(SIZES)]
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", "JPEG")
    return root


def datamodule(root: Path, **overrides: Any) -> Any:
    cfg = {
        "name": "imagenet",
        "root": str(root),
        "num_classes": len(CLASSES),
        "image_size": 64,
        "batch_size": 4,
        "num_workers": 0,
        "color_augment": True,
        **overrides,
    }
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return dm


# -- the pipeline -----------------------------------------------------------------------


def test_train_transform_is_the_papers_recipe(tmp_path: Path) -> None:
    from torchvision import transforms as T

    steps = datamodule(write_folders(tmp_path)).train_transform().transforms
    kinds = [type(t) for t in steps]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.ColorJitter, Lighting, T.Normalize]
    crop, flip, _, jitter, lighting, norm = steps
    assert crop.size == (64, 64) and crop.scale == (0.08, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3)) and flip.p == 0.5
    for factor in (jitter.brightness, jitter.contrast, jitter.saturation):
        assert factor == pytest.approx((0.6, 1.4))
    assert jitter.hue is None
    assert lighting.alphastd == 0.1
    assert lighting.eigval.tolist() == pytest.approx([0.2175, 0.0188, 0.0045])
    assert lighting.eigvec.tolist() == [pytest.approx(row) for row in PCA_EIGVEC]
    assert "Lighting(alphastd=0.1, eigval=[0.2175" in repr(lighting)
    assert tuple(norm.mean) == MEAN and tuple(norm.std) == STD


def test_color_augment_off_by_default_and_independent_of_augment(tmp_path: Path) -> None:
    from torchvision import transforms as T

    root = write_folders(tmp_path)
    plain = [type(t) for t in datamodule(root, color_augment=False).train_transform().transforms]
    assert plain == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert build_datamodule({"name": "imagenet"}).settings.color_augment is False
    color_only = [type(t) for t in datamodule(root, augment=False).train_transform().transforms]
    assert color_only == [T.Resize, T.CenterCrop, T.ToTensor, T.ColorJitter, Lighting, T.Normalize]


def test_eval_transform_resizes_to_256_of_224_then_centre_crops(tmp_path: Path) -> None:
    from torchvision import transforms as T

    resize, crop, *_ = datamodule(write_folders(tmp_path)).eval_transform().transforms
    assert isinstance(resize, T.Resize) and resize.size == round(64 * 256 / 224) == 73
    assert isinstance(crop, T.CenterCrop) and crop.size == (64, 64)
    assert build_datamodule({"name": "imagenet"}).eval_transform().transforms[0].size == 256


def test_batches_from_folders(tmp_path: Path) -> None:
    dm = datamodule(write_folders(tmp_path))
    torch.manual_seed(0)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32 and torch.isfinite(images).all()
    assert set(labels.tolist()) <= set(range(len(CLASSES)))
    first, second = (next(iter(dm.test_dataloader())) for _ in range(2))
    assert first[0].shape == (4, 3, 64, 64)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # the same training image, drawn twice, comes out different ...
    draws = [dm.train_set[0][0] for _ in range(2)]
    assert draws[0].shape == (3, 64, 64) and not torch.allclose(draws[0], draws[1])
    # ... also from the colour augmentation alone (a fixed crop) ...
    color_only = datamodule(tmp_path, augment=False)
    assert not torch.allclose(color_only.train_set[0][0], color_only.train_set[0][0])
    # ... and never without augmentation; seeding fixes the draws
    fixed = datamodule(tmp_path, augment=False, color_augment=False)
    assert torch.equal(fixed.train_set[0][0], fixed.train_set[0][0])
    torch.manual_seed(1)
    again = dm.train_set[0][0]
    torch.manual_seed(1)
    assert torch.equal(again, dm.train_set[0][0])


# -- the lighting noise -------------------------------------------------------------------


def test_lighting_matches_its_analytic_statistics() -> None:
    lighting = Lighting(0.1, PCA_EIGVAL, PCA_EIGVEC)
    image = torch.full((3, 5, 7), 0.5)
    torch.manual_seed(0)
    draws = 2000
    shifts = torch.stack([lighting(image) - image for _ in range(draws)])
    # one colour offset per image, the same at every pixel; the input is left alone
    assert torch.allclose(shifts, shifts[:, :, :1, :1].expand_as(shifts), atol=1e-7)
    assert torch.equal(image, torch.full((3, 5, 7), 0.5))
    per_image = shifts[:, :, 0, 0].double()
    eigval, eigvec = torch.tensor(PCA_EIGVAL).double(), torch.tensor(PCA_EIGVEC).double()
    expected_std = (0.1 * eigval * eigvec).pow(2).sum(dim=1).sqrt()
    assert expected_std.tolist() == pytest.approx([0.012418, 0.012638, 0.012762], abs=1e-6)
    assert (per_image.mean(0).abs() < 4 * expected_std / math.sqrt(draws)).all()
    assert per_image.std(0) == pytest.approx(expected_std, rel=0.1)


def test_lighting_zero_alphastd_is_the_identity_and_shapes_are_checked() -> None:
    image = torch.rand(3, 4, 4)
    assert Lighting(0.0, PCA_EIGVAL, PCA_EIGVEC)(image) is image
    with pytest.raises(ValueError, match="eigvec"):
        Lighting(0.1, PCA_EIGVAL, PCA_EIGVEC[:2])


# -- the setting ----------------------------------------------------------------------------


def test_color_augment_is_validated() -> None:
    with pytest.raises(ConfigError) as e:
        build_datamodule({"name": "imagenet", "color_augment": "yes"})
    assert str(e.value) == "data.color_augment='yes': must be true or false"


def test_only_imagenet_has_the_setting() -> None:
    assert compose(["data=imagenet"]).data.color_augment is False
    for name in ("fashion_mnist", "cifar10", "cifar100"):
        assert "color_augment" not in compose([f"data={name}"]).data
        assert not hasattr(build_datamodule({"name": name}).settings, "color_augment")


@pytest.mark.parametrize("experiment", ["table3", "table4", "table4_top5", "residual", "fig5", "forms"])
def test_imagenet_paper_presets_turn_it_on(experiment: str) -> None:
    from resnext_lab.job import compose_experiment

    data = compose_experiment(experiment, "paper").data
    assert data.name == "imagenet" and data.color_augment is True
    assert build_datamodule(data).settings.color_augment is True


@pytest.mark.parametrize("experiment", ["fig7", "table7"])
def test_cifar_paper_presets_do_not_gain_it(experiment: str) -> None:
    from resnext_lab.job import compose_experiment

    data = compose_experiment(experiment, "paper").data
    assert data.name.startswith("cifar") and "color_augment" not in data
