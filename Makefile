# gen_theta: `make demo` runs the embedded demo, `make test` runs the tests.
# Both create the project virtual environment (.venv) on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The launch / ros2cli wheels are not on any registry; tests use them when the folder exists.
ROS2_WHEELS ?= ../shared/ros2-wheels

.PHONY: demo test lint bench colcon-test clean

$(VENV)/.installed: requirements.lock setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.ros2-cli: $(VENV)/.installed
	@if [ -d "$(ROS2_WHEELS)" ]; then bash $(ROS2_WHEELS)/install.sh $(VENV); \
	else echo "no $(ROS2_WHEELS): tests of ros2 run / ros2 launch will be skipped"; fi
	touch $@

demo: $(VENV)/.installed
	$(BIN)/gen-theta demo

# The test files share out over the cores (pytest-xdist), a file to a worker: its module fixtures
# (tiny checkpoints, datasets) are built once, and each worker has its own DDS domain (test/conftest.py).
test: $(VENV)/.ros2-cli
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile test

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# bench/gpu_competence.py is not a benchmark: it stages a training run for a lent GPU (docs/training.md).
bench: $(VENV)/.installed
	for b in bench/*.py; do [ $$b = bench/gpu_competence.py ] || $(BIN)/python $$b || exit 1; done

colcon-test: $(VENV)/.ros2-cli
	$(BIN)/python -m pytest test/test_colcon.py

clean:
	rm -rf $(VENV) build install log
