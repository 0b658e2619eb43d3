"""Dataset tools (ModNet seed): split a folder of classes, balance class counts, import datasets.

Every tool is deterministic in its ``seed``, refuses to write into a non-empty folder, and
returns ``{split: {class: count}}`` for what it wrote. Nothing is ever downloaded.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from phasenets.data.layout import DatasetError, list_class_files

WRITE_MODES = ("copy", "symlink", "hardlink")
IMPORTABLE = ("fashion-mnist", "digits")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle_boot")
_SPLITS_BY_COUNT = {2: ("train", "validation"), 3: ("train", "validation", "test")}

Counts = dict[str, dict[str, int]]


def split_dataset(src: str | os.PathLike, out: str | os.PathLike, ratios: Sequence[float] = (0.8, 0.2),
                  seed: int = 0, mode: str = "copy") -> Counts:
    """Split ``src/<class>/<images>`` into ``out/{train,validation[,test]}/<class>/``.

    ``ratios`` has two (train, validation) or three (train, validation, test) entries summing to
    1. Per class, a seeded shuffle assigns ``round(ratio * n)`` images (at least one) to
    validation and test and the rest, at least one, to train.
    """
    if len(ratios) not in _SPLITS_BY_COUNT or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0:
        raise DatasetError(f"ratios must be 2 or 3 non-negative fractions summing to 1, got {tuple(ratios)}")
    classes = _class_files(src)
    names = _SPLITS_BY_COUNT[len(ratios)]
    rng = np.random.default_rng(seed)
    plan = []  # (source path, split, class, file name)
    for name, paths in classes.items():
        order = rng.permutation(len(paths))
        held_out = [max(1, round(r * len(paths))) if r > 0 else 0 for r in ratios[1:]]
        if sum(held_out) >= len(paths):
            raise DatasetError(f"class {name} has {len(paths)} image(s): too few to split by {tuple(ratios)} "
                               "with at least one image per split")
        start = len(paths) - sum(held_out)
        bounds = np.cumsum([0, start, *held_out])
        for split, low, high in zip(names, bounds[:-1], bounds[1:]):
            plan += [(paths[i], split, name, os.path.basename(paths[i])) for i in sorted(order[low:high].tolist())]
    return _write_plan(plan, out, mode)


def balance_dataset(split_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                    strategy: str = "down", mode: str = "copy", seed: int = 0) -> Counts:
    """Equal class counts for one split (a folder of class folders), written to ``out``.

    ``down``: every class keeps a seeded random subset the size of the smallest class. ``up``:
    every class keeps all its images and repeats seeded random picks (named ``<stem>_dupN<ext>``)
    up to the size of the largest. ``out`` defaults to ``<split_dir>_balanced`` beside it; the
    result is under ``out/<class>/`` (so balance ``data/train`` into ``balanced/train`` and copy
    the other splits alongside). The counts are returned under the split folder's name.
    """
    if strategy not in ("down", "up"):
        raise DatasetError(f"unknown strategy {strategy!r}; valid: down, up")
    split_dir = os.path.abspath(os.fspath(split_dir))
    out = os.fspath(out) if out is not None else split_dir.rstrip(os.sep) + "_balanced"
    classes = _class_files(split_dir)
    sizes = [len(paths) for paths in classes.values()]
    target = min(sizes) if strategy == "down" else max(sizes)
    rng = np.random.default_rng(seed)
    plan = []  # (source path, split: none, class, file name)
    for name, paths in classes.items():
        if strategy == "down":
            chosen = sorted(rng.choice(len(paths), size=target, replace=False).tolist())
            plan += [(paths[i], "", name, os.path.basename(paths[i])) for i in chosen]
            continue
        plan += [(path, "", name, os.path.basename(path)) for path in paths]
        repeats = rng.choice(len(paths), size=target - len(paths), replace=True).tolist()
        for copy_number, i in enumerate(repeats, start=1):
            stem, ext = os.path.splitext(os.path.basename(paths[i]))
            plan.append((paths[i], "", name, f"{stem}_dup{copy_number}{ext}"))
    written = _write_plan(plan, out, mode)
    return {os.path.basename(split_dir): written[""]}


def import_dataset(name: str, out: str | os.PathLike, per_class: int | None = None,
                   val_per_class: int | None = None, image_size: int | None = None, seed: int = 0,
                   test_per_class: int | None = None) -> Counts:
    """Write a bundled dataset as PNG class folders ``out/{train,validation,test}/<class>/``.

    ``fashion-mnist`` (from the Debian package ``dataset-fashion-mnist``, 28x28 grayscale): test
    is the official 10k set (or ``test_per_class`` images of each class from it); validation takes
    ``val_per_class`` images per class (default 1000, or ``per_class // 5`` when ``per_class`` is
    set, at least 1) from the official training set, and train ``per_class`` (default: all the
    rest) from what remains. ``digits`` (scikit-learn's 1797 8x8 digits, 0..16 scaled to 0..255):
    per class, 15% test and 15% validation (or ``test_per_class``/``val_per_class``), train the
    rest (or ``per_class`` of it). ``image_size`` resizes (bicubic) every image to a square of
    that side; default 28 for fashion-mnist and 32 for digits. Deterministic in ``seed``.
    """
    if name not in IMPORTABLE:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(IMPORTABLE)}")
    for label, value in (("per_class", per_class), ("val_per_class", val_per_class),
                         ("test_per_class", test_per_class), ("image_size", image_size)):
        if value is not None and value < 1:
            raise DatasetError(f"{label} must be a positive integer, got {value}")
    if name == "fashion-mnist":
        images, labels, class_names, test_pool = _read_fashion_mnist()
        default_size, default_val = 28, max(1, per_class // 5) if per_class else 1000
    else:
        images, labels, class_names, test_pool = _read_digits()
        default_size, default_val = 32, None
    rng = np.random.default_rng(seed)
    plan = _partition(labels, test_pool, rng, per_class, val_per_class or default_val, test_per_class)
    size = image_size or default_size

    def write(path: str, index: int) -> None:
        image = Image.fromarray(images[index])  # 2-D uint8: mode L
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        image.save(path)

    entries = [(index, split, class_names[labels[index]]) for split, indices in plan.items() for index in indices]
    return _write_generated(entries, out, write, desc=f"writing {name}")


def _partition(labels: np.ndarray, test_pool: np.ndarray | None, rng: np.random.Generator,
               per_class: int | None, val_per_class: int | None,
               test_per_class: int | None) -> dict[str, list[int]]:
    """Indices of each split. ``test_pool``: the official test indices, or None to carve 15%."""
    plan = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if test_pool is not None:
            tests = np.intersect1d(members, test_pool)
            pool = rng.permutation(np.setdiff1d(members, test_pool))
            if test_per_class is not None:
                tests = np.sort(rng.permutation(tests)[:test_per_class])
        else:
            pool = rng.permutation(members)
            count = test_per_class if test_per_class is not None else max(1, round(0.15 * len(members)))
            tests, pool = np.sort(pool[:count]), pool[count:]
        val_count = val_per_class if val_per_class is not None else max(1, round(0.15 * len(members)))
        train_count = per_class if per_class is not None else len(pool) - val_count
        if val_count + train_count > len(pool) or train_count < 1:
            raise DatasetError(f"class {label} has {len(pool)} images for train and validation: cannot "
                             f"take {val_count} for validation and {train_count} for train")
        plan["validation"] += np.sort(pool[:val_count]).tolist()
        plan["train"] += np.sort(pool[val_count:val_count + train_count]).tolist()
        plan["test"] += tests.tolist()
    return plan


def _read_fashion_mnist() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]:
    """All 70k images and labels (train first), class names, and the official test indices."""
    files = _package_files(FASHION_MNIST_PACKAGE)
    parts = {}
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        matches = [f for f in files if os.path.basename(f) in (stem, stem + ".gz")]
        if not matches:
            raise FileNotFoundError(f"{FASHION_MNIST_PACKAGE} is installed but has no {stem}[.gz]")
        parts[stem] = _read_idx(matches[0])
    images = np.concatenate([parts["train-images-idx3-ubyte"], parts["t10k-images-idx3-ubyte"]])
    labels = np.concatenate([parts["train-labels-idx1-ubyte"], parts["t10k-labels-idx1-ubyte"]])
    num_train = len(parts["train-labels-idx1-ubyte"])
    return images, labels.astype(np.int64), FASHION_MNIST_CLASSES, np.arange(num_train, len(labels))


def _read_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], None]:
    from sklearn.datasets import load_digits  # optional dependency: only this import needs it

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64), tuple(str(d) for d in range(10)), None


def _package_files(package: str) -> list[str]:
    """The files a Debian package installed, as ``dpkg -L`` lists them."""
    hint = f"install it with: sudo apt-get install {package}"
    try:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"dpkg is not available to locate the Debian package {package}; {hint}") from error
    if listing.returncode != 0:
        raise FileNotFoundError(f"the Debian package {package} is not installed; {hint}")
    return [line for line in listing.stdout.splitlines() if os.path.isfile(line)]


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format, optionally gzipped) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as file:
        data = file.read()
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:  # 0x08: unsigned bytes, all Fashion-MNIST uses
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape}, file holds {body.size} values")
    return body.reshape(shape)


def _class_files(folder: str | os.PathLike) -> dict[str, list[str]]:
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder} is not a folder")
    classes, _ = list_class_files(folder)
    if not classes:
        raise DatasetError(f"{folder} has no class folders (expected {folder}/<class>/<images>)")
    if empty := [name for name, paths in classes.items() if not paths]:
        raise DatasetError(f"empty class folder(s) in {folder}: {', '.join(empty)}")
    return classes


def _prepare_out(out: str | os.PathLike) -> str:
    out = os.fspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DatasetError(f"{out} exists and is not an empty folder; choose a new output folder")
    os.makedirs(out, exist_ok=True)
    return out


def _write_plan(plan: list[tuple[str, str, str, str]], out: str | os.PathLike, mode: str) -> Counts:
    """Place each ``(source, split, class, file name)`` at ``out/split/class/file name``.

    An empty split places files at ``out/class/file name`` (counted under the key "")."""
    if mode not in WRITE_MODES:
        raise DatasetError(f"unknown mode {mode!r}; valid: {', '.join(WRITE_MODES)}")
    out = _prepare_out(out)
    counts: Counts = {}
    for source, split, name, file_name in tqdm(plan, desc=f"{mode} files", unit="file", disable=None):
        folder = os.path.join(out, split, name)
        os.makedirs(folder, exist_ok=True)
        _place(os.path.abspath(source), os.path.join(folder, file_name), mode)
        counts.setdefault(split, {}).setdefault(name, 0)
        counts[split][name] += 1
    return counts


def _place(source: str, destination: str, mode: str) -> None:
    if mode == "copy":
        shutil.copy2(source, destination)
    elif mode == "symlink":
        os.symlink(source, destination)
    else:
        try:
            os.link(source, destination)
        except OSError as error:
            raise DatasetError(f"cannot hard-link {source} to {destination} ({error}); hard links need "
                          "one filesystem: use mode='copy' or 'symlink'") from error


def _write_generated(entries: list[tuple[int, str, str]], out: str | os.PathLike,
                     write: Callable[[str, int], None], desc: str) -> Counts:
    """Write each ``(index, split, class)`` as ``out/split/class/<split>_<index>.png``."""
    out = _prepare_out(out)
    counts: Counts = {}
    for index, split, name in tqdm(entries, desc=desc, unit="img", disable=None):
        folder = os.path.join(out, split, name)
        os.makedirs(folder, exist_ok=True)
        write(os.path.join(folder, f"{split}_{index:05d}.png"), index)
        counts.setdefault(split, {}).setdefault(name, 0)
        counts[split][name] += 1
    return counts
