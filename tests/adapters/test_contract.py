"""The adapter contract suite (``servingbench.testing.contract``, shipped with the package so that adapters outside
this repository run the same checks) over every registered adapter."""

from servingbench.testing.contract import *  # noqa: F401,F403  (the tests, their fixtures and parametrization)
from servingbench.testing.contract import pytest_generate_tests  # noqa: F401
