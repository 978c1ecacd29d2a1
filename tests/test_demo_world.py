"""The demo world: deterministic, SFT never sees pretrain-only towns, the gold judge ranks replies sensibly."""

from pipeline.demo.config import WorldConfig
from pipeline.demo.world import ATTRIBUTES, World


def small_world(**kw):
    return World.build(WorldConfig(towns=12, docs_per_town=3, general_docs=5, rlhf_prompts=40, comparison_prompts=20, **kw))


def test_deterministic_for_a_seed():
    a, b = small_world(), small_world()
    assert a.pretrain_documents() == b.pretrain_documents()
    assert a.sft_conversations() == b.sft_conversations()
    assert a.eval_prompts() == b.eval_prompts()
    assert small_world(seed=1).pretrain_documents() != a.pretrain_documents()


def test_pretrain_only_facts_never_in_sft_data():
    world = small_world()
    only = [t for t in world.towns if not t.in_sft]
    assert only and len(only) < len(world.towns)
    sft_text = " ".join(m["content"] for row in world.sft_conversations() for m in row["messages"])
    docs = " ".join(world.pretrain_documents())
    for town in only:
        assert town.name not in sft_text
        assert town.name in docs


def test_eval_prompts_are_held_out_phrasings():
    world = small_world()
    train_prompts = {row["messages"][0]["content"] for row in world.sft_conversations()}
    train_prompts |= {row["prompt"] for row in world.rlhf_prompts()}
    assert not train_prompts & {row["prompt"] for row in world.eval_prompts()}


def test_sft_writers_are_uneven():
    styles = {row["style"] for row in small_world().sft_conversations()}
    assert {"concise", "wordy", "rambling", "rude", "wrong"} <= styles


def test_gold_judge_prefers_truthful_polite_concise():
    world = small_world()
    town = world.towns[0]
    row = {"town": town.name, "attribute": "river"}
    right = town.facts["river"]
    wrong = next(v for v in ATTRIBUTES["river"] if v != right)
    good = world.gold_score(row, f"The river of {town.name} is the {right}.")
    assert good == 1.0
    assert world.gold_score(row, f"The river of {town.name} is the {wrong}.") < good
    assert world.gold_score(row, f"Ugh, obviously the {right}.") < good
    rambling = f"Well, let me think about {town.name}. " * 5 + f"The river is the {right}."
    assert world.gold_score(row, rambling) < good
    assert world.gold_score(row, "") == world.judge(row, "")["score"] < 0.5


def test_noisier_labelers_disagree_more():
    import random

    world = small_world()
    rows = world.rlhf_prompts()
    rng = random.Random(0)
    calm = dict(world.labelers()[0], noise=0.01)
    noisy = dict(calm, noise=0.5)

    def agreement(labeler):
        same = 0
        for row in rows:
            replies = world.synthetic_candidates(rng, row, 4)
            a = world.rank(rng, labeler, row, replies)["ranks"]
            b = world.rank(rng, labeler, row, replies)["ranks"]
            same += a == b
        return same / len(rows)

    assert agreement(calm) > agreement(noisy)
