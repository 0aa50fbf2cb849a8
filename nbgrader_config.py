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
# After a cell finishes, nbgrader waits only 4 s (nbclient's iopub_timeout) for the cell's last
# outputs and then fails the WHOLE submission ("Timeout waiting for IOPub output": nbgrader sets
# raise_on_iopub_timeout). On a busy 2-core machine a correct 04-finetuning submission failed
# that way; 60 s keeps the error for a kernel that really stopped talking.
c.Execute.iopub_timeout = 60

# nbgrader gives 0 points to a test cell that writes anything to stderr. Library warnings
# (deprecations, tokenizer parallelism, tqdm) are harmless: drop stderr that is only a
# warning before grading. Tracebacks are 'error' outputs, not stderr, so they still fail.
# The pattern has no \b before "warn": Python prints warnings as "...: UserWarning: ...",
# "RuntimeWarning", "FutureWarning", where "Warning" is inside a word (a leading \b missed
# them all). "NN%|" is a text progress bar (tqdm on stderr).
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(?i)warn|\d+%\|"

# A learner may delete a read-only test cell (e.g. to hide a failure). nbgrader puts the
# original back (with its hidden tests) and grades it; edited test cells are always restored
# from the gradebook, deleted ones only with this option (default False).
c.OverwriteCells.add_missing_cells = True

# A learner's cells run in the same kernel as the tests: bertlab.instructor.integrity.GuardedExecute
# (nbgrader's Execute, configured by c.Execute above) scans the learner's cells for tampering
# (input transformers, patched helpers or builtins, reading solutions/, writing outside the
# folder...) and zeroes the test cells after a finding, resets the kernel state a learner can
# change before each test cell, and zeroes a test cell that did not run to its end. Every finding
# is in the grading log ("Integrity:") and in the test cell's output (the grade report and the
# feedback). Each kernel runs in a sandbox (bertlab.instructor.sandbox: bubblewrap + prlimit, no
# network, a pids cgroup where it can; limits in c.Sandbox.*, per assignment in
# c.Sandbox.assignment_limits); the log says which isolation each submission got ("Sandbox:").
# docs/instructors.md, "Grading safely", says what it stops and what it does not.
c.Autograde.autograde_preprocessors = [
    "bertlab.instructor.integrity.GuardedExecute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]

# Feedback is rendered from the autograded notebook, in which the hidden tests were put back:
# by default the feedback shows their source, and the traceback of a failing hidden test
# quotes it. bertlab.instructor.feedback.HideHiddenTests removes both (tests/test_grading.py checks it).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "bertlab.instructor.feedback.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]

# Student versions: outputs cleared, solution regions replaced by this stub.
c.ClearSolutions.code_stub = {
    "python": "# YOUR CODE HERE\nraise NotImplementedError()",
}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
