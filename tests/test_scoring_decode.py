"""`--decode device` on the CPU with fakes: the next batch's copy and decode are issued (on the side stream)
before the current batch goes to the model; and the auto probe weighs the GPU against every CPU decoder of
the run (workers x decode threads), like with like. The speed itself is a GPU check (bench/)."""

from __future__ import annotations

import contextlib
import os

import pytest
import scoring_helpers  # noqa: E402
from scoring_helpers import make_config, write_pictures, write_tar_shard, write_tiny_open_clip  # noqa: E402

from aligngpt_plugin.scoring import score_dataset  # noqa: E402

one_thread = scoring_helpers.one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    config, checkpoint = write_tiny_open_clip(root / "model")
    pairs = [p for p in write_pictures(root / "images", 16) if p[0].endswith(".jpg")][:12]
    samples = [(f"{i:09d}", {"jpg": (root / "images" / name).read_bytes(), "txt": caption.encode()})
               for i, (name, caption) in enumerate(pairs)]
    shard = write_tar_shard(root / "00000.tar", samples)
    return {"root": root, "config": config, "checkpoint": checkpoint, "images": root / "images", "shard": shard}


class LoggingStreams:
    """Stands for CudaStreams: logs entering and leaving the side stream, and the model stream's waits."""

    def __init__(self, log: list):
        self.log = log

    @contextlib.contextmanager
    def side(self):
        self.log.append("side")
        yield
        self.log.append("main")

    def record(self):
        return len(self.log)

    def wait(self, event, value) -> None:
        self.log.append("wait")


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_next_batch_is_copied_and_decoded_before_the_current_one_goes_to_the_model(inputs, tmp_path, monkeypatch):
    """12 JPEGs in batches of 4, JPEGs decoded by the device path (decode_jpeg, here on the CPU)."""
    import aligngpt_plugin.scoring.engine as engine
    from aligngpt_plugin.scoring.backends import ClipScorer
    from aligngpt_plugin.scoring.decoding import DeviceFeed, JpegDecoder, resize_crop_of, to_device

    log: list = []

    class LoggingDecoder(JpegDecoder):
        def decode(self, encoded):
            assert log[-1] == "copy" and log[-2] == "side", "decoding outside the side stream"
            log.append("decode")
            return super().decode(encoded)

    def copy(value, device):
        if isinstance(value, dict) and "ids" in value:
            assert log[-1] == "side", "copying outside the side stream"
            log.append("copy")
        return to_device(value, device)

    embed = ClipScorer.embed

    def model(self, pixels, tokens):
        log.append("model")
        return embed(self, pixels, tokens)

    monkeypatch.setattr(engine, "_decoder", lambda config, scorer, device, workers:
                        LoggingDecoder(device, resize_crop_of(scorer.preprocess)))
    monkeypatch.setattr(engine, "DeviceFeed", lambda batches, device, prepare:
                        DeviceFeed(batches, device, prepare, streams=LoggingStreams(log)))
    monkeypatch.setattr("aligngpt_plugin.scoring.decoding.to_device", copy)
    monkeypatch.setattr(ClipScorer, "embed", model)
    summary = score_dataset(make_config(inputs, inputs["shard"], tmp_path / "out", num_levels=2))
    assert summary.scored == 12
    # batches 0-2 of four images, then the shard's last batch (no images: its sha256) with nothing to decode
    steps = [s for s in log if s in ("copy", "decode", "model")]
    assert steps == ["copy", "decode", "copy", "decode", "model", "copy", "decode", "model", "copy", "model"]
    # the model's stream waits (on an event) for a batch once the previous one is computed, before using it
    assert [s for s in log if s in ("wait", "model")] == ["wait", "model", "wait", "model", "wait", "model", "wait"]


def test_the_probe_weighs_the_gpu_against_workers_times_decode_threads(inputs, monkeypatch, capsys):
    """A GPU at 1,000 images/s against one CPU thread at 200: 2 workers x 4 threads (1,600/s) keep the CPU,
    2 workers x 1 thread (400/s) take the GPU; at most as many decoders as cores."""
    import torch

    import aligngpt_plugin.scoring.decoding as decoding
    import aligngpt_plugin.scoring.engine as engine
    from aligngpt_plugin.scoring.backends import load_scorer

    monkeypatch.setattr(decoding, "probe_decode_speed", lambda decoder, preprocess: (0.001, 0.005))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    scorer = load_scorer(str(inputs["config"]), str(inputs["checkpoint"]))
    cuda = torch.device("cuda")  # a device object only: nothing runs on it here
    data = inputs["shard"]
    four = make_config(inputs, data, inputs["root"] / "o", num_workers=2, decode_threads=4)
    assert engine._decoder(four, scorer, cuda, 2) is None
    assert "CPU 1600 images/s (8 decoders) vs GPU 1000" in capsys.readouterr().err
    one = make_config(inputs, data, inputs["root"] / "o", num_workers=2, decode_threads=1)
    assert isinstance(engine._decoder(one, scorer, cuda, 2), decoding.JpegDecoder)
    assert "GPU 1000 images/s vs CPU 400 (2 decoders)" in capsys.readouterr().err
    assert decoding.cpu_decoders(8, 4, cores=16) == 16 and decoding.cpu_decoders(0, 4, cores=16) == 4
