"""A workshop on a real JupyterHub, end to end, timed: ``make workshop`` (root, on a machine of its own).

Starts JupyterHub (PyPI ``jupyterhub``, npm ``configurable-http-proxy``) on 127.0.0.1 with three
local learner accounts and an instructor (created here, removed at the end), the nbgrader exchange
in a shared folder (``bertlab.instructor.hub``), and runs notebook 00's loop through the hub:

  the instructor generates and releases 00-welcome (the Formgrader's API in their server);
  each learner fetches it (the Assignments API in their server), edits it through the Contents
  API (learner1 a correct answer, learner2 a partial one, learner3 a hostile one:
  ``bertlab.instructor.submissions``) and submits it; the instructor collects (Formgrader API),
  runs ``python -m bertlab.instructor.grading autograde`` as their own account (parallel
  workers, feedback generated) and releases the feedback (Formgrader API); learner1 fetches it;
  headless Chromium logs in as learner1 and opens the Assignments panel (screenshot).

Prints each step with its wall time and a one-line summary; exits 1 naming the step that failed.
Output (hub log, autograde log, screenshot, steps.json): ``--out`` (default ``.workshop/run``).
docs/instructors.md, "A workshop on JupyterHub".
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workshop_browser import learner_view  # noqa: E402

from bertlab.instructor import hub  # noqa: E402
from bertlab.instructor.autograde import gradebook_scores  # noqa: E402
from bertlab.instructor.submissions import fabricate  # noqa: E402

ASSIGNMENT = "00-welcome"
KINDS = {"learner1": "perfect", "learner2": "partial", "learner3": "hostile-answer-key"}
MARK = "bertlab workshop"  # the accounts' comment (GECOS): only accounts carrying it are removed


class StepFailed(RuntimeError):
    pass


class Steps:
    """Runs named steps, prints each with its wall time; the first failure stops the run."""

    def __init__(self):
        self.done: list[dict] = []
        self.start = time.time()

    def __call__(self, name: str, fn, *args):
        t = time.time()
        try:
            detail = fn(*args)
        except Exception as e:  # noqa: BLE001  (any failure ends the run, named)
            secs = time.time() - t
            self.done.append({"step": name, "seconds": round(secs, 1), "ok": False, "detail": f"{type(e).__name__}: {e}"})
            print(f"FAIL {name:<44} {secs:6.1f} s  {type(e).__name__}: {e}", flush=True)
            raise StepFailed(name) from e
        secs = time.time() - t
        self.done.append({"step": name, "seconds": round(secs, 1), "ok": True, "detail": detail or ""})
        print(f"ok   {name:<44} {secs:6.1f} s  {detail or ''}", flush=True)
        return detail


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, **kw)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    return proc


# --------------------------------------------------------------------------- accounts and folders
def gecos(user: str) -> str | None:
    """The comment of ``user``'s account, or None when there is no such account."""
    proc = sh("getent", "passwd", user, check=False)
    return proc.stdout.split(":")[4] if proc.returncode == 0 else None


def remove_accounts(w: hub.Workshop) -> None:
    """Remove the workshop's accounts (those marked MARK), their processes and home folders."""
    for user in w.users:
        if gecos(user) != MARK:
            continue
        for pid in sh("ps", "-u", user, "-o", "pid=", check=False).stdout.split():
            sh("kill", "-9", pid, check=False)  # the account's leftover processes (a kernel), by id
        sh("userdel", "-r", user, check=False)
        shutil.rmtree(w.home(user), ignore_errors=True)


def traversal_blockers(paths) -> list[Path]:
    """Folders on the way to ``paths`` that other users cannot enter (e.g. /root, mode 700, when
    the venv's Python lives under /root/.pyenv)."""
    out = set()
    for p in paths:
        for d in Path(p).resolve().parents:
            if d != Path("/") and not os.stat(d).st_mode & 0o001:
                out.add(d)
    return sorted(out)


def setup_accounts(w: hub.Workshop, out: Path) -> str:
    remove_accounts(w)  # a run that was interrupted left them: start clean
    taken = [u for u in w.users if gecos(u) is not None]
    if taken:
        raise RuntimeError(f"accounts {taken} exist and are not this workshop's ({MARK!r}): pick other names")
    for user in w.users:
        sh("useradd", "--create-home", "--shell", "/bin/bash", "--comment", MARK, user)
        # Debian's useradd makes homes 755: everyone would read the instructor's solutions/ and
        # gradebook, and each other's notebooks
        os.chmod(w.home(user), 0o700)
    # Each user's server runs the course's Python: let the users through folders they cannot enter
    # (traverse only, x, by an ACL), restored from a saved copy at the end
    blockers = traversal_blockers([sys.executable, os.path.realpath(sys.executable), w.venv, w.repo])
    (out / "acl-backup.txt").write_text(sh("getfacl", "--absolute-names", *blockers).stdout if blockers else "")
    for d in blockers:
        for user in w.users:
            sh("setfacl", "-m", f"u:{user}:x", d)
    return f"{', '.join(w.users)}; traverse-only ACL on {[str(d) for d in blockers] or 'nothing'}"


def restore_acls(out: Path) -> None:
    backup = out / "acl-backup.txt"
    if backup.exists() and backup.read_text().strip():
        paths = [line.split(": ", 1)[1] for line in backup.read_text().splitlines() if line.startswith("# file: ")]
        for p in paths:
            sh("setfacl", "-b", p, check=False)
        sh("setfacl", "--restore", backup, check=False)
    backup.unlink(missing_ok=True)


def setup_folders(w: hub.Workshop) -> str:
    shutil.rmtree(w.state, ignore_errors=True)
    (w.state / "etc").mkdir(parents=True)
    (w.state / "etc" / "nbgrader_config.py").write_text(hub.nbgrader_config(w))
    os.chmod(w.state, 0o755)
    w.exchange.mkdir()
    os.chmod(w.exchange, hub.EXCHANGE_MODE)  # nbgrader's docs: every user reads and writes here
    course = w.course_dir()
    (course / "solutions").mkdir(parents=True)
    shutil.copy2(w.repo / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(w.repo / "solutions" / ASSIGNMENT, course / "solutions" / ASSIGNMENT)
    (w.home(w.instructor) / ".jupyter").mkdir()
    (w.home(w.instructor) / ".jupyter" / "nbgrader_config.py").write_text(hub.instructor_nbgrader_config(w))
    for path in (course, w.home(w.instructor) / ".jupyter"):
        sh("chown", "-R", f"{w.instructor}:{w.instructor}", path)
    return f"exchange {w.exchange} ({oct(hub.EXCHANGE_MODE)}), course {course}"


# --------------------------------------------------------------------------- the hub
class Hub:
    """The running hub and the script's service token for its REST API and the users' servers."""

    def __init__(self, w: hub.Workshop, out: Path):
        self.w, self.token, self.password = w, secrets.token_hex(16), secrets.token_urlsafe(12)
        (w.state / "jupyterhub_config.py").write_text(hub.hub_config(w, self.token, self.password))
        self.log = open(out / "jupyterhub.log", "w")  # noqa: SIM115  (closed in stop())
        env = dict(os.environ, PATH=f"{Path(w.proxy_command[0]).parent}:{w.venv / 'bin'}:{os.environ['PATH']}")
        self.proc = subprocess.Popen([w.venv / "bin" / "jupyterhub", "-f", w.state / "jupyterhub_config.py"], cwd=w.state,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"

    def wait_up(self) -> str:
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited {self.proc.returncode}: see jupyterhub.log")
            try:
                r = self.http.get(f"{self.w.url}/hub/api/", timeout=5)
                if r.ok:
                    return f"JupyterHub {r.json()['version']} at {self.w.url}"
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError("the hub did not answer within 120 s")

    def api(self, method: str, path: str, **kw) -> requests.Response:
        r = self.http.request(method, f"{self.w.url}/hub/api{path}", timeout=60, **kw)
        r.raise_for_status()
        return r

    def start_servers(self) -> str:
        for user in self.w.users:
            self.api("POST", f"/users/{user}/server")
        deadline, waiting = time.time() + 300, set(self.w.users)
        while waiting and time.time() < deadline:
            for user in sorted(waiting):
                server = self.api("GET", f"/users/{user}").json().get("servers", {}).get("", {})
                if server.get("ready"):
                    waiting.discard(user)
            time.sleep(1)
        if waiting:
            raise TimeoutError(f"servers of {sorted(waiting)} not ready within 300 s (jupyterhub.log)")
        return f"{len(self.w.users)} servers ready"

    def user(self, user: str, method: str, path: str, **kw) -> requests.Response:
        """A request to ``user``'s single-user server, through the proxy."""
        r = self.http.request(method, f"{self.w.url}/user/{user}{path}", timeout=300, **kw)
        if not r.ok:
            raise RuntimeError(f"{method} /user/{user}{path}: HTTP {r.status_code}: {r.text[-1000:]}")
        return r

    def formgrader(self, action: str) -> str:
        """An action of the instructor's Formgrader API (it runs nbgrader in their server)."""
        res = self.user(self.w.instructor, "POST", f"/formgrader/api/assignment/{ASSIGNMENT}/{action}").json()
        if not res.get("success"):
            raise RuntimeError(f"formgrader {action}: {res.get('error') or res.get('log')}"[-2000:])
        return (res.get("log") or "").strip().splitlines()[-1][:120] if res.get("log") else "success"

    def assignments(self, user: str, action: str | None = None) -> list[dict]:
        """The Assignments panel's API of ``user``'s server: the list, or ``action`` (fetch, submit,
        fetch_feedback) then the list; nbgrader answers {"success": ..., "value": [...]}."""
        data = {"course_id": hub.COURSE_ID, "assignment_id": ASSIGNMENT}
        if action is None:
            res = self.user(user, "GET", "/assignments", params={"course_id": hub.COURSE_ID}).json()
        else:
            res = self.user(user, "POST", f"/assignments/{action}", data=data).json()
        if not res.get("success"):
            raise RuntimeError(f"{action or 'list'} as {user}: {res.get('value') or res}"[-2000:])
        return res["value"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            for user in self.w.users:  # stop the servers (and their kernels) through the hub
                try:
                    self.http.delete(f"{self.w.url}/hub/api/users/{user}/server", timeout=30)
                except requests.RequestException:
                    pass
            time.sleep(2)
            self.proc.terminate()  # the hub stops its proxy and any server left (cleanup_servers)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- the loop
def status_of(h: Hub, user: str) -> str:
    mine = [a for a in h.assignments(user) if a["assignment_id"] == ASSIGNMENT]
    return ", ".join(sorted({a["status"] for a in mine})) or "not listed"


def fetch(h: Hub, user: str) -> str:
    h.assignments(user, "fetch")
    h.user(user, "GET", f"/api/contents/{ASSIGNMENT}/{ASSIGNMENT}.ipynb", params={"content": 0})
    return f"{ASSIGNMENT}: {status_of(h, user)}"


def edit(h: Hub, user: str, expected: dict) -> str:
    path = f"/api/contents/{ASSIGNMENT}/{ASSIGNMENT}.ipynb"
    fetched = nbformat.from_dict(h.user(user, "GET", path).json()["content"])
    solution = nbformat.read(h.w.repo / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    (sub,) = fabricate(ASSIGNMENT, solution, fetched, scenarios=(KINDS[user],))  # what the learner types
    h.user(user, "PUT", path, json={"type": "notebook", "format": "json", "content": sub.nb})
    expected[user] = sub.expected_total
    return f"{KINDS[user]} (must score {sub.expected_total:g})"


def submit(h: Hub, user: str) -> str:
    h.assignments(user, "submit")
    return f"{ASSIGNMENT}: {status_of(h, user)}"


def autograde(w: hub.Workshop, out: Path) -> str:
    """The parallel autograde command as the instructor (their account, their course folder)."""
    env = {**hub.user_environment(w, w.instructor), "HOME": str(w.home(w.instructor)), "USER": w.instructor,
           "LOGNAME": w.instructor, "LANG": "C.UTF-8"}
    py = w.venv / "bin" / "python"
    probe = sh("runuser", "-u", w.instructor, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), py, "-c",
               "from bertlab.instructor import sandbox; print(sandbox.describe())", cwd=w.course_dir())
    proc = sh("runuser", "-u", w.instructor, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), py, "-m",
              "bertlab.instructor.grading", "autograde", ASSIGNMENT, "--workers", "2", cwd=w.course_dir(), check=False)
    (out / "autograde.log").write_text(probe.stdout + proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"autograde exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    return f"{proc.stdout.strip().splitlines()[-1][:90]} | {probe.stdout.strip()[:70]}"


def check_privacy(w: hub.Workshop) -> str:
    """A learner cannot read the instructor's course (hidden tests, gradebook) nor another learner's work."""
    spy, other = w.learners[1], w.learners[0]
    probes = {"the instructor's solutions": w.course_dir() / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
              "the gradebook": w.course_dir() / "gradebook.db",
              f"{other}'s notebook": w.home(other) / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"}
    missing = [str(p) for p in probes.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"nothing to probe at {missing}")
    read = [what for what, path in probes.items()
            if sh("runuser", "-u", spy, "--", "head", "-c1", path, check=False).returncode == 0]
    if read:
        raise RuntimeError(f"{spy} can read {read}")
    return f"{spy} cannot read {', '.join(probes)}"


def check_scores(w: hub.Workshop, expected: dict) -> str:
    scores = gradebook_scores(w.course_dir())
    got = {u: sum(v or 0 for v in scores.get((u, ASSIGNMENT), {}).values()) for u in w.learners}
    wrong = {u: (got[u], expected[u]) for u in w.learners if (u, ASSIGNMENT) not in scores or got[u] != expected[u]}
    hostile = [u for u, k in KINDS.items() if k.startswith("hostile")]
    unflagged = [u for u in hostile if "GradingIntegrityError" not in
                 (w.course_dir() / "autograded" / u / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text()]
    if wrong or unflagged:
        raise RuntimeError(f"scores (got, expected): {wrong}; hostile without a GradingIntegrityError: {unflagged}")
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{w.course_dir() / 'gradebook.db'}") as gb:
        top = gb.find_assignment(ASSIGNMENT).max_score
    return (", ".join(f"{u} ({KINDS[u]}) {got[u]:g} of {top:g}" for u in w.learners)
            + f", each as expected; {', '.join(hostile)} flagged (GradingIntegrityError)")


def fetch_feedback(h: Hub, user: str) -> str:
    h.assignments(user, "fetch_feedback")
    listing = h.user(user, "GET", f"/api/contents/{ASSIGNMENT}/feedback").json()["content"]
    pages = [f["path"] for stamp in listing for f in h.user(user, "GET", f"/api/contents/{stamp['path']}").json()["content"]
             if f["name"].endswith(".html")]
    if not pages:
        raise RuntimeError(f"no feedback page in {user}'s {ASSIGNMENT}/feedback/")
    return f"{pages[0]}"


def browser(h: Hub, user: str, out: Path) -> str:
    seen = learner_view(h.w.url, user, h.password, ASSIGNMENT, out / f"{user}-assignments.png")
    (out / "learner-view.json").write_text(json.dumps(seen, indent=1))
    leaked = [m for m in seen["menu"] if m in ("Formgrader", "Create assignment", "Course List")]
    if leaked:
        raise RuntimeError(f"the learner's Nbgrader menu shows instructor items {leaked}")
    return (f"Nbgrader menu {seen['menu']}; downloaded {seen['downloaded'][:40]!r}; "
            f"submitted {seen['submitted'][:80]!r}; {Path(seen['screenshot']).name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".workshop" / "run", help="logs, screenshot, steps.json")
    parser.add_argument("--state", type=Path, default=Path("/srv/bertlab-workshop"),
                        help="hub state and the exchange (every user must be able to enter it)")
    parser.add_argument("--proxy", default=str(ROOT / ".workshop" / "node_modules" / ".bin" / "configurable-http-proxy"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: it creates local accounts and starts their servers (a machine of its own)")
    extra = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    w = hub.Workshop(repo=ROOT, venv=Path(sys.prefix), state=args.state.resolve(), proxy_command=(args.proxy,),
                     extra_env=extra)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):  # screenshots of an earlier run
        stale.unlink()
    steps, h, expected = Steps(), None, {}
    try:
        steps("accounts: 3 learners and an instructor", setup_accounts, w, out)
        steps("folders: exchange, global config, course", setup_folders, w)
        h = Hub(w, out)
        steps("hub: start (and its proxy)", h.wait_up)
        steps("servers: start all four through the hub API", h.start_servers)
        steps("instructor: generate 00-welcome (formgrader)", h.formgrader, "assign")
        steps("instructor: release (formgrader)", h.formgrader, "release")
        for user in w.learners:
            steps(f"{user}: fetch (assignments API)", fetch, h, user)
            steps(f"{user}: edit (contents API)", edit, h, user, expected)
            steps(f"{user}: submit (assignments API)", submit, h, user)
        steps("instructor: collect (formgrader)", h.formgrader, "collect")
        steps("instructor: parallel autograde + feedback", autograde, w, out)
        steps("instructor: scores as expected", check_scores, w, expected)
        steps("permissions: a learner reads no one else's files", check_privacy, w)
        steps("instructor: release feedback (formgrader)", h.formgrader, "release_feedback")
        steps("learner1: fetch feedback (assignments API)", fetch_feedback, h, "learner1")
        steps("learner1: Assignments tab in headless Chromium", browser, h, "learner1", out)
        failed = None
    except StepFailed as e:
        failed = str(e)
    finally:
        if h is not None:
            h.stop()
        remove_accounts(w)
        restore_acls(out)
        shutil.rmtree(w.state, ignore_errors=True)
    total = time.time() - steps.start
    (out / "steps.json").write_text(json.dumps({"failed": failed, "seconds": round(total, 1), "steps": steps.done}, indent=1))
    if failed:
        print(f"workshop: FAILED at '{failed}' after {total:.0f} s ({len(steps.done) - 1} steps passed; logs in {out})")
        return 1
    print(f"workshop: PASSED {len(steps.done)} steps in {total:.0f} s "
          f"(hub, 3 learners + instructor, release -> autograde -> feedback -> browser; {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
