"""Five concurrent SQLite writers: one shared file against a private file per agent.

*shared* (the baseline a naive set-up gives): all writers on one file, default rollback
journal, ``timeout=0.1`` s, so contention shows as ``database is locked`` errors; every failed
transaction is rolled back and retried until it commits. *per-agent* (agentrt's
``per_agent`` strategy): each writer its own file in WAL mode. Writers are host processes
(the strategy is what is measured); ``--in-sessions`` also runs the per-agent writers inside
agentrt sessions on their own loop-mounted volumes, on ``$AGENT_DB``. Throughput is all
transactions over the span from the first writer's start to the last one's end; "one writer's
rate" is each writer's transactions over its own span, averaged (sessions start staggered).
Run: ``.venv/bin/python bench/databases.py [--runs N] [--in-sessions]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import _common as c
import _repo

WRITERS = 5
# argv: path, agent, transactions, timeout, journal mode. Prints one JSON line.
WRITER = r"""
import json, sqlite3, sys, time
path, agent, count, timeout, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    float(sys.argv[4]), sys.argv[5]
conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
if mode == "wal":
    conn.execute("PRAGMA journal_mode=WAL")
while True:
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS log (agent INT, n INT, payload TEXT)")
        break
    except sqlite3.OperationalError:
        time.sleep(0.01)
errors = retried = 0
start = time.time()
for n in range(count):
    failed = False
    while True:
        try:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO log VALUES (?, ?, ?)", (agent, n, "x" * 100))
            conn.execute("COMMIT")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            errors += 1
            failed = True
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    retried += failed
print(json.dumps({"start": start, "end": time.time(), "tx": count, "errors": errors,
                  "retried": retried}))
"""


Result = tuple[float, float, int, int]


def summarize(lines: list[dict[str, float]]) -> Result:
    """(throughput over the writers' common span, mean writer rate over its own span, both in
    tx/s; lock errors; transactions retried)."""
    span = max(d["end"] for d in lines) - min(d["start"] for d in lines)
    rate = sum(d["tx"] / (d["end"] - d["start"]) for d in lines) / len(lines)
    return (sum(d["tx"] for d in lines) / span, rate, int(sum(d["errors"] for d in lines)),
            int(sum(d["retried"] for d in lines)))


def host_writers(paths: list[Path], tx: int, timeout: float, mode: str) -> Result:
    """Run one writer process per entry of ``paths`` (repeats share a file) at once."""
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(i), str(tx),
                               str(timeout), mode], stdout=subprocess.PIPE, text=True)
             for i, path in enumerate(paths)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a writer failed")
    return summarize([json.loads(out) for out in outs])


def session_writers(repo: Path, tx: int) -> Result:
    """The per-agent writers inside agentrt sessions, each on its own ``$AGENT_DB``."""
    from runtime import AgentCoordinator, ResourceLimits, RunConfig, Task

    limits = ResourceLimits(memory_mb=256, cpu_percent=100, pids=128, disk_mb=256)
    config = RunConfig(resource_limits=limits, merge="none")
    command = ["sh", "-c", f'exec python3 -c "$W" "$AGENT_DB" 0 {tx} 0.1 wal']
    tasks = [Task(id=f"db{i}", command=command, env={"W": WRITER}) for i in range(WRITERS)]
    coordinator = AgentCoordinator(WRITERS, config=config, repo=repo, stop_grace_seconds=1)
    report = coordinator.run_agents(tasks)
    lines = []
    for s in report.sessions:
        log = (coordinator.repo.state_dir / "logs" / f"{s.id}.log").read_bytes()
        if s.status.value != "succeeded":
            raise RuntimeError(f"{s.id}: {s.status.value} {s.reason}: {log[-500:]!r}")
        lines.append(json.loads(log.decode().strip().splitlines()[-1]))
    return summarize(lines)


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("--transactions", type=int, default=2000, help="per writer (default 2000)")
    p.add_argument("--timeout", type=float, default=0.1, help="SQLite busy timeout, shared file")
    p.add_argument("--in-sessions", action="store_true",
                   help="also run the per-agent writers inside agentrt sessions")
    args = p.parse_args()
    c.header(f"databases: {WRITERS} writers × {args.transactions} transactions", args.runs)
    results: dict[str, list[Result]] = {}
    with c.scratch("databases") as root:
        repo = _repo.clone(root / "repo", files=20, megabytes=1) if args.in_sessions else None
        for run in range(args.runs):
            d = root / f"run{run}"
            d.mkdir()
            shared = [d / "shared.db"] * WRITERS
            private = [d / f"agent{i}.db" for i in range(WRITERS)]
            results.setdefault("shared", []).append(
                host_writers(shared, args.transactions, args.timeout, "delete"))
            results.setdefault("per-agent", []).append(
                host_writers(private, args.transactions, args.timeout, "wal"))
            if repo is not None:
                results.setdefault("per-agent in sessions", []).append(
                    session_writers(repo, args.transactions))
    base = [r[0] for r in results["shared"]]
    rows = []
    for name, runs in results.items():
        tput = [r[0] for r in runs]
        rows.append([name, c.fmt(tput, "tx/s", 0), c.ratio(tput, base),
                     c.fmt([r[1] for r in runs], "tx/s", 0), c.fmt([r[2] for r in runs], "", 0),
                     c.fmt([r[3] for r in runs], "", 0)])
    print(c.table(["strategy", "throughput (all writers)", "vs shared", "one writer's rate",
                   "lock errors", "tx retried"], rows))


if __name__ == "__main__":
    main()
