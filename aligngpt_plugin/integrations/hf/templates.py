"""LLaVA-1.5's two prompt formats as chat templates, so that the TRL path trains on the tokens LLaVA's own code does.

    aligngpt-sft ... --align_stage 1 --chat_template_path plain.jinja   # write_template("plain", "plain.jinja")
    aligngpt-sft ... --align_stage 2 --chat_template_path v1.jinja      # prompt/completion data (per_turn_records)

`build_hf` ships llava-hf's Vicuna template, which is what transformers' Llava users train on; these two reproduce
LLaVA's `preprocess_plain` (stage 1) and `preprocess_v1` (stage 2, `vicuna_v1`) token for token, which is what the
TRL path needs to be compared with `python -m aligngpt_plugin.train` (tests/test_trl_equivalence.py checks the
tokens and labels against LLaVA's code and the losses step by step).

Two details of LLaVA's tokenization the templates copy:
- LLaVA tokenizes the text after `<image>` as a chunk of its own, so SentencePiece prefixes its first word with a
  space piece (`▁A`); the fast tokenizer, reading `<image>` as a special token inside one string, would not. A space
  after `<image>` gives the same piece.
- In stage 2 the records are prompt/completion pairs (TRL masks the prompt with `completion_only_loss`), the
  prompt ending at `ASSISTANT:`: TRL tokenizes the completion alone, so the answer's first word gets the space
  piece LLaVA's one-string tokenization gives it. Earlier answers (history inside the prompt) are written
  `ASSISTANT: answer</s>` with the space, as LLaVA writes them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PLAIN_TEMPLATE", "V1_SYSTEM", "V1_TEMPLATE", "TEMPLATES", "write_template"]

# LLaVA's `plain` conversation (conv_llava_plain, preprocess_plain): the image, the caption, the separator "\n"; the
# human turn's text is dropped
PLAIN_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image> ' }}{% endif %}{% endfor %}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endif %}{% endfor %}")

# LLaVA's `vicuna_v1` conversation (conv_vicuna_v1): the system sentence, " USER: ", the image first then "\n" and the
# question, " ASSISTANT: ", the answer, "</s>", the next "USER: " ...
V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
             "detailed, and polite answers to the user's questions.")
V1_TEMPLATE = (
    "{{ \"" + V1_SYSTEM + "\" }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ ' USER: ' if loop.first else 'USER: ' }}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "{{ '<image> \\n' }}{% endif %}{% endfor %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% else %}{{ ' ASSISTANT:' if loop.last else ' ASSISTANT: ' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{{ '</s>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}")

TEMPLATES = {"plain": PLAIN_TEMPLATE, "v1": V1_TEMPLATE}


def write_template(name: str, path: str | Path) -> Path:
    """Write LLaVA's `plain` or `v1` template to `path` (a .jinja file for `--chat_template_path`).

    Args:
        name: "plain" (stage 1) or "v1" (stage 2).
        path: the file to write.
    Returns:
        `path`.
    Raises:
        KeyError: `name` is neither.
    """
    if name not in TEMPLATES:
        raise KeyError(f"no template {name!r}; choose one of {', '.join(TEMPLATES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATES[name])
    return path
