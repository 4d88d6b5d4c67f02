"""Where JPEGs are decoded: in the DataLoader workers (PIL, the default) or on the GPU (nvjpeg).

On a GPU the CPU cores can be what bounds a run: each worker decodes, resizes and crops its images before
the model sees them. `--decode device` (or `auto`, when a timing probe finds it faster) lets the workers send
the JPEG bytes as they are (a uint8 tensor, pinned by the DataLoader); the main process decodes a whole batch
with `torchvision.io.decode_jpeg(..., device="cuda")`, then resizes and crops it on the GPU. Images that are
not JPEGs (PNG, WebP, ...) are still decoded by the workers, and a JPEG that nvjpeg refuses (CMYK, some
progressive files) is decoded by PIL in the main process, so the two paths accept the same files.

The GPU resize is torch's antialiased bicubic, not PIL's: pixels may differ from the CPU path by a few
levels of 255, so scores differ in the third or fourth decimal. The decoded pixels themselves are the same
(both use libjpeg-turbo's arithmetic on CPU; nvjpeg on the GPU agrees up to rounding).

`DeviceFeed` copies batch i+1 to the GPU (from pinned memory: the DataLoader pins the JPEG bytes too) and
decodes it on a side stream, issued before batch i goes to the model, so the model never waits on a copy or
a decode it could have overlapped.

`auto` compares like with like: the GPU's batched decode + resize against the CPU decoders a run has,
workers x decode threads (at most the cores), each at the single-thread speed of PIL decode + preprocess.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

JPEG_MAGIC = b"\xff\xd8\xff"
DECODE_MODES = ("auto", "cpu", "device")


def is_jpeg(data: bytes) -> bool:
    """Whether the bytes start like a JPEG file.

    Args:
        data: the file's bytes.
    Returns:
        True for a JPEG.
    """
    return data[:3] == JPEG_MAGIC


@dataclass
class ResizeCrop:
    """The geometric part of open_clip's eval transform (Resize shortest side, CenterCrop), on tensors."""

    size: int
    crop: tuple[int, int]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, h, w] on any device -> uint8 [3, crop_h, crop_w] on the same device."""
        from torchvision.transforms.v2 import functional as F

        bicubic = F.InterpolationMode.BICUBIC
        if image.device.type == "cpu":  # torch has a uint8 antialiased bicubic kernel on the CPU only
            resized = F.resize(image, [self.size], interpolation=bicubic, antialias=True)
        else:
            resized = F.resize(image.float(), [self.size], interpolation=bicubic, antialias=True)
            resized = resized.round_().clamp_(0, 255).to(torch.uint8)
        return F.center_crop(resized, list(self.crop))


def resize_crop_of(preprocess) -> ResizeCrop | None:
    """The ResizeCrop equal to `preprocess` (a worker-side transform ending in uint8 pixels), or None when it
    does anything else (another interpolation, a max_size, letterboxing): then only the CPU path is exact.

    Args:
        preprocess: the worker-side transform (see `backends.split_to_tensor`).
    Returns:
        The ResizeCrop, or None.
    """
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 3 or type(steps[0]) is not T.Resize or type(steps[1]) is not T.CenterCrop:
        return None
    resize, crop = steps[0], steps[1]
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    if size is None or resize.max_size is not None or resize.interpolation != T.InterpolationMode.BICUBIC:
        return None
    if any(type(s).__name__ not in ("MaybeConvertMode", "function", "_ToUint8") for s in steps[2:]):
        return None
    return ResizeCrop(int(size), tuple(int(v) for v in crop.size))


class JpegDecoder:
    """Decodes a batch of JPEG byte tensors on `device` and resizes and crops them there."""

    def __init__(self, device: torch.device, resize_crop: ResizeCrop):
        self.device, self.resize_crop = device, resize_crop

    def decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        """Decode a batch of JPEGs on the device and resize and crop each.

        Args:
            encoded: one uint8 byte tensor per JPEG, on the CPU.
        Returns:
            One uint8 [3, h, w] tensor (on the device) per input, or the exception that input raised.
        """
        with warnings.catch_warnings():  # torchvision 0.29 points at TorchCodec on every call; decode_jpeg stays
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._decode(encoded)

    def _decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        from torchvision.io import ImageReadMode, decode_jpeg

        if not encoded:
            return []
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad file fails the batch: decode one by one to find it
            images = []
            for data in encoded:
                try:
                    images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError as e:
                    images.append(e)
        return [im if isinstance(im, Exception) else self.resize_crop(im) for im in images]


def prefer_device(device_s_per_image: float, cpu_s_per_image: float, cpu_decoders: int) -> bool:
    """Whether the device decodes faster than the CPU decoders together (each at cpu_s_per_image).

    Args:
        device_s_per_image: the device path's seconds per image.
        cpu_s_per_image: one CPU decoder's seconds per image.
        cpu_decoders: how many images the CPU decodes at once.
    Returns:
        True when the device is faster.
    """
    return device_s_per_image * max(1, cpu_decoders) < cpu_s_per_image


def cpu_decoders(workers: int, decode_threads: int, cores: int | None = None) -> int:
    """How many images the CPU decodes at once in a run: DataLoader workers x decode threads (each worker
    decodes a batch in its threads; PIL releases the GIL), at most the cores this process may use
    (`cores`, by default its CPU affinity). No workers: the main process's threads.

    Args:
        workers: DataLoader workers.
        decode_threads: threads per worker.
        cores: the cores to count as available (None: this process's affinity).
    Returns:
        At least 1.
    """
    import os

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(max(1, workers) * max(1, decode_threads), cores))


def choose_decode(requested: str, device: torch.device, preprocess, cpu_decoders: int) -> tuple[str, str]:
    """Where images are decoded. `device` asks for GPU decoding and fails with the reason when it cannot be
    had; `auto` takes it on CUDA when a probe on a photo-sized JPEG finds it faster than the CPU decoders
    together (`cpu_decoders`: see the function of that name).

    Args:
        requested: "auto", "cpu" or "device" (`--decode`).
        device: the model's device.
        preprocess: the worker-side transform (the GPU path must reproduce it).
        cpu_decoders: how many images the CPU decodes at once.
    Returns:
        ("cpu" or "device", why, for the log).
    Raises:
        ValueError: an unknown mode, or "device" where GPU decoding cannot be had.
    """
    if requested not in DECODE_MODES:
        raise ValueError(f"decode={requested!r}; choose one of {DECODE_MODES}")
    if requested == "cpu":
        return "cpu", "asked for"
    why_not = None
    resize_crop = resize_crop_of(preprocess)
    if device.type != "cuda":
        why_not = f"the model runs on {device}, not on a CUDA device"
    elif resize_crop is None:
        why_not = "the model's image transform is not Resize(bicubic) + CenterCrop, which the GPU path reproduces"
    if why_not is None:
        try:
            device_s, cpu_s = probe_decode_speed(JpegDecoder(device, resize_crop), preprocess)
        except RuntimeError as e:  # torchvision built without nvjpeg, or no usable CUDA
            why_not = f"GPU JPEG decoding failed: {e}"
    if why_not is not None:
        if requested == "device":
            raise ValueError(f"--decode device: {why_not}; use --decode cpu or auto")
        return "cpu", why_not
    if requested == "device" or prefer_device(device_s, cpu_s, cpu_decoders):
        return "device", f"GPU {1 / device_s:.0f} images/s vs CPU {cpu_decoders / cpu_s:.0f} ({cpu_decoders} decoders)"
    return "cpu", f"CPU {cpu_decoders / cpu_s:.0f} images/s ({cpu_decoders} decoders) vs GPU {1 / device_s:.0f}"


def probe_jpeg(width: int = 500, height: int = 375) -> bytes:
    """A photo-like JPEG (smooth noise) of a typical web image's size.

    Args:
        width: its width in pixels.
        height: its height in pixels.
    Returns:
        The JPEG's bytes.
    """
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).resize((width, height), Image.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def probe_decode_speed(decoder: JpegDecoder, preprocess, n: int = 64) -> tuple[float, float]:
    """Seconds per image of the device path (batches of n) and of PIL decode + preprocess in one thread.

    Args:
        decoder: the device decoder (CUDA).
        preprocess: the worker-side transform.
        n: the device batch's size.
    Returns:
        (device seconds per image, CPU seconds per image).
    """
    import io

    from PIL import Image

    data = probe_jpeg()
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for _ in range(n)]
    decoder.decode(encoded[:4])  # warm-up: nvjpeg handles, kernels
    torch.cuda.synchronize(decoder.device)
    start = time.perf_counter()
    decoder.decode(encoded)
    torch.cuda.synchronize(decoder.device)
    device_s = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(8):
        with Image.open(io.BytesIO(data)) as image:
            preprocess(image.convert("RGB"))
    return device_s, (time.perf_counter() - start) / 8


class CudaStreams:
    """The side stream DeviceFeed works on, and the events that order it with the model's stream."""

    def __init__(self, device: torch.device):
        self.device, self.stream = device, torch.cuda.Stream(device)

    def side(self):
        """A context in which work is issued on the side stream."""
        return torch.cuda.stream(self.stream)

    def record(self):
        """An event marking the work issued so far on the side stream."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def wait(self, event, value: Any) -> None:
        """The model's stream waits for `event` before its next work; `value`'s tensors are now its too.

        Args:
            event: an event from `record`.
            value: a batch (tensors in dicts and lists) made on the side stream.
        """
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        _record_stream(value, current)


class DeviceFeed:
    """Iterates batches ready for the model: their tensors on the device and their JPEGs decoded (`prepare`,
    e.g. `on_device`). On CUDA, batch i+1 is copied (from pinned memory, non-blocking) and decoded on a side
    stream, issued before batch i goes to the model, so transfers and nvjpeg overlap the model, which waits
    (an event, not the host) only for the batch it is about to use. On the CPU it prepares each batch in turn.

    `streams` is CudaStreams(device) by default on CUDA; tests give a fake that logs the order of events.
    """

    def __init__(self, batches: Iterable[dict], device: torch.device, prepare, streams=None):
        self.batches, self.device, self.prepare = batches, device, prepare
        self.streams = streams if streams is not None or device.type != "cuda" else CudaStreams(device)

    def __iter__(self) -> Iterator[dict]:
        if self.streams is None:
            for batch in self.batches:
                yield self.prepare(batch)
            return
        pending = None
        for batch in self.batches:
            with self.streams.side():
                ready = self.prepare(batch)  # batch i+1: copies and decoding issued on the side stream
                event = self.streams.record()
            if pending is not None:
                yield pending  # batch i: the model runs while the side stream works
            self.streams.wait(event, ready)
            pending = ready
        if pending is not None:
            yield pending


def on_device(batch: dict, decoder: JpegDecoder | None, preprocess, device: torch.device) -> dict:
    """The batch with its tensors moved to `device` and its pixels assembled there (JPEGs decoded by
    `decoder`).

    Args:
        batch: a batch from `collate_prepared` (with its task's fields).
        decoder: the device decoder, or None when every image came decoded.
        preprocess: the worker-side transform (PIL's fallback for JPEGs nvjpeg refuses).
        device: the model's device.
    Returns:
        The batch with "pixels" [rows, 3, H, W] uint8 (or the worker's float pixels) and "failed" the
        (row, reason) of images that could not be decoded.
    """
    moved = to_device(batch, device)
    pixels, failed = assemble_pixels(moved, decoder, preprocess, device) if moved["ids"] else (None, [])
    return {**moved, "pixels": pixels, "failed": failed}


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors in a batch (dicts, lists) moved to `device`, non-blocking; encoded JPEGs stay on the CPU
    (decode_jpeg reads them there).

    Args:
        value: a tensor, or dicts and lists holding them.
        device: the target device.
    Returns:
        The same structure with its tensors moved.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: (v if k == "encoded" else to_device(v, device)) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value


def _record_stream(value: Any, stream) -> None:
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            value.record_stream(stream)
    elif isinstance(value, dict):
        for v in value.values():
            _record_stream(v, stream)
    elif isinstance(value, list):
        for v in value:
            _record_stream(v, stream)


def prepare_encoded(data: bytes, preprocess, send_jpeg: bool) -> tuple[str, torch.Tensor]:
    """A worker's part for one image: ("encoded", its bytes as uint8) for a JPEG the device decodes, else
    ("pixels", preprocess(image)) decoded here with PIL. Raises what PIL raises for a bad file.

    Args:
        data: the image file's bytes.
        preprocess: the worker-side transform.
        send_jpeg: pass JPEGs to the device undecoded.
    Returns:
        ("encoded", uint8 [bytes]) or ("pixels", [3, H, W]).
    """
    import io

    from PIL import Image

    if send_jpeg and is_jpeg(data):
        return "encoded", torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # a truncated file fails here, not later
        return "pixels", preprocess(image.convert("RGB"))


def assemble_pixels(batch: dict, decoder: JpegDecoder | None, preprocess,
                    device: torch.device) -> tuple[torch.Tensor | None, list[tuple[int, str]]]:
    """The batch's pixels on the device, decoded ones and worker-made ones in row order, and the rows whose
    JPEG neither nvjpeg nor PIL could decode, with the reason.

    Args:
        batch: the batch, its tensors on the device.
        decoder: the device decoder.
        preprocess: the worker-side transform (PIL's fallback).
        device: the model's device.
    Returns:
        (pixels [rows, 3, H, W] uint8, or None when no image could be decoded; [(row, reason)] of the failed).
    """
    if batch["encoded"] is None:
        return batch["pixels"], []
    decoded = decoder.decode(batch["encoded"])
    failed: list[tuple[int, str]] = []
    for k, image in enumerate(decoded):
        if isinstance(image, Exception):  # nvjpeg refuses some files PIL reads (CMYK, ...): PIL decides
            try:
                decoded[k] = prepare_encoded(batch["encoded"][k].numpy().tobytes(), preprocess, False)[1].to(device)
            except Exception as e:  # noqa: BLE001 (the image's error, not the run's)
                failed.append((batch["encoded_rows"][k], f"cannot decode image: {type(e).__name__}: {e}"))
    good = [image for image in decoded if isinstance(image, torch.Tensor)]
    if not good and not batch["pixel_rows"]:
        return None, failed
    shape = good[0].shape if good else batch["pixels"].shape[1:]
    rows = len(batch["encoded"]) + len(batch["pixel_rows"])
    pixels = torch.empty((rows, *shape), dtype=torch.uint8, device=device)
    if batch["pixel_rows"]:
        pixels[batch["pixel_rows"]] = batch["pixels"].to(device, non_blocking=True)
    for row, image in zip(batch["encoded_rows"], decoded):
        if isinstance(image, torch.Tensor):
            pixels[row] = image
    if failed:
        keep = [r for r in range(rows) if r not in {row for row, _ in failed}]
        pixels = pixels[keep]
    return pixels, failed
