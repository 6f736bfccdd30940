# make run   - the main job: the smoke tier on the default fixture (the software device), Allure results + HTML report
# make test  - the suite's self-tests (what CI runs)
PY      ?= python3
VENV    ?= .venv
FIXTURE ?= fixtures/sim.yaml
TIER    ?= smoke
PYTEST_ARGS ?=
BIN      = $(VENV)/bin
RESULTS  = reports/allure-results

.PHONY: run test report venv clean mutate bench
venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml requirements.lock tools/bootstrap.sh
	bash tools/bootstrap.sh $(PY) $(VENV)

run: venv
	rm -rf $(RESULTS)
	$(BIN)/python -m pytest conformance -m $(TIER) --fixture $(FIXTURE) --alluredir $(RESULTS) $(PYTEST_ARGS); rc=$$?; \
	$(MAKE) --no-print-directory report; report_rc=$$?; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; exit $$report_rc  # the report is written even when cases fail

report: venv
	$(BIN)/moe-cts report --results $(RESULTS) --out reports/html

test: venv
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

mutate: venv
	$(BIN)/moe-cts mutate --tier nightly

bench: venv
	$(BIN)/python benchmarks/bench_reference.py
	$(BIN)/python benchmarks/bench_world.py
	$(BIN)/python benchmarks/bench_perf.py

clean:
	rm -rf $(VENV) $(RESULTS) reports/html reports/node_modules
