# Shortcuts for the two set-up commands in the README.
.PHONY: demo test
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
