"""The demo world: deterministic per seed; each stage's data has its own job (knowledge only in
pretraining, a common writer flaw in SFT, a labeler bias that does not share the flaw's direction);
held-out prompts split into dev and test; the gold judge ranks replies sensibly."""

import random
from collections import Counter

from pipeline.demo.config import WorldConfig, world_seed
from pipeline.demo.world import ATTRIBUTES, EVAL_QUESTIONS, TRAIN_QUESTIONS, World


def verdict_of(world, row, reply) -> dict:
    """The gold judge's verdict, its score, criteria and flags in one mapping."""
    from pipeline.eval.judges import flat

    return flat(world.gold.verdict(row, reply))


def small_world(recipe_seed=None, **kw):
    return World.build(WorldConfig(towns=12, docs_per_town=3, general_docs=5, rlhf_prompts=40, comparison_prompts=20, **kw),
                       seed=recipe_seed)


def test_deterministic_for_a_seed_and_different_for_another():
    a, b = small_world(), small_world()
    assert a.pretrain_documents() == b.pretrain_documents()
    assert a.sft_conversations() == b.sft_conversations()
    assert a.rlhf_prompts() == b.rlhf_prompts()
    assert a.eval_prompts() == b.eval_prompts()
    other = small_world(recipe_seed=1)
    assert [t.facts for t in other.towns] != [t.facts for t in a.towns]
    assert other.pretrain_documents() != a.pretrain_documents()
    assert other.sft_conversations() != a.sft_conversations()


def test_world_seed_is_the_recipe_seed_unless_set():
    assert world_seed(7, WorldConfig()) == 7
    assert world_seed(7, WorldConfig(seed=3)) == 3
    assert small_world(recipe_seed=7).seed == 7
    assert small_world(recipe_seed=7, seed=3).seed == 3  # data.world.seed wins over the recipe's
    assert small_world(recipe_seed=5).eval_prompts() == small_world(seed=5).eval_prompts()


def test_pretrain_only_facts_never_in_sft_data():
    world = small_world()
    only = [t for t in world.towns if not t.in_sft]
    assert only and len(only) < len(world.towns)
    sft_text = " ".join(m["content"] for row in world.sft_conversations() for m in row["messages"])
    prompts = " ".join(row["prompt"] for row in world.rlhf_prompts())
    docs = " ".join(world.pretrain_documents())
    for town in only:
        assert town.name not in sft_text and town.name not in prompts
        assert town.name in docs


def test_eval_prompts_split_into_dev_and_test():
    world = World.build(WorldConfig())  # the recipe's default size: the PPO monitor needs >= 240 dev prompts
    rows = world.eval_prompts()
    assert {"id", "split", "prompt", "town", "attribute", "seen", "pair_unseen"} <= set(rows[0])
    assert len({r["id"] for r in rows}) == len(rows)
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("dev", "test")}
    assert set(by_split) == {r["split"] for r in rows}
    for split, chosen in by_split.items():
        assert len(chosen) >= 240, split
        assert any(r["seen"] for r in chosen)
        assert any(r["seen"] and r["pair_unseen"] for r in chosen)  # unasked facts of towns SFT did see
        assert all(r["pair_unseen"] for r in chosen if not r["seen"])
    # dev answers become training data (rewrites) and steer selection: no pretrain-only town on dev
    assert all(r["seen"] for r in by_split["dev"]) and any(not r["seen"] for r in by_split["test"])
    facts = {s: {(r["town"], r["attribute"]) for r in chosen} for s, chosen in by_split.items()}
    assert not facts["dev"] & facts["test"]  # what is tuned on dev says nothing about a test fact
    phrasings = {s: {r["prompt"].replace(r["town"], "{t}") for r in chosen} for s, chosen in by_split.items()}
    assert not phrasings["dev"] & phrasings["test"]


def test_eval_prompts_are_held_out_and_unseen_pairs_never_asked():
    world = small_world()
    conversations, prompts = world.sft_conversations(), world.rlhf_prompts()
    train_prompts = {row["messages"][0]["content"] for row in conversations} | {row["prompt"] for row in prompts}
    rows = world.eval_prompts()
    assert not train_prompts & {row["prompt"] for row in rows}
    assert not {q for qs in EVAL_QUESTIONS.values() for q in qs} & {q for qs in TRAIN_QUESTIONS.values() for q in qs}
    asked = {(r["town"], r["attribute"]) for r in conversations} | {(r["town"], r["attribute"]) for r in prompts}
    for row in rows:
        assert row["pair_unseen"] == ((row["town"], row["attribute"]) not in asked), row
        assert row["seen"] == world.town(row["town"]).in_sft


def test_hedging_is_the_most_common_writer_habit_and_gold_penalises_it():
    world = World.build(WorldConfig())
    rows = world.sft_conversations()
    habits = Counter(row["habit"] for row in rows)
    assert habits.most_common(1)[0][0] == "hedging", habits
    assert {"concise", "flattering", "rambling", "rude"} <= set(habits)
    assert 0.03 < sum(row["wrong_fact"] for row in rows) / len(rows) < 0.2
    hedged = [verdict_of(world, row, row["messages"][1]["content"]) for row in rows if row["habit"] == "hedging"]
    plain = [verdict_of(world, row, row["messages"][1]["content"]) for row in rows if row["habit"] == "concise"]
    assert all(v["hedged"] == 1 and v["pleasantries"] == 0 for v in hedged)  # the flaw carries no bias
    assert max(v["score"] for v in hedged) < min(v["score"] for v in plain if v["correct"] == 1)


def test_labelers_share_gold_on_the_flaw_but_not_on_their_bias():
    """Flaw pairs (hedged vs plain, same fact): labelers and gold both prefer plain. Bias pairs (with
    pleasantries vs plain): gold prefers plain, labelers mostly prefer the pleasantries."""
    world = World.build(WorldConfig())
    rng = random.Random(0)
    labelers = world.labelers()
    votes = Counter()
    for row in world.rlhf_prompts()[:300]:
        town = world.town(row["town"])
        value = town.facts[row["attribute"]]
        plain = world.write_reply(rng, town.name, row["attribute"], value, "concise")
        for kind, habit in (("flaw", "hedging"), ("bias", "flattering")):
            other = world.write_reply(rng, town.name, row["attribute"], value, habit)
            assert world.gold.score(row, plain) > world.gold.score(row, other)
            ranks = world.rank(rng, rng.choice(labelers), row, [plain, other])["ranks"]
            votes[kind, "plain" if ranks[0] < ranks[1] else "tie" if ranks[0] == ranks[1] else "other"] += 1
    assert votes["flaw", "plain"] > 0.8 * 300, votes
    assert votes["bias", "other"] > 0.6 * 300, votes
    assert world.labeler_value(row, plain, bias=0.0) == world.gold.score(row, plain)


def test_noisier_labelers_disagree_more():
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
