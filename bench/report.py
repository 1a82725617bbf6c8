"""Ratios, targets, the printed table and the JSON file of one bench invocation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RSS_LIMIT_MB = 120.0
SCALE_TOLERANCE = 0.10  # the scale run's ratios may fall at most this much below the small run's
# How far a route's ratio may fall with the shipped workers against the sync ones: the noise of
# one run on a shared machine.
WORKERS_TOLERANCE = 0.10
# route key -> (what it is compared with, the least ratio that meets the target)
TARGETS: dict[str, tuple[str, float]] = {
    "healthz": ("bare", 0.8),
    "introspect": ("healthz", 0.5),
    "junk_list": ("healthz", 0.4),
    "users_me": ("healthz", 0.4),
    "junk_dpop": ("healthz", 0.3),  # GET /junk with a DPoP proof (RFC 9449) per request
    "refresh": ("healthz", 0.25),
    "userinfo": ("healthz", 0.4),
    "code": ("healthz", 0.25),
    "private_key_jwt": ("healthz", 0.25),
    "password": ("ceiling", 0.85),
}


def add_ratios(run: dict[str, Any]) -> None:
    """Each route's rate over /healthz's, and over the argon2 ceiling for the password grant."""
    routes = run["routes"]
    floors = [routes[k]["rps"] for k in ("healthz", "healthz_end") if k in routes]
    floor = sum(floors) / len(floors)  # the mean of the runs at the start and at the end
    run["healthz_rps"] = round(floor, 1)
    bares = [routes[k]["rps"] for k in ("bare", "bare_end") if k in routes]
    bare = sum(bares) / len(bares) if bares else 0.0
    run["bare_rps"] = round(bare, 1)
    ceiling = run["costs"]["password_grant_ceiling_rps"]
    adjacent = _adjacent_floors(routes)
    for key, row in routes.items():
        near = adjacent.get(key, floor)
        row["x_healthz"] = round(row["rps"] / near, 3) if near else None
        row["x_bare"] = round(row["rps"] / bare, 3) if bare else None
        basis, least = TARGETS.get(key, ("", 0.0))
        if not basis:
            continue
        if basis == "bare":
            ratio = _healthz_over_bare(row, floor, bare)
        else:
            ratio = row["x_healthz"] if basis == "healthz" else round(row["rps"] / ceiling, 3)
        row["target"] = {"versus": basis, "at_least": least, "ratio": ratio, "met": ratio >= least}
    rss = run["worker_rss_mb"]
    seen = [mb for row in routes.values() for mb in row.get("worker_rss_mb", {}).values()]
    run["worker_rss_max_mb"] = max(seen + list(rss.values()), default=0.0)
    run["rss_met"] = bool(rss) and run["worker_rss_max_mb"] < RSS_LIMIT_MB


def _healthz_over_bare(row: dict[str, Any], floor: float, bare: float) -> float:
    """/healthz over the bare app: over the short runs taken in turn when there are some, else
    over the mean of each one's two long rows."""
    turns = row.get("alternating")
    if turns and sum(turns["bare_rps"]):
        return round(sum(turns["healthz_rps"]) / sum(turns["bare_rps"]), 3)
    return round(floor / bare, 3) if bare else 0.0


def _adjacent_floors(routes: dict[str, Any]) -> dict[str, float]:
    """Each route's floor: the mean of the /healthz runs just before it and just after it (the
    next route's, or the final /healthz row), in the order the routes ran."""
    order = [key for key in routes if key not in ("healthz", "bare", "bare_end")]
    floors = {}
    for key, following in zip(order, order[1:], strict=False):
        before = routes[key].get("floor_rps")
        after = routes[following].get("floor_rps") or routes[following]["rps"]
        if before:
            floors[key] = (before + after) / 2
    return floors


def compare(small: dict[str, Any], scale: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target ratio of the scale run next to the small run's."""
    rows = []
    for key, row in scale["routes"].items():
        before = small["routes"].get(key, {}).get("target")
        after = row.get("target")
        if not before or not after or not before["ratio"]:
            continue
        change = after["ratio"] / before["ratio"] - 1
        rows.append(
            {
                "route": key,
                "small": before["ratio"],
                "scale": after["ratio"],
                "change": round(change, 3),
                "met": change >= -SCALE_TOLERANCE,
            }
        )
    return rows


def compare_workers(sync: dict[str, Any], shipped: dict[str, Any]) -> list[dict[str, Any]]:
    """Each route's rate and ratio over /healthz with the old sync workers and the shipped ones."""
    rows = []
    for key, row in shipped["routes"].items():
        old = sync["routes"].get(key)
        if old is None:
            continue
        # The password grant's ratio is to its argon2id ceiling (its target); others' to /healthz.
        new_ratio, old_ratio = _ratio(row), _ratio(old)
        change = new_ratio / old_ratio - 1 if old_ratio else 0.0
        floor = key in ("healthz", "healthz_end")  # the yardstick itself: its ratio is noise
        rows.append(
            {
                "route": key,
                "label": row["label"],
                "sync_rps": old["rps"],
                "sync_ratio": old_ratio,
                "shipped_rps": row["rps"],
                "shipped_ratio": new_ratio,
                "change": round(change, 3),
                "met": None if floor else change >= -WORKERS_TOLERANCE,
            }
        )
    return rows


def _ratio(row: dict[str, Any]) -> float:
    target = row.get("target")
    ratio: float = target["ratio"] if target else row["x_healthz"]
    return ratio


def workers_table(rows: list[dict[str, Any]]) -> str:
    """The shipped workers beside the old sync ones, route by route."""
    lines = [
        f"== shipped workers (gunicorn.conf.py) vs sync; a ratio may fall at most "
        f"{WORKERS_TOLERANCE:.0%}",
        f"{'route':<30} {'sync req/s':>10} {'ratio':>6} {'shipped req/s':>13} {'ratio':>6} "
        f"{'change':>8}",
    ]
    for row in rows:
        verdict = {None: "", True: "ok", False: "MISSED"}[row["met"]]
        lines.append(
            f"{row['label']:<30} {row['sync_rps']:>10.1f} {row['sync_ratio']:>6.3f} "
            f"{row['shipped_rps']:>13.1f} {row['shipped_ratio']:>6.3f} "
            f"{row['change']:>+8.1%}  {verdict}"
        )
    lines.append("ratio: x healthz of the same run; the password grant's: of its argon2id ceiling")
    return "\n".join(lines)


def _target_text(row: dict[str, Any]) -> str:
    target = row.get("target")
    if not target:
        return ""
    unit = {"healthz": "hz", "bare": "bare"}.get(target["versus"], "ceiling")
    verdict = "ok" if target["met"] else "MISSED"
    return f"{target['ratio']:.2f}x {unit} >= {target['at_least']:.2f}  {verdict}"


def table(run: dict[str, Any]) -> str:
    """The run as a fixed-width table plus the cost and memory lines under it."""
    lines = [
        f"== {run['label']} run on {run['database']}: {run['seeded_summary']}",
        f"{'route':<30} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'x healthz':>9} {'x bare':>7} {'cpu ms':>7} {'other':>6}  target",
    ]
    for row in run["routes"].values():
        lines.append(
            f"{row['label']:<30} {row['rps']:>8.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
            f"{row['errors']:>7} {row['x_healthz']:>9.3f} {row.get('x_bare') or 0:>7.3f} "
            f"{row['cpu_ms']:>7.2f} "
            f"{row['cpu']['other']:>6.0%}  {_target_text(row)}"
        )
        if row.get("drain_seconds", 0) >= 2:
            lines.append(
                f"{'':<30} (queued requests kept the server busy {row['drain_seconds']} s more)"
            )
        if row.get("pool_exhausted"):
            lines.append(f"{'':<30} (refresh pool ran out: {row['pool_exhausted']} reused tokens)")
    lines += [
        "x healthz: over the mean of the short /healthz runs just before and just after the "
        f"route (the /healthz rows: over their mean, {run['healthz_rps']:.1f} req/s)",
        f"x bare: over {run.get('bare_rps', 0):.1f} req/s, the mean of the two bare-app rows "
        "(bench/bare.py: Flask and gunicorn alone, same settings); the /healthz target is "
        "/healthz over the bare app in short runs of each, taken in turn",
        "cpu ms: server (and PostgreSQL) CPU per request; other: CPU share of other processes",
    ]
    costs = run["costs"]
    lines += [
        f"argon2id verify {costs['argon2_verify_ms']:.1f} ms (production parameters) -> "
        f"password-grant ceiling {costs['cores']} cores / {costs['argon2_verify_ms']:.1f} ms = "
        f"{costs['password_grant_ceiling_rps']:.1f} req/s",
    ]
    if "argon2_parallel_rps" in costs:
        parallel = costs["argon2_parallel_rps"]
        lines.append(
            f"argon2id alone on all {costs['cores']} cores at once: {parallel:.1f} verifications/s "
            f"({parallel / costs['password_grant_ceiling_rps']:.2f} of that ceiling)"
        )
    lines += [
        f"RS256 sign {costs['rs256_sign_ms']:.2f} ms, verify {costs['rs256_verify_ms']:.2f} ms",
    ]
    refresh = run["routes"].get("refresh")
    if refresh and refresh["cpu_ms"]:
        cpu_ms = refresh["cpu_ms"]
        share = costs["rs256_sign_ms"] / cpu_ms
        lines.append(
            f"refresh grant: {cpu_ms:.2f} ms of CPU per request, of which RS256 signing "
            f"{costs['rs256_sign_ms']:.2f} ms ({share:.0%}); /healthz costs "
            f"{run['routes']['healthz']['cpu_ms']:.2f} ms"
        )
    if refresh and "sqlite_commit_full_ms" in costs:
        full, normal = costs["sqlite_commit_full_ms"], costs["sqlite_commit_normal_ms"]
        lines.append(
            f"SQLite commit with synchronous=FULL (survives a power cut) {full:.3f} ms, NORMAL "
            f"{normal:.3f} ms: FULL adds {full - normal:.3f} ms to the refresh grant's one commit "
            f"(p50 {refresh['p50_ms']:.2f} ms)"
        )
    rss = ", ".join(f"pid {pid}: {mb:.1f} MB" for pid, mb in run["worker_rss_mb"].items())
    verdict = "ok" if run["rss_met"] else "MISSED"
    lines.append(
        f"worker VmRSS after the run: {rss}; the most after any route: "
        f"{run['worker_rss_max_mb']:.1f} MB (limit {RSS_LIMIT_MB:.0f} MB: {verdict}); "
        f"workers recycled by max_requests during the run: {run['worker_restarts']}"
    )
    return "\n".join(lines)


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """The scale run's target ratios against the small run's."""
    lines = [f"== scale vs small (may fall at most {SCALE_TOLERANCE:.0%})"]
    lines.append(f"{'route':<14} {'small':>7} {'scale':>7} {'change':>8}")
    for row in rows:
        verdict = "ok" if row["met"] else "MISSED"
        lines.append(
            f"{row['route']:<14} {row['small']:>7.3f} {row['scale']:>7.3f} "
            f"{row['change']:>+8.1%}  {verdict}"
        )
    return "\n".join(lines)


def write_json(result: dict[str, Any], directory: Path) -> Path:
    """bench/results/<timestamp>.json (the folder is gitignored)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
