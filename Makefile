# The project's interface: `make demo` runs the main job on the simulated robot,
# `make test` runs the test suite; both set the environment up first.
.PHONY: setup demo test lint clean

setup:
	@tools/setup.sh

demo: setup
	./env.sh nerf-descriptor demo

test: setup
	./env.sh python -m pytest test

lint: setup
	./env.sh ruff check .
	./env.sh ruff format --check .

clean:
	rm -rf build install log
