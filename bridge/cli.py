"""The console script: the composition root that loads config once and builds everything.

One concept: the console script. Most of its length is the argument parser's
declarations, one block per command.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TextIO, TypeVar, cast

from bridge import __version__, sandbox
from bridge.bundle import Bundle, load_bundle
from bridge.errors import ConfigErrors, StartupError
from bridge.output import EXIT_READER_GONE, ReaderAware

DEFAULT_CONFIG = "config/bridge.yaml"
CONFIG_VARIABLE = "VOXYS_BRIDGE_CONFIG"  # the default --config where it is set (the image)
T = TypeVar("T")


def _load(path: str, err: TextIO, *, for_dry_run: bool = False) -> Bundle | None:
    try:
        return load_bundle(path, for_dry_run=for_dry_run)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=err)
        print(f"{len(exc.errors)} error(s) in {path}", file=err)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    bundle = _load(args.config, sys.stderr)
    if bundle is None:
        return 2
    config = bundle.config
    print(f"{args.config}: OK")
    print(f"  storage   {_safe_url(config.storage.url)}")
    print(
        f"  voxys     {config.voxys.base_url} account {config.voxys.account_id}, "
        f"{config.voxys.rate_limit.requests} req / {config.voxys.rate_limit.per_seconds:g} s"
    )
    print(f"  admin     {'mounted' if config.admin.token else 'off (no admin.token)'}")
    print(f"  sources   {len(bundle.sources)}")
    for key, source in sorted(bundle.sources.items()):
        print(f"    POST /webhooks/{key:<14} preset {source.preset}")
        for warning in source.startup_warnings():
            print(f"      warning: {warning}")
    print(f"  rules     {len(bundle.rules.rules)}")
    for rule in bundle.rules.rules:
        print(f"    {rule.name:<32} {','.join(rule.sources):<20} {rule.file}")
    print(f"  lookups   {len(bundle.loaded.lookups)}")
    for name, table in sorted(bundle.loaded.lookups.items()):
        print(f"    {name:<32} {len(table)} entries")
    return check_online(bundle) if args.online else 0


def check_online(bundle: Bundle) -> int:
    """`check --online`: the store opens for writing, Voxys accepts the token; 1 if not."""
    import asyncio

    from bridge.preflight import preflight

    findings = asyncio.run(preflight(bundle))
    print("  online")
    for finding in findings:
        print(f"    {finding.what:<9} {'ok' if finding.ok else 'FAILED'}: {finding.text}")
    failed = [f for f in findings if not f.ok]
    for finding in failed:
        print(f"error: {finding.what}: {finding.text}", file=sys.stderr)
    return 1 if failed else 0


def _safe_url(url: str) -> str:
    """A storage URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def cmd_serve(args: argparse.Namespace) -> int:
    bundle = _load(args.config, sys.stderr)
    if bundle is None:
        return 2
    from bridge.serve import serve

    stop_when_reader_goes(signal.SIGTERM)  # a graceful stop
    try:
        return serve(bundle)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_dry_run(args: argparse.Namespace) -> int:
    bundle = _load(args.config, sys.stderr, for_dry_run=True)
    if bundle is None:
        return 2
    from bridge import dryrun

    return dryrun.run(bundle, args.source, args.payload, args.header, args.json, sys.stdout)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the local server answers /healthz (the container HEALTHCHECK; no curl).

    Only `server` is read from the config: a rule or source broken on disk while the
    server runs (it keeps its last good config) must not make it look unhealthy.
    """
    import urllib.request

    url = args.url
    if url is None:
        try:
            host, port = local_address(args.config)
        except ConfigErrors as exc:
            for error in exc.errors:
                print(f"error: {error}", file=sys.stderr)
            return 2
        url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:  # noqa: S310 (http only)
            ok = resp.status == 200
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print("healthy" if ok else f"unhealthy: {url}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def local_address(config_path: str) -> tuple[str, int]:
    """Where a client on this machine reaches the server: host (bracketed if IPv6), port."""
    from bridge.config import ServerConfig, read_section

    server = read_section(config_path, "server", ServerConfig)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    return (f"[{host}]" if ":" in host else host), server.port


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the SQLite store, also while the server writes to it."""
    from pathlib import Path

    from bridge import backup
    from bridge.config import StorageConfig, read_section

    try:
        storage = read_section(args.config, "storage", StorageConfig)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        source = backup.database_file(storage.url)
        made = backup.backup(source, Path(args.destination))
    except backup.BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"backed up {made.source} to {made.destination}: {made.size / 1_048_576:.1f} MiB, "
        f"{made.events} events, {made.transitions} transitions, in {made.seconds:.1f} s"
    )
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    bundle = _load(args.config, sys.stderr)
    if bundle is None:
        return 2
    from bridge import send

    return send.run(bundle, args.source, args.payload, args.url, sys.stdout, sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge import demo

    stop_when_reader_goes(signal.SIGINT)
    return demo.run(keep=args.keep, out=sys.stdout)


def cmd_sandbox(args: argparse.Namespace) -> int:
    """A fake Voxys API on loopback: try rules without touching real leads."""
    import asyncio

    tokens = set(args.token or ["sandbox-token"])
    stop_when_reader_goes(signal.SIGINT)
    try:
        asyncio.run(
            sandbox.run_sandbox(
                args.host,
                args.port,
                tokens,
                args.seed_leads,
                args.latency,
                args.rate_limit,
                as_json=args.json,
                failures=args.fail or (),
                bulk=not args.no_bulk,
                bulk_limit=args.bulk_limit,
            )
        )
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type` whose ValueError message reaches the user."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def cmd_admin(args: argparse.Namespace) -> int:
    bundle = _load(args.config, sys.stderr)
    if bundle is None:
        return 2
    from bridge import admin_cli

    return admin_cli.cli_main(args.command, args, bundle, sys.stdout, sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxys-bridge",
        description="Verified CRM and billing webhooks in, Voxys lead-status changes out.",
    )
    parser.add_argument("--version", action="version", version=f"voxys-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        p.add_argument(
            "--config",
            "-c",
            default=os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG,
            help=f"bridge.yaml (default: %(default)s; ${CONFIG_VARIABLE} sets it)",
        )
        return p

    command("serve", "receive webhooks and deliver transitions to Voxys").set_defaults(
        func=cmd_serve
    )
    p = command(
        "check",
        "validate the configuration and print a summary",
        description="Validate the configuration and print a summary, without touching the "
        "store or the network. --online also opens the store for writing and asks Voxys "
        "once, with the configured token, for one lead of the account "
        "(GET /api/v1/accounts/{account_id}/leads?per_page=1): token accepted, refused, "
        "account not found or unreachable. Exit status: 0 valid, 1 an online check "
        "failed, 2 configuration errors.",
    )
    p.add_argument("--online", action="store_true", help="also check the store and the Voxys token")
    p.set_defaults(func=cmd_check)
    p = command("dry-run", "run the rules on a payload file and print what would be sent")
    p.add_argument("--source", required=True, help="the source key the payload comes from")
    p.add_argument("payload", help="a payload file, as the provider would POST it")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'K: V'",
        help="a request header (repeatable), e.g. 'Content-Type: text/xml'",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_dry_run)
    p = sub.add_parser(
        "demo",
        help="run the shipped config against a local Voxys sandbox with every example",
        description="Starts a Voxys sandbox and the bridge on a temporary store, posts every "
        "signed example payload and prints each lead-status change as it lands.",
    )
    p.add_argument("--keep", action="store_true", help="keep running; print URLs and secrets")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser(
        "sandbox",
        help="run a fake Voxys API on loopback to try rules safely",
        description="A fake Voxys API: the status endpoint with its auth, 404, 422 and 429, "
        "and the leads listing `check --online` asks. --fail rehearses dead letters and "
        "retries.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099, help="default: %(default)s")
    p.add_argument(
        "--token",
        action="append",
        default=None,
        help="an accepted api_access_token (repeatable; default: sandbox-token)",
    )
    p.add_argument(
        "--seed-leads",
        type=_arg(sandbox.parse_seed_leads),
        default=None,
        metavar="ACCOUNT/LEAD,...",
        help="only these leads exist (others answer 404); default: every lead exists",
    )
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    p.add_argument(
        "--rate-limit",
        type=_arg(sandbox.parse_rate_limit),
        default=None,
        metavar="REQUESTS/SECONDS",
        help="answer 429 with Retry-After beyond this rate, e.g. 10/1",
    )
    p.add_argument(
        "--fail",
        type=_arg(sandbox.parse_failure),
        action="append",
        metavar="STATUS[:COUNT]",
        help="answer status changes with STATUS, COUNT times (then normally) or always "
        "without COUNT, e.g. 422 (dead letters) or 500:3 (retries); repeatable, in order",
    )
    p.add_argument(
        "--no-bulk",
        action="store_true",
        help="answer the bulk endpoint 404, as a Voxys without it (voxys.bulk falls back)",
    )
    p.add_argument(
        "--bulk-limit",
        type=_arg(sandbox.parse_bulk_limit),
        default=None,
        metavar="LEADS[:STATUS]",
        help="answer bulk requests with more lead ids than LEADS with STATUS (default 413)",
    )
    p.add_argument("--json", action="store_true", help="print each call as a JSON line")
    p.set_defaults(func=cmd_sandbox)
    p = command("send", "sign a payload file as its provider would and POST it to a bridge")
    p.add_argument("--source", required=True, help="the source key whose signature to use")
    p.add_argument("payload", help="a payload file, as the provider would POST it")
    p.add_argument(
        "--url", help="where to POST (default: http://127.0.0.1:<server.port>/webhooks/<source>)"
    )
    p.set_defaults(func=cmd_send)
    p = command(
        "backup",
        "copy the SQLite store consistently, also while the server runs",
        description="Copy the SQLite store with SQLite's online backup API: one consistent "
        "snapshot while the server keeps writing, checked, synced and then renamed into "
        "place. Reads only storage: from the config. For PostgreSQL use pg_dump.",
    )
    p.add_argument("destination", help="the backup file to create (it must not exist)")
    p.set_defaults(func=cmd_backup)
    p = command("healthcheck", "exit 0 when the local server answers /healthz")
    p.add_argument("--url", help="the health URL (default: 127.0.0.1 on server.port)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    p.set_defaults(func=cmd_healthcheck)

    p = command("events", "list stored events with their ids (works while stopped)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser(
        "list",
        help="stored events, newest first",
        description="Stored events, newest first, with the id (column event) that "
        "`replay --id` takes, their outcome and the rule that matched or why none could.",
    )
    a.add_argument("--config", "-c", default=argparse.SUPPRESS, help="bridge.yaml")
    a.add_argument("--outcome", choices=["matched", "ignored", "unmapped"], help="only these")
    a.add_argument("--source", metavar="KEY", help="only events of this source")
    a.add_argument("--since", metavar="ISO", help="received at or after (UTC when no offset)")
    a.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N events (default: %(default)s)"
    )
    a.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_admin)
    p = command("dead-letters", "list dead letters or re-queue them (works while stopped)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser(
        "list",
        help="dead transitions, newest first",
        description="Dead transitions, newest first: id is what `dead-letters retry --id` "
        "takes, event what `replay --id` takes.",
    )
    a.add_argument("--config", "-c", default=argparse.SUPPRESS, help="bridge.yaml")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser(
        "retry",
        help="re-queue dead transitions (all without --id)",
        description="Re-queue dead transitions with fresh attempts; a running server "
        "delivers them at once.",
    )
    a.add_argument("--config", "-c", default=argparse.SUPPRESS, help="bridge.yaml")
    a.add_argument(
        "--id", type=int, action="append", metavar="N", help="a transition id (column id)"
    )
    a.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_admin)
    p = command(
        "replay",
        "run the current rules again on stored events",
        description="Run the current rules again on stored events that did not match and "
        "queue what they now produce; a running server delivers it at once. "
        "--outcome alone takes every stored event with that outcome.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id",
        type=int,
        action="append",
        metavar="N",
        help="an event id (column event of `events list`, `explain`, `dead-letters list`)",
    )
    which.add_argument(
        "--outcome",
        choices=["unmapped", "ignored"],
        help="every event with this outcome (all of them, unless --since)",
    )
    p.add_argument(
        "--since",
        metavar="ISO",
        help="with --outcome: only events received at or after (UTC when no offset); default: all",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_admin)
    p = command("explain", "print a lead's ledger, newest first")
    p.add_argument("--lead", required=True, metavar="ACCOUNT/LEAD", help="or LEAD alone")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_admin)
    p = command("followups", "list scheduled follow-ups or cancel them (works while stopped)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="follow-ups, earliest due first")
    a.add_argument("--config", "-c", default=argparse.SUPPRESS, help="bridge.yaml")
    a.add_argument("--lead", metavar="ACCOUNT/LEAD", help="only this lead's (or LEAD alone)")
    a.add_argument(
        "--state",
        choices=["scheduled", "fired", "cancelled", "all"],
        default="scheduled",
        help="default: %(default)s",
    )
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser("cancel", help="cancel scheduled follow-ups (safe while serving)")
    a.add_argument("--config", "-c", default=argparse.SUPPRESS, help="bridge.yaml")
    a.add_argument("--id", type=int, action="append", metavar="N", help="a follow-up id")
    a.add_argument("--lead", metavar="ACCOUNT/LEAD", help="every scheduled one of this lead")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_admin)
    p = command("stats", "counts per transition state and event outcome")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_admin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. Output cut short by its reader is no error."""
    stdout = ReaderAware(sys.stdout)
    sys.stdout = cast(TextIO, stdout)
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C: the command stops, without a traceback
        code = 130
    finally:
        sys.stdout = stdout.wrapped
    return EXIT_READER_GONE if stdout.reader_gone and code == 0 else code


def stop_when_reader_goes(signum: int) -> None:
    """A long-running command stops as on `signum` when its output's reader goes away
    (`serve | head -1`): nothing would read what it prints."""
    if isinstance(sys.stdout, ReaderAware):
        # raise_signal, not os.kill(getpid()): the kernel may hand a signal sent to the
        # process to any thread (an executor thread, say), and then nothing wakes an event
        # loop waiting with no timer (the sandbox's); raised here, in the thread that
        # wrote, it is handled at once.
        sys.stdout.on_closed = lambda: signal.raise_signal(signum)
