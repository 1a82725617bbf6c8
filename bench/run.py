"""`make bench`: start tokenserver as deployed, seed it, drive each route with wrk, report.

python -m bench.run [--database-url URL] [--scale] [--seconds 10] [--connections 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import bulk, costs, dpop, load, report, seed
from .cpu import CpuWatch, wait_until_idle
from .profile import Profiler
from .server import ROOT, Gunicorn, server_env, throwaway_database, tokenserver_command

ALTERNATIONS = 4  # short /healthz and bare-app runs in turn, for the /healthz target
USERS = 32  # logged-in users whose tokens the routes rotate over
JUNK_PER_USER = 20  # one full default page of GET /junk each
SCALE_USERS = 100_000
SCALE_RECORDS = 1_000_000
SCALE_JUNK_PER_USER = 2
REFRESH_TTL = 2_592_000
# The settings gunicorn.conf.py shipped before its threaded worker, run beside it for comparison
# (a sync worker with threads > 1 would be turned into gthread by gunicorn).
SYNC_BASELINE = "--worker-class sync --threads 1"
BARE_LABEL = "bare Flask app /healthz"


def _options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", ""),
        help="a postgresql+psycopg:// server to make a throwaway database on (default SQLite)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", ""),
        help="keep rate limits, the sign-in guard and spent JWT ids (DPoP) in this Redis, as "
        "several nodes would (default: the database)",
    )
    parser.add_argument("--scale", action="store_true", help="also run with 1M token records")
    parser.add_argument("--no-baseline", action="store_true", help="scale run only")
    parser.add_argument(
        "--no-sync", action="store_true", help="skip the run with the old sync workers"
    )
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per route")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per route")
    parser.add_argument(
        "--floor-seconds",
        type=int,
        default=3,
        help="seconds of /healthz just before each route, the floor its ratio is over",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--routes", default="", help="comma-separated route keys (default all)")
    parser.add_argument("--profile", action="store_true", help="py-spy every route (slower)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


class Driver:
    """Drives one server's routes, one at a time, with the same load settings."""

    def __init__(self, server: Gunicorn, options: argparse.Namespace, workdir: Path) -> None:
        self.server = server
        self.options = options
        self.workdir = workdir
        self.load = load.Load(options.threads, options.connections, options.seconds, options.warmup)
        self.profiler = Profiler(options.profile, options.results, workdir)

    def floor(self) -> float:
        """/healthz's rate right now: a route's ratio is over the runs just before and after
        it, so a machine whose speed drifts during the bench (a shared host) moves both."""
        seconds = self.options.floor_seconds
        raw = load.run_wrk(load.healthz(), self.server.url, self.load, self.workdir, seconds)
        wait_until_idle(self.server.pids)
        return float(load.summarise(raw)["rps"])

    def measure(self, route: load.Route, key: str | None = None) -> dict[str, Any]:
        """Warm the route up, then drive it for the measured window; one row of the table."""
        floor = self.floor() if route.key != "healthz" else None
        if self.options.warmup and route.mode not in load.SINGLE_USE:
            load.run_wrk(route, self.server.url, self.load, self.workdir, self.options.warmup)
            wait_until_idle(self.server.pids)
        before = self.server.pids()
        watch = CpuWatch(before)
        with self.profiler.recording(key or route.key, self.server, self.options.seconds):
            raw = load.run_wrk(
                route, self.server.url, self.load, self.workdir, self.options.seconds
            )
        after = self.server.pids()
        row = {"label": route.label, **load.summarise(raw), "cpu": watch.stop(after)}
        if floor is not None:
            row["floor_rps"] = floor
        row["drain_seconds"] = round(wait_until_idle(self.server.pids), 1)
        # CPU per request (server and PostgreSQL): unlike the rate, barely moved by other load.
        cpu = row["cpu"]["server_seconds"] + row["cpu"]["database_seconds"]
        row["cpu_ms"] = round(cpu * 1000 / max(1, row["requests"]), 3)
        row["worker_restarts"] = len(set(before) - set(after))
        # Sampled after every route: max_requests may recycle a worker before the run ends.
        row["worker_rss_mb"] = {
            str(p): round(mb, 1) for p, mb in self.server.worker_rss_mb().items()
        }
        print(
            f"  {route.label:<30} {row['rps']:>8.1f} req/s  errors {row['errors']}  "
            f"other CPU {row['cpu']['other']:.0%}",
            flush=True,
        )
        return row


def _refresh_pool_size(healthz_rps: float, options: argparse.Namespace) -> int:
    # A refresh can never be cheaper than /healthz, so this many tokens cannot run out.
    return max(2000, int(healthz_rps * options.seconds * 1.1))


def _measure_dpop(driver: Driver, seeded: seed.Seeded, healthz_rps: float) -> dict[str, Any]:
    """GET /junk with DPoP: bound tokens, then one fresh proof per request, made just before."""
    base = driver.server.url
    logins = dpop.bound_logins(base, seeded.app, seeded.usernames)
    count = _refresh_pool_size(healthz_rps, driver.options)
    lines = dpop.proof_lines(dpop.issuer_of(base), logins, "GET", "/junk", count)
    return driver.measure(load.junk_dpop(lines))


def _drive(
    driver: Driver, bare: Driver, seeded: seed.Seeded, database_url: str, with_junk: bool
) -> dict[str, Any]:
    """Every route, between two /healthz runs and two bare-app runs (start and end)."""
    options = driver.options
    wanted = {k for k in options.routes.split(",") if k}
    rows = {
        "bare": bare.measure(load.healthz(BARE_LABEL), "bare"),
        "healthz": driver.measure(load.healthz()),
    }
    # The /healthz target is judged on short runs of the two servers in turn, so that a host
    # whose speed drifts moves both sides of the ratio alike.
    turns = [(driver.floor(), bare.floor()) for _ in range(ALTERNATIONS)]
    rows["healthz"]["alternating"] = {
        "healthz_rps": [ours for ours, _ in turns],
        "bare_rps": [theirs for _, theirs in turns],
    }
    routes = [load.introspection(seeded), *load.bearer_routes(seeded, with_junk)]
    for route in routes:
        if not wanted or route.key in wanted:
            rows[route.key] = driver.measure(route)
    if with_junk and (not wanted or "junk_dpop" in wanted):
        rows["junk_dpop"] = _measure_dpop(driver, seeded, rows["healthz"]["rps"])
    if not wanted or "refresh" in wanted:
        count = _refresh_pool_size(rows["healthz"]["rps"], options)
        tokens = bulk.mint_refresh_pool(
            database_url, seeded.app.client_id, seeded.user_ids, count, REFRESH_TTL
        )
        rows["refresh"] = driver.measure(load.refresh_grant(seeded, tokens))
    if seeded.web is not None and (not wanted or "userinfo" in wanted):
        rows["userinfo"] = driver.measure(load.userinfo(seeded))
    if seeded.web is not None and (not wanted or "code" in wanted):
        # Minted just before use: a code lives 60 seconds, longer than the measured window.
        count = _refresh_pool_size(rows["healthz"]["rps"], options)
        codes, verifier = bulk.mint_code_pool(
            database_url, seeded.web.client_id, seeded.user_ids, count, seed.WEB_REDIRECT
        )
        rows["code"] = driver.measure(
            load.code_exchange(seeded, codes, verifier, seed.WEB_REDIRECT)
        )
    if seeded.keyed is not None and (not wanted or "private_key_jwt" in wanted):
        # Signed just before use: an assertion lives four minutes, its jti once.
        count = _refresh_pool_size(rows["healthz"]["rps"], options)
        assertions = seed.client_assertions(driver.server.url, seeded.keyed, count)
        rows["private_key_jwt"] = driver.measure(load.private_key_jwt(assertions))
    if not wanted or "password" in wanted:
        rows["password"] = driver.measure(load.password_grant(seeded))
    rows["healthz_end"] = driver.measure(load.healthz("GET /healthz (end)"), "healthz_end")
    rows["bare_end"] = bare.measure(load.healthz(f"{BARE_LABEL} (end)"), "bare_end")
    return rows


def bench_once(
    label: str, options: argparse.Namespace, scale: bool, gunicorn_args: str = ""
) -> dict[str, Any]:
    """One server, one database, every route; returns the run's numbers."""
    with (
        tempfile.TemporaryDirectory(prefix="tokenserver-bench-") as tmp,
        throwaway_database(options.database_url, Path(tmp)) as database_url,
    ):
        workdir = Path(tmp)
        env = server_env(database_url, options.workers, gunicorn_args)
        if options.redis_url:
            env["TOKENSERVER_RATELIMIT_STORAGE_URI"] = options.redis_url
            env["TOKENSERVER_RATELIMIT_KEY_PREFIX"] = f"bench-{workdir.name}"
        tokenserver_command(env, "db", "upgrade")
        app, resource_server = seed.create_clients(env)
        web = seed.create_web_client(env)
        keyed = seed.create_keyed_client(env)
        loaded: dict[str, Any] = {}
        if scale:
            print(f"[{label}] bulk-loading {SCALE_RECORDS:,} token records...", flush=True)
            loaded = bulk.seed_scale(
                database_url, app.client_id, SCALE_USERS, SCALE_RECORDS, SCALE_JUNK_PER_USER
            )
            print(f"[{label}] loaded {loaded}", flush=True)
        server = Gunicorn(env, workdir).start()
        # The floor: a bare Flask app under the same gunicorn settings, on its own port.
        bare = Gunicorn(env, workdir, "bench.bare:app", "bare")
        try:
            bare.start()
            with_junk = seed.junk_available(server.url)
            seeded = seed.seed(
                server.url, app, resource_server, USERS, JUNK_PER_USER, with_junk, web
            )
            seeded.keyed = keyed
            print(f"[{label}] seeded {USERS} users; measuring costs and routes", flush=True)
            measured = costs.measure()
            if not database_url.startswith("postgresql"):
                measured.update(costs.sqlite_commit_costs(workdir))
            initial_workers = server.worker_pids()
            rows = _drive(
                Driver(server, options, workdir),
                Driver(bare, options, workdir),
                seeded,
                database_url,
                with_junk,
            )
            rss = server.worker_rss_mb()
            restarts = sum(r["worker_restarts"] for r in rows.values())
        except BaseException:
            print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            bare.stop()
            server.stop()
    run = {
        "label": label,
        "gunicorn_args": gunicorn_args or "gunicorn.conf.py as shipped",
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "seeded": {"users": USERS, "junk_items": seeded.junk_items, "bulk": loaded},
        "seeded_summary": _seeded_summary(seeded, loaded),
        "junk_api": with_junk,
        "costs": measured,
        "routes": rows,
        "worker_rss_mb": {str(pid): round(mb, 1) for pid, mb in rss.items()},
        "worker_restarts": restarts,
        "initial_workers": initial_workers,
    }
    report.add_ratios(run)
    return run


def _seeded_summary(seeded: seed.Seeded, loaded: dict[str, Any]) -> str:
    text = f"{len(seeded.usernames)} users, {seeded.junk_items} junk items"
    if loaded:
        text += (
            f" + bulk {loaded['users']:,} users, {loaded['token_records']:,} token records, "
            f"{loaded['junk_items']:,} junk items"
        )
    return text


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the bench (and the scale bench), print the tables, write the JSON."""
    options = _options(argv)
    started, started_at = time.monotonic(), datetime.now(UTC).isoformat()
    runs = []
    if not options.scale or not options.no_baseline:
        runs.append(bench_once("small", options, scale=False))
    if options.scale:
        runs.append(bench_once("scale", options, scale=True))
    sync = None
    if not options.no_sync and (not options.scale or not options.no_baseline):
        sync = bench_once("small (sync)", options, scale=False, gunicorn_args=SYNC_BASELINE)
    result: dict[str, Any] = {
        "started_at": started_at,
        "commit": _commit(),
        "cores": os.cpu_count(),
        "load": {
            "tool": "wrk",
            "threads": options.threads,
            "connections": options.connections,
            "seconds": options.seconds,
            "warmup_seconds": options.warmup,
            "workers": options.workers,
        },
        "runs": runs,
    }
    print()
    for run in runs:
        print(report.table(run), end="\n\n")
    if len(runs) == 2:
        result["scale_vs_small"] = report.compare(runs[0], runs[1])
        print(report.comparison_table(result["scale_vs_small"]), end="\n\n")
    if sync is not None:
        result["sync_baseline"] = sync
        result["shipped_vs_sync"] = report.compare_workers(sync, runs[0])
        print(report.workers_table(result["shipped_vs_sync"]), end="\n\n")
    result["seconds"] = round(time.monotonic() - started, 1)
    path = report.write_json(result, options.results)
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
