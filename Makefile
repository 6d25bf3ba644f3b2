# Two commands set everything up on a fresh machine:
#   make run    creates .venv, installs cnnlab, trains LeNet-5 on MNIST and prints the results table
#   make test   same set-up, then runs the fast tests (make test-all adds the slow real-data ones)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The torch / torchvision pair this project is tested with (pip takes both from the local disk here).
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,ray,tensorboard,export,mlflow]' $(TORCH)
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/cnnlab train recipes/quickstart_lenet5_mnist.yaml --out runs/quickstart --force

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) runs sweeps
