"""The demo's statistics, from its answer and caption files: accuracies over seeds, paired exact tests, the
level probe's truth rates, and the gate's difference between question kinds.

Plain python (`math.comb`, `statistics.NormalDist`), so that every p-value can be checked by hand:

- `mcnemar`: exact McNemar test of two models on the same questions: of the discordant questions (one
  model right, the other wrong), the count one way is Binomial(n, 1/2) when the models are equally good;
  two-sided p = min(1, 2 P(X <= min(b, c))). 4 discordant all one way: 2 * 0.5^4 = 0.125.
- `sign_test`: the same exact binomial test on the signs of per-seed (or per-picture) differences, ties
  dropped. With 3 seeds its smallest possible two-sided p is 2 * 0.5^3 = 0.25: three seeds alone cannot
  make a difference significant; `stouffer` pools the seeds' own tests instead.
- `stouffer`: Stouffer's combination of per-seed one-sided mid-p values of the exact tests (signed: each
  seed's z is positive when the first model is ahead), Z = sum z / sqrt(k), two-sided p. Seeds are
  independent trainings; they share the evaluation questions, so the pooled test is about these questions.
- `fisher`: Fisher's combination of independent p-values (chi-square with 2k degrees of freedom, closed form).
- `wilson`: Wilson's 95% interval of a proportion (never of width 0, unlike sqrt(p(1-p)/n) at 0% or 100%).
- `gate_kind_test`: a permutation test of whether the gate's weights differ between question kinds
  (pseudo-F of the weight vectors, kinds shuffled over the questions).
"""

from __future__ import annotations

import math
import random
import re
import sys
from pathlib import Path
from statistics import NormalDist

from aligngpt_plugin.core.fileio import read_jsonl

ATTRIBUTE_VALUES = {  # attribute -> the words a caption can name it with (no word is part of another)
    "colour": ("red", "green", "blue", "yellow", "purple", "orange"),
    "shape": ("circle", "square", "triangle"),
    "place": ("top left", "top right", "bottom left", "bottom right", "centre"),
}


class DemoDataError(ValueError):
    """An answer, caption or gate file that does not fit the questions (names the file and what to do)."""


# --- exact tests -------------------------------------------------------------------------------------------

def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n trials at probability 1/2: min(1, 2 P(X <= min(k, n - k)))."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n)


def binomial_mid_p_greater(k: int, n: int) -> float:
    """One-sided mid-p of k or more successes in n trials at 1/2: P(X > k) + P(X = k) / 2 (0.5 when n = 0)."""
    if n == 0:
        return 0.5
    above = sum(math.comb(n, i) for i in range(k + 1, n + 1))
    return (above + math.comb(n, k) / 2) / 2 ** n


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact McNemar p (two-sided) from the discordant counts: a right and b wrong, a wrong and b right."""
    return binomial_two_sided(a_only, a_only + b_only)


def sign_test(differences: list[float]) -> dict:
    """Exact two-sided sign test of differences (ties dropped): {positive, negative, ties, p}."""
    pos = sum(d > 0 for d in differences)
    neg = sum(d < 0 for d in differences)
    return {"positive": pos, "negative": neg, "ties": len(differences) - pos - neg,
            "p": binomial_two_sided(pos, pos + neg), "min_p": binomial_two_sided(0, pos + neg)}


def _one_sided_z(a: int, b: int, normal: NormalDist) -> float:
    """Phi^-1(1 - mid-p of a ahead), from the smaller tail: 1 - p rounds to 1.0 once one side leads by
    ~55 or more (a z of about 8), where Phi^-1 fails; the two mid-p tails at 1/2 sum to 1, so the other
    tail gives it without the rounding (floored at the smallest float: about 38 sd)."""
    greater = binomial_mid_p_greater(a, a + b)
    if greater <= 0.5:
        return -normal.inv_cdf(max(greater, sys.float_info.min))
    return normal.inv_cdf(max(binomial_mid_p_greater(b, a + b), sys.float_info.min))


def stouffer(counts: list[tuple[int, int]]) -> dict:
    """Stouffer's combination of exact one-sided tests, one per seed: `counts` holds (a_ahead, b_ahead)
    (discordant counts, or positive/negative signs); each gives z = Phi^-1(1 - mid-p of a_ahead);
    Z = sum z / sqrt(k); two-sided p = 2 (1 - Phi(|Z|)), computed as erfc(|Z| / sqrt 2): 1 - Phi rounds to 0
    beyond |Z| ~ 8.3 (p ~ 1e-16), erfc keeps the tail down to the smallest float."""
    if not counts:
        return {"z": float("nan"), "p": 1.0}
    normal = NormalDist()
    zs = [_one_sided_z(a, b, normal) for a, b in counts]
    z = sum(zs) / math.sqrt(len(zs))
    return {"z": z, "p": min(1.0, math.erfc(abs(z) / math.sqrt(2)))}


def fisher(pvalues: list[float]) -> dict:
    """Fisher's combination: X = -2 sum ln p ~ chi-square(2k); p = exp(-X/2) sum_{j<k} (X/2)^j / j!."""
    if not pvalues:
        return {"chi2": float("nan"), "p": 1.0}
    half = -sum(math.log(max(p, 1e-300)) for p in pvalues)
    return {"chi2": 2 * half, "p": min(1.0, math.exp(-half) * sum(half ** j / math.factorial(j)
                                                                 for j in range(len(pvalues))))}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's interval of k successes in n (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (n - 1; None for one value), min and max."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}


# --- answers -----------------------------------------------------------------------------------------------

def question_hits(answers: Path, questions: list[dict]) -> dict[int, bool]:
    """question_id -> whether the answer holds the expected word; every question must be answered once."""
    rows = read_jsonl(answers)
    got: dict = {}
    for row in rows:
        if row["question_id"] in got:
            raise DemoDataError(f"{answers}: question {row['question_id']} is answered twice; delete the file "
                                "and rerun the demo")
        got[row["question_id"]] = str(row["text"]).lower()
    wanted = {q["question_id"] for q in questions}
    if set(got) != wanted:
        missing, extra = sorted(wanted - set(got))[:5], sorted(set(got) - wanted)[:5]
        raise DemoDataError(f"{answers} answers {len(got)} questions, the question file has {len(wanted)} "
                            f"(missing {missing}, unknown {extra}); delete it and rerun the demo")
    return {q["question_id"]: q["answer"].lower() in got[q["question_id"]] for q in questions}


def paired(a: dict[int, bool], b: dict[int, bool], ids: list[int]) -> dict:
    """The 2x2 table of two models on the same questions and its exact McNemar p."""
    both = sum(a[i] and b[i] for i in ids)
    a_only = sum(a[i] and not b[i] for i in ids)
    b_only = sum(b[i] and not a[i] for i in ids)
    return {"n": len(ids), "both": both, "a_only": a_only, "b_only": b_only,
            "neither": len(ids) - both - a_only - b_only, "p": mcnemar(a_only, b_only)}


def accuracy_statistics(questions: list[dict], answers: dict[int, dict[str, Path]],
                        models: tuple[str, str] = ("aligngpt", "llava")) -> dict:
    """Everything the report says about accuracy, from the answer files of each seed and model.

    Args:
        questions: the question records (question_id, category, answer).
        answers: seed -> model -> answers file (`model_vqa_loader`'s output).
        models: the two models compared (a, b): differences are a - b.
    Returns:
        {"per_seed": {seed: {model: {kind: {"correct", "n", "accuracy", "wilson"}}}},
         "over_seeds": {model: {kind: mean_spread of accuracies}},
         "paired": {kind: {"per_seed": {seed: McNemar table}, "sign": sign test, "stouffer": ...}}}
    """
    kinds = list(dict.fromkeys(q["category"] for q in questions))
    by_kind = {k: [q["question_id"] for q in questions if q["category"] == k] for k in kinds}
    hits = {seed: {m: question_hits(path, questions) for m, path in files.items()} for seed, files in answers.items()}
    per_seed: dict = {}
    for seed, per_model in hits.items():
        per_seed[seed] = {}
        for m, h in per_model.items():
            per_seed[seed][m] = {}
            for k, ids in by_kind.items():
                correct = sum(h[i] for i in ids)
                per_seed[seed][m][k] = {"correct": correct, "n": len(ids), "accuracy": correct / len(ids),
                                        "wilson": wilson(correct, len(ids))}
    present = [m for m in models if all(m in h for h in hits.values())]
    over = {m: {k: mean_spread([per_seed[s][m][k]["accuracy"] for s in per_seed]) for k in kinds} for m in present}
    out = {"seeds": list(per_seed), "kinds": kinds, "per_seed": per_seed, "over_seeds": over, "paired": {}}
    if len(present) == 2:
        a, b = models
        for k, ids in by_kind.items():
            tables = {s: paired(hits[s][a], hits[s][b], ids) for s in hits}
            out["paired"][k] = {
                "per_seed": tables,
                "sign": sign_test([t["a_only"] - t["b_only"] for t in tables.values()]),
                "stouffer": stouffer([(t["a_only"], t["b_only"]) for t in tables.values()]),
            }
    return out


# --- the level probe ---------------------------------------------------------------------------------------

def mentioned(text: str, attribute: str) -> set[str]:
    """The values of `attribute` a caption names (whole words, case-insensitive)."""
    low = text.lower()
    return {v for v in ATTRIBUTE_VALUES[attribute] if re.search(rf"\b{re.escape(v)}\b", low)}


def first_sentence(text: str) -> str:
    """The caption proper: up to its first full stop. Every caption the model learnt is one sentence; a
    model that does not stop at the separator goes on with more, which are not scored."""
    return text.split(".", 1)[0]


def judge(text: str, truth: dict[str, str]) -> dict[str, str]:
    """Per attribute (colour, shape, place; `truth` holds the picture's values) of the caption's first
    sentence: 'true' (names the right value and no other), 'false' (names a wrong value) or 'absent'
    (names none)."""
    out = {}
    sentence = first_sentence(text)
    for attribute in ATTRIBUTE_VALUES:
        named = mentioned(sentence, attribute)
        out[attribute] = "absent" if not named else ("true" if named == {truth[attribute]} else "false")
    return out


def probe_statistics(pictures: list[dict], captions: dict[int, dict[str, Path]], compare: list[tuple[str, str]]
                     ) -> dict:
    """The level probe's numbers, from caption files.

    Args:
        pictures: [{"image", "colour", "shape", "place"}], the held-out pictures' known truth.
        captions: seed -> condition (e.g. "level 0", "level 7", "LLaVA") -> JSONL of {"image", "text"},
            one caption per picture.
        compare: pairs of conditions (a, b) to test, a - b.
    Returns:
        {"per_seed": {seed: {condition: {"true", "false", "absent" (counts over pictures x 3 attributes),
         "n", "true_rate", "wilson", "per_attribute": {attr: {"true", "false", "absent"}}}}},
         "over_seeds": {condition: mean_spread of true_rate},
         "tests": {"a vs b": {"per_seed": {seed: {"per_attribute": McNemar per attribute,
         "pictures": sign test of per-picture true counts}}, "sign": sign test over seeds of the rate
         difference, "stouffer": pooled per-seed picture sign tests}}}
    """
    truth = {p["image"]: {a: p[a] for a in ATTRIBUTE_VALUES} for p in pictures}
    judged: dict = {}
    per_seed: dict = {}
    for seed, files in captions.items():
        judged[seed], per_seed[seed] = {}, {}
        for cond, path in files.items():
            rows = read_jsonl(path)
            got = {r["image"]: r["text"] for r in rows}
            if len(got) != len(rows) or set(got) != set(truth):
                raise DemoDataError(f"{path}: {len(rows)} captions for {len(got)} pictures, the probe has "
                                    f"{len(truth)}; each held-out picture needs one caption: rerun the demo")
            j = judged[seed][cond] = {img: judge(got[img], t) for img, t in truth.items()}
            counts = {v: sum(x[a] == v for x in j.values() for a in ATTRIBUTE_VALUES) for v in ("true", "false",
                                                                                                 "absent")}
            n = len(truth) * len(ATTRIBUTE_VALUES)
            per_seed[seed][cond] = {**counts, "n": n, "true_rate": counts["true"] / n,
                                    "wilson": wilson(counts["true"], n),
                                    "per_attribute": {a: {v: sum(x[a] == v for x in j.values())
                                                          for v in ("true", "false", "absent")}
                                                      for a in ATTRIBUTE_VALUES}}
    conditions = list(next(iter(captions.values())))
    over = {c: mean_spread([per_seed[s][c]["true_rate"] for s in per_seed]) for c in conditions}
    tests = {}
    images = sorted(truth)
    for a, b in compare:
        seeds = {}
        for seed, j in judged.items():
            per_attr = {}
            for attr in ATTRIBUTE_VALUES:
                ta = {i: j[a][i][attr] == "true" for i in images}
                tb = {i: j[b][i][attr] == "true" for i in images}
                per_attr[attr] = paired(ta, tb, images)
            diffs = [sum(j[a][i][x] == "true" for x in ATTRIBUTE_VALUES) - sum(j[b][i][x] == "true"
                                                                               for x in ATTRIBUTE_VALUES)
                     for i in images]
            seeds[seed] = {"per_attribute": per_attr, "pictures": sign_test(diffs)}
        tests[f"{a} vs {b}"] = {
            "a": a, "b": b, "per_seed": seeds,
            "sign": sign_test([per_seed[s][a]["true_rate"] - per_seed[s][b]["true_rate"] for s in per_seed]),
            "stouffer": stouffer([(t["pictures"]["positive"], t["pictures"]["negative"]) for t in seeds.values()]),
        }
    return {"seeds": list(per_seed), "conditions": conditions, "per_seed": per_seed, "over_seeds": over,
            "tests": tests}


# --- the gate ----------------------------------------------------------------------------------------------

def pseudo_f(weights: list[list[float]], groups: list[int], k: int) -> float:
    """Between-group over within-group mean square of weight vectors (summed over levels), as PERMANOVA's."""
    n, dims = len(weights), len(weights[0])
    total = [sum(w[d] for w in weights) / n for d in range(dims)]
    sums = [[0.0] * dims for _ in range(k)]
    sizes = [0] * k
    for w, g in zip(weights, groups):
        sizes[g] += 1
        row = sums[g]
        for d in range(dims):
            row[d] += w[d]
    between = sum(sizes[g] * sum((sums[g][d] / sizes[g] - total[d]) ** 2 for d in range(dims))
                  for g in range(k) if sizes[g])
    within = sum((w[d] - sums[g][d] / sizes[g]) ** 2 for w, g in zip(weights, groups) for d in range(dims))
    if within == 0:
        return math.inf if between > 0 else 0.0
    return (between / (k - 1)) / (within / (n - k))


def gate_kind_test(weights: list[list[float]], kinds: list[str], permutations: int = 199, seed: int = 0) -> dict:
    """Do the gate's weights differ between question kinds? Permutation test of the pseudo-F (kinds
    shuffled over the questions): p = (1 + #(F_perm >= F)) / (1 + permutations). Also the largest
    difference between two kinds' mean weight on any level (the effect's size)."""
    names = list(dict.fromkeys(kinds))
    groups = [names.index(k) for k in kinds]
    f = pseudo_f(weights, groups, len(names))
    rng = random.Random(seed)
    shuffled = list(groups)
    exceed = 0
    for _ in range(permutations):
        rng.shuffle(shuffled)
        exceed += pseudo_f(weights, shuffled, len(names)) >= f
    means = {name: [sum(w[d] for w, g in zip(weights, groups) if g == i) / groups.count(i)
                    for d in range(len(weights[0]))] for i, name in enumerate(names)}
    spread = max(max(m[d] for m in means.values()) - min(m[d] for m in means.values())
                 for d in range(len(weights[0])))
    return {"pseudo_f": f, "p": (1 + exceed) / (1 + permutations), "permutations": permutations,
            "max_level_spread": spread, "mean_weights": means}
