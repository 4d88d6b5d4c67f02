"""`aligngpt-eval`: check a benchmark's files, score answers, collect a report, analyse the gate.

    aligngpt-eval check pope --eval-dir playground/data/eval
    aligngpt-eval score pope --eval-dir playground/data/eval --answers answers/pope.jsonl --results-dir results/ckpt
    aligngpt-eval report results/aligngpt-7b results/llava-7b --out results/report.md
    aligngpt-eval gates results/aligngpt-7b

The inference itself is LLaVA's eval modules, run by `eval/<benchmark>.sh` (which calls these).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aligngpt_plugin.core.fileio import write_json_atomic
from aligngpt_plugin.evaluation import benchmarks


def _check(args) -> int:
    bench = benchmarks.get(args.benchmark)
    try:
        bench.require(args.eval_dir)
        bench.require(args.eval_dir, for_scoring=True)
    except FileNotFoundError as e:
        print(f"aligngpt-eval: {e}", file=sys.stderr)
        return 2
    return 0


def _score(args) -> int:
    from aligngpt_plugin.evaluation.scorers import score

    bench = benchmarks.get(args.benchmark)
    ckpt = args.ckpt or Path(args.results_dir).name
    try:
        result = score(bench, args.eval_dir, args.answers, args.results_dir, ckpt)
    except (FileNotFoundError, ValueError) as e:
        print(f"aligngpt-eval: {e}", file=sys.stderr)
        return 2
    gates = Path(args.answers).with_suffix(".gates.jsonl")
    if gates.is_file():
        result["gates"] = str(gates)
    out = Path(args.results_dir) / f"{bench.key}.json"
    write_json_atomic(out, result)
    shown = f"{result['score']:.2f}" if result["score"] is not None else result.get("note", "")
    print(f"{bench.title} ({bench.metric}): {shown}  [{out}]")
    return 0


def _report(args) -> int:
    from aligngpt_plugin.evaluation.report import write_report

    print(write_report(args.results_dirs, args.out), end="")
    return 0


def _gates(args) -> int:
    from aligngpt_plugin.evaluation.gates import analyse
    from aligngpt_plugin.evaluation.report import load_results

    results = load_results(args.results_dir)
    pairs = {k: (r["answers"], r["gates"]) for k, r in results.items() if r.get("gates")}
    if not pairs:
        print(f"aligngpt-eval: no gate files for the results in {args.results_dir}; run the eval scripts on an "
              "AlignGPT checkpoint (they set ALIGNGPT_GATE_DUMP)", file=sys.stderr)
        return 2
    summary = analyse(pairs, args.out or args.results_dir)
    for key, s in summary["benchmarks"].items():
        if s["mean_weights"]:
            print(f"{key}: {s['gated']} samples, mean entropy {s['mean_entropy']:.3f} / {s['max_entropy']:.3f}, "
                  "mean weights " + " ".join(f"{w:.3f}" for w in s["mean_weights"]))
    if summary.get("max_level_spread") is not None:
        print(f"largest difference between benchmarks on one level: {summary['max_level_spread']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aligngpt-eval", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    keys = list(benchmarks.BENCHMARKS)

    c = sub.add_parser("check", help="are a benchmark's files in place (exit 2 and say where to get them)")
    c.add_argument("benchmark", choices=keys)
    c.add_argument("--eval-dir", default="playground/data/eval")
    c.set_defaults(run=_check)

    s = sub.add_parser("score", help="score an answers file, or write its submission file")
    s.add_argument("benchmark", choices=keys)
    s.add_argument("--eval-dir", default="playground/data/eval")
    s.add_argument("--answers", required=True, help="the merged answers .jsonl of LLaVA's eval module")
    s.add_argument("--results-dir", required=True, help="where <benchmark>.json goes (one folder per checkpoint)")
    s.add_argument("--ckpt", help="checkpoint name in file names (default: the results folder's name)")
    s.set_defaults(run=_score)

    r = sub.add_parser("report", help="markdown table of the results beside the paper's numbers")
    r.add_argument("results_dirs", nargs="+", help="result folders, one table row each")
    r.add_argument("--out", help="also write the table here")
    r.set_defaults(run=_report)

    g = sub.add_parser("gates", help="gate weights per benchmark and level: gates.json and gate_heatmap.png")
    g.add_argument("results_dir")
    g.add_argument("--out", help="output folder (default: the results folder)")
    g.set_defaults(run=_gates)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
