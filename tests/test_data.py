"""Training patches: value ranges, shapes, LR/HR alignment, determinism, worker independence."""
import numpy as np
import pytest
import torch
from PIL import Image

from srtrt.engine.datapath.imageio import images_in
from srtrt.errors import SrtrtError
from srtrt.train.data import OffsetSampler, PatchDataset, split_holdout

from synthetic import write_images

SCALE, PATCH = 4, 16


@pytest.fixture
def photos(tmp_path):
    # Sizes that are not multiples of the scale, so modcrop matters; one too small to use.
    return write_images(tmp_path / "hr", [(67, 70), (81, 53), (12, 12)], seed=3)


def _to_uint8(lr: torch.Tensor, hr: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Patches back to exact 8-bit HxWx3 (the ranges are exact maps of 8-bit values)."""
    lr8 = (lr * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    hr8 = ((hr + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return lr8, hr8


def _undo(a: np.ndarray, flip: bool, rot: int) -> np.ndarray:
    """Inverse of the dataset's augmentation (flip left-right, then rot90 by `rot`)."""
    a = np.rot90(a, -rot)
    return a[:, ::-1] if flip else a


def _locate(patch: np.ndarray, image: np.ndarray) -> list[tuple[int, int]]:
    """All (y, x) where `patch` occurs exactly in `image`."""
    p = patch.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(image, (p, p, 3))[:, :, 0]
    hits = np.all(windows == patch, axis=(2, 3, 4))
    return [tuple(map(int, yx)) for yx in np.argwhere(hits)]


def test_value_ranges_and_shapes(photos):
    ds = PatchDataset(photos, SCALE, PATCH, seed=0)
    for i in range(20):
        lr, hr = ds[i]
        assert lr.dtype == hr.dtype == torch.float32
        assert lr.shape == (3, PATCH // SCALE, PATCH // SCALE) and hr.shape == (3, PATCH, PATCH)
        assert 0 <= lr.min() and lr.max() <= 1
        assert -1 <= hr.min() and hr.max() <= 1
    assert len(ds.hr) == 2  # the 12x12 photo is smaller than a patch and is skipped


def test_lr_patch_is_the_aligned_crop_of_the_whole_image_downscale(photos):
    """Each HR patch comes from an aligned position, and its LR patch is the same region of the
    bicubic downscale of the whole (modcropped) photo, under the same flip/rotation."""
    ds = PatchDataset(photos, SCALE, PATCH, seed=5)
    lp = PATCH // SCALE
    references = []
    for path in photos[:2]:
        with Image.open(path) as im:
            w, h = im.size
            hr_whole = im.convert("RGB").crop((0, 0, w - w % SCALE, h - h % SCALE))
        lr_whole = hr_whole.resize((hr_whole.width // SCALE, hr_whole.height // SCALE), Image.Resampling.BICUBIC)
        references.append((np.asarray(hr_whole), np.asarray(lr_whole)))
    for i in range(24):
        lr8, hr8 = _to_uint8(*ds[i])
        found = []
        for flip in (False, True):
            for rot in range(4):
                hr_plain, lr_plain = _undo(hr8, flip, rot), _undo(lr8, flip, rot)
                for hr_whole, lr_whole in references:
                    for y, x in _locate(hr_plain, hr_whole):
                        found.append((y, x))
                        assert y % SCALE == 0 and x % SCALE == 0
                        ly, lx = y // SCALE, x // SCALE
                        np.testing.assert_array_equal(lr_plain, lr_whole[ly:ly + lp, lx:lx + lp])
        assert found, f"patch {i} is not a crop of any training photo"


def test_same_seed_same_patches_other_seed_other_patches(photos):
    a, b, c = (PatchDataset(photos, SCALE, PATCH, seed=s) for s in (7, 7, 8))
    for i in (0, 1, 1000, 10**9):
        assert all(torch.equal(u, v) for u, v in zip(a[i], b[i]))
    assert any(not torch.equal(a[i][1], c[i][1]) for i in range(5))


def _batches(ds, workers: int, start: int, count: int) -> list:
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=OffsetSampler(start, count), num_workers=workers)
    return list(loader)


def test_batches_do_not_depend_on_the_number_of_workers(photos):
    ds = PatchDataset(photos, SCALE, PATCH, seed=2)
    serial, parallel = _batches(ds, 0, 8, 16), _batches(ds, 2, 8, 16)
    assert len(serial) == len(parallel) == 4
    for (lr0, hr0), (lr1, hr1) in zip(serial, parallel):
        assert torch.equal(lr0, lr1) and torch.equal(hr0, hr1)


def test_offset_sampler_resumes_the_same_sequence(photos):
    ds = PatchDataset(photos, SCALE, PATCH, seed=2)
    whole = _batches(ds, 0, 0, 16)
    second_half = _batches(ds, 0, 8, 8)
    for (lr0, hr0), (lr1, hr1) in zip(whole[2:], second_half):
        assert torch.equal(lr0, lr1) and torch.equal(hr0, hr1)


def test_patch_must_be_a_multiple_of_the_scale(photos):
    with pytest.raises(ValueError, match="multiple"):
        PatchDataset(photos, SCALE, 18)


def test_no_usable_photo_is_an_error(photos):
    with pytest.raises(ValueError, match="at least"):
        PatchDataset(photos[2:], SCALE, PATCH)


def test_images_in_a_folder_are_sorted_and_filtered(tmp_path, photos):
    (tmp_path / "hr" / "notes.txt").write_text("not an image")
    (tmp_path / "hr" / "folder.png").mkdir()
    assert images_in(tmp_path / "hr") == sorted(photos)
    with pytest.raises(SrtrtError, match="not a directory"):
        images_in(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SrtrtError, match=r"no images \(.*\.png.*\) in this directory"):
        images_in(tmp_path / "empty")


def test_split_holdout_spreads_a_disjoint_validation_set(tmp_path):
    paths = [tmp_path / f"{i:03d}.png" for i in range(20)]
    train, held = split_holdout(paths, 4)
    assert len(held) == 4 and len(train) == 16
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(paths)
    assert held == [paths[4], paths[9], paths[14], paths[19]]  # every 5th, across the folder
    assert split_holdout(paths, 0) == (paths, [])
    train_all, held_all = split_holdout(paths[:3], 10)
    assert held_all == paths[:3] and train_all == []
