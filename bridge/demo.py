"""`voxys-bridge demo`: every shipped provider, a local Voxys sandbox and every example.

It runs the real thing, not a mock-up: `examples/all-providers.yaml` (the shipped
`config/bridge.yaml` sources and rules plus the other providers' example rules),
loaded with freshly generated secrets. `config/` and `examples/` ship inside the
package (`bridge/shipped/`, package data), so the demo runs from an installed wheel in
any directory and in the container image; the bridge server on loopback with a temporary
SQLite store and its delivery worker; the Voxys sandbox (`bridge.fakevoxys`) in place
of the real API. Each `examples/<preset>/*.json|xml` payload is signed the way its
provider signs and posted; each PATCH is printed as the sandbox receives it, then a summary.
Nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from base64 import b64encode
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

import bridge
from bridge import logs
from bridge.app import build_app
from bridge.bundle import Bundle, load_bundle
from bridge.errors import ConfigErrors
from bridge.fakevoxys import Call, FakeVoxys
from bridge.runtime import Runtime
from bridge.store import open_backend

SETTLE_TIMEOUT_S = 60.0
DEMO_CONFIG = Path("examples") / "all-providers.yaml"
SALESFORCE_DEMO_ORG = "00D000000000001EAA"  # the organization of examples/salesforce/*.xml


SHIPPED = Path(bridge.__file__).resolve().parent / "shipped"  # config/ and examples/


def find_project() -> Path | None:
    """The directory holding `config/` and `examples/`: VOXYS_BRIDGE_HOME when set (a
    checkout of yours), else the copy shipped inside the package."""
    candidates = []
    if home := os.environ.get("VOXYS_BRIDGE_HOME"):
        candidates.append(Path(home))
    candidates.append(SHIPPED)
    for directory in candidates:
        if (directory / DEMO_CONFIG).is_file() and (directory / "config" / "rules").is_dir():
            return directory
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ed25519_pair() -> tuple[str, str]:
    """A fresh key pair (public PEM, private PEM) to stand in for HighLevel's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return public.decode(), private.decode()


def demo_environment(port: int, voxys_url: str, token: str, workdir: Path) -> dict[str, str]:
    """Every variable examples/all-providers.yaml reads, with secrets generated for this run."""
    public, private = ed25519_pair()
    return {
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "BRIDGE_STORAGE_URL": f"sqlite:///{workdir / 'demo.db'}",
        "BRIDGE_ADMIN_TOKEN": "demo-admin-" + secrets.token_hex(8),
        "VOXYS_BASE_URL": voxys_url,
        "VOXYS_API_TOKEN": token,
        "VOXYS_ACCOUNT_ID": "1",
        "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(16),
        "HUBSPOT_CLIENT_SECRET": secrets.token_hex(16),
        "PIPEDRIVE_PASSWORD": secrets.token_hex(12),
        "BILLING_WEBHOOK_SECRET": "whsec_" + b64encode(secrets.token_bytes(24)).decode(),
        "PADDLE_SECRET": "pdl_ntfset_" + secrets.token_hex(16),
        "CHARGEBEE_PASSWORD": secrets.token_hex(12),
        "SHOPIFY_CLIENT_SECRET": secrets.token_hex(16),
        "CLOSE_SIGNATURE_KEY": secrets.token_hex(32),
        "SALESFORCE_ORG_ID": SALESFORCE_DEMO_ORG,
        "SALESFORCE_URL_TOKEN": secrets.token_urlsafe(16),
        "HIGHLEVEL_PUBLIC_KEY": public,
        "HIGHLEVEL_PRIVATE_KEY": private,
    }


@dataclass
class Sent:
    file: str
    source: str
    status: int
    answer: str


class Printer:
    """Rows as they land: a rich table on a terminal, JSON lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.console: Any = None
        if out.isatty():
            from rich.console import Console

            self.console = Console(file=out)

    def row(self, kind: str, **fields: Any) -> None:
        if self.console is None:
            self.out.write(json.dumps({"kind": kind, **fields}) + "\n")
            self.out.flush()
            return
        if kind == "webhook":
            style = "green" if fields["status"] < 300 else "red"
            self.console.print(
                f"[dim]webhook[/] {fields['source']:<10} {fields['file']:<58} "
                f"[{style}]{fields['status']}[/] {fields['answer']}",
                highlight=False,
            )
        elif kind == "patch":
            style = "green" if (fields["answered"] or 0) < 300 else "red"
            self.console.print(
                f"[bold]PATCH[/]   {fields['path']:<40} {json.dumps(fields['body']):<40} "
                f"[{style}]{fields['answered']}[/]",
                highlight=False,
            )

    def summary(self, data: dict[str, Any], meanings: dict[str, str]) -> None:
        if self.console is None:
            self.out.write(json.dumps({"kind": "summary", **data, "meaning": meanings}) + "\n")
            return
        from rich.table import Table

        table = Table(title="voxys-bridge demo", show_header=False)
        for key, value in data.items():
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
        self.console.print(table)
        for state, sentence in meanings.items():
            self.console.print(f"[bold]{state}[/]: {sentence}", highlight=False)


def example_payloads(project: Path) -> list[Path]:
    """Every example request body: `examples/<preset>/*.json` and `*.xml` (Salesforce)."""
    found = [*project.glob("examples/*/*.json"), *project.glob("examples/*/*.xml")]
    return sorted(found)


async def post_examples(
    bundle: Bundle, project: Path, base_url: str, printer: Printer
) -> list[Sent]:
    """Sign and post every example payload to the source whose preset names its directory."""
    by_preset = {source.preset: key for key, source in bundle.sources.items()}
    sent: list[Sent] = []
    async with aiohttp.ClientSession() as session:
        for file in example_payloads(project):
            key = by_preset.get(file.parent.name)
            if key is None:
                continue
            source = bundle.sources[key]
            now = time.time()
            body = source.stamp(file.read_bytes(), now)
            path = f"/webhooks/{key}"
            query = source.signed_query()
            kind = {"content_type": "text/xml; charset=utf-8"} if file.suffix == ".xml" else {}
            headers = source.sign(body, now=now, path=path, query_string=query, **kind)
            url = base_url + path + (f"?{query}" if query else "")
            async with session.post(url, data=body, headers=headers) as resp:
                answer = (await resp.text())[:120]
                item = Sent(f"{file.parent.name}/{file.name}", key, resp.status, answer)
            sent.append(item)
            printer.row("webhook", **item.__dict__)
    return sent


async def settle(runtime: Runtime, within: float) -> bool:
    """Wait until nothing is pending, in flight or a follow-up due (the worker wakes on each
    stored event)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        stats = await runtime.store.stats(time.time())
        due = stats.next_followup_at is not None and stats.next_followup_at <= time.time()
        if stats.transitions["pending"] == 0 and stats.transitions["in_flight"] == 0 and not due:
            return True
        await asyncio.sleep(0.1)
    return False


async def run_demo(project: Path, out: TextIO, *, keep: bool) -> int:
    printer = Printer(out)
    with tempfile.TemporaryDirectory(prefix="voxys-bridge-demo-") as tmp:
        token = "demo-voxys-" + secrets.token_hex(8)
        sandbox = FakeVoxys(tokens=token)
        voxys_url = await sandbox.start()
        port = free_port()
        env = demo_environment(port, voxys_url, token, Path(tmp))
        os.environ.update(env)

        def landed(call: Call) -> None:
            printer.row("patch", path=call.path, body=call.body, answered=call.status)

        sandbox.on_call = landed
        config_path = project / DEMO_CONFIG
        try:
            bundle = load_bundle(config_path)
        except ConfigErrors as exc:
            for error in exc.errors:
                print(f"error: {error}", file=sys.stderr)
            await sandbox.stop()
            return 2
        logs.configure(level="warning", fmt="json", secrets=bundle.secrets())
        app, runtime = build_app(bundle, open_backend(bundle.config.storage.url))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            sent = await post_examples(bundle, project, f"http://127.0.0.1:{port}", printer)
            settled = await settle(runtime, SETTLE_TIMEOUT_S)
            stats = await runtime.store.stats(time.time())
            answered = Counter(str(s.status) for s in sent)
            transitions = {k: v for k, v in stats.transitions.items() if v}
            printer.summary(
                {
                    "webhooks": len(sent),
                    "answers": dict(answered),
                    "events": stats.events,
                    "transitions": transitions,
                    "patches_received_by_sandbox": len(sandbox.calls),
                    "settled": settled,
                },
                meaning(transitions),
            )
            ok = settled and all(s.status < 300 for s in sent) and sent
            if keep:
                print_keep(out, env, port, voxys_url, project, Path(tmp))
                await asyncio.Event().wait()  # until Ctrl-C
            return 0 if ok else 1
        finally:
            await runner.cleanup()
            await sandbox.stop()


# What each settled state of the summary means, for someone who has never seen one.
MEANING = {
    "delivered": "Voxys applied the change (it answered 2xx)",
    "superseded": "not sent: a newer change for the same lead was waiting too, and only "
    "the newest one is sent (voxys.coalesce); the lead still ends in the newest state",
    "stale": "not sent: older than a change already delivered to that lead, which stays "
    "in the state of its newest event",
    "dead": "Voxys refused it for good; `voxys-bridge dead-letters list` says why",
}


def meaning(transitions: dict[str, int]) -> dict[str, str]:
    """The sentences for the states that occur in `transitions`."""
    return {state: MEANING[state] for state in MEANING if transitions.get(state)}


def command_line() -> str:
    """How to call this program from another shell: its name if on PATH, else its path."""
    if shutil.which("voxys-bridge"):
        return "voxys-bridge"
    script = Path(sys.argv[0])
    if script.name == "voxys-bridge" and script.is_file():
        return shlex.quote(str(script.resolve()))
    return f"{shlex.quote(sys.executable)} -m bridge"


def print_keep(
    out: TextIO, env: dict[str, str], port: int, voxys_url: str, project: Path, workdir: Path
) -> None:
    """Commands to paste while everything keeps running. This run's secrets and store go
    into an env file to source: a PEM key on one command line would not paste."""
    env_file = workdir / "demo.env"
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))
    env_file.chmod(0o600)
    cli = command_line()
    config = shlex.quote(str(project / DEMO_CONFIG))
    example = project / "examples" / "stripe" / "checkout.session.completed-paid.json"
    lines = [
        "",
        f"bridge   http://127.0.0.1:{port}   (POST /webhooks/<source>, GET /metrics)",
        f"sandbox  {voxys_url}",
        "Everything keeps running until Ctrl-C. To try it, paste into another shell:",
        "",
        f"  . {shlex.quote(str(env_file))}",
        f"  {cli} send --config {config} --source stripe {shlex.quote(str(example))}",
        f"  {cli} events list --config {config}",
        f"  {cli} explain --config {config} --lead 1/4711",
        f'  curl -H "Authorization: Bearer $BRIDGE_ADMIN_TOKEN" http://127.0.0.1:{port}/admin/stats',
        "",
        "(the env file holds this run's generated secrets and its store; the demo sent that "
        "example already, so the bridge answers it as a duplicate)",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()


def run(keep: bool, out: TextIO = sys.stdout) -> int:
    project = find_project()
    if project is None:
        where = os.environ.get("VOXYS_BRIDGE_HOME") or str(SHIPPED)
        print(
            f"error: the demo runs examples/all-providers.yaml and config/rules/; {where} "
            "has neither (VOXYS_BRIDGE_HOME names a checkout of the project; unset it to "
            "use the copy shipped with the package)",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(run_demo(project, out, keep=keep))
    except KeyboardInterrupt:
        return 0
