import math

import numpy as np
import pytest
import torch
from PIL import Image

from phasenets.data.images import conversion_note, to_channels
from phasenets.data.layout import Sample
from phasenets.data.transforms import (
    ERASE_RATIO,
    ERASE_SCALE,
    AugmentConfig,
    ImageTransform,
    Normalization,
    affine_matrix,
    center_crop_box,
    compute_normalization,
    crop_box,
    erase_box,
    resample,
    sample_augment_params,
    source_box,
    view_seed,
    warp_affine,
)
from tests.data.corpus import write_image

EVERYTHING = AugmentConfig(random_resized_crop=True, crop_scale=(0.25, 0.9), crop_ratio=(0.5, 2.0), hflip=True,
                           rotation=30.0, shift=0.15, shear=10.0, zoom=0.2, brightness=0.3, contrast=0.4,
                           random_erasing=0.5)


def sampled(cfg, count=2000):
    return [sample_augment_params(cfg, np.random.default_rng(view_seed(7, i, 0))) for i in range(count)]


def test_sampled_parameters_stay_in_their_ranges_and_cover_them():
    params = sampled(EVERYTHING)
    angles = [p.angle for p in params]
    assert -30 <= min(angles) < -27 and 27 < max(angles) <= 30
    assert all(-10 <= p.shear <= 10 for p in params)
    assert all(abs(t) <= 0.15 for p in params for t in p.translate)
    assert all(0.8 <= p.zoom <= 1.2 and 0.7 <= p.brightness <= 1.3 and 0.6 <= p.contrast <= 1.4 for p in params)
    assert 0.45 < np.mean([p.hflip for p in params]) < 0.55
    assert 0.45 < np.mean([p.erase is not None for p in params]) < 0.55
    for area, log_aspect, ax, ay in (p.crop for p in params):
        assert 0.25 <= area <= 0.9 and math.log(0.5) <= log_aspect <= math.log(2.0) and 0 <= ax < 1 and 0 <= ay < 1
    for area, log_aspect, _, _ in (p.erase for p in params if p.erase):
        assert ERASE_SCALE[0] <= area <= ERASE_SCALE[1]
        assert math.log(ERASE_RATIO[0]) <= log_aspect <= math.log(ERASE_RATIO[1])


def test_disabled_augmentations_sample_their_identity():
    params = sampled(AugmentConfig(), count=50)
    assert all(p.crop is None and p.erase is None and not p.hflip and not p.has_affine for p in params)
    assert all(p.brightness == 1.0 and p.contrast == 1.0 for p in params)


def test_switching_one_augmentation_leaves_the_others_draws_unchanged():
    with_flip = sampled(AugmentConfig(rotation=20.0, hflip=True), count=20)
    without_flip = sampled(AugmentConfig(rotation=20.0), count=20)
    assert [p.angle for p in with_flip] == [p.angle for p in without_flip]


def test_view_seed_is_deterministic_and_distinct():
    assert view_seed(1, 2, 3) == view_seed(1, 2, 3)
    seeds = {view_seed(s, i, v) for s in range(3) for i in range(20) for v in range(5)}
    assert len(seeds) == 300
    with pytest.raises(ValueError, match="non-negative"):
        view_seed(0, -1, 0)


@pytest.mark.parametrize("size", [(40, 30), (30, 40), (17, 17), (300, 20)])
def test_crop_and_erase_boxes_fit_inside_the_image(size):
    width, height = size
    for p in sampled(EVERYTHING, count=300):
        x0, y0, w, h = crop_box(p, width, height)
        assert 0 <= x0 and 0 <= y0 and x0 + w <= width + 1e-9 and y0 + h <= height + 1e-9 and w > 0 and h > 0
        if p.erase:
            x0, y0, w, h = erase_box(p, width, height)
            assert 0 <= x0 and 0 <= y0 and x0 + w <= width and y0 + h <= height and w >= 1 and h >= 1


def test_affine_matrix_is_identity_without_warp_and_maps_the_shifted_centre_back():
    identity = sampled(AugmentConfig(), count=1)[0]
    assert affine_matrix(identity, 32, 32) == pytest.approx((1, 0, 0, 0, 1, 0), abs=1e-12)
    p = sampled(AugmentConfig(rotation=45, shift=0.2, shear=15, zoom=0.3), count=1)[0]
    a, b, c, d, e, f = affine_matrix(p, 40, 20)
    out_x, out_y = 20 + p.translate[0] * 40, 10 + p.translate[1] * 20  # where the centre lands
    assert (a * out_x + b * out_y + c, d * out_x + e * out_y + f) == pytest.approx((20, 10))


def test_a_pure_shift_moves_pixels_by_the_sampled_amount():
    image = Image.new("L", (20, 20), 0)
    image.putpixel((10, 10), 255)
    cfg = AugmentConfig(shift=0.2)
    transform = ImageTransform(image_size=20, in_channels=1, augment=cfg, normalization=Normalization.identity(1))
    p = transform.params(index=5, view=1)
    out = transform(image, index=5, view=1)[0]
    y, x = np.unravel_index(int(out.argmax()), out.shape)
    assert (x, y) == (round(10 + 20 * p.translate[0]), round(10 + 20 * p.translate[1]))


def test_views_are_reproducible_and_differ_from_each_other(tmp_path):
    image = Image.open(write_image(tmp_path / "x.png", size=(24, 20))).convert("RGB")
    transform = ImageTransform(image_size=16, in_channels=3, augment=EVERYTHING,
                               normalization=Normalization((0.5,) * 3, (0.25,) * 3), seed=11)
    first = transform(image, index=4, view=2)
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, transform(image, index=4, view=2))
    assert not torch.equal(first, transform(image, index=4, view=3))
    assert not torch.equal(first, transform(image, index=5, view=2))
    other_seed = ImageTransform(image_size=16, in_channels=3, augment=EVERYTHING,
                                normalization=Normalization((0.5,) * 3, (0.25,) * 3), seed=12)
    assert not torch.equal(first, other_seed(image, index=4, view=2))


def test_evaluation_path_resizes_the_shorter_side_and_center_crops():
    stripes = Image.new("L", (40, 20), 0)
    stripes.paste(255, (6, 0, 34, 20))  # bright centre, wider than the crop (source x 10..30)
    assert center_crop_box(40, 20, 10) == (10.0, 0.0, 30.0, 20.0)
    transform = ImageTransform(image_size=10, in_channels=1, augment=AugmentConfig(),
                               normalization=Normalization.identity(1))
    out = transform(stripes, index=0, view=9)
    assert out.shape == (1, 10, 10)
    assert out.min() > 0.99  # the centre crop sees only the bright half
    assert torch.equal(out, transform(stripes, index=3, view=0))  # no augmentation: views ignored


def test_augment_config_rejects_out_of_range_values_and_knows_its_presets():
    with pytest.raises(ValueError, match=r"rotation must be in \[0, 180.0\]"):
        AugmentConfig(rotation=-1)
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="valid: none, light, standard, crop"):
        AugmentConfig.preset("heavy")
    assert not AugmentConfig.preset("none").enabled
    standard = AugmentConfig.preset("standard")
    assert standard.enabled and standard.rotation == 40 and standard.zoom == 0.2
    standard.rotation = 1.0
    assert AugmentConfig.preset("standard").rotation == 40  # presets are copies


def test_compute_normalization_measures_the_training_images(tmp_path):
    dark = write_image(tmp_path / "dark.png", (6, 6), "RGB", fill=(0, 51, 102))
    bright = write_image(tmp_path / "bright.png", (6, 6), "RGB", fill=(255, 153, 102))
    samples = [Sample(dark, 0), Sample(bright, 1)]
    meanstd = compute_normalization(samples, "meanstd", image_size=4, in_channels=3)
    assert meanstd.mean == pytest.approx((0.5, 0.4, 0.4))
    assert meanstd.std[:2] == pytest.approx((0.5, 0.2))
    assert meanstd.std[2] == pytest.approx(1e-6)  # a constant channel keeps a usable std
    pixel_mean = compute_normalization(samples, "pixel_mean", image_size=4, in_channels=3)
    assert pixel_mean.mean == pytest.approx((0.5, 0.4, 0.4)) and pixel_mean.std == (1.0, 1.0, 1.0)
    gray = compute_normalization(samples, "meanstd", image_size=4, in_channels=1)
    assert len(gray.mean) == 1
    assert compute_normalization([], "imagenet", 4, 3).mean == (0.485, 0.456, 0.406)
    assert compute_normalization([], "none", 4, 1) == Normalization((0.0,), (1.0,))
    with pytest.raises(ValueError, match="valid: meanstd, pixel_mean, imagenet, none"):
        compute_normalization(samples, "zscore", 4, 3)


def test_mode_conversions_to_one_or_three_channels():
    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 255))
    rgba.putpixel((1, 0), (200, 100, 50, 0))  # fully transparent: becomes black
    assert np.asarray(to_channels(rgba, 3)).tolist() == [[[200, 100, 50], [0, 0, 0]]]
    assert conversion_note(rgba) == "image with an alpha channel, composited on black"

    wide = Image.fromarray(np.array([[0, 65535, 257 * 100]], dtype=np.uint16))
    assert wide.mode == "I;16" and np.asarray(to_channels(wide, 1)).tolist() == [[0, 255, 100]]
    assert "16-bit" in conversion_note(wide)

    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert to_channels(cmyk, 3).getpixel((0, 0)) == (255, 0, 0)
    assert conversion_note(cmyk) == "CMYK image, converted to RGB"

    gray = Image.new("L", (1, 1), 77)
    assert to_channels(gray, 3).getpixel((0, 0)) == (77, 77, 77) and conversion_note(gray) is None
    palette = Image.new("RGB", (1, 1), (10, 20, 30)).convert("P")
    assert to_channels(palette, 3).mode == "RGB"
    assert to_channels(Image.new("RGB", (1, 1), (255, 255, 255)), 1).getpixel((0, 0)) == 255
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        to_channels(gray, 4)


def test_resample_is_exact_without_scaling_and_mirrors_a_flipped_box():
    pixels = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    planes = pixels.transpose(2, 0, 1).astype(np.float32)
    shrunk = resample(pixels, (0, 0, 16, 12), 12)  # rows 1:1; columns 16 -> 12
    assert shrunk.dtype == np.float32 and shrunk.shape == (3, 12, 12)
    assert np.array_equal(resample(pixels, (2, 0, 14, 12), 12), planes[:, :, 2:14])
    np.testing.assert_allclose(resample(pixels, (14, 0, 2, 12), 12), planes[:, :, 13:1:-1], atol=1e-4)
    np.testing.assert_allclose(resample(pixels, (16, 0, 0, 12), 12), shrunk[:, :, ::-1], atol=1e-4)


def test_resample_filters_like_a_triangle_with_the_edge_repeated():
    # Shrinking 8 -> 2 (radius 4 source pixels): output pixel 0 is centred at 2.0 and weighs the
    # pixels centred at -1.5 .. 5.5 by 1 - |distance| / 4, those beyond the left edge being the
    # edge pixel again (PIL alone would leave them out).
    row = np.arange(8, dtype=np.uint8).reshape(1, 8, 1) * 10
    centres = np.arange(-2, 6) + 0.5
    weights = 1 - np.abs(centres - 2.0) / 4
    values = np.clip(np.arange(-2, 6), 0, 7) * 10
    out = resample(row, (0, 0, 8, 1), 2)
    assert out.shape == (1, 2, 2)
    assert out[0, 0, 0] == pytest.approx((weights * values).sum() / weights.sum(), abs=1e-4)
    # Enlarging is linear interpolation: 2 -> 4 puts output centres at 0.25, 0.75, 1.25, 1.75.
    pair = np.array([[[0], [100]]], dtype=np.uint8)
    np.testing.assert_allclose(resample(pair, (0, 0, 2, 1), 4)[0, 0], [0, 25, 75, 100], atol=1e-4)


def test_source_box_is_the_crop_or_the_centre_mirrored_by_the_flip():
    params = sampled(EVERYTHING, count=50)
    flipped = next(p for p in params if p.hflip)
    x0, y0, w, h = crop_box(flipped, 40, 30)
    assert source_box(flipped, 40, 30, 16) == (x0 + w, y0, x0, y0 + h)
    assert source_box(None, 40, 30, 16) == center_crop_box(40, 30, 16)


def test_warp_affine_moves_pixels_and_blends_in_zeros_at_the_edge():
    planes = np.arange(1, 37, dtype=np.float32).reshape(1, 6, 6)
    np.testing.assert_allclose(warp_affine(planes, (1, 0, 0, 0, 1, 0)), planes, atol=1e-5)
    shifted = warp_affine(planes, (1, 0, -2, 0, 1, 0))  # output x samples input x - 2
    np.testing.assert_allclose(shifted[:, :, 2:], planes[:, :, :4], atol=1e-5)
    assert not shifted[:, :, :2].any()
    half = warp_affine(planes, (1, 0, 0.5, 0, 1, 0))  # half a pixel right: the last column meets 0
    np.testing.assert_allclose(half[:, :, :5], (planes[:, :, :5] + planes[:, :, 1:]) / 2, atol=1e-5)
    np.testing.assert_allclose(half[:, :, 5], planes[:, :, 5] / 2, atol=1e-5)
    assert not warp_affine(planes, (1, 0, 0, 0, 1, -50)).any()


def test_normalization_runs_the_arithmetic_of_dali_crop_mirror_normalize():
    # (x - float32(255 mean)) * float32(1 / float32(255 std)), every 8-bit value.
    normalization = Normalization((0.485, 0.2), (0.229, 0.7))
    values = torch.arange(256, dtype=torch.float32).expand(2, 1, 256)
    out = normalization.apply(values)
    for channel, (mean, std) in enumerate(zip(normalization.mean, normalization.std)):
        expected = (np.arange(256, dtype=np.float32) - np.float32(255 * mean)) * (np.float32(1) / np.float32(255 * std))
        assert np.array_equal(out[channel, 0].numpy(), expected)
