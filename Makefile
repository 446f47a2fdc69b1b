# The project's interface: `make demo` runs the main job on the simulated robot,
# `make test` runs the test suite; both set the environment up first.
.PHONY: setup demo test clean

setup:
	@tools/setup.sh

demo: setup
	./env.sh nerf-descriptor demo

test: setup
	./env.sh python -m pytest test

clean:
	rm -rf build install log
