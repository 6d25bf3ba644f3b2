# Two commands set everything up on a fresh machine:
#   make run    creates .venv, installs cnnlab, trains LeNet-5 on MNIST and prints the results table
#   make test   same set-up, then runs the fast tests (make test-all adds the slow real-data ones)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The torch / torchvision pair this project is tested with (pip takes both from the local disk here).
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup browser run test test-all studies-docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,ray,tensorboard,export,mlflow]' $(TORCH)
	touch $@

setup: $(VENV)/.installed

# The report tests open report.html in a real headless Chromium (Debian's package). As root it is
# installed here; otherwise the one command is printed and those tests fail naming it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium for the report tests (apt-get install chromium) ..."; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	  else \
	    echo "Chromium is missing: the report tests will fail until it is installed with"; \
	    echo "    sudo apt-get update && sudo apt-get install -y chromium"; \
	  fi; }

run: setup
	$(VENV)/bin/cnnlab train recipes/quickstart_lenet5_mnist.yaml --out runs/quickstart --force

test: setup browser
	$(PY) -m pytest -q

test-all: setup browser
	$(PY) -m pytest -q -m "slow or not slow"

# The tables of docs/studies/*.md between <!-- cnnlab:... --> markers, rebuilt from the committed results and
# the sweep files' claims (cnnlab.reporting.study_pages); tests/test_claims.py checks that this changes nothing.
studies-docs: setup
	$(PY) -m cnnlab.reporting.study_pages

clean:
	rm -rf $(VENV) runs sweeps
