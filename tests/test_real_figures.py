"""The README's "Real model" figures are what the real-model scripts printed: each block is the markdown saved in its
figures file (tests/bench/real_model.json, tests/bench/real_rlhf.json), and that markdown is the rendering of the
figures beside it. No figure in those blocks is typed by hand."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_real_model  # noqa: E402  (standard library only at import)
import real_rlhf  # noqa: E402
from real_model import readme_block  # noqa: E402

BLOCKS = [(bench_real_model.README_BLOCK, bench_real_model.RESULTS, bench_real_model.markdown),
          (real_rlhf.README_BLOCK, real_rlhf.RESULTS, real_rlhf.markdown)]


@pytest.mark.parametrize("block, results, render", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_is_the_rendering_of_the_figures_file(block, results, render):
    figures = json.loads(results.read_text())
    assert figures["markdown"] == render(figures)
    assert readme_block(block) == figures["markdown"]


def test_the_real_run_is_the_cpu_size_and_says_where_its_published_figures_come_from():
    report = json.loads(real_rlhf.RESULTS.read_text())
    assert report["size_name"] == "CPU sizes" and report["sizes"] == real_rlhf.CPU_SIZES
    for _, url in real_rlhf.PUBLISHED:
        assert url.startswith("https://") and f"({url})" in report["markdown"]


def test_the_readme_says_which_aims_are_missed_with_the_recorded_ratios():
    """The prose under the stage-by-stage block names each missed aim with its recorded ratio: re-recording the
    benchmark without rereading that prose fails here."""
    from real_model import README

    figures = json.loads(bench_real_model.RESULTS.read_text())
    rows = figures["rows"]
    missed = [key for key in bench_real_model.ROWS if rows[key]["ratio"] < bench_real_model.AIMS[key][0]]
    prose = README.read_text().split("<!-- real-model-bench:end -->", 1)[1].split("### ", 1)[0]
    words = {1: "One", 2: "Two", 3: "Three", 4: "All"}
    assert f"{words[len(missed)]} of the four aims are missed" in prose
    labels = {"sft": "SFT ({:.2f}×)", "reward": "Reward scoring ({:.2f}×)", "ppo": "PPO ({:.2f}× faster than TRL 1.12)",
              "generation": "Generation ({:.2f}×)"}
    for key in bench_real_model.ROWS:
        assert (f"**{labels[key].format(rows[key]['ratio'])}.**" in prose) == (key in missed), key


def test_the_readme_reading_of_the_real_run_holds_for_its_figures():
    """Each claim of the README's "What this run says" against tests/bench/real_rlhf.json."""
    from real_model import README

    report = json.loads(real_rlhf.RESULTS.read_text())
    prose = README.read_text().split("**What this run says.**", 1)[1].split("\n\n", 1)[0]
    includes_half = lambda ci: ci[0] <= 0.5 <= ci[1]
    assert report["wall_s"] <= 60 * 60 and "within the CPU budget" in prose
    check = report["chatml"]
    assert check["chat_template_is_sft_template"] and check["eos_token"] == "<|im_end|>"
    assert "its accuracy CI includes 0.5, and so does the held-out\njudge's" in prose
    assert includes_half(report["reward_accuracy"]["ci95"]) and includes_half(report["holdout_accuracy"]["ci95"])
    assert "(both win-rate CIs include 0.5)" in prose
    assert all(includes_half(report["win_rate"][d]["win_rate_ci95"]) for d in ("greedy", "chat"))
    assert "Replies do not get longer" in prose
    assert all(report["win_rate"][d]["reply_length_ppo_minus_sft"][2] < 2.0 for d in ("greedy", "chat"))
    ended, total = check["greedy_replies_ending_in_im_end"]
    assert ended < total and f"ran to the {check['max_new_tokens']}-token cap" in prose
    # `greedy_reply_ends` is in runs recorded after 5199b5f; for 5199b5f's, a one-off greedy generation checked the cap
    assert all(end in ("<|im_end|>", f"{check['max_new_tokens']}-token cap") for end in check.get("greedy_reply_ends", []))
