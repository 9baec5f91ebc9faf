# The two commands a new user needs: `make train` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
# torch and torchvision are pinned together in the same install: timm and open_clip import
# torchvision, and a mismatched pair fails to import.
TORCH := torch==2.14.1 torchvision==0.29.1

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

train: setup  ## train the default preset (tiny-cpu) on the embedded dataset (continuing runs/tiny-cpu if there), then print captions
	$(VENV)/bin/ov2 train --preset tiny-cpu --out runs/tiny-cpu --resume

test: setup  ## run the test suite
	$(VENV)/bin/python -m pytest tests

.PHONY: setup train test
