"""Where the checkout and the test tree are, for tests in any folder of the tree."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
