"""The NVIDIA DALI loader: decode and augment in DALI's native thread pool (or on the GPU).

Same signature and face as :func:`phasenets.data.torch_loader.build_torch_loader` (see
docs/internals.md): batches of ``(images, labels, indices)``, ``set_epoch``, ``set_view``.

How views stay reproducible. DALI's own random operators draw from per-thread generators, so
what a sample gets depends on which batch and thread it lands in. Here DALI draws nothing: every
random choice (crop box, flip, affine matrix, brightness, contrast, erased box) is computed in
Python by the PIL path's own sampler (:meth:`ImageTransform.params`, seeded by
``view_seed(seed, index, view)``) and fed to the graph as per-sample arguments through
``fn.external_source``. View ``v`` of sample ``i`` is therefore the same image whatever the batch
size, shuffle order, rank or device.

How the pixels match the torch loader's. The graph runs the steps of
:class:`~phasenets.data.transforms.ImageTransform` with the same arithmetic. DALI's CPU decoder is
libjpeg-turbo for JPEGs, as PIL's, and decodes them to the same RGB; a gray file decodes to the
same L; for a 1-channel network a colour file is decoded to RGB and converted by PIL's integer
formula (:func:`_luminance`), not by the decoder. The few files DALI decodes otherwise (alpha,
16-bit colour) are decoded by PIL in the feed. The resize, warp and colour steps stay in float
and the normalization is the arithmetic both compute, so on the CPU the two loaders' images differ
by float rounding only (see transforms.py). The ``mixed`` decoder (nvJPEG, on a GPU) decodes
JPEGs with its own IDCT and chroma upsampling; not measured here.

How a bad file is kept from killing a phase. A DALI pipeline that fails to decode one sample
raises a critical error and cannot be used again, so (1) the preflight
(``phasenets data check``) removes bad files before training, (2) each file is screened in
Python before it is fed: its header must parse and a JPEG must end in an EOI marker, a PNG in
its IEND chunk (this catches empty, non-image and truncated files), and (3) should the decoder
still fail, the batches in flight are re-decoded one file at a time by a probe pipeline, the
culprits are quarantined and a fresh pipeline resumes from the failed batch. A quarantined
sample is replaced by the next good sample of the split (with that sample's own label and index,
so every triple stays truthful) and listed in ``loader.bad_files`` with a warning.
"""
from __future__ import annotations

import collections
import io
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

# Imported here, not lazily: `phasenets.data.build_loader(kind="auto")` falls back to the torch
# loader exactly when importing this module fails.
try:
    import nvidia.dali as dali
    import nvidia.dali.math  # noqa: F401 - dali.math.clamp
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import feed_ndarray
except ImportError as error:
    raise ImportError("the DALI loader needs NVIDIA DALI: `pip install nvidia-dali-cuda130` (the wheel "
                      "matching your CUDA), or use the torch loader (`--loader torch`)") from error

from phasenets.data.images import BadImageError, has_alpha, load_image, open_image_file, read_header
from phasenets.data.layout import DatasetError, Sample
from phasenets.data.torch_loader import SampledLoader, ShardedBatchSampler
from phasenets.data.transforms import (AugmentConfig, AugmentParams, ImageTransform, Normalization,
                                       affine_matrix, erase_box, source_box)

# Batches DALI prepares ahead of the one being consumed.
_PREFETCH_DEPTH = 2
# A JPEG's EOI marker can be followed by padding; look for it in this many trailing bytes.
_JPEG_TAIL_BYTES = 1024


# ----------------------------------------------------------------------------------------------
# Per-sample graph inputs, from the parameters the PIL path samples
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphInputs:
    """What the graph needs to produce one view of one sample.

    ``roi_start``/``roi_end``: the (y, x) corners, in source pixels, of the region resized to
    ``image_size`` squared (x start > x end flips horizontally). ``matrix``: the affine warp's
    output-to-input map, 2x3. ``erase_shape`` (0, 0) erases nothing.
    """

    roi_start: tuple[float, float]
    roi_end: tuple[float, float]
    matrix: tuple[tuple[float, float, float], tuple[float, float, float]] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    brightness: float = 1.0
    contrast: float = 1.0
    erase_anchor: tuple[int, int] = (0, 0)
    erase_shape: tuple[int, int] = (0, 0)


def graph_inputs(params: AugmentParams | None, width: int, height: int, image_size: int) -> GraphInputs:
    """Turn one view's :class:`AugmentParams` (None: evaluation) into the graph's inputs, with
    the PIL path's geometry helpers so that both loaders make the same view."""
    x0, y0, x1, y1 = source_box(params, width, height, image_size)
    if params is None:
        return GraphInputs((y0, x0), (y1, x1))
    a, b, c, d, e, f = affine_matrix(params, image_size, image_size)
    erase_anchor, erase_shape = (0, 0), (0, 0)
    if params.erase is not None:
        erase_x, erase_y, erase_w, erase_h = erase_box(params, image_size, image_size)
        erase_anchor, erase_shape = (erase_y, erase_x), (erase_h, erase_w)
    return GraphInputs((y0, x0), (y1, x1), ((a, b, c), (d, e, f)), params.brightness,
                       params.contrast, erase_anchor, erase_shape)


def _has_affine(augment: AugmentConfig) -> bool:
    return any((augment.rotation, augment.shear, augment.zoom, augment.shift))


def _has_color(augment: AugmentConfig) -> bool:
    return bool(augment.brightness or augment.contrast)


# ----------------------------------------------------------------------------------------------
# Screening encoded files
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """What the feed needs from a file's header. ``decoded_by_pil``: DALI's decoder would make
    other pixels of it than :func:`~phasenets.data.images.to_channels`, so the feed decodes it."""

    width: int
    height: int
    format: str  # PIL's name: "JPEG", "PNG", "BMP"
    colour: bool = False  # more than one band, or a palette
    decoded_by_pil: bool = False


def _dali_decodes_otherwise(image, data: bytes) -> bool:
    """Whether DALI's decoder turns this file into other 8-bit pixels than PIL + ``to_channels``.

    Measured against DALI 2.4's CPU decoder: 8-bit L, RGB and palette PNGs, BMPs, 1-bit PNGs,
    16-bit grayscale PNGs and L, RGB and CMYK JPEGs decode to the same pixels. Alpha differs (DALI
    drops it where ``to_channels`` composites on black), and so does 16-bit colour (PIL keeps each
    sample's high byte, DALI rounds): those few files are decoded by PIL in the feed.
    """
    if has_alpha(image):
        return True
    # A PNG's IHDR chunk comes first: bit depth at byte 24, colour type (2 RGB, 6 RGBA) at 25.
    return image.format == "PNG" and data[24] == 16 and data[25] in (2, 6)


def read_encoded(path: str, header: Header | None = None) -> tuple[np.ndarray, Header]:
    """The file's bytes and header, or :class:`BadImageError` for a file the decoder would choke
    on: empty, not an image, or a JPEG / PNG cut short. Pass the ``header`` of an earlier read to
    skip parsing it again (the completeness checks still run)."""
    with open_image_file(path) as file:  # a regular file within the size limit, or BadImageError
        data = file.read()
        if not data:
            raise BadImageError(path, "empty file", "empty_file")
        if header is None:
            file.seek(0)
            try:
                with read_header(file, path) as image:  # within the pixel limit
                    header = Header(image.width, image.height, image.format,
                                    len(image.getbands()) > 1 or image.mode == "P",
                                    _dali_decodes_otherwise(image, data))
            except BadImageError:
                raise
            except Exception as error:  # PIL raises many types for garbage input
                raise BadImageError(path, "not an image file PIL can identify") from error
    if header.format == "JPEG" and data.rfind(b"\xff\xd9", max(0, len(data) - _JPEG_TAIL_BYTES)) < 0:
        raise BadImageError(path, "truncated JPEG (no end-of-image marker)")
    if header.format == "PNG" and b"IEND" not in data[-32:]:
        raise BadImageError(path, "truncated PNG (no IEND chunk)")
    return np.frombuffer(data, dtype=np.uint8), header


# ----------------------------------------------------------------------------------------------
# The DALI graph
# ----------------------------------------------------------------------------------------------

def _param_names(augment: AugmentConfig | None, in_channels: int, on_gpu: bool) -> list[str]:
    """The per-sample inputs the graph consumes, in the order the feed returns them."""
    names = ["encoded", "roi_start", "roi_end"]
    if in_channels == 1 and not on_gpu:
        names.append("colour")
    if augment is not None and augment.enabled:
        if _has_affine(augment):
            names.append("matrix")
        if _has_color(augment):
            names += ["brightness", "contrast"]
        if augment.random_erasing > 0:
            names += ["erase_anchor", "erase_shape"]
    return names


def _build_pipeline(*, source, names, batch_size, num_threads, device_id, seed, image_size,
                    in_channels, augment, normalization):
    on_gpu = device_id is not None

    # Conditionals: on the CPU a 1-channel graph decodes a gray file straight to L and only a
    # colour file through RGB (a sample takes one branch; a colour JPEG's luma plane is not PIL's L).
    @pipeline_def(enable_conditionals=True)
    def graph():
        inputs = dict(zip(names, fn.external_source(source=source, num_outputs=len(names), batch=True)))
        # The steps and arithmetic of ImageTransform (transforms.py's module docstring), in float
        # from the resize on: nothing is rounded to 8 bits that the PIL path keeps in float.
        encoded, device = inputs["encoded"], "mixed" if on_gpu else "cpu"
        if in_channels == 3:
            images = fn.decoders.image(encoded, device=device, output_type=types.RGB, adjust_orientation=False)
        elif on_gpu or inputs["colour"]:
            images = _luminance(fn.decoders.image(encoded, device=device, output_type=types.RGB,
                                                  adjust_orientation=False))
        else:
            images = fn.decoders.image(encoded, device=device, output_type=types.GRAY, adjust_orientation=False)
        # (adjust_orientation=False: PIL ignores EXIF orientation too.)
        images = fn.resize(images, roi_start=inputs["roi_start"], roi_end=inputs["roi_end"],
                           size=(image_size, image_size), interp_type=types.INTERP_LINEAR,
                           antialias=True, dtype=types.FLOAT)
        if "matrix" in inputs:
            images = fn.warp_affine(images, matrix=inputs["matrix"], inverse_map=True,
                                    fill_value=0, interp_type=types.INTERP_LINEAR)
        if "brightness" in inputs:
            images = dali.math.clamp(fn.brightness_contrast(images, brightness=inputs["brightness"],
                                                            contrast=inputs["contrast"], contrast_center=127.5),
                                     0.0, 255.0)
        mean, std = normalization.scaled_to_8bit()
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
        if "erase_anchor" in inputs:
            # Filling with 0 after normalization paints the dataset mean, as RandomErasing does.
            images = fn.erase(images, anchor=inputs["erase_anchor"], shape=inputs["erase_shape"],
                              axis_names="HW", fill_value=0.0)
        return images

    # exec_dynamic: outputs get their own buffers, so CPU batches can be handed out zero-copy.
    pipe = graph(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                 prefetch_queue_depth=_PREFETCH_DEPTH, exec_dynamic=True)
    pipe.build()
    return pipe


def _luminance(images):
    """8-bit RGB ``[H, W, 3]`` -> L ``[H, W, 1]`` by PIL's integer formula (``Image.convert("L")``:
    ``(19595 R + 38470 G + 7471 B + 32768) >> 16``), what :func:`~phasenets.data.images.to_channels`
    gives; DALI's own RGB-to-gray conversion rounds otherwise. In float32 every product and sum
    of ``M`` is exact, and the conversion rounds half up: equal to PIL's on all 2^24 RGB values
    (checked on the CPU)."""
    return fn.coord_transform(images, M=[19595 / 65536, 38470 / 65536, 7471 / 65536], dtype=types.UINT8)


def _lossless_png(image) -> np.ndarray:
    """An 8-bit L or RGB PIL image as PNG bytes, which DALI decodes to exactly its pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _pack(names: list[str], encoded: list[np.ndarray], colour: list[bool], params: list[GraphInputs]) -> tuple:
    """One batch per graph input, in ``names`` order (parameters as one [B, ...] array each)."""
    def column(get):
        return np.array([get(p) for p in params], dtype=np.float32)

    columns = {
        "encoded": encoded,
        "colour": np.array(colour, dtype=bool),
        "roi_start": column(lambda p: p.roi_start),
        "roi_end": column(lambda p: p.roi_end),
        "matrix": column(lambda p: p.matrix),
        "brightness": column(lambda p: p.brightness),
        "contrast": column(lambda p: p.contrast),
        "erase_anchor": column(lambda p: p.erase_anchor),
        "erase_shape": column(lambda p: p.erase_shape),
    }
    return tuple(columns[name] for name in names)


class _Probe:
    """A one-image CPU pipeline that tells whether DALI's decoder accepts a file."""

    def __init__(self):
        self._pipe = None

    def decodes(self, encoded: np.ndarray) -> bool:
        if self._pipe is None:
            self._pipe = dali.Pipeline(batch_size=1, num_threads=1, device_id=None,
                                       prefetch_queue_depth=1)
            with self._pipe:
                data = fn.external_source(name="encoded", dtype=types.UINT8)
                self._pipe.set_outputs(fn.decoders.image(data, output_type=types.RGB))
            self._pipe.build()
        try:
            self._pipe.feed_input("encoded", [encoded])
            self._pipe.run()
            return True
        except RuntimeError:
            self._pipe = None  # a pipeline is unusable after a critical error
            return False


# ----------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------

class DaliLoader(SampledLoader):
    """Iterable of ``(images, labels, indices)`` batches produced by a DALI pipeline.

    Build it with :func:`build_dali_loader`. Images are float32 ``[B, C, H, W]``, normalized, on
    the current CUDA device when one is available (GPU decode and operators) and on the CPU
    otherwise; labels and indices are int64 on the CPU. One epoch is iterated at a time.
    """

    def __init__(self, samples: list[Sample], *, image_size: int, in_channels: int,
                 augment: AugmentConfig | None, normalization: Normalization, batch_size: int,
                 shuffle: bool, seed: int, num_workers: int, drop_last: bool, rank: int,
                 world_size: int):
        _check_arguments(samples, in_channels, num_workers)
        self._paths = [sample.path for sample in samples]
        self._labels = torch.tensor([sample.label for sample in samples], dtype=torch.int64)
        self._image_size, self._in_channels = image_size, in_channels
        self._augment = augment if augment is not None and augment.enabled else None
        self._normalization = normalization
        self._batch_size, self._num_threads = batch_size, max(1, num_workers)
        # The torch loader's sampler: both loaders give a rank the same samples in the same order.
        self.sampler = ShardedBatchSampler(len(samples), batch_size, shuffle=shuffle, seed=seed,
                                            drop_last=drop_last, rank=rank, world_size=world_size)
        self._seed = seed
        self._device_id = torch.cuda.current_device() if torch.cuda.is_available() else None
        self._names = _param_names(self._augment, in_channels, self._device_id is not None)
        # Only its parameter sampler is used: the one source of every random choice.
        self._transform = ImageTransform(image_size=image_size, in_channels=in_channels,
                                         augment=augment, normalization=normalization, seed=seed)
        self._bad: dict[int, str] = {}
        self._headers: dict[int, Header] = {}  # parsed once per file: the feed runs every epoch
        self._probe = _Probe()
        self._pipe = None
        self._active = None  # the epoch being iterated, if any
        # Per-epoch feed state, read by the external_source callback.
        self._pending: collections.deque[list[tuple[int, int]]] = collections.deque()
        self._in_flight: collections.deque[list[tuple[int, int]]] = collections.deque()

    # -- the shared loader face ----------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        """Samples in the split (before sharding)."""
        return len(self._paths)

    @property
    def description(self) -> str:
        """What makes the batches, for the trainer's log."""
        if self._device_id is None:
            return f"DALI, CPU pipelines, {self._num_threads} thread(s)"
        return f"DALI, nvJPEG decoding and GPU operators on cuda:{self._device_id}"

    @property
    def bad_files(self) -> list[str]:
        """One message per file quarantined so far (path and reason), in index order; their
        batch slots got a substitute sample."""
        return [reason for _, reason in sorted(self._bad.items())]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._active is not None:
            self._active.close()  # an unfinished earlier epoch: drop its prefetched batches
        self._pending = collections.deque(self.sampler)  # batches of (index, view)
        self._in_flight.clear()
        self._active = self._run()
        return self._active

    # -- internals -----------------------------------------------------------------------------

    def _run(self):
        completed = False
        try:
            while True:
                if self._pipe is None:
                    self._pipe = self._new_pipeline()
                try:
                    (images,) = self._pipe.run()
                except StopIteration:
                    completed = True
                    return
                except RuntimeError as error:
                    self._recover(error)
                    continue
                indices = torch.tensor([index for index, _ in self._in_flight.popleft()], dtype=torch.int64)
                yield self._to_torch(images), self._labels[indices], indices
        finally:
            if completed:
                self._pipe.reset()  # ready for the next epoch
            else:
                self._pipe = None  # abandoned or failed mid-epoch: prefetched batches are stale
            self._active = None

    def _new_pipeline(self):
        return _build_pipeline(
            source=self._feed, names=self._names, batch_size=self._batch_size,
            num_threads=self._num_threads, device_id=self._device_id, seed=self._seed,
            image_size=self._image_size, in_channels=self._in_channels, augment=self._augment,
            normalization=self._normalization)

    def _feed(self):
        """external_source callback: the encoded files and view parameters of the next batch."""
        if not self._pending:
            raise StopIteration
        batch = self._pending.popleft()
        fed, encoded, colour, params = [], [], [], []
        for index, view in batch:
            index, data, header = self._read_good(index)
            fed.append((index, view))
            encoded.append(data)
            colour.append(header.colour and not header.decoded_by_pil)  # PIL's decode comes as L or RGB
            params.append(graph_inputs(self._transform.params(index, view), header.width,
                                       header.height, self._image_size))
        self._in_flight.append(fed)
        return _pack(self._names, encoded, colour, params)

    def _read_good(self, index: int) -> tuple[int, np.ndarray, Header]:
        """Read sample ``index``, or the next good sample when it is (or turns out to be) bad."""
        for _ in range(len(self._paths)):
            if index not in self._bad:
                try:
                    data, self._headers[index] = read_encoded(self._paths[index], self._headers.get(index))
                    if self._headers[index].decoded_by_pil:
                        data = _lossless_png(load_image(self._paths[index], self._in_channels))
                    return index, data, self._headers[index]
                except (BadImageError, OSError) as error:
                    self._quarantine(index, str(error))
            index = (index + 1) % len(self._paths)
        raise DatasetError(f"every file of this split is unreadable (the first: {self._paths[0]}); "
                           "run `phasenets data check`")

    def _quarantine(self, index: int, reason: str) -> None:
        self._bad[index] = reason
        warnings.warn(f"DALI loader: skipping {reason}; its batch slot gets the next good sample "
                      f"(run `phasenets data check` to find every bad file)", stacklevel=3)

    def _recover(self, error: RuntimeError) -> None:
        """The decoder failed: quarantine the culprits of the batches in flight, replay them."""
        self._pipe = None
        suspects = [index for batch in self._in_flight for index, _ in batch]
        culprits = [index for index in suspects
                    if not self._probe.decodes(np.fromfile(self._paths[index], dtype=np.uint8))]
        if not culprits:
            raise error
        for index in culprits:
            self._quarantine(index, f"{self._paths[index]}: DALI cannot decode it")
        self._pending.extendleft(reversed(list(self._in_flight)))
        self._in_flight.clear()

    def _to_torch(self, images) -> torch.Tensor:
        if self._device_id is None:
            # Zero copy: with the dynamic executor every batch has its own buffer, which the
            # DLPack capsule keeps alive while the tensor lives (DALI's pool recycles it later).
            # Copying 40 MB into a fresh torch tensor instead cost as much as decoding the batch.
            return torch.from_dlpack(images.as_tensor())
        shape = (len(images), self._in_channels, self._image_size, self._image_size)
        device = torch.device("cuda", self._device_id)
        out = torch.empty(shape, dtype=torch.float32, device=device)
        stream = torch.cuda.current_stream(device)
        feed_ndarray(images.as_tensor(), out, cuda_stream=stream)
        return out


def _check_arguments(samples, in_channels, num_workers) -> None:
    # image_size, batch_size, rank and world_size are checked by ImageTransform and the sampler.
    if not samples:
        raise ValueError("cannot build a loader over an empty sample list")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")


def build_dali_loader(samples: list[Sample], *, image_size: int, in_channels: int,
                      augment: AugmentConfig | None, normalization: Normalization, batch_size: int,
                      shuffle: bool, seed: int, num_workers: int = 2, drop_last: bool = False,
                      rank: int = 0, world_size: int = 1) -> DaliLoader:
    """A DALI loader over ``samples``; ``num_workers`` is the size of DALI's thread pool.

    CPU pipelines when no CUDA device is visible; otherwise the ``mixed`` (nvJPEG) decoder and GPU
    operators on ``torch.cuda.current_device()``. Raises ImportError when DALI is not installed.
    """
    return DaliLoader(samples, image_size=image_size, in_channels=in_channels, augment=augment,
                      normalization=normalization, batch_size=batch_size, shuffle=shuffle,
                      seed=seed, num_workers=num_workers, drop_last=drop_last, rank=rank,
                      world_size=world_size)
