"""Operator tools: the command line, the embedded runner, provisioning, benchmarks."""
