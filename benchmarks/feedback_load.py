"""Load test of the feedback web app (`alignloop annotate serve`) with a login storm beside it.

Workload (defaults): 50 annotators label 100 items each, concurrently, through the JSON API (Bearer tokens),
on a pairwise project with overlap 2, while 24 threads post wrong passwords to /login without pause (a login
storm). A logged-in browser session polls GET /api/me every 20 ms in its own process the whole time.

The server is a real process, started as users start it: `alignloop annotate init` (production argon2 cost),
then `alignloop annotate serve --db URL --port P`. Users, the project and tokens are written beforehand with
the library (50 `add-user` processes would take minutes); the annotators' passwords share one argon2 hash.

Phases: (1) idle: the /api/me probe alone; (2) storm: storm + probe; (3) load: annotators + storm + probe
until every annotator has its labels. Afterwards the database is checked: every label the server
acknowledged is stored (lost), no assignment or (item, annotator) holds two labels and no item holds more
than its overlap (duplicated), and no request answered 5xx.

Storm modes (`--storm-from`):
  distinct  every attempt claims another client address (X-Forwarded-For, which uvicorn trusts from
            127.0.0.1) and targets an annotator or an unknown name, so the throttle lets most attempts
            reach the password check: the worst case for CPU (a botnet). Default.
  single    every attempt comes from 127.0.0.1: the throttle answers 429 after a few checks.

    python benchmarks/feedback_load.py                                  # SQLite in a temporary folder
    python benchmarks/feedback_load.py --annotators 5 --labels 10 --storm 4 --storm-s 3   # quick
    python benchmarks/feedback_load.py --db-url postgresql://alignloop@127.0.0.1:5432/postgres

With a PostgreSQL URL a fresh database is created next to the one named (and dropped afterwards), so the
URL's user needs CREATEDB. The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import func, select

from alignloop.feedback.db import make_engine, run_tx, session_factory
from alignloop.feedback.importers import Candidate, ItemSpec
from alignloop.feedback.models import Label
from alignloop.feedback.security import create_api_token, hash_password
from alignloop.feedback.store import ProjectOptions, add_items, create_project, create_user

PASSWORD = "load-test-password-1"
ME_TARGET_MS = 100.0


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alignloop_cmd() -> list[str]:
    exe = shutil.which("alignloop")
    return [exe] if exe else [sys.executable, "-m", "alignloop"]


def fresh_postgres(url: str) -> tuple[str, Callable[[], None]]:
    import psycopg  # optional: only for --db-url postgresql://

    name = f"alignloop_load_{uuid.uuid4().hex[:10]}"
    admin = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin.rsplit("/", 1)[0] + "/" + name, drop


def setup(db_url: str, args: argparse.Namespace, env: dict) -> list[str]:
    subprocess.run([*alignloop_cmd(), "annotate", "init", "--db", db_url], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    factory = session_factory(make_engine(db_url))
    shared_hash = hash_password(PASSWORD)  # production cost; one hash for every annotator
    users = [run_tx(factory, lambda s, i=i: create_user(s, f"ann{i:03d}", PASSWORD, "annotator", shared_hash))
             for i in range(args.annotators)]
    run_tx(factory, lambda s: create_user(s, "observer", PASSWORD, "annotator", shared_hash))
    n_items = args.annotators * args.labels // args.overlap + 2 * args.annotators

    def project(s):  # type: ignore[no-untyped-def]
        p = create_project(s, ProjectOptions(name="load", overlap=args.overlap, access="all"))
        add_items(s, p, [ItemSpec(f"prompt {i}", [Candidate(f"response {j} to prompt {i}", None) for j in (0, 1)],
                                  None) for i in range(n_items)])

    run_tx(factory, project)
    tokens = [run_tx(factory, lambda s, u=u: create_api_token(s, u, "load")) for u in users]
    factory.kw["bind"].dispose()
    return tokens


def start_server(db_url: str, port: int, log: Path, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([*alignloop_cmd(), "annotate", "serve", "--db", db_url, "--port", str(port)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log.read_text()}")


def probe(base: str, cookies: dict, ready, stop, out) -> None:  # type: ignore[no-untyped-def]
    """In its own process (no GIL shared with the load threads): GET /api/me every 20 ms."""
    samples = []
    with httpx.Client(base_url=base, cookies=cookies, timeout=60) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            status = c.get("/api/me").status_code
            samples.append((time.time(), time.perf_counter() - t0, status))
            ready.set()
            time.sleep(0.02)
    out.send(samples)


def login_cookies(base: str) -> dict:
    with httpx.Client(base_url=base, timeout=60) as c:
        c.get("/login")
        r = c.post("/login", data={"username": "observer", "password": PASSWORD,
                                   "csrf_token": c.cookies.get("alignloop_csrf")})
        assert r.status_code in (200, 303) and c.cookies.get("alignloop_session"), r.status_code
        return dict(c.cookies.items())


class Storm(threading.Thread):
    def __init__(self, base: str, n: int, mode: str, annotators: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.base, self.n, self.mode, self.annotators, self.stop = base, n, mode, annotators, stop
        self.statuses: list[int] = []
        self.rng = random.Random(n)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as c:
            c.get("/login")
            token = c.cookies.get("alignloop_csrf")
            i = 0
            while not self.stop.is_set():
                i += 1
                name = f"ann{self.rng.randrange(self.annotators):03d}" if i % 2 else f"ghost{self.n}x{i}"
                headers = {}
                if self.mode == "distinct":
                    headers["x-forwarded-for"] = f"10.{self.n}.{(i >> 8) & 255}.{i & 255}"
                r = c.post("/login", data={"username": name, "password": "wrong-password", "csrf_token": token},
                           headers=headers)
                self.statuses.append(r.status_code)


class Annotator(threading.Thread):
    def __init__(self, base: str, token: str, labels: int):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=120)
        self.labels = labels
        self.post_latency: list[float] = []
        self.next_latency: list[float] = []
        self.statuses: list[int] = []
        self.acked: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            while len(self.acked) < self.labels:
                t0 = time.perf_counter()
                r = self.client.post("/api/projects/1/next")
                self.next_latency.append(time.perf_counter() - t0)
                self.statuses.append(r.status_code)
                a = r.json()["assignment"]
                if a is None:
                    self.errors.append("no item left")
                    return
                t0 = time.perf_counter()
                r = self.client.post(f"/api/assignments/{a['id']}/label",
                                     json={"answer": {"choice": random.choice("AB")}})
                self.post_latency.append(time.perf_counter() - t0)
                self.statuses.append(r.status_code)
                if r.status_code in (200, 201):
                    self.acked.append(r.json()["id"])
        except (httpx.HTTPError, ValueError, KeyError) as err:
            self.errors.append(repr(err))


def check_db(db_url: str, acked: set[int], overlap: int) -> dict:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        stored = set(s.scalars(select(Label.id)))
        per_assignment = s.execute(select(Label.assignment_id).group_by(Label.assignment_id)
                                   .having(func.count() > 1)).all()
        per_user_item = s.execute(select(Label.item_id, Label.user_id).group_by(Label.item_id, Label.user_id)
                                  .having(func.count() > 1)).all()
        over = s.execute(select(Label.item_id).group_by(Label.item_id).having(func.count() > overlap)).all()
    engine.dispose()
    return {"labels_stored": len(stored), "lost": len(acked - stored),
            "duplicated": len(per_assignment) + len(per_user_item), "items_over_overlap": len(over),
            "stored_not_acked": len(stored - acked)}


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="alignloop-load-"))
    db_url, drop = f"sqlite:///{workdir / 'annotate.db'}", None
    if args.db_url:
        db_url, drop = fresh_postgres(args.db_url) if args.db_url.startswith("postgres") else (args.db_url, None)
    env = {**os.environ, "ALIGNLOOP_ADMIN_PASSWORD": PASSWORD}
    try:
        t_setup = time.perf_counter()
        tokens = setup(db_url, args, env)
        print(f"setup: {len(tokens)} annotators, {time.perf_counter() - t_setup:.1f} s", file=sys.stderr)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(db_url, port, workdir / "server.log", env)
        try:
            return drive(base, tokens, args, db_url)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        if drop is not None:
            drop()
        shutil.rmtree(workdir, ignore_errors=True)


def drive(base: str, tokens: list[str], args: argparse.Namespace, db_url: str) -> dict:
    cookies = login_cookies(base)
    ctx = mp.get_context("spawn")
    ready, stop_probe, (recv, send) = ctx.Event(), ctx.Event(), ctx.Pipe(duplex=False)
    prober = ctx.Process(target=probe, args=(base, cookies, ready, stop_probe, send), daemon=True)
    prober.start()
    if not ready.wait(timeout=120):
        raise SystemExit("the /api/me probe did not start")
    t_idle = time.time()
    time.sleep(args.idle_s)
    stop_storm = threading.Event()
    storm = [Storm(base, n, args.storm_from, len(tokens), stop_storm) for n in range(args.storm)]
    t_storm = time.time()
    for t in storm:
        t.start()
    time.sleep(args.storm_s)
    t_load = time.time()
    t0 = time.perf_counter()
    workers = [Annotator(base, tok, args.labels) for tok in tokens]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    t_end = time.time()
    stop_storm.set()
    for t in storm:
        t.join(timeout=120)
    stop_probe.set()
    samples = recv.recv()
    prober.join(timeout=30)

    def me(start: float, end: float) -> list[float]:
        return [lat for at, lat, _ in samples if start <= at < end]

    acked = {i for w in workers for i in w.acked}
    statuses = [s for w in workers for s in w.statuses] + [s for t in storm for s in t.statuses]
    statuses += [st for _, _, st in samples]
    storm_codes = [s for t in storm for s in t.statuses]
    posts = [x for w in workers for x in w.post_latency]
    summary = {
        "db": db_url.split(":")[0].split("+")[0], "annotators": len(tokens), "labels_each": args.labels,
        "overlap": args.overlap, "storm_threads": args.storm, "storm_from": args.storm_from,
        "labels_acked": len(acked), **check_db(db_url, acked, args.overlap),
        "errors": sum(len(w.errors) for w in workers), "responses_5xx": sum(s >= 500 for s in statuses),
        "load_wall_s": round(wall, 1), "labels_per_s": round(len(acked) / wall, 1),
        "label_post_p50_ms": percentile(posts, 0.50), "label_post_p99_ms": percentile(posts, 0.99),
        "next_p99_ms": percentile([x for w in workers for x in w.next_latency], 0.99),
        "me_idle_p99_ms": percentile(me(t_idle, t_storm), 0.99),
        "me_storm_p50_ms": percentile(me(t_storm, t_load), 0.50),
        "me_storm_p99_ms": percentile(me(t_storm, t_load), 0.99),
        "me_storm_after_5s_p99_ms": percentile(me(t_storm + 5, t_load), 0.99),  # without the storm's start
        "me_storm_and_load_p50_ms": percentile(me(t_load, t_end), 0.50),
        "me_storm_and_load_p99_ms": percentile(me(t_load, t_end), 0.99),
        # the five slowest /api/me during the storm phases: (seconds since the storm began, ms)
        "me_storm_slowest": sorted(((round(at - t_storm, 1), round(1000 * lat, 1)) for at, lat, _ in samples
                                    if at >= t_storm), key=lambda x: -x[1])[:5],
        "me_samples": len(samples), "storm_attempts": len(storm_codes),
        "storm_401": storm_codes.count(401), "storm_429": storm_codes.count(429),
        "storm_checks_per_s": round(storm_codes.count(401) / max(1e-9, t_end - t_storm), 1),
    }
    summary["me_storm_p99_under_100ms"] = (summary["me_storm_p99_ms"] or 0) < ME_TARGET_MS
    summary["me_storm_and_load_p99_under_100ms"] = (summary["me_storm_and_load_p99_ms"] or 0) < ME_TARGET_MS
    summary["ok"] = (summary["lost"] == 0 and summary["duplicated"] == 0 and summary["items_over_overlap"] == 0
                     and summary["responses_5xx"] == 0 and summary["errors"] == 0
                     and len(acked) == len(tokens) * args.labels)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=None, help="default: SQLite in a temporary folder")
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--labels", type=int, default=100, help="labels per annotator")
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--storm", type=int, default=24, help="threads posting wrong passwords")
    ap.add_argument("--storm-from", choices=("distinct", "single"), default="distinct")
    ap.add_argument("--idle-s", type=float, default=5.0, help="probe alone before the storm")
    ap.add_argument("--storm-s", type=float, default=15.0, help="storm alone before the annotators start")
    args = ap.parse_args()
    summary = run(args)
    for k, v in summary.items():
        print(f"{k:>34}: {v}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
