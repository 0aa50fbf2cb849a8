"""The JupyterHub workshop's configuration (bertlab.instructor.hub), without starting anything (seconds).

The workshop itself (``make workshop``: a hub, local accounts, a browser) is a benchmark run as
root on a machine of its own: docs/instructors.md, "A workshop on JupyterHub"."""
import ast
import json
import sys
from pathlib import Path

import pytest
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from bertlab.instructor import hub

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def w(tmp_path):
    return hub.Workshop(repo=ROOT, venv=Path(sys.prefix), state=tmp_path / "state",
                        proxy_command=("/opt/chp/configurable-http-proxy",), extra_env={"PYTHONPATH": str(ROOT)})


def _load(text: str, folder: Path, name: str) -> Config:
    (folder / name).write_text(text)
    return PyFileConfigLoader(name, path=str(folder)).load_config()


def test_hub_config_runs_and_says_what_the_workshop_needs(w, tmp_path):
    text = hub.hub_config(w, api_token="t0ken", password="pw")
    ast.parse(text)
    c = _load(text, tmp_path, "jupyterhub_config.py")
    assert c.JupyterHub.ip == c.JupyterHub.hub_ip == "127.0.0.1"  # nothing listens beyond the loopback
    assert (c.JupyterHub.port, c.JupyterHub.hub_port) == (18000, 18081)
    assert c.ConfigurableHTTPProxy.command == ["/opt/chp/configurable-http-proxy"]
    assert c.Authenticator.allowed_users == {"learner1", "learner2", "learner3", "instructor"}
    assert c.Authenticator.admin_users == {"instructor"}
    assert c.JupyterHub.services == [{"name": "workshop", "api_token": "t0ken"}]
    (role,) = c.JupyterHub.load_roles
    assert role["services"] == ["workshop"] and "access:servers" in role["scopes"]  # the script reaches the servers
    assert c.Spawner.cmd == [str(Path(sys.prefix) / "bin" / "jupyterhub-singleuser")]
    assert c.JupyterHub.spawner_class == "localprocess"


def test_each_server_gets_its_role_lab_and_folder(w, tmp_path):
    c = _load(hub.hub_config(w, "t", "p"), tmp_path, "jupyterhub_config.py")

    class Spawner:  # what pre_spawn_hook reads and sets
        def __init__(self, name):
            self.user = type("User", (), {"name": name})()
            self.environment = {"KEEP": "1"}
            self.notebook_dir = ""

    seen = {}
    for name in w.users:
        s = Spawner(name)
        c.Spawner.pre_spawn_hook(s)
        seen[name] = s
        assert s.environment["KEEP"] == "1"  # the hub's own settings stay
        assert s.environment["PYTHONPATH"] == str(ROOT)
        assert s.environment["PATH"].startswith(str(Path(sys.prefix) / "bin"))  # nbgrader runs alembic from PATH
    learner = seen["learner2"].environment["JUPYTER_CONFIG_PATH"].split(":")
    assert learner == [str(ROOT / ".jupyter" / "learner"), str(w.state / "etc")]
    assert seen["instructor"].environment["JUPYTER_CONFIG_PATH"].split(":")[0] == str(ROOT / ".jupyter" / "instructor")
    assert seen["learner2"].notebook_dir == "/home/learner2"
    assert seen["instructor"].notebook_dir == "/home/instructor/bertlab"
    assert seen["learner1"].environment["BERTLAB_CACHE"] == "/home/learner1/.cache/bertlab"


def test_the_lab_folders_exist_and_hide_the_instructor_panels_from_learners():
    page = json.loads((ROOT / ".jupyter" / "learner" / "labconfig" / "page_config.json").read_text())
    hidden = {k for k, v in page["disabledExtensions"].items() if v}
    assert {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment"} <= hidden
    assert (ROOT / ".jupyter" / "instructor" / "labconfig" / "page_config.json").is_file()


def test_nbgrader_configs(w, tmp_path):
    c = _load(hub.nbgrader_config(w), tmp_path, "nbgrader_config.py")
    assert c.CourseDirectory.course_id == "bertlab"
    assert c.Exchange.root == str(w.state / "exchange")
    # the instructor's config reads the course's own (its folders, grading preprocessors, sandbox)
    course = tmp_path / "course"
    course.mkdir()
    (course / "nbgrader_config.py").write_text((ROOT / "nbgrader_config.py").read_text())
    mine = hub.instructor_nbgrader_config(w).replace(str(w.course_dir()), str(course))
    c = _load(mine, tmp_path, "instructor_config.py")
    assert c.CourseDirectory.root == str(course)
    assert c.CourseDirectory.source_directory == "solutions"
    assert "bertlab.instructor.integrity.GuardedExecute" in c.Autograde.autograde_preprocessors


def test_exchange_is_open_to_every_user():
    assert hub.EXCHANGE_MODE & 0o777 == 0o777  # nbgrader's docs: chmod ugo+rw (and x to enter it)


@pytest.mark.parametrize("bad", [dict(learners=("a", "a")), dict(instructor="Root"), dict(learners=("x y",)),
                                 dict(port=18081)])
def test_bad_workshops_are_refused(bad, tmp_path):
    with pytest.raises(ValueError):
        hub.Workshop(repo=ROOT, venv=Path(sys.prefix), state=tmp_path, **bad)


def test_roles():
    w = hub.Workshop(repo=ROOT, venv=Path(sys.prefix), state=Path("/srv/x"))
    assert [w.role(u) for u in w.users] == ["learner", "learner", "learner", "instructor"]
    with pytest.raises(ValueError, match="no part"):
        w.role("mallory")
