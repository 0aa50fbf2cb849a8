"""Instructor tooling, not course content: the simulated-class grading harness (grading), autograding
a class in parallel workers (autograde), and the release, run and validate commands (course). The
notebooks never import it."""
