"""The demo's statistics against hand computations: exact tests, pooling over seeds, and the report's
numbers recomputed from answer and caption files built by hand with known counts."""

from __future__ import annotations

import json
import math

import pytest

Z_31_32 = 1.8627318674216515  # Phi^-1(31/32), the normal quantile of a one-seed mid-p of 1/32 (checked below)


def two_sided_normal(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))  # 2 (1 - Phi(|z|)), without the code's NormalDist


def test_exact_tests_against_hand_computed_values():
    from aligngpt_plugin.devkit.demo_stats import binomial_mid_p_greater, fisher, mcnemar, sign_test, wilson

    assert mcnemar(4, 0) == mcnemar(0, 4) == pytest.approx(2 * 0.5 ** 4)  # the 0.125
    assert mcnemar(1, 5) == pytest.approx(2 * (1 + 6) / 2 ** 6)  # P(X <= 1), X ~ Bin(6, 1/2), doubled
    assert mcnemar(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar(3, 3) == 1.0 and mcnemar(0, 0) == 1.0  # capped at 1; no discordant pair: no evidence
    assert binomial_mid_p_greater(4, 4) == pytest.approx(0.5 / 16)
    assert binomial_mid_p_greater(2, 4) == pytest.approx((4 + 1 + 6 / 2) / 16)

    three_up = sign_test([0.1, 0.2, 0.05])
    assert three_up["p"] == pytest.approx(0.25) and three_up["min_p"] == pytest.approx(0.25)  # 3 seeds: never < 0.25
    tied = sign_test([0.1, 0.0, -0.2, 0.3])
    assert (tied["positive"], tied["negative"], tied["ties"]) == (2, 1, 1) and tied["p"] == 1.0

    # Fisher: p1 = p2 = 1/8: X/2 = ln 64; p = (1/64)(1 + ln 64)
    assert fisher([0.125, 0.125])["p"] == pytest.approx((1 + math.log(64)) / 64)
    assert fisher([0.3])["p"] == pytest.approx(0.3)  # one p-value comes back unchanged

    # Wilson at 60/60: the lower end is n / (n + z^2), never a width of 0
    low, high = wilson(60, 60)
    assert low == pytest.approx(60 / (60 + 1.959964 ** 2)) and high == 1.0
    low, high = wilson(0, 60)
    assert low == 0.0 and high == pytest.approx(1.959964 ** 2 / (60 + 1.959964 ** 2))


def test_stouffer_pools_seeds_as_hand_computed():
    from aligngpt_plugin.devkit.demo_stats import stouffer

    assert two_sided_normal(Z_31_32) == pytest.approx(2 / 32)  # the quantile above is the right one
    one = stouffer([(4, 0)])
    assert one["z"] == pytest.approx(Z_31_32, abs=1e-6)
    assert one["p"] == pytest.approx(2 / 32, rel=1e-6)  # one seed: twice its mid-p
    two = stouffer([(4, 0), (4, 0)])
    assert two["z"] == pytest.approx(2 * Z_31_32 / math.sqrt(2), abs=1e-6)
    assert two["p"] == pytest.approx(two_sided_normal(2 * Z_31_32 / math.sqrt(2)), rel=1e-6)
    # opposite seeds cancel; a seed without discordant questions adds z = 0
    assert stouffer([(4, 0), (0, 4)])["p"] == pytest.approx(1.0)
    assert stouffer([(4, 0), (0, 0)])["z"] == pytest.approx(Z_31_32 / math.sqrt(2), abs=1e-6)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def questions_by_hand():
    """10 colour questions (answer red) and 10 shape questions (answer circle)."""
    return ([{"question_id": i, "category": "colour", "answer": "red"} for i in range(10)]
            + [{"question_id": 10 + i, "category": "shape", "answer": "circle"} for i in range(10)])


def answers(path, right: set[int]):
    rows = [{"question_id": i, "text": ("Red" if i < 10 else "Circle") if i in right else "Blue"} for i in range(20)]
    return write_jsonl(path, rows)


def test_accuracies_and_paired_tests_from_answer_files_with_known_counts(tmp_path):
    from aligngpt_plugin.devkit import demo_report
    from aligngpt_plugin.devkit.demo_stats import DemoDataError, accuracy_statistics

    qs = questions_by_hand()
    files = {
        # seed 0: colour AlignGPT 10/10, LLaVA 6/10, its 4 misses all right for AlignGPT (McNemar 0.125);
        # shape: both right on the same 5 (p = 1)
        "0": {"aligngpt": answers(tmp_path / "a0.jsonl", set(range(10)) | set(range(10, 15))),
              "llava": answers(tmp_path / "l0.jsonl", set(range(6)) | set(range(10, 15)))},
        # seed 1: colour 9/10 each, one discordant question each way (p = 1); shape AlignGPT 2, LLaVA 8
        "1": {"aligngpt": answers(tmp_path / "a1.jsonl", set(range(9)) | {10, 11}),
              "llava": answers(tmp_path / "l1.jsonl", set(range(1, 10)) | set(range(10, 18)))},
    }
    stats = accuracy_statistics(qs, files)
    colour_a, colour_l = stats["over_seeds"]["aligngpt"]["colour"], stats["over_seeds"]["llava"]["colour"]
    assert [stats["per_seed"][s]["aligngpt"]["colour"]["correct"] for s in "01"] == [10, 9]
    assert colour_a["mean"] == pytest.approx(0.95) and colour_a["sd"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))
    assert colour_l["mean"] == pytest.approx(0.75) and (colour_l["min"], colour_l["max"]) == (0.6, 0.9)
    seed0 = stats["paired"]["colour"]["per_seed"]["0"]
    assert (seed0["both"], seed0["a_only"], seed0["b_only"], seed0["neither"]) == (6, 4, 0, 0)
    assert seed0["p"] == pytest.approx(0.125)
    assert stats["paired"]["colour"]["per_seed"]["1"]["p"] == 1.0
    shape1 = stats["paired"]["shape"]["per_seed"]["1"]  # LLaVA right on 6 more, AlignGPT on none more
    assert (shape1["a_only"], shape1["b_only"]) == (0, 6) and shape1["p"] == pytest.approx(2 / 64)
    assert stats["paired"]["colour"]["sign"] == {"positive": 1, "negative": 0, "ties": 1, "p": 1.0, "min_p": 1.0}
    # colour pooled: seed 0 (4, 0) -> z = Phi^-1(31/32); seed 1 (1, 1) -> z = 0
    assert stats["paired"]["colour"]["stouffer"]["p"] == pytest.approx(two_sided_normal(Z_31_32 / math.sqrt(2)),
                                                                       rel=1e-6)

    # the report prints these numbers
    table = "\n".join(demo_report.paired_table(stats))
    assert "| colour | 0 | 6 | 4 | 0 | 0 | 0.125 |" in table
    assert "| shape | 1 | 2 | 0 | 6 | 12 | 0.031 |" not in table  # 10 shape questions: 2 + 0 + 6 + 2
    assert "| shape | 1 | 2 | 0 | 6 | 2 | 0.031 |" in table
    seeds = "\n".join(demo_report.seeds_table(stats))
    assert "| colour | AlignGPT | 10/10 (100.0%) | 9/10 (90.0%) | 95.0% | 7.1 | 90.0%-100.0% |" in seeds

    write_jsonl(tmp_path / "short.jsonl", [{"question_id": 0, "text": "Red"}])
    with pytest.raises(DemoDataError, match="short.jsonl answers 1 questions"):
        accuracy_statistics(qs, {"0": {"aligngpt": tmp_path / "short.jsonl", "llava": files["0"]["llava"]}})


PICTURES = [{"image": "p0.png", "colour": "red", "shape": "circle", "place": "top left"},
            {"image": "p1.png", "colour": "blue", "shape": "square", "place": "centre"},
            {"image": "p2.png", "colour": "green", "shape": "triangle", "place": "bottom right"},
            {"image": "p3.png", "colour": "yellow", "shape": "circle", "place": "top right"}]


def test_level_probe_truth_rates_from_caption_files_with_known_counts(tmp_path):
    from aligngpt_plugin.devkit import demo_report
    from aligngpt_plugin.devkit.demo_stats import judge, probe_statistics

    assert judge("A red circle in the top left of the picture.", PICTURES[0]) == {
        "colour": "true", "shape": "true", "place": "true"}
    assert judge("Picture of a blue circle at the left.", PICTURES[0]) == {
        "colour": "false", "shape": "true", "place": "absent"}  # "left" alone names no place
    assert judge("A red circle, top left. a blue square.", PICTURES[0]) == {  # only the first sentence counts
        "colour": "true", "shape": "true", "place": "true"}
    assert judge("A red or blue circle.", PICTURES[0])["colour"] == "false"  # a wrong value named beside the right
    assert judge("A red square, top right.", PICTURES[1]) == {"colour": "false", "shape": "true", "place": "false"}

    top = [f"A {p['colour']} {p['shape']} in the {p['place']} of the picture." for p in PICTURES]  # 12 true
    low = ["Company logo.", "View larger image.", "A purple square, centre.", "IMG_2034.JPG"]  # p2: 0 true
    mid = [top[0], top[1], "A green circle, bottom right.", "Free shipping on all orders over 50 dollars."]
    files = {}
    for seed in ("0", "1"):
        files[seed] = {}
        for cond, texts in (("level 7", top), ("level 3", mid), ("level 0", low)):
            path = tmp_path / f"{seed}_{cond.replace(' ', '')}.jsonl"
            files[seed][cond] = write_jsonl(path, [{"image": p["image"], "text": t} for p, t in zip(PICTURES, texts)])
    stats = probe_statistics(PICTURES, files, [("level 7", "level 0"), ("level 7", "level 3")])
    s0 = stats["per_seed"]["0"]
    assert (s0["level 7"]["true"], s0["level 7"]["n"], s0["level 7"]["true_rate"]) == (12, 12, 1.0)
    # level 0: p2's "purple square, centre": colour, shape, place all false (truth: green triangle, bottom right)
    assert (s0["level 0"]["true"], s0["level 0"]["false"], s0["level 0"]["absent"]) == (0, 3, 9)
    # level 3: p0, p1 fully true (6), p2 colour and place true, shape false; p3 nothing
    assert (s0["level 3"]["true"], s0["level 3"]["false"], s0["level 3"]["absent"]) == (8, 1, 3)
    assert stats["over_seeds"]["level 3"]["mean"] == pytest.approx(8 / 12) and stats["over_seeds"]["level 3"]["sd"] == 0
    t = stats["tests"]["level 7 vs level 0"]["per_seed"]["0"]
    assert t["pictures"]["positive"] == 4 and t["pictures"]["p"] == pytest.approx(0.125)  # all 4 pictures better
    assert t["per_attribute"]["colour"]["a_only"] == 4 and t["per_attribute"]["colour"]["p"] == pytest.approx(0.125)
    t3 = stats["tests"]["level 7 vs level 3"]["per_seed"]["0"]
    assert (t3["pictures"]["positive"], t3["pictures"]["ties"]) == (2, 2) and t3["pictures"]["p"] == pytest.approx(0.5)
    assert stats["tests"]["level 7 vs level 0"]["sign"]["p"] == pytest.approx(0.5)  # 2 seeds, both up

    tables = "\n".join(demo_report.probe_tables({"probe": stats}))
    assert "| level 3 | 8 (66.7%) | 8 (66.7%) | 66.7% | 0.0 | 8.3% | 25.0% |" in tables
    assert "| level 7 vs level 0 | 0 | 0.125 | 0.125 | 0.125 | 4 / 0 / 0 | 0.125 |" in tables


def test_gate_kind_test_against_a_hand_computed_pseudo_f():
    from aligngpt_plugin.devkit.demo_stats import gate_kind_test, pseudo_f

    # one level; kind A: 1, 3 (mean 2); kind B: 5, 7, 9 (mean 7); all: mean 5
    # SSB = 2 (2-5)^2 + 3 (7-5)^2 = 30 on 1 df; SSW = 1 + 1 + 4 + 0 + 4 = 10 on 3 df: F = 30 / (10/3)
    assert pseudo_f([[1.0], [3.0], [5.0], [7.0], [9.0]], [0, 0, 1, 1, 1], 2) == pytest.approx(9.0)
    # two kinds that the gate separates completely: no shuffle of 40 questions does as well
    weights = [[0.6 + 0.001 * (i % 3), 0.4] for i in range(20)] + [[0.4 + 0.001 * (i % 3), 0.6] for i in range(20)]
    kinds = ["colour"] * 20 + ["shape"] * 20
    separated = gate_kind_test(weights, kinds, permutations=99)
    assert separated["p"] == pytest.approx(1 / 100) and separated["max_level_spread"] == pytest.approx(0.2)
    same = gate_kind_test([[0.5, 0.5]] * 40, kinds, permutations=99)
    assert same["p"] == 1.0 and same["max_level_spread"] == 0


def test_stouffer_survives_one_sided_leads_beyond_float_rounding():
    """A seed where one model is ahead on all of 100 discordant questions: mid-p = 2**-101, which 1 - p
    rounds away (the demo's statistics crashed on it, 200 questions a kind); z is Phi^-1(1 - 2**-101),
    between 11 and 12 (Phi(-11) = 1.9e-28 > 2**-101 = 3.9e-31 > Phi(-12) = 1.8e-33)."""
    from statistics import NormalDist

    from aligngpt_plugin.devkit.demo_stats import stouffer

    ahead, behind = stouffer([(100, 0)]), stouffer([(0, 100)])
    expected = -NormalDist().inv_cdf(2.0 ** -101)  # by hand: the one-sided mid-p of 100 of 100
    assert ahead["z"] == pytest.approx(expected) and behind["z"] == pytest.approx(-expected)
    assert 11 < expected < 12
    # one seed: the two-sided p is twice its one-sided mid-p, 2 * 2**-101 = 7.9e-31, not the 0 that
    # 2 (1 - Phi(z)) rounds to
    assert ahead["p"] == pytest.approx(2 * 2.0 ** -101, rel=1e-6) and behind["p"] == ahead["p"]
