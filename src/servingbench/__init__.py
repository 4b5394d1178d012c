"""servingbench: deploy the same PyTorch models on six serving frameworks, verify, measure, compare."""

__version__ = "0.1.0"
