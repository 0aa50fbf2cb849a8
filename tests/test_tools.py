"""The optional system tools: one line says what is missing, and set-up installs only that."""
import os

import pytest

from bertlab.instructor import tools


def _path(tmp_path, programs, debian=()):
    folder = tmp_path / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    for p in programs:
        exe = folder / p
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return str(folder)


def test_report_names_each_missing_tool_and_what_it_enables(tmp_path):
    path = _path(tmp_path, ["npm", "setfacl"])
    line = tools.report(path)
    assert "\n" not in line
    assert "bubblewrap (the grading sandbox;" in line and "chromium (the workshop's browser check" in line
    assert "npm" not in line and "acl" not in line
    assert tools.report(_path(tmp_path, ["bwrap", "chromium"])).startswith("optional system tools: all present")


def test_plan_installs_only_what_is_missing(tmp_path, monkeypatch):
    path = _path(tmp_path, ["npm", "node", "bwrap"])  # node and npm from elsewhere (NodeSource, nvm)
    todo, notes = tools.plan(["acl", "chromium", "bubblewrap", "npm"], path)
    assert todo == ["acl", "chromium"]
    assert any(n.startswith("npm: npm present") for n in notes) and any(n.startswith("bubblewrap:") for n in notes)
    # npm missing beside a node that is not Debian's: Debian's npm would conflict with it, so it is left
    no_npm = _path(tmp_path / "x", ["node"])
    monkeypatch.setattr(tools, "_from_debian", lambda program: False)
    todo, notes = tools.plan(["npm"], no_npm)
    assert todo == [] and "not Debian's" in notes[0]
    monkeypatch.setattr(tools, "_from_debian", lambda program: True)
    assert tools.plan(["npm"], no_npm)[0] == ["npm"]
    with pytest.raises(ValueError, match="unknown"):
        tools.plan(["firefox"], path)


def test_install_runs_one_apt_command_per_missing_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path(tmp_path, ["npm", "bwrap", "chromium"]) + os.pathsep + "/usr/bin")
    monkeypatch.setattr(tools.shutil, "which", lambda p, path=None: None if p == "setfacl" else "/x/" + p)
    lines = []
    assert tools.install(["acl", "chromium", "bubblewrap", "npm"], dry_run=True, out=lines.append) == 0
    cmds = [x for x in lines if x.startswith("$ ")]
    assert cmds[-1].endswith("apt-get install -y -q acl") and len(cmds) == 2, lines
