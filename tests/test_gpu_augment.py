"""BatchAugment: shapes, determinism, exact agreement with torchvision's ops for given parameters,
and the same distribution as the CPU transforms of data.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from medclip_nb.config import Config
from medclip_nb.data import AUGMENT_PRESETS, build_transforms
from medclip_nb.data.gpu_augment import BatchAugment
from medclip_nb.errors import DataError

S, CROP = 64, 56
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _chest(size: int = S) -> torch.Tensor:
    """uint8 [1, size, size]: dark border, a brighter body with an off-centre blob (asymmetric,
    so flips and shifts change the statistics a wrong map would get wrong)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    body = 170 * torch.exp(-((xx / 0.7) ** 2 + (yy / 0.8) ** 2) ** 2)
    blob = 70 * torch.exp(-(((xx - 0.35) / 0.15) ** 2 + ((yy + 0.2) / 0.2) ** 2))
    return (20 + body + blob + 15 * xx).clamp(0, 255).to(torch.uint8).unsqueeze(0)


def _reference(image: torch.Tensor, params: dict, i: int, aug: BatchAugment) -> torch.Tensor:
    """torchvision's functional ops, one image, in the CPU transform's order, on float [0, 1]."""
    x = image.float() / 255
    if params["flip"][i]:
        x = TF.horizontal_flip(x)
    b, c = float(params["brightness"][i]), float(params["contrast"][i])
    jitter = [lambda t: TF.adjust_brightness(t, b), lambda t: TF.adjust_contrast(t, c)]
    for op in jitter if params["brightness_first"][i] else jitter[::-1]:
        x = op(x)
    x = TF.affine(x, angle=float(params["angle"][i]), scale=float(params["scale"][i]), shear=[0.0, 0.0],
                  translate=[int(params["translate"][i, 0]), int(params["translate"][i, 1])])
    top, left = int(params["crop_top"][i]), int(params["crop_left"][i])
    x = x[:, top:top + CROP, left:left + CROP]
    return ((x - aug.mean) / aug.std).repeat(3, 1, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtype_device_and_eval_determinism(device):
    images = _chest().expand(5, 1, S, S).contiguous().to(device)
    train_aug = BatchAugment(CROP, "medclip", train=True)
    out = train_aug(images, generator=torch.Generator(device).manual_seed(0))
    assert out.shape == (5, 3, CROP, CROP) and out.dtype == torch.float32 and out.device.type == device
    assert torch.equal(out[:, 0], out[:, 2])  # grey repeated to 3 channels
    again = train_aug(images, generator=torch.Generator(device).manual_seed(0))
    assert torch.equal(out, again)  # same generator seed, same batch
    assert not torch.equal(out[0], out[1])  # but each image draws its own parameters

    eval_aug = BatchAugment(CROP, "medclip", train=False)
    first, second = eval_aug(images), eval_aug(images)
    assert torch.equal(first, second)
    top = (S - CROP) // 2
    expected = (images[:, :, top:top + CROP, top:top + CROP].float() / 255 - eval_aug.mean) / eval_aug.std
    torch.testing.assert_close(first[:, :1], expected)
    # The preset 'none' has no random op even in training.
    assert torch.equal(BatchAugment(CROP, "none", train=True)(images), first)


def test_matches_torchvision_ops_for_the_same_parameters():
    aug = BatchAugment(CROP, "medclip", train=True)
    image = _chest()
    params = aug.sample_params(12, S, torch.Generator().manual_seed(7))
    assert params["flip"].any() and not params["flip"].all()
    assert params["brightness_first"].any() and not params["brightness_first"].all()
    out = aug.apply(image.expand(12, 1, S, S), params)
    for i in range(12):
        reference = _reference(image, params, i, aug)
        # Nearest-neighbour sampling: a coordinate exactly on a pixel border may round either
        # way in float32; everything else must agree exactly.
        close = (out[i] - reference).abs() < 1e-4
        assert close.float().mean() > 0.995, f"image {i}: {(~close).sum()} pixels differ"


def test_parameter_ranges_follow_the_preset():
    aug = BatchAugment(CROP, "seed", train=True)
    p = aug.sample_params(4000, S, torch.Generator().manual_seed(1))
    preset = AUGMENT_PRESETS["seed"]
    assert abs(p["flip"].float().mean() - preset["hflip_p"]) < 0.03
    assert p["angle"].abs().max() <= preset["degrees"] and p["angle"].abs().max() > 0.95 * preset["degrees"]
    assert p["scale"].min() >= preset["scale"][0] and p["scale"].max() <= preset["scale"][1]
    max_shift = round(preset["translate"] * S)  # 4 px at 64 px
    assert set(p["translate"].unique().tolist()) == set(range(-max_shift, max_shift + 1))
    assert p["crop_top"].min() == 0 and p["crop_top"].max() == S - CROP
    assert (p["brightness"] - 1).abs().max() <= preset["brightness"]


def test_same_distribution_as_the_cpu_transforms():
    n = 600
    image = _chest()
    cfg = Config(data_path="unused.pkl", image_size=CROP, resize_size=S, augment="medclip")
    cpu_transform = build_transforms(cfg, train=True)
    torch.manual_seed(0)
    cpu = torch.stack([cpu_transform(image) for _ in range(n)])
    gpu = BatchAugment(CROP, "medclip", train=True)(image.expand(n, 1, S, S),
                                                    generator=torch.Generator().manual_seed(0))
    assert cpu.shape == gpu.shape

    def stats(batch: torch.Tensor) -> dict[str, float]:
        per_image = batch[:, 0].mean(dim=(1, 2))  # brightness of each augmented image
        spread = batch[:, 0].std(dim=(1, 2))  # contrast of each augmented image
        return {"pixel_mean": batch.mean().item(), "pixel_std": batch.std().item(),
                "image_mean_mean": per_image.mean().item(), "image_mean_std": per_image.std().item(),
                "image_std_mean": spread.mean().item(), "image_std_std": spread.std().item()}

    cpu_stats, gpu_stats = stats(cpu), stats(gpu)
    # Tolerances: a few standard errors at n = 600, plus the CPU path's uint8 rounding after
    # each jitter op (it truncates, about -1/255 on the mean: -0.014 after normalising).
    assert abs(cpu_stats["pixel_mean"] - gpu_stats["pixel_mean"]) < 0.05, (cpu_stats, gpu_stats)
    assert abs(cpu_stats["image_mean_mean"] - gpu_stats["image_mean_mean"]) < 0.05, (cpu_stats, gpu_stats)
    assert gpu_stats["pixel_std"] == pytest.approx(cpu_stats["pixel_std"], rel=0.05), (cpu_stats, gpu_stats)
    assert gpu_stats["image_mean_std"] == pytest.approx(cpu_stats["image_mean_std"], rel=0.1), (cpu_stats, gpu_stats)
    assert gpu_stats["image_std_mean"] == pytest.approx(cpu_stats["image_std_mean"], rel=0.05), (cpu_stats, gpu_stats)
    # Without the contrast (or the brightness) jitter this spread drops by about a quarter.
    assert gpu_stats["image_std_std"] == pytest.approx(cpu_stats["image_std_std"], rel=0.1), (cpu_stats, gpu_stats)
    # The average image (where the body and the blob land) agrees too: about 0.015 apart here,
    # 0.12 without the flip or the scaling.
    cpu_average, gpu_average = cpu[:, 0].mean(0), gpu[:, 0].mean(0)
    assert (cpu_average - gpu_average).abs().mean() < 0.04
    assert np.corrcoef(cpu_average.flatten().numpy(), gpu_average.flatten().numpy())[0, 1] > 0.99


def test_refuses_bad_input():
    aug = BatchAugment(CROP, "medclip", train=True)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 1, S, S))
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 3, S, S, dtype=torch.uint8))
    with pytest.raises(DataError, match="smaller than image_size"):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(DataError, match="unknown preset"):
        BatchAugment(CROP, "fancy", train=True)
    assert aug(torch.zeros(0, 3, 0, 0)).shape == (0, 3, CROP, CROP)  # an all-skipped batch
