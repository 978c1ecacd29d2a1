# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chatsmith-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
OUT ?= runs/demo

.PHONY: setup demo demo-seeds demo-overopt readme-figures test test-quick bench clean

$(STAMP): pyproject.toml requirements/tested.txt requirements/test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -c requirements/tested.txt -e . -r requirements/test.txt
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/chatsmith run recipes/tiny-cpu.yaml --out $(OUT)

# The demo per seed (OUT/seed-N, OUT/seeds.{json,md}): what the README's figures come from.
demo-seeds: setup
	$(VENV)/bin/chatsmith run recipes/tiny-cpu.yaml --seeds 0,1,2 --out runs/seeds

# Over-optimisation: no KL penalty, a held-out reward model picks the update kept; the same run with the
# gold judge picking (only PPO re-runs) says how close that choice is to the best.
OVEROPT := stages.ppo.kl_coef=0 stages.reward.holdout_fraction=0.5 stages.ppo.max_steps=150 stages.ppo.eval_steps=10 stages.ppo.num_eval_prompts=240
demo-overopt: setup
	$(VENV)/bin/chatsmith run recipes/tiny-cpu.yaml --out runs/overopt $(OVEROPT) stages.ppo.select_best=holdout_reward
	rm -rf runs/overopt-select-gold && cp -r runs/overopt runs/overopt-select-gold
	$(VENV)/bin/chatsmith run recipes/tiny-cpu.yaml --out runs/overopt-select-gold $(OVEROPT) stages.ppo.select_best=gold

# The README's demo figures block and tests/bench/demo_figures.json, from the two targets above.
readme-figures: setup
	$(PY) tests/bench/readme_figures.py --seeds-dir runs/seeds --overopt runs/overopt --write

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout 900 tests

test-quick: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: setup
	$(PY) tests/bench/run_all.py

clean:
	rm -rf runs .pytest_cache
