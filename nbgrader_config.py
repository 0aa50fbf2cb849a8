"""nbgrader configuration for the bertlab course (read by every nbgrader command run here).

solutions/ holds the instructor's notebooks (nbgrader's "source"); notebooks/ holds
the generated student versions (nbgrader's "release"). See docs/instructors.md.
"""
import os

c = get_config()  # noqa: F821  (provided by nbgrader)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.course_id = "bertlab"

# BERT cells load a checkpoint and run a model on a CPU: 30 s (nbgrader's default) is too
# tight for a shared grading machine. Exercises are kept small, and training cells are
# skipped when NBGRADER_EXECUTION is set, so 180 s is a ceiling for a stuck cell (e.g. an
# infinite loop), not an expected time.
c.Execute.timeout = 180
c.Execute.interrupt_on_timeout = True

# nbgrader gives 0 points to a test cell that writes anything to stderr. Library warnings
# (deprecations, tokenizer parallelism, tqdm) are harmless: drop stderr that is only a
# warning before grading. Tracebacks are 'error' outputs, not stderr, so they still fail.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(?i)\bwarn(ing)?\b"

# Student versions: outputs cleared, solution regions replaced by this stub.
c.ClearSolutions.code_stub = {
    "python": "# YOUR CODE HERE\nraise NotImplementedError()",
}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
