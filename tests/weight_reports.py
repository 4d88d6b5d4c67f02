"""What transformers says when a checkpoint's weights and a model's parameters do not match, on both lines.

transformers 4.x logs sentences: "Some weights of the model checkpoint at X were not used when initializing
Y" (unexpected keys), "Some weights of Y were not initialized from the model checkpoint at X and are newly
initialized" (missing keys). 5.x logs one table instead, headed "Y LOAD REPORT from: X", with a row per key
marked UNEXPECTED, MISSING or MISMATCH (transformers/utils/loading_report.py). A check that searches only
for the 4.x sentences passes on 5.x whatever is unused.
"""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # 5.x colours the report's words
REPORTS = (
    "were not used when initializing",  # 4.x: unexpected keys
    "newly initialized",  # 4.x: missing keys (and 5.x's note under MISSING)
    "not initialized from the model checkpoint",  # 4.x: missing keys
    "LOAD REPORT",  # 5.x: the table, logged only when a key is unexpected, missing or mismatched
)


# LLaVA builds its vision tower with CLIPVisionModel.from_pretrained on a whole CLIP checkpoint (as
# openai/clip-vit-large-patch14-336 is), so the text half is unused by design: 4.x logs that at INFO level
# (the checkpoint's architecture is another class), 5.x puts it in a LOAD REPORT. Only that is allowed.
CLIP_TEXT_SIDE = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
HEADER = re.compile(r"(\w+) LOAD REPORT")


def _table(lines: list[str]) -> list[tuple[str, str]]:
    """(key, status) of each row of a 5.x report's table, from the lines after its heading."""
    rows = []
    for line in lines:
        if line.strip() and not line.strip("-+ "):  # the rule under the heading row
            continue
        if "|" not in line:
            break
        cells = [c.strip() for c in line.split("|")]
        if cells[0] == "Key":
            continue
        rows.append((cells[0], cells[1] if len(cells) > 1 else ""))
    return rows


def _is_clip_text_side(heading: str, rows: list[tuple[str, str]]) -> bool:
    match = HEADER.search(heading)
    return (match is not None and match[1] == "CLIPVisionModel" and bool(rows)
            and all(status == "UNEXPECTED" and key.startswith(CLIP_TEXT_SIDE) for key, status in rows))


def weight_reports(text_or_messages: str | list[str]) -> list[str]:
    """The reports of unused, missing or mismatched weights in a log (logged messages, or a program's
    output), each as its text; a CLIP tower's unused text half (see CLIP_TEXT_SIDE) is not one."""
    text = text_or_messages if isinstance(text_or_messages, str) else "\n".join(text_or_messages)
    lines = ANSI.sub("", text).splitlines()
    found = []
    for i, line in enumerate(lines):
        if not any(r in line for r in REPORTS):
            continue
        if "LOAD REPORT" in line:
            rows = _table(lines[i + 1:])
            if _is_clip_text_side(line, rows):
                continue
            found.append("\n".join([line, *(f"{k} | {s}" for k, s in rows)]))
        elif not line.lstrip().startswith("- MISSING:"):  # 5.x's note under a report's table, not one itself
            found.append(line)
    return found


def assert_every_weight_in_place(text_or_messages: str | list[str], info: dict | None = None) -> None:
    """No weight report in the log and, where `from_pretrained(..., output_loading_info=True)` gave one, an
    empty loading info (5.x gives sets, 4.x lists)."""
    bad = weight_reports(text_or_messages)
    assert not bad, bad[0][:1500]
    if info is not None:
        problems = {k: sorted(map(str, v)) for k, v in info.items() if k != "error_msgs" and len(v)}
        assert not problems and not info.get("error_msgs"), problems or info["error_msgs"]
