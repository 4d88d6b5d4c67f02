"""One markdown table of whatever results exist, beside the paper's AlignGPT and LLaVA-1.5 rows."""

from __future__ import annotations

import json
from pathlib import Path

from aligngpt_plugin.core.fileio import write_text_atomic
from aligngpt_plugin.evaluation.benchmarks import BENCHMARKS

# docs/method.md#published-numbers (AlignGPT paper / project README; LLaVA model zoo). LLaVA-1.5's SEED is SEED-all.
PAPER: dict[str, dict[str, float]] = {
    "AlignGPT-7B (paper)": dict(zip(BENCHMARKS, (79.1, 62.9, 54.2, 68.5, 58.4, 86.0, 1527.4, 67.3, 59.9, 66.5,
                                                 68.4, 30.8))),
    "AlignGPT-13B (paper)": dict(zip(BENCHMARKS, (80.0, 63.6, 56.4, 70.3, 60.2, 86.2, 1572.0, 69.5, 63.7, 67.8,
                                                  75.2, 35.6))),
    "LLaVA-1.5-7B (paper)": dict(zip(BENCHMARKS, (78.5, 62.0, 50.0, 66.8, 58.2, 85.9, 1510.7, 64.3, 58.3, 58.6,
                                                  65.4, 31.1))),
}
NOT_RUN = "not run"


def load_results(results_dir: str | Path) -> dict[str, dict]:
    """{benchmark key: result} from the `<key>.json` files `aligngpt-eval score` wrote.

    Args:
        results_dir: the folder of result files.
    Returns:
        The results of the known benchmarks found there (other JSON files are ignored).
    Raises:
        ValueError: naming a file that is not valid JSON.
    """
    found = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); rerun `aligngpt-eval score` for it") from e
        if isinstance(value, dict) and value.get("benchmark") in BENCHMARKS:
            found[value["benchmark"]] = value
    return found


def cell(result: dict | None) -> str:
    """A result as its table cell.

    Args:
        result: a benchmark's result, or None when it was not run.
    Returns:
        The score with one decimal, or "not run", "to submit" or "to judge (GPT-4)".
    """
    if result is None:
        return NOT_RUN
    if result.get("score") is None:
        return "to submit" if result.get("scoring") == "submission" else "to judge (GPT-4)"
    return f"{result['score']:.1f}"


def markdown_table(runs: dict[str, dict[str, dict]]) -> str:
    """The results as a Markdown table, the paper's rows first, with a note on the cells and the metrics.

    Args:
        runs: {row name: {benchmark key: result}}.
    Returns:
        The table's text.
    """
    header = "| model | " + " | ".join(b.title for b in BENCHMARKS.values()) + " |"
    lines = [header, "|" + "---|" * (len(BENCHMARKS) + 1)]
    for name, values in PAPER.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k]:g}" for k in BENCHMARKS) + " |")
    for name, results in runs.items():
        lines.append(f"| {name} | " + " | ".join(cell(results.get(k)) for k in BENCHMARKS) + " |")
    notes = ["", f"`{NOT_RUN}`: no result file; `to submit`: the server file is written (VQAv2, VizWiz, MMBench); "
             "`to judge (GPT-4)`: answers written for the GPT-4 judge (LLaVA-W, MM-Vet).",
             "Metrics: " + "; ".join(f"{b.title} {b.metric}" for b in BENCHMARKS.values()) + "."]
    return "\n".join(lines + notes) + "\n"


def write_report(results_dirs: list[str | Path], out: str | Path | None = None) -> str:
    """The table for one or more result folders (one row each, named after the folder).

    Args:
        results_dirs: the result folders.
        out: a file to write the table to as well (None: only return it).
    Returns:
        The table's text.
    """
    runs = {Path(d).name: load_results(d) for d in results_dirs}
    text = markdown_table(runs)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, text)
    return text
