"""Released AlignGPT checkpoints: convert, load without a missing or unused weight, and give the public
code's outputs.

The "released" checkpoints here are built from the public code's attribute names and the reference
forward follows the public code's order of operations (`released_layout.py`), with none of the plugin's
code; the converted model must match it on logits, gate weights, loss and greedy tokens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llava.constants import IGNORE_INDEX
from released_layout import (
    ReleasedReference,
    question_pictures,
    released_state,
    tokenize,
    write_released,
    write_released_pretrain,
)
from safetensors.torch import load_file, save_file
from weight_reports import assert_every_weight_in_place, weight_reports

from aligngpt_plugin.devkit import pipeline

pytestmark = pytest.mark.usefixtures("llava_ready")
CLI = str(Path(sys.executable).with_name("aligngpt-convert"))
LOGITS_ATOL, GATE_ATOL = 5e-5, 1e-6


def convert_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@contextlib.contextmanager
def transformers_warnings():
    """Collect what transformers logs at WARNING and above (its logger does not propagate to pytest's)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def no_weight_warnings(messages: list[str]) -> None:
    assert_every_weight_in_place(messages)


@pytest.fixture(scope="module")
def released(tiny):
    return released_state(tiny)


@pytest.fixture(scope="module")
def released_folder(tiny, released, tmp_path_factory):
    state, config = released
    return write_released(tmp_path_factory.mktemp("released") / "aligngpt-7b", state, config, tiny.llm, shards=2)


@pytest.fixture(scope="module")
def converted(released_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "aligngpt-7b-plugin"
    proc = convert_cli("to-plugin", released_folder, out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def model(converted):
    from transformers import AutoModelForCausalLM

    import aligngpt_plugin  # noqa: F401  (registers the AlignGPT model types)

    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    model.get_vision_tower().load_model()
    return model


@pytest.fixture(scope="module")
def reference(released):
    return ReleasedReference(*released)


@pytest.fixture(scope="module")
def pictures(tiny):
    return question_pictures(tiny)


def right_padded(samples: list[tuple[torch.Tensor, torch.Tensor]]):
    width = max(len(ids) for ids, _ in samples)
    ids = torch.zeros(len(samples), width, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    mask = torch.zeros(len(samples), width, dtype=torch.bool)
    for row, (i, lab) in enumerate(samples):
        ids[row, :len(i)], labels[row, :len(i)], mask[row, :len(i)] = i, lab, True
    return ids, labels, mask


# --- the command, as a user types it ------------------------------------------------------------------

def test_to_plugin_exits_0_and_reports_what_it_set_aside(released_folder, converted):
    assert (converted / "model.safetensors.index.json").is_file() and (converted / "tokenizer.model").is_file()
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "aligngpt_llava" and config["alignment"]["num_levels"] == 8
    assert config["alignment"]["gate_tokens"] == 576 and config["alignment"]["gate_hidden_size"] == 256
    proc = convert_cli("to-plugin", released_folder, converted.parent / "again")
    assert proc.returncode == 0
    assert "2 rotary inv_freq buffers" in proc.stdout


def test_help_names_the_exit_codes():
    proc = convert_cli("--help")
    assert proc.returncode == 0 and "2 the checkpoint does not fit" in proc.stdout


@pytest.mark.parametrize("fmt, shards", [("bin", 1), ("safetensors", 3)])
def test_converted_loads_with_every_weight_in_place(tiny, released, tmp_path, fmt, shards):
    from transformers import AutoModelForCausalLM

    import aligngpt_plugin  # noqa: F401
    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    state, config = released
    folder = write_released(tmp_path / "released", state, config, tiny.llm, shards=shards, fmt=fmt)
    assert convert_cli("to-plugin", folder, tmp_path / "plugin").returncode == 0
    with transformers_warnings() as warned:
        loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "plugin", output_loading_info=True)
    assert_every_weight_in_place(warned, info)
    assert type(loaded) is AlignGPTLlamaForCausalLM
    # transformers 5 reports sets, 4.x lists
    assert {k: list(v) for k, v in info.items()} == {
        "missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    ours = loaded.state_dict()
    # each public attribute, found where the plugin's model keeps it
    assert torch.equal(ours["model.alignment.level_embeddings"], state["align_indicators.indicator_embs"])
    assert torch.equal(ours["model.alignment.gate.0.weight"], state["gated_weight_layer.mlp.0.weight"])
    assert torch.equal(ours["model.alignment.gate.2.bias"], state["gated_weight_layer.mlp.2.bias"])
    assert torch.equal(ours["model.mm_projector.2.weight"], state["mm_projector.2.weight"])
    assert torch.equal(ours["lm_head.weight"], state["lm_head.weight"])
    assert torch.equal(ours["model.layers.1.mlp.up_proj.weight"], state["model.layers.1.mlp.up_proj.weight"])


@pytest.mark.parametrize("plant", ["unused", "missing", "both"])
def test_a_planted_unused_or_missing_weight_fails_the_loading_checks(converted, tmp_path, plant):
    """The checks above, shown failing: the converted checkpoint with a weight no parameter takes and/or
    without the gate's bias, loaded as the tests load it, on either transformers line."""
    from transformers import AutoModelForCausalLM

    import aligngpt_plugin  # noqa: F401

    state = {}
    for f in converted.glob("*.safetensors"):
        state.update(load_file(f))
    if plant in ("unused", "both"):
        state["model.alignment.extra_table"] = torch.zeros(3, 4)
    if plant in ("missing", "both"):
        del state["model.alignment.gate.0.bias"]
    folder = tmp_path / "planted"
    folder.mkdir()
    for f in converted.iterdir():
        if f.is_file() and not f.name.startswith("model"):
            (folder / f.name).symlink_to(f)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with transformers_warnings() as warned:
        _, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert ("model.alignment.extra_table" in info["unexpected_keys"]) == (plant != "missing")
    assert ("model.alignment.gate.0.bias" in info["missing_keys"]) == (plant != "unused")
    assert weight_reports(warned), "transformers reported nothing in the log"
    with pytest.raises(AssertionError):
        assert_every_weight_in_place(warned)  # the log alone
    with pytest.raises(AssertionError):
        assert_every_weight_in_place([], info)  # the loading info alone


def test_readme_snippet_loads_a_converted_checkpoint(converted, tmp_path):
    """The README's loading snippet, run as written, from a folder where its path exists."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("<!-- load-converted -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "aligngpt-7b").symlink_to(converted)
    proc = subprocess.run([sys.executable, "-c", snippet + "\nprint(type(model).__name__, model.stage)"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AlignGPTLlamaForCausalLM finetune" in proc.stdout
    assert_every_weight_in_place(proc.stdout + proc.stderr)


# --- parity with the public code's forward --------------------------------------------------------------

def test_finetuning_batch_with_image_and_text_rows_matches(tiny, model, reference, pictures):
    rows = [tokenize(tiny, "USER: <image>\nWhat colour is the shape? ASSISTANT:", " red"),
            tokenize(tiny, "USER: Name a colour. ASSISTANT:", " Blue is a colour"),
            tokenize(tiny, "USER: <image>\nWhere is the shape in the picture? ASSISTANT:", " top left")]
    ids, labels, mask = right_padded(rows)
    images = torch.stack([pictures[0], torch.zeros_like(pictures[0]), pictures[1]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    ref_logits, ref_loss, ref_gates = reference.logits_and_loss(
        [(rows[0][0], rows[0][1], pictures[0], None), (rows[1][0], rows[1][1], None, None),
         (rows[2][0], rows[2][1], pictures[1], None)])
    for row, expected in enumerate(ref_logits):  # right padding: each row's real positions come first
        torch.testing.assert_close(out.logits[row, :len(expected)], expected, atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(out.gate_weights, torch.stack([ref_gates[0], ref_gates[2]]), atol=GATE_ATOL, rtol=0)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-5, rtol=0)
    assert (ref_gates[0] - ref_gates[2]).abs().max() > 0.01, "the gate must depend on its input for this test"


def test_pretraining_batch_matches(tiny, model, reference, pictures):
    rows = [tokenize(tiny, "<image>\n", "a red circle at the top left"),
            tokenize(tiny, "<image>\n", "a blue square in the centre of the picture")]
    ids, labels, mask = right_padded(rows)
    levels = torch.tensor([2, 7])
    model.config.tune_mm_mlp_adapter = True  # what LLaVA's train() sets in stage 1
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, images=torch.stack(pictures),
                        alignment_levels=levels)
    finally:
        model.config.tune_mm_mlp_adapter = False
    ref_logits, ref_loss, _ = reference.logits_and_loss(
        [(ids_, lab, pix, int(lv)) for (ids_, lab), pix, lv in zip(rows, pictures, levels)])
    for row, expected in enumerate(ref_logits):
        torch.testing.assert_close(out.logits[row, :len(expected)], expected, atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-5, rtol=0)
    assert out.gate_weights is None


def test_prefill_and_cached_decode_match(tiny, model, reference, pictures):
    ids, _ = tokenize(tiny, "A chat. USER: <image>\nWhat colour is the shape? ASSISTANT:", None)
    steps = 6
    with torch.no_grad():
        out = model.generate(ids[None], images=pictures[0][None], max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens, step_logits = reference.greedy(ids, pictures[0], steps)
    assert out.sequences[0].tolist() == tokens
    for ours, expected in zip(out.logits, step_logits):
        torch.testing.assert_close(ours[0], expected, atol=LOGITS_ATOL, rtol=0)
    _, _, gate = reference.sequence(ids, None, pictures[0])
    torch.testing.assert_close(model.last_gate_weights[0], gate, atol=GATE_ATOL, rtol=0)


# --- round trip and the pre-training file -------------------------------------------------------------

def test_released_plugin_released_gives_the_same_tensors_and_config(tiny, released, tmp_path):
    state, config = released
    half = {k: v.half() for k, v in state.items()}  # released checkpoints are fp16: dtypes must survive
    folder = write_released(tmp_path / "released", half, dict(config, torch_dtype="float16"), tiny.llm, shards=3)
    assert convert_cli("to-plugin", folder, tmp_path / "plugin", "--max-shard-size", "40KB").returncode == 0
    proc = convert_cli("from-plugin", tmp_path / "plugin", tmp_path / "back")
    assert proc.returncode == 0, proc.stderr
    back = {}
    for f in (tmp_path / "back").glob("*.safetensors"):
        back.update(load_file(f))
    assert back.keys() == half.keys()
    for key, value in half.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == dict(config, torch_dtype="float16")
    assert (tmp_path / "back" / "tokenizer.model").is_file()


def test_pretraining_file_converts_both_ways(released, tmp_path):
    state, config = released
    write_released_pretrain(tmp_path / "pretrain", state, config)
    src = tmp_path / "pretrain" / "mm_projector_align.bin"
    assert convert_cli("to-plugin", src, tmp_path / "mm_projector.bin").returncode == 0
    assert convert_cli("from-plugin", tmp_path / "mm_projector.bin", tmp_path / "align.bin").returncode == 0
    back = torch.load(tmp_path / "align.bin", weights_only=True)
    original = torch.load(src, weights_only=True)
    assert sorted(back) == ["align_indicators.indicator_embs", "mm_projector.0.bias", "mm_projector.0.weight",
                            "mm_projector.2.bias", "mm_projector.2.weight"]
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_stage2_starts_from_the_released_pretraining_file_with_a_fresh_gate(tiny, released, tmp_path):
    state, config = released
    write_released_pretrain(tmp_path / "pretrain", state, config)
    proc = convert_cli("to-plugin", tmp_path / "pretrain" / "mm_projector_align.bin", tmp_path / "mm_projector.bin")
    assert proc.returncode == 0, proc.stderr
    settings = pipeline.StageSettings(max_steps=1, learning_rate=2e-5, save_steps=1000)
    log = tmp_path / "ft.log"
    pipeline.train(pipeline.finetune_args(tiny, tmp_path / "mm_projector.bin", tmp_path / "ft", settings,
                                          extra=("--align_levels", "8")), log=log)
    weights = load_file(tmp_path / "ft" / "model.safetensors")
    # stage 2 freezes the levels: they are still the released ones
    assert torch.equal(weights["model.alignment.level_embeddings"], state["align_indicators.indicator_embs"])
    assert "starts a fresh gate" in log.read_text()


def test_released_pretraining_folder_becomes_a_projector_checkpoint_that_generates(tiny, released, pictures,
                                                                                    tmp_path):
    """nlpzhaof/aligngpt-7b-pretrain converted, loaded by LLaVA's loader with the base LLM: no trained gate,
    so it generates with the top level's token, which is the public pre-training forward with level 7.
    LLaVA loads in fp16, so the reference gets the same fp16-rounded weights."""
    from llava.model import builder

    from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading

    state, config = released
    write_released_pretrain(tmp_path / "aligngpt-7b-pretrain", state, config)
    proc = convert_cli("to-plugin", tmp_path / "aligngpt-7b-pretrain", tmp_path / "plugin-pretrain")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plugin-pretrain" / "mm_projector.bin").is_file()
    enable_aligngpt_loading()
    with transformers_warnings() as warned:
        _, model, _, _ = builder.load_pretrained_model(str(tmp_path / "plugin-pretrain"), str(tiny.llm), "x",
                                                       device="cpu")
    no_weight_warnings(warned)
    model.float().eval()
    # LLaVA loaded the LLM, projector and levels in fp16 (the CLIP tower it loads apart stays fp32 on the CPU)
    reference = ReleasedReference({k: v if k.startswith("vision_tower.") else v.half().float()
                                   for k, v in state.items()}, config)
    ids, _ = tokenize(tiny, "<image>\n", None)
    with torch.no_grad():
        out = model.generate(ids[None], images=pictures[0][None], max_new_tokens=4, min_new_tokens=4,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens, step_logits = reference.greedy(ids, pictures[0], 4, level=7)
    assert out.sequences[0].tolist() == tokens
    for ours, expected in zip(out.logits, step_logits):
        torch.testing.assert_close(ours[0], expected, atol=LOGITS_ATOL, rtol=0)


# --- the other loaders ----------------------------------------------------------------------------------

def test_llava_loader_takes_the_converted_checkpoint_without_weight_warnings(converted, tiny, pictures):
    from llava.model import builder

    from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading
    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    enable_aligngpt_loading()
    with transformers_warnings() as warned:
        _, model, processor, _ = builder.load_pretrained_model(str(converted), None, "aligngpt-7b", device="cpu")
    no_weight_warnings(warned)
    assert type(model) is AlignGPTLlamaForCausalLM and processor is not None
    ids, _ = tokenize(tiny, "USER: <image>\nWhat colour is the shape? ASSISTANT:", None)
    with torch.no_grad():
        out = model.generate(ids[None], images=pictures[0][None].half(), max_new_tokens=2, do_sample=False)
    assert out.shape[1] >= 1 and model.last_gate_weights.shape == (1, 7)


def fake_hub_cache(root: Path, repo_id: str, files: Path) -> Path:
    """huggingface_hub's cache layout with one snapshot of `files`, as a download would leave it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        (snapshot / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return root


def test_hub_ids_convert_and_released_ones_are_refused_by_the_loader(released_folder, tmp_path):
    cache = fake_hub_cache(tmp_path / "hub", "nlpzhaof/aligngpt-7b", released_folder)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = convert_cli("to-plugin", "nlpzhaof/aligngpt-7b", tmp_path / "out", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    proc = convert_cli("to-plugin", "nlpzhaof/aligngpt-13b", tmp_path / "out13", env=env)
    assert proc.returncode == 2 and "could not be fetched from the hub" in proc.stderr
    assert not (tmp_path / "out13").exists()

    script = ("from aligngpt_plugin.integrations.llava.compat import prepare_llava; prepare_llava()\n"
              "from llava.model import builder\n"
              "from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading\n"
              "enable_aligngpt_loading()\n"
              "builder.load_pretrained_model('nlpzhaof/aligngpt-7b', None, 'aligngpt-7b', device='cpu')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode != 0 and "aligngpt-convert to-plugin nlpzhaof/aligngpt-7b" in proc.stderr


def test_auto_model_on_a_released_folder_says_to_convert(released_folder):
    from transformers import AutoModelForCausalLM

    import aligngpt_plugin  # noqa: F401

    with pytest.raises(ValueError, match="aligngpt-convert to-plugin"):
        AutoModelForCausalLM.from_pretrained(released_folder)


# --- checkpoints that do not fit ------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"gated_weight_layer.mlp.2.weight": (6, 256)}, "gate layer 2 is weight (6, 256), bias (7,): 8 levels need 7"),
    ({"align_indicators.indicator_embs": (8, 32)}, "level table (8, 32) is 32 wide, the LLM's hidden_size is 64"),
    ({"gated_weight_layer.mlp.0.weight": (128, 576)}, "gate layer 0 is weight (128, 576), bias (256,)"),
    ({"mm_projector.0.weight": (64, 48)}, "mm_projector.0.weight has shape (64, 48), config.json's mm_hidden_size"),
    ({"image_newline": (64,)}, "not part of the released AlignGPT layout"),
    ({"gated_weight_layer.mlp.0.bias": None}, "weight 'gated_weight_layer.mlp.0.bias' is missing"),
    ({"lm_head.weight": (100, 64)}, "lm_head.weight has shape (100, 64), config.json says [vocab_size 32000"),
])
def test_checkpoints_that_do_not_fit_exit_2_and_write_nothing(tiny, released, tmp_path, change, message):
    state, config = released
    state = dict(state)
    for key, shape in change.items():
        if shape is None:
            del state[key]
        else:
            state[key] = torch.zeros(shape)
    folder = write_released(tmp_path / "released", state, config, tiny.llm)
    proc = convert_cli("to-plugin", folder, tmp_path / "out")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and str(folder) in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_an_existing_output_file_is_replaced_only_with_force(released, tmp_path):
    state, config = released
    src = write_released_pretrain(tmp_path / "pretrain", state, config) / "mm_projector_align.bin"
    out = tmp_path / "mm_projector.bin"
    out.write_bytes(b"a colleague's projector")
    proc = convert_cli("to-plugin", src, out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{out} already exists; pass --force" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes() == b"a colleague's projector"
    proc = convert_cli("to-plugin", src, out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(out, weights_only=True)["model.mm_projector.0.weight"],
                       state["mm_projector.0.weight"])
    proc = convert_cli("to-plugin", src, src, "--force")
    assert proc.returncode == 2 and "is the file being converted" in proc.stderr
    assert torch.equal(torch.load(src, weights_only=True)["mm_projector.0.weight"], state["mm_projector.0.weight"])


def test_an_existing_output_folder_is_never_replaced(released_folder, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    for extra in ((), ("--force",)):
        proc = convert_cli("to-plugin", released_folder, tmp_path / "out", *extra)
        assert proc.returncode == 2 and f"{tmp_path / 'out'} already exists" in proc.stderr, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def _config(folder: Path, text: str = '{"model_type": "aligngpt"}') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text)
    return folder


BAD_INPUTS = {  # what to build -> (the file the message must name, words it must say)
    "truncated .bin": (lambda t: (t / "mm_projector_align.bin").write_bytes(b"PK\x03\x04 cut short"),
                       "mm_projector_align.bin", "not a readable weight file"),
    "text named .bin": (lambda t: (t / "mm_projector_align.bin").write_text("not weights"),
                        "mm_projector_align.bin", "not a readable weight file"),
    "bad config.json": (lambda t: _config(t / "ckpt", '{"model_type": "aligngpt",'),
                        "ckpt/config.json", "not valid JSON (line 1"),
    "config.json a list": (lambda t: _config(t / "ckpt", "[]"), "ckpt/config.json", "expected a JSON object"),
    "corrupt shard": (lambda t: (_config(t / "ckpt") / "model.safetensors").write_bytes(b"\xff" * 64),
                      "ckpt/model.safetensors", "not a readable weight file"),
    "bad index": (lambda t: (_config(t / "ckpt") / "model.safetensors.index.json").write_text("{weight_map"),
                  "ckpt/model.safetensors.index.json", "not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_unreadable_inputs_exit_2_naming_the_file(tmp_path, case):
    make, named, says = BAD_INPUTS[case]
    make(tmp_path)
    src = tmp_path / ("ckpt" if named.startswith("ckpt/") else named)
    proc = convert_cli("to-plugin", src, tmp_path / "out")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert str(tmp_path / named) in proc.stderr and says in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_from_plugin_refuses_what_the_public_code_cannot_express(tiny, tmp_path):
    import eval_data

    ours = eval_data.write_tiny_checkpoint(tiny, tmp_path / "pooled", gate_input="pooled", gate_tokens=64)
    proc = convert_cli("from-plugin", ours, tmp_path / "out")
    assert proc.returncode == 2
    assert "gate_tokens=64 (public: 576)" in proc.stderr and "gate_input='pooled'" in proc.stderr


def test_wrong_direction_and_missing_paths_are_named(released_folder, tmp_path):
    proc = convert_cli("from-plugin", released_folder, tmp_path / "x")
    assert proc.returncode == 2 and "model_type is 'aligngpt', from-plugin expects 'aligngpt_llava'" in proc.stderr
    proc = convert_cli("to-plugin", tmp_path / "nowhere" / "ckpt", tmp_path / "x")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = convert_cli("to-plugin", tmp_path / "empty", tmp_path / "x")
    assert proc.returncode == 2 and "no config.json" in proc.stderr


# --- long conversions: resume, memory -------------------------------------------------------------------

def test_a_killed_conversion_continues(tiny, released, tmp_path, monkeypatch):
    from aligngpt_plugin.conversion import released as convert

    state, config = released
    folder = write_released(tmp_path / "released", state, config, tiny.llm, shards=2)
    from aligngpt_plugin.conversion import streaming

    real_save, calls = streaming.save_file, []

    def dies_on_the_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(streaming, "save_file", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(folder, tmp_path / "out", max_shard_size=100_000)
    done = sorted(p.name for p in (tmp_path / "out.partial").glob("model-*.safetensors"))
    assert len(done) == 2 and not (tmp_path / "out").exists()
    stamps = {n: (tmp_path / "out.partial" / n).stat().st_mtime_ns for n in done}
    monkeypatch.setattr(streaming, "save_file", real_save)
    convert.convert(folder, tmp_path / "out", max_shard_size=100_000)
    assert all((tmp_path / "out" / n).stat().st_mtime_ns == t for n, t in stamps.items())  # kept, not redone
    assert not (tmp_path / "out.partial").exists()
    assert convert_cli("from-plugin", tmp_path / "out", tmp_path / "back").returncode == 0
    back = {}
    for f in (tmp_path / "back").glob("*.safetensors"):
        back.update(load_file(f))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_peak_memory_follows_the_shard_size_not_the_checkpoint(tmp_path):
    """bench/convert_memory.py as a user runs it: 24 shards of ~12 MB; the conversion's peak RSS above
    its own start stays near a shard or two, far below the 250 MB checkpoint."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "convert_memory.py"
    proc = subprocess.run([sys.executable, str(bench), "--out", str(tmp_path), "--shards", "24",
                           "--layers", "24", "--max-shard-size", "16MB", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["checkpoint_mb"] > 250 and result["largest_shard_mb"] < 25
    assert result["peak_rss_growth_mb"] < 100, result


def test_from_plugin_refuses_a_mistral_checkpoint_saying_why(tiny, tmp_path):
    from transformers import AutoConfig

    from aligngpt_plugin.core.alignment import AlignmentConfig
    from aligngpt_plugin.integrations.llava.configuration import config_for_base
    from aligngpt_plugin.integrations.llava.model import model_class_for

    config = config_for_base(AutoConfig.from_pretrained(tiny.mistral), AlignmentConfig(), str(tiny.mistral))
    model_class_for(config).from_pretrained(tiny.mistral, config=config).save_pretrained(tmp_path / "mistral")
    proc = convert_cli("from-plugin", tmp_path / "mistral", tmp_path / "out")
    assert proc.returncode == 2 and "the public AlignGPT code is Llama only" in proc.stderr
    assert not (tmp_path / "out").exists()


# --- the weight-report reader the loading checks use ----------------------------------------------------

REPORT_5X = """\x1b[1mCLIPVisionModel LOAD REPORT\x1b[0m from: /tmp/clip
Key                                                | Status     |  |
---------------------------------------------------+------------+--+-
text_model.encoder.layers.{0, 1}.mlp.fc1.weight    | \x1b[33mUNEXPECTED\x1b[0m |  |
logit_scale                                        | UNEXPECTED |  |
{extra}
Notes:
- UNEXPECTED:\tcan be ignored when loading from different task/architecture; not ok if you expect identical arch."""


@pytest.mark.parametrize("extra, flagged", [
    ("", False),  # LLaVA's CLIP tower from a whole CLIP checkpoint: the text half is unused by design
    ("vision_model.post_layernorm.weight                 | MISSING    |  |", True),
    ("vision_model.extra.weight                          | UNEXPECTED |  |", True),
])
def test_weight_reports_allow_only_the_clip_towers_text_half(extra, flagged):
    report = REPORT_5X.replace("{extra}", extra)
    assert bool(weight_reports(report)) == flagged
    assert bool(weight_reports(report.replace("CLIPVisionModel", "AlignGPTLlamaForCausalLM"))) is True
    assert weight_reports("Some weights of the model checkpoint at x were not used when initializing Y: ['a']")
    assert weight_reports("Some weights of Y were not initialized from the model checkpoint at x and are newly "
                          "initialized: ['b']")
    assert not weight_reports("loading weights from x\nall fine")
