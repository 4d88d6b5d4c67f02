"""Rebuild Llama-2's SentencePiece ``tokenizer.model`` from llama.cpp's vocabulary file.

Provenance of ``aligngpt_plugin/assets/llama_tokenizer/tokenizer.model``: the llama-cpp-python sdist on
PyPI ships ``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf`` (the Llama / Llama-2 vocabulary, the
one Vicuna-7B-v1.5 and so LLaVA-1.5 use) with reference tokenizations (``.inp`` / ``.out``) produced by
the original tokenizer. This script writes the pieces, scores and types into a SentencePiece BPE model
with Llama's normaliser settings, then checks every reference case::

    pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/lcpp
    tar xzf /tmp/lcpp/llama_cpp_python-*.tar.gz --wildcards '*/models/ggml-vocab-llama-spm.gguf*'
    pip install gguf sentencepiece protobuf
    python tools/make_llama_tokenizer.py <dir with the three files> aligngpt_plugin/assets/llama_tokenizer

It is a one-off maintenance tool: nothing at run time or test time needs the sdist.
"""

from __future__ import annotations

import sys
from pathlib import Path


def build(gguf_path: Path) -> bytes:
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    reader = gguf.GGUFReader(str(gguf_path))

    def field(name: str):
        f = reader.fields[name]
        return [f.parts[i] for i in f.data]

    tokens = [bytes(p).decode("utf-8") for p in field("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field("tokenizer.ggml.token_type")]
    if not len(tokens) == len(scores) == len(types) == 32000:
        raise SystemExit(f"expected 32000 Llama pieces, found {len(tokens)}")

    model = sp_pb2.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        p = model.pieces.add()
        p.piece, p.score, p.type = piece, score, kind  # llama.cpp uses SentencePiece's type enum
    t = model.trainer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = True
    t.split_digits = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    t.allow_whitespace_only_pieces = True
    t.unk_surface = " \u2047 "
    n = model.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return model.SerializeToString()


def check(model_bytes: bytes, inp: Path, out: Path) -> int:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = out.read_text(encoding="utf-8").split("\n")
    bad = 0
    for text, ids in zip(texts, expected):
        want = [int(x) for x in ids.split()]
        got = sp.encode(text)
        if got != want:
            bad += 1
            print(f"MISMATCH {text!r}: got {got} want {want}")
    print(f"{len(texts) - bad}/{len(texts)} reference tokenizations match")
    return bad


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    src, dst = Path(argv[0]), Path(argv[1])
    gguf_path = src / "ggml-vocab-llama-spm.gguf"
    model_bytes = build(gguf_path)
    if check(model_bytes, Path(f"{gguf_path}.inp"), Path(f"{gguf_path}.out")):
        raise SystemExit("the rebuilt tokenizer does not reproduce llama.cpp's reference cases")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "tokenizer.model").write_bytes(model_bytes)
    print(f"wrote {dst / 'tokenizer.model'} ({len(model_bytes)} bytes)")


if __name__ == "__main__":
    main()
