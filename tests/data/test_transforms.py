import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rayhash.data.transforms import TorchImageDataset, TwoViewAugment, eval_batch_transform, eval_transform

skimage_data = pytest.importorskip("skimage.data")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel mean and std in [0, 1]


def test_eval_transform_is_plain_normalisation(fmnist):
    image = fmnist.images[0]
    t = eval_transform(28, 1, [MEAN], [STD])
    out = t(image)
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32
    expected = (image.transpose(2, 0, 1) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert torch.equal(t(image), out)  # deterministic


def test_batch_transform_equals_per_image(fmnist):
    images = fmnist.images[:9]
    per_image = torch.stack([eval_transform(28, 1, [MEAN], [STD])(im) for im in images])
    batch = eval_batch_transform(28, 1, [MEAN], [STD])
    torch.testing.assert_close(batch(images), per_image)  # the vectorised path, from one array
    torch.testing.assert_close(batch(list(images)), per_image)  # ... and from a list
    resized = eval_batch_transform(32, 3, [0.5] * 3, [0.5] * 3)  # another size: the per-image path
    expected = torch.stack([eval_transform(32, 3, [0.5] * 3, [0.5] * 3)(im) for im in images])
    torch.testing.assert_close(resized(images), expected)
    assert batch(images[:0]).shape == (0, 1, 28, 28)


def test_channel_conversion_both_ways(fmnist):
    to_rgb = eval_transform(64, 3, [0.5] * 3, [0.5] * 3)(fmnist.images[0])
    assert to_rgb.shape == (3, 64, 64)
    assert torch.equal(to_rgb[0], to_rgb[1]) and torch.equal(to_rgb[1], to_rgb[2])
    photo = skimage_data.astronaut()[:32, :32]
    gray = eval_transform(32, 1, [0.0], [1.0])(photo)
    luma = photo @ np.array([0.2989, 0.587, 0.114])  # ITU-R 601, as torchvision uses
    assert np.abs(gray[0].numpy() * 255 - luma).max() <= 1.0


def test_two_views(fmnist):
    torch.manual_seed(0)
    aug = TwoViewAugment(28, 1, [MEAN], [STD])
    v1, v2 = aug(fmnist.images[0])
    assert v1.shape == v2.shape == (1, 28, 28) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)
    rgb = TwoViewAugment(32, 3, [0.5] * 3, [0.5] * 3, blur=True)
    a, b = rgb(skimage_data.astronaut()[::16, ::16])
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="crop_scale"):
        TwoViewAugment(28, 1, [MEAN], [STD], crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="need 3 values"):
        TwoViewAugment(28, 3, [MEAN], [STD])


def test_whole_image_crop_without_flip_is_the_image(fmnist):
    aug = TwoViewAugment(28, 1, [0.0], [1.0], crop_scale=(1.0, 1.0), hflip=False, gray_jitter=0.0)
    for image in fmnist.images[:5]:
        v1, v2 = aug(image)
        np.testing.assert_allclose(v1[0].numpy() * 255, image[:, :, 0], atol=1e-3)
        assert torch.equal(v1, v2)


def test_erase_blanks_one_rectangle_to_the_mean(fmnist):
    torch.manual_seed(3)
    image = fmnist.images[0]
    plain = TwoViewAugment(28, 1, [0.5], [0.5], crop_scale=(1.0, 1.0), hflip=False, gray_jitter=0.0)
    erased = TwoViewAugment(28, 1, [0.5], [0.5], crop_scale=(1.0, 1.0), hflip=False, gray_jitter=0.0, erase=1.0)
    whole = plain.view(image)[0]
    for _ in range(20):
        view = erased.view(image)[0]
        changed = (view != whole).numpy()
        rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
        box = view[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert torch.all(box == 0)  # the patch is the normalised mean intensity, everything else untouched
        assert 0.02 * 784 - 1 <= box.numel() <= 0.2 * 784 + 1
    with pytest.raises(ValueError, match="erase"):
        TwoViewAugment(28, 1, [MEAN], [STD], erase=1.5)


def test_flip_happens_half_the_time(fmnist):
    torch.manual_seed(1)
    image = fmnist.images[0]  # an ankle boot: not mirror-symmetric
    flip_only = TwoViewAugment(28, 1, [0.0], [1.0], crop_scale=(1.0, 1.0), gray_jitter=0.0)
    plain = torch.from_numpy(image[:, :, 0] / 255.0).float()
    flips = sum(torch.allclose(flip_only.view(image)[0], plain.flip(-1)) for _ in range(400))
    assert 160 < flips < 240  # p = 0.5


def test_gray_jitter_changes_brightness_and_contrast_only(fmnist):
    torch.manual_seed(2)
    image = fmnist.images[3]
    jitter_only = TwoViewAugment(28, 1, [0.0], [1.0], crop_scale=(1.0, 1.0), hflip=False, gray_jitter=0.8)
    order = np.argsort(image[:, :, 0].ravel(), kind="stable")
    changed = 0
    for _ in range(50):
        v = jitter_only.view(image)[0].numpy().ravel()
        # brightness scales and contrast blends with the mean: a monotone map of each pixel
        assert (np.diff(v[order]) >= -1e-6).all()
        changed += not np.allclose(v * 255, image[:, :, 0].ravel(), atol=1)
    assert 30 <= changed <= 50  # applied with p = 0.8
    rgb = TwoViewAugment(
        32,
        3,
        [0.5] * 3,
        [0.5] * 3,
        crop_scale=(1.0, 1.0),
        hflip=False,
        color_jitter=0.0,
        grayscale_p=0.0,
        gray_jitter=0.8,
    )
    photo = skimage_data.astronaut()[::16, ::16]
    assert torch.equal(rgb.view(photo), rgb.view(photo))  # gray_jitter leaves RGB images alone


def test_torch_dataset_batches(fmnist):
    ds = TorchImageDataset(fmnist.subset(np.arange(10)), TwoViewAugment(28, 1, [MEAN], [STD]))
    (v1, v2), idx = next(iter(DataLoader(ds, batch_size=4)))
    assert v1.shape == v2.shape == (4, 1, 28, 28) and idx.tolist() == [0, 1, 2, 3]
    assert len(ds) == 10
