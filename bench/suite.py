"""The suite: runs the benchmarks, prints a table row per figure, writes ``latest.json``.

Every figure is the median of several runs and is set beside a reference measured
in the same run on the same machine (Postfix's smtp-source, a bare aiosmtpd server,
a trivial WSGI app, one node for two), because this machine is shared and its speed
varies from minute to minute; the ratio is what most targets are written against.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy.engine import make_url

from bench import fanout, inbound, nodes, postgres, web
from bench import rows as rows_of
from bench.machine import machine
from bench.procs import REPO, BenchError, Daemon, Server, Sink, free_port, require
from bench.stats import Row, markdown, text_line
from bench.workspace import Workspace

RESULTS = REPO / "bench" / "results"
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_NODE_SIZES = (100_000,)
BENCHMARKS = ("fanout", "fanout-pg", "nodes", "inbound", "web")
ON_POSTGRESQL = frozenset({"fanout-pg", "nodes"})


@dataclass
class Options:
    sizes: tuple[int, ...]
    repeats: int | None
    inbound_repeats: int
    web_repeats: int
    web_seconds: int
    connections: int
    min_rate: float
    only: frozenset[str]
    profile: int | None
    profile_seconds: float
    workdir: Path | None
    keep: bool
    output: Path
    plot: Path | None
    postgresql: str | None = None  # a server's URL; None: start a throw-away one
    node_sizes: tuple[int, ...] = DEFAULT_NODE_SIZES
    node_repeats: int | None = None

    def repeats_for(self, size: int) -> int:
        if self.repeats is not None:
            return self.repeats
        return 5 if size <= 10_000 else 3 if size <= 100_000 else 1

    def node_repeats_for(self, size: int) -> int:
        if self.node_repeats is not None:
            return self.node_repeats
        return 2 if size <= 100_000 else 1


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 10k, 100k, 1M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return value


def parse_sizes(text: str) -> tuple[int, ...]:
    return tuple(parse_size(s) for s in text.split(",") if s.strip())


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="maild's benchmark suite against Postfix's smtp-sink/smtp-source, "
        "a bare aiosmtpd server and a trivial WSGI app (see bench/README.md).",
    )
    parser.add_argument("--quick", action="store_true", help="10k only, fewer repeats (~2 min)")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        help="fan-out sizes on each backend, e.g. 10k,100k,1M (default: 10k,100k,1M)",
    )
    parser.add_argument(
        "--repeats", type=int, help="fan-out runs per size (default 5 at 10k, 3 at 100k, 1 above)"
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--postgresql",
        default=os.environ.get(postgres.ENV) or None,
        metavar="URL",
        help="PostgreSQL server for fanout-pg and nodes, postgresql+psycopg://USER@HOST:PORT/DB "
        f"(default: ${postgres.ENV}, else a throw-away server the suite starts)",
    )
    parser.add_argument(
        "--node-sizes",
        type=parse_sizes,
        help="sizes of the one-node/two-node comparison (default: 100k; --quick: 10k)",
    )
    parser.add_argument(
        "--node-repeats", type=int, help="runs of each node setup (default 2 at 100k, 1 above)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="maild's [relay] connections (default 32)"
    )
    parser.add_argument(
        "--min-rate",
        type=float,
        default=1000.0,
        help="cut a fan-out run off after 60 s + N/this (messages/s; default 1000)",
    )
    parser.add_argument(
        "--profile", type=parse_size, help="py-spy the first fan-out run at this size"
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--workdir", type=Path, help="folder for the daemons (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' folders and logs")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument(
        "--plot",
        # A string: Path("") is ".", which would write a file called ".png".
        default=str(RESULTS / "latest.png"),
        help="PNG of rate and memory against subscribers (needs matplotlib; '' for none)",
    )
    args = parser.parse_args(argv)
    only = frozenset(s.strip() for s in args.only.split(",") if s.strip())
    unknown = only - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    sizes = args.sizes or ((10_000,) if args.quick else DEFAULT_SIZES)
    return Options(
        sizes=tuple(sorted(set(sizes))),
        repeats=args.repeats if args.repeats is not None else (3 if args.quick else None),
        # The bare server's rate swings by a third from run to run: five runs steady it.
        inbound_repeats=2 if args.quick else 5,
        web_repeats=2 if args.quick else 3,
        web_seconds=5 if args.quick else 10,
        connections=args.connections,
        min_rate=args.min_rate,
        only=only,
        profile=args.profile,
        profile_seconds=args.profile_seconds,
        workdir=args.workdir,
        keep=args.keep,
        output=args.output,
        plot=Path(args.plot) if args.plot else None,
        postgresql=args.postgresql,
        node_sizes=args.node_sizes or ((10_000,) if args.quick else DEFAULT_NODE_SIZES),
        node_repeats=args.node_repeats
        if args.node_repeats is not None
        else (1 if args.quick else None),
    )


# --- running ------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"  · {text}", file=sys.stderr, flush=True)


def emit(found: list[Row]) -> list[Row]:
    for row in found:
        print(text_line(row), flush=True)
    return found


@dataclass
class PostgreSQL:
    """The server the PostgreSQL benchmarks use, and what to say about it."""

    url: str
    server_pid: int | None  # the postmaster, when the suite started the server
    settings: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        shown = make_url(self.url).render_as_string(hide_password=True)
        return {"url": shown, "started_by_suite": self.server_pid is not None, **self.settings}


def run(options: Options) -> dict[str, Any]:
    require("smtp-sink", "smtp-source", "wrk")
    root = Path(tempfile.mkdtemp(prefix="maild-bench-", dir=options.workdir))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "options": {
            "only": sorted(options.only),
            "sizes": list(options.sizes),
            "repeats": {str(s): options.repeats_for(s) for s in options.sizes},
            "node_sizes": list(options.node_sizes),
            "node_repeats": {str(s): options.node_repeats_for(s) for s in options.node_sizes},
            "relay_connections": options.connections,
            "inbound_repeats": options.inbound_repeats,
            "web_repeats": options.web_repeats,
            "web_seconds": options.web_seconds,
        },
        "postgresql": None,
        "fanout": [],
        "nodes": [],
        "inbound": None,
        "web": None,
        "errors": [],
    }
    rows: list[Row] = []
    print(f"maild benchmarks; daemons under {root}", file=sys.stderr)
    try:
        with contextlib.ExitStack() as stack:
            pg = _postgresql(options, stack, results) if options.only & ON_POSTGRESQL else None
            if options.only & {"fanout", "fanout-pg"}:
                rows += _fanout(root, options, results, pg)
            if "nodes" in options.only and pg is not None:
                rows += _nodes(root, options, results, pg)
        if options.only & {"inbound", "web"}:
            rows += _inbound_and_web(root, options, results)
    finally:
        results["rows"] = [r.to_json() for r in rows]
        results["seconds"] = time.monotonic() - started
        results["machine"]["loadavg_end"] = os.getloadavg()
        options.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{markdown(rows)}\n", flush=True)
    print(f"results: {options.output} ({results['seconds'] / 60:.1f} min)", file=sys.stderr)
    if options.plot is not None and results["fanout"]:
        _plot(options.output, options.plot)
    return results


def _postgresql(
    options: Options, stack: contextlib.ExitStack, results: dict[str, Any]
) -> PostgreSQL | None:
    """The given server, else a throw-away one; None (and a line saying why) without."""
    if options.postgresql:
        # A server named on purpose that cannot be reached stops the suite (BenchError).
        pg = PostgreSQL(options.postgresql, None, postgres.check_server(options.postgresql))
    else:
        reason = postgres.unavailable()
        if reason is not None:
            print(
                f"PostgreSQL benchmarks skipped: {reason}; or pass --postgresql URL",
                file=sys.stderr,
            )
            results["postgresql"] = {"skipped": reason}
            return None
        try:
            server = stack.enter_context(postgres.ThrowawayServer(options.workdir))
            pg = PostgreSQL(server.url, server.postmaster_pid(), postgres.check_server(server.url))
        except (BenchError, subprocess.SubprocessError, OSError) as e:
            results["errors"].append(f"PostgreSQL: {e}")
            print(f"PostgreSQL benchmarks skipped: the server did not start: {e}", file=sys.stderr)
            return None
        say(f"PostgreSQL {pg.settings['server_version']} started on {server.url}")
    results["postgresql"] = pg.describe()
    return pg


def _fanout(
    root: Path, options: Options, results: dict[str, Any], pg: PostgreSQL | None
) -> list[Row]:
    """Each size on SQLite, then on PostgreSQL: the two runs of a size are close in time."""
    rows: list[Row] = []
    probe_size = rows_of.URGENT_SIZE if rows_of.URGENT_SIZE in options.sizes else max(options.sizes)
    backends = [
        b
        for b, name in (("sqlite", "fanout"), ("postgresql", "fanout-pg"))
        if name in options.only and (b == "sqlite" or pg is not None)
    ]
    by_size: dict[str, dict[int, fanout.SizeResult]] = {b: {} for b in backends}
    for size in options.sizes:
        for backend in backends:
            folder = root / f"fanout-{backend}-{size}"
            database = None
            try:
                if backend == "postgresql":
                    assert pg is not None
                    database = postgres.create_database(pg.url, f"fanout_{size}")
                settings = fanout.FanoutOptions(
                    repeats=options.repeats_for(size),
                    connections=options.connections,
                    min_rate=options.min_rate,
                    probe=size == probe_size,
                    profile_seconds=(
                        options.profile_seconds
                        if options.profile == size and backend == "sqlite"
                        else 0.0
                    ),
                    results=options.output.parent,
                    database_url=database,
                    server_pid=pg.server_pid if database and pg else None,
                )
                result = fanout.run_size(folder, size, settings, say)
            except (BenchError, subprocess.SubprocessError, OSError) as e:
                results["errors"].append(f"fan-out {size} ({backend}): {e}")
                print(f"fan-out {size:,} ({backend}): FAILED: {e}", file=sys.stderr)
                continue
            finally:
                _drop(pg, database)
                if not options.keep:
                    shutil.rmtree(folder, ignore_errors=True)
            by_size[backend][size] = result
            results["fanout"].append(result.to_json())
            rows += emit(rows_of.fanout_rows(result, by_size[backend]))
    return rows


def _nodes(root: Path, options: Options, results: dict[str, Any], pg: PostgreSQL) -> list[Row]:
    rows: list[Row] = []
    for size in options.node_sizes:
        folder = root / f"nodes-{size}"
        database = None
        try:
            database = postgres.create_database(pg.url, f"nodes_{size}")
            settings = nodes.NodesOptions(
                database_url=database,
                repeats=options.node_repeats_for(size),
                connections=options.connections,
                min_rate=options.min_rate,
                server_pid=pg.server_pid,
                workdir=options.workdir,
            )
            result = nodes.run_size(folder, size, settings, say)
        except (BenchError, subprocess.SubprocessError, OSError) as e:
            results["errors"].append(f"nodes {size}: {e}")
            print(f"nodes {size:,}: FAILED: {e}", file=sys.stderr)
            continue
        finally:
            _drop(pg, database)
            if not options.keep:
                shutil.rmtree(folder, ignore_errors=True)
        results["nodes"].append(result.to_json())
        rows += emit(rows_of.nodes_rows(result))
    return rows


def _drop(pg: PostgreSQL | None, database: str | None) -> None:
    if pg is None or database is None:
        return
    try:
        postgres.drop_database(pg.url, database)
    except BenchError as e:  # a leftover database must not hide the result
        print(f"bench: {e}", file=sys.stderr)


def _inbound_and_web(root: Path, options: Options, results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    folder = root / "inbound"
    try:
        with Sink() as sink:
            workspace = Workspace(folder, sink.url, options.connections)
            workspace.write_config()
            with (
                Daemon(workspace.config_path, workspace.log_path) as daemon,
                Server("bench.bare_smtpd", free_port()) as bare,
            ):
                if "inbound" in options.only:
                    found = inbound.measure(
                        workspace, sink, daemon, bare, options.inbound_repeats, say
                    )
                    results["inbound"] = found.to_json()
                    rows += emit(rows_of.inbound_rows(found))
                if "web" in options.only:
                    if "inbound" not in options.only:
                        # The page needs a resident who sent a blank mail.
                        inbound.phones(daemon.smtp_port, "w-", mails=10)
                        time.sleep(1)
                    page = web.measure(
                        workspace, daemon, options.web_repeats, options.web_seconds, say
                    )
                    results["web"] = page.to_json()
                    rows += emit(rows_of.web_rows(page))
    except (BenchError, subprocess.SubprocessError, OSError) as e:
        results["errors"].append(f"inbound/web: {e}")
        print(f"inbound/web: FAILED: {e}", file=sys.stderr)
    finally:
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def _plot(results: Path, output: Path) -> None:
    try:
        from bench import plot
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return
    plot.plot(results, output)
    print(f"plot: {output}", file=sys.stderr)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    # A SIGTERM unwinds like Ctrl-C, so every process and server started is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run(options)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    return 1 if results["errors"] else 0
