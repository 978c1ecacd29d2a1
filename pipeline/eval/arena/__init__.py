"""The arena: every pair of checkpoints answers the same held-out prompts; a judge picks the better answer (or a
tie); Bradley–Terry ratings with bootstrap 95% intervals, as Chatbot Arena reports them.

    chatsmith arena RUN/pretrain RUN/sft RUN/ppo --judge gold --out RUN              # the demo
    chatsmith arena RUN/sft RUN/ppo OLD_RUN/ppo --judge reward:RUN/reward --prompts TEST.jsonl --out RUN
    chatsmith arena RUN/sft RUN/ppo --judge human --prompts TEST.jsonl --out RUN     # Label Studio tasks
    chatsmith arena --ingest EXPORT.json --out RUN                                   # ... and their verdicts

Modules, each usable alone:
    fit.py       battles -> Bradley–Terry ratings by maximum likelihood, bootstrap intervals, position-bias stats
    battles.py   answers + a pairwise judge -> battles (every pair of checkpoints, both orders)
    human.py     the human path: battles as Label Studio tasks, and the labelers' verdicts back (through `labeling`)
    results.py   DIR/arena/{ratings.json, battles.jsonl, summary.json, answers.jsonl}, the markdown table
    plot.py      DIR/arena/ratings.png
    cli.py       `chatsmith arena`

How (settled when the arena was built):
- each checkpoint samples `--samples` answers per prompt at the chat default (T=0.7, top-p 0.95), with the same seeds
  for every checkpoint; sample s of one checkpoint meets sample s of another;
- every battle is judged twice, positions swapped; ties are allowed and count half;
- ratings: Bradley–Terry by maximum likelihood on Chatbot Arena's scale (400 points = 10:1 odds, mean rating 1000);
  intervals: percentile bootstrap that resamples *prompts* (or any cluster of them) — all battles of a drawn prompt
  come along, both orders included — so a position-blind judge's duplicate verdict adds no false precision.

Judges are the evaluation's (`pipeline.eval.judges`): any pointwise judge becomes a pairwise one through
`PairwiseJudge`. torch and transformers are imported only inside the functions that need them.
"""


class ArenaError(ValueError):
    """A user error (bad checkpoint list, judge spec, prompts file): one line at the CLI, exit 2."""
