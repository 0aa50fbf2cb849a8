"""Instructor tooling, not course content: the simulated-class grading harness (grading), autograding
a class in parallel workers (autograde), the release, run and validate commands (course), and the
configuration of a workshop on JupyterHub (hub, run by benchmarks/workshop.py). The
notebooks never import it."""
