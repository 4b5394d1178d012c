"""Test kits that ship with servingbench, for adapter authors outside this repository.

* :mod:`servingbench.testing.contract`: the adapter contract suite every built-in adapter passes.  Run it on any
  registered adapter with ``servingbench contract NAME`` (needs ``pytest``: ``pip install 'servingbench[test]'``).
"""
