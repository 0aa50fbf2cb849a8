"""The configuration of a JupyterHub workshop for the course: who is who, what each server gets.

``benchmarks/workshop.py`` (``make workshop``) starts JupyterHub on 127.0.0.1 with local accounts
(three learners, one instructor) and runs the nbgrader loop through it; this module writes what
that run configures, as plain text and dicts, so tests/test_workshop.py checks it in seconds:

- :func:`hub_config`: ``jupyterhub_config.py`` (local accounts, a password for the workshop, the
  single-user servers of the course's virtual environment, an API token for the script);
- :func:`user_environment`: each single-user server's environment: the learner's or the
  instructor's Lab (``.jupyter/learner`` or ``.jupyter/instructor`` on ``JUPYTER_CONFIG_PATH``,
  as ``make lab`` and ``make lab-instructor`` do) and the workshop's global nbgrader config;
- :func:`nbgrader_config`: that global config (the course id and the exchange folder);
- :func:`instructor_nbgrader_config`: the instructor's own, pointing to their course;
- :data:`EXCHANGE_MODE`: the exchange folder's permissions (nbgrader's docs: ``chmod ugo+rw``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

COURSE_ID = "bertlab"
# nbgrader's documentation creates the exchange with `chmod ugo+rw`; a folder also needs x to be
# entered, so everyone gets rwx. nbgrader then makes the course's inbound/ 733 (learners drop
# submissions in, cannot list the others'), outbound/ 755 and feedback/ 711 itself.
EXCHANGE_MODE = 0o777


@dataclass(frozen=True)
class Workshop:
    """Where a workshop lives and who takes part."""
    repo: Path  # the course repository (its .jupyter/ folders and the bertlab package)
    venv: Path  # the virtual environment every single-user server runs from
    state: Path  # hub database, cookie secret, global configs, logs, the exchange
    learners: tuple[str, ...] = ("learner1", "learner2", "learner3")
    instructor: str = "instructor"
    ip: str = "127.0.0.1"
    port: int = 18000  # the proxy: what a browser opens
    hub_port: int = 18081
    proxy_api_port: int = 18001
    proxy_command: tuple[str, ...] = ("configurable-http-proxy",)
    extra_env: dict = field(default_factory=dict)  # e.g. PYTHONPATH for a worktree of the course

    def __post_init__(self):
        names = (*self.learners, self.instructor)
        if len(set(names)) != len(names) or not all(n and n.isascii() and n.replace("-", "").isalnum()
                                                     and n.islower() and n[0].isalpha() for n in names):
            raise ValueError(f"users: expected distinct lower-case account names, got {names}")
        ports = (self.port, self.hub_port, self.proxy_api_port)
        if len(set(ports)) != 3:
            raise ValueError(f"ports: the proxy, the hub and the proxy's API need three ports, got {ports}")

    @property
    def users(self) -> tuple[str, ...]:
        return (*self.learners, self.instructor)

    @property
    def exchange(self) -> Path:
        return self.state / "exchange"

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def home(self, user: str) -> Path:
        return Path("/home") / user

    def course_dir(self) -> Path:
        """The instructor's copy of the course (nbgrader's course root) in their home."""
        return self.home(self.instructor) / COURSE_ID

    def role(self, user: str) -> str:
        if user == self.instructor:
            return "instructor"
        if user in self.learners:
            return "learner"
        raise ValueError(f"user: {user!r} takes no part in this workshop ({self.users})")


def nbgrader_config(w: Workshop) -> str:
    """The global nbgrader config every single-user server reads (on its JUPYTER_CONFIG_PATH);
    nbgrader's docs put it in /etc/jupyter/nbgrader_config.py on a real hub."""
    return (
        "# Written by bertlab.instructor.hub for a workshop: read by every user's server\n"
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
        f"c.Exchange.root = {str(w.exchange)!r}\n"
    )


def instructor_nbgrader_config(w: Workshop) -> str:
    """The instructor's ``~/.jupyter/nbgrader_config.py``: their course is ``w.course_dir()``.

    Their server (so the Formgrader) runs in their home, and nbgrader reads the config of the folder
    it runs in: without this the Formgrader looks for ``~/source/`` (nbgrader's default layout)
    instead of the course's ``solutions/``. ``load_subconfig`` reads the course's own
    ``nbgrader_config.py`` (its root, folders, grading preprocessors, sandbox)."""
    return (
        "# Written by bertlab.instructor.hub for a workshop: the instructor's course\n"
        "c = get_config()  # noqa: F821\n"
        f"load_subconfig({str(w.course_dir() / 'nbgrader_config.py')!r})  # noqa: F821\n"
    )


def config_path(w: Workshop, user: str) -> list[str]:
    """``JUPYTER_CONFIG_PATH`` of ``user``'s server: the Lab of their role, then the workshop's
    global folder (the nbgrader config)."""
    return [str(w.repo / ".jupyter" / w.role(user)), str(w.state / "etc")]


def user_environment(w: Workshop, user: str) -> dict[str, str]:
    """Environment variables of ``user``'s single-user server (the spawner adds HOME, USER, the
    hub's JUPYTERHUB_* and the rest)."""
    env = {
        "JUPYTER_CONFIG_PATH": ":".join(config_path(w, user)),
        # nbgrader runs `alembic` from PATH when it creates a gradebook
        "PATH": f"{w.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "BERTLAB_CACHE": str(w.home(user) / ".cache" / "bertlab"),  # the course's cache is not theirs
        "OMP_WAIT_POLICY": "PASSIVE",  # as `make lab` (docs/timings.md)
    }
    env.update(w.extra_env)
    return env


def hub_config(w: Workshop, api_token: str, password: str) -> str:
    """``jupyterhub_config.py`` for the workshop.

    Local accounts start their own servers (LocalProcessSpawner) from ``w.venv``; the browser
    logs in with a workshop password (DummyAuthenticator: for a workshop on a closed machine, use
    PAM or OAuth on a real hub); the script acts through a service holding ``api_token``.
    """
    envs = {u: user_environment(w, u) for u in w.users}
    dirs = {u: str(w.course_dir() if u == w.instructor else w.home(u)) for u in w.users}
    return f'''\
# Written by bertlab.instructor.hub (benchmarks/workshop.py): a workshop on 127.0.0.1
import json

c = get_config()  # noqa: F821

c.JupyterHub.ip = {w.ip!r}
c.JupyterHub.port = {w.port}
c.JupyterHub.hub_ip = {w.ip!r}
c.JupyterHub.hub_port = {w.hub_port}
c.ConfigurableHTTPProxy.api_url = "http://{w.ip}:{w.proxy_api_port}"
c.ConfigurableHTTPProxy.command = {list(w.proxy_command)!r}
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///{w.state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = "{w.state / 'jupyterhub_cookie_secret'}"
c.JupyterHub.pid_file = "{w.state / 'jupyterhub.pid'}"
c.JupyterHub.cleanup_servers = True

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {set(w.users)!r}
c.Authenticator.admin_users = {{{w.instructor!r}}}

c.JupyterHub.services = [{{"name": "workshop", "api_token": {api_token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "workshop",
    "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"],
    "services": ["workshop"],
}}]

c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [{str(w.venv / 'bin' / 'jupyterhub-singleuser')!r}]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180  # a Lab server with nbgrader starts in 10-30 s on 2 busy cores
c.Spawner.http_timeout = 180

ENVIRONMENT = json.loads({json.dumps(json.dumps(envs))})
NOTEBOOK_DIR = json.loads({json.dumps(json.dumps(dirs))})


def pre_spawn_hook(spawner):
    """Each user's Lab (learner or instructor), the global nbgrader config, their folder."""
    name = spawner.user.name
    spawner.environment = {{**spawner.environment, **ENVIRONMENT[name]}}
    spawner.notebook_dir = NOTEBOOK_DIR[name]


c.Spawner.pre_spawn_hook = pre_spawn_hook
'''
