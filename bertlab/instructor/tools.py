"""The optional system programs the course uses, what each enables, and installing only what is missing.

    python -m bertlab.instructor.tools report            # one line (make setup prints it)
    python -m bertlab.instructor.tools install bubblewrap chromium acl npm   # make workshop

None is needed to learn or to run `make test`; each enables one thing (:data:`TOOLS`). ``install``
asks apt (Debian/Ubuntu) for each missing package on its own and leaves a working program alone,
whatever provided it: a node and npm from NodeSource or nvm stay, where Debian's npm would conflict
with that node ("nodejs : Conflicts: npm") and stop the whole apt transaction.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Tool:
    program: str  # what is looked up on PATH
    package: str  # Debian's package that provides it
    enables: str


TOOLS = (
    Tool("bwrap", "bubblewrap", "the grading sandbox; autograde refuses to grade without it unless --allow-unsandboxed"),
    Tool("chromium", "chromium", "the workshop's browser check, make workshop"),
    Tool("npm", "npm", "the workshop hub's proxy, make workshop"),
    Tool("setfacl", "acl", "the workshop's shared exchange folder, make workshop"),
)
BY_PACKAGE = {t.package: t for t in TOOLS}


def missing(path: str | None = None) -> list[Tool]:
    """The tools whose program is not on ``path`` (default: $PATH)."""
    return [t for t in TOOLS if not shutil.which(t.program, path=path)]


def report(path: str | None = None) -> str:
    """One line: which optional tools are missing and what each would enable."""
    gone = missing(path)
    if not gone:
        return "optional system tools: all present (" + ", ".join(t.package for t in TOOLS) + ")"
    return ("optional system tools missing (none is needed to learn or test): "
            + "; ".join(f"{t.package} ({t.enables})" for t in gone))


def plan(packages: list[str], path: str | None = None) -> tuple[list[str], list[str]]:
    """``(to_install, notes)``: the Debian packages among ``packages`` whose program is missing, each
    on its own, and a note for each left alone (present, or not installable without a conflict)."""
    unknown = sorted(set(packages) - set(BY_PACKAGE))
    if unknown:
        raise ValueError(f"packages: unknown {unknown}; known: {sorted(BY_PACKAGE)}")
    install, notes = [], []
    for name in packages:
        tool = BY_PACKAGE[name]
        found = shutil.which(tool.program, path=path)
        if found:
            notes.append(f"{name}: {tool.program} present at {found}, left alone")
        elif name == "npm" and (node := shutil.which("node", path=path)) and not _from_debian(node):
            notes.append(f"npm: missing, but node at {node} is not Debian's, whose npm would conflict with it: "
                         "install npm with that node's own installer")
        else:
            install.append(name)
    return install, notes


def _from_debian(program: str) -> bool:
    """Whether a Debian package owns ``program`` (dpkg -S); False where there is no dpkg."""
    if not shutil.which("dpkg"):
        return False
    real = os.path.realpath(program)
    return subprocess.run(["dpkg", "-S", real], capture_output=True).returncode == 0


def install(packages: list[str], dry_run: bool = False, out=print) -> int:
    """apt-get install each missing package of ``packages`` on its own; 0 when all are there after."""
    todo, notes = plan(packages)
    for n in notes:
        out(n)
    if not todo:
        out("nothing to install")
        return 0
    apt = [] if os.getuid() == 0 else ["sudo"]
    steps = [apt + ["apt-get", "update", "-q"]] + [apt + ["apt-get", "install", "-y", "-q", p] for p in todo]
    for cmd in steps:
        out("$ " + " ".join(cmd))
        if not dry_run and subprocess.run(cmd).returncode != 0:
            out(f"failed: {' '.join(cmd)}")
            return 1
    still = [p for p in todo if not dry_run and not shutil.which(BY_PACKAGE[p].program)]
    done = "would install" if dry_run else "installed"
    out(f"{done}: {', '.join(todo)}" if not still else f"still missing after apt: {', '.join(still)}")
    return 1 if still else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertlab.instructor.tools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("report", help="one line: the optional tools that are missing, and what each enables")
    ins = sub.add_parser("install", help="install each missing one of these Debian packages (apt), leave the rest")
    ins.add_argument("packages", nargs="+", choices=sorted(BY_PACKAGE))
    ins.add_argument("--dry-run", action="store_true", help="print the apt commands, run nothing")
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report())
        return 0
    return install(args.packages, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
