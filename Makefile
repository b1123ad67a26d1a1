.PHONY: test test-fast bench

# The whole suite, slow tests included (this is what CI runs).
test:
	bash scripts/test.sh

# Skip the slow tests while iterating.
test-fast:
	bash scripts/test.sh -m "not slow"
