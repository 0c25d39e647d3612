# Two commands do all setup (see README.md):
#   make demo   creates .venv, installs gradguard with its extras (dev, torch, lightning, transformers, tensorflow, jax, plot),
#               runs the examples and gradguard report
#   make test   same venv, runs lint, type checks, the strict docs build and the whole test-suite
# Both are idempotent: the install step reruns only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,torch,lightning,transformers,tensorflow,jax,plot

.PHONY: demo test lint typecheck docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

DEMO_LOGS := demo-logs

demo: $(STAMP)
	@rm -rf $(DEMO_LOGS) && mkdir -p $(DEMO_LOGS)
	@echo "=== 1. The seed's gradient check, in seed mode and in gradguard's default mode"
	$(PY) examples/seed_example.py
	@echo
	@echo "=== 2. A NumPy model trained by hand, with a Guard in the loop"
	$(PY) examples/numpy_training_loop.py --log $(DEMO_LOGS)/numpy_training_loop.jsonl
	@echo
	@echo "=== 3. PyTorch: a custom autograd Function with a subtle backward bug"
	$(PY) examples/torch_custom_function.py --log $(DEMO_LOGS)/torch_custom_function.jsonl
	@echo
	@echo "=== 4. Keras: a custom-gradient layer caught by GradCheckCallback during fit"
	@# TensorFlow's C++ start-up chatter (absl, CUDA probes) goes to a file; shown on failure.
	@$(PY) examples/keras_callback.py --log $(DEMO_LOGS)/keras_callback.jsonl \
	  2> $(DEMO_LOGS)/keras_callback.stderr || { cat $(DEMO_LOGS)/keras_callback.stderr; exit 1; }
	@echo
	@echo "=== 5. JAX: a custom_vjp with a subtle backward bug, checked and guarded in an optax loop"
	$(PY) examples/jax_custom_vjp.py --log $(DEMO_LOGS)/jax_custom_vjp.jsonl
	@echo
	@echo "=== 6. PyTorch operators: gradguard_torch.gradcheck as a float32 drop-in for torch's"
	$(PY) examples/torch_gradcheck_dropin.py
	@echo
	@echo "=== 7. Hugging Face Trainer: a hand-written backward in a tiny GPT-2, caught by GradCheckCallback"
	$(PY) examples/hf_trainer.py --log $(DEMO_LOGS)/hf_trainer.jsonl --out $(DEMO_LOGS)/hf_trainer
	@echo
	@echo "=== 8. gradguard report over every log the demo wrote"
	@$(VENV)/bin/gradguard report $(DEMO_LOGS)/*.jsonl --plot $(DEMO_LOGS)/gradcheck.png; \
	  code=$$?; echo; \
	  echo "gradguard report exited with $$code: 1 means a check failed (or was inconclusive), as expected here (the buggy"; \
	  echo "runs above were caught), so in CI this command is the gate. The plot: $(DEMO_LOGS)/gradcheck.png"

lint: $(STAMP)
	$(VENV)/bin/ruff check gradguard adapters tests examples benchmarks
	$(VENV)/bin/ruff format --check gradguard adapters tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q
	@echo "site built in build/site (serve it with: $(VENV)/bin/mkdocs serve)"

test: lint typecheck docs
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_guard.py
	$(PY) benchmarks/bench_threads.py
	$(PY) benchmarks/bench_keras_callback.py
	$(PY) benchmarks/bench_jax.py
	$(PY) benchmarks/measure_tolerances.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(DEMO_LOGS)
