"""The `clearance` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

import click

from core.settings import get_settings

CLI_ACTOR = "cli"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEMO_TENANT = "demo"
# Seconds `clearance serve` lets open requests finish when it is stopped; then it ends them.
SHUTDOWN_GRACE_S = 10


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _run_service(action: Any) -> Any:
    """Run `action`, turning our own errors into a one-line message and exit status 1."""
    from core.errors import ClearanceError

    try:
        return action()
    except ClearanceError as e:
        _fail(e.detail)


@click.group()
def main() -> None:
    """Clearance: content clearance for FLUX.1 image generation."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)


def _log_info() -> None:
    """Long-running commands log their progress; one-shot commands print only results."""
    logging.getLogger().setLevel(logging.INFO)


# --- database ------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations to the configured database."""
    from migrations.config import upgrade

    upgrade(revision=revision)
    click.echo(f"database at revision {revision}: {_redacted(get_settings().db_url)}", err=True)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- tenants and keys ----------------------------------------------------------------------


@main.group()
def tenants() -> None:
    """Tenants."""


@tenants.command("create")
@click.argument("name")
@click.option(
    "--require-human-approval",
    is_flag=True,
    help="An approval workflow: every image goes to a person before it is released.",
)
def tenants_create(name: str, require_human_approval: bool) -> None:
    """Create a tenant; prints its id."""
    from api import auth
    from core.db import session_scope

    def create() -> str:
        with session_scope() as session:
            return auth.create_tenant(
                session=session,
                name=name,
                actor=CLI_ACTOR,
                require_human_approval=require_human_approval,
            ).id

    click.echo(_run_service(create))


@main.group()
def keys() -> None:
    """API keys, and the key that signs released images."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option(
    "--role", required=True, type=click.Choice(["requester", "reviewer", "legal", "admin"])
)
def keys_create(tenant: str, role: str) -> None:
    """Create an API key; prints only the key (it is stored hashed and never shown again)."""
    from api import auth
    from core.db import session_scope

    def create() -> str:
        with session_scope() as session:
            found = auth.tenant_by_name(session=session, name=tenant)
            return auth.create_key(session=session, tenant=found, role=role, actor=CLI_ACTOR)

    click.echo(_run_service(create))


@keys.command("list")
@click.option("--tenant", required=True, help="Tenant name.")
def keys_list(tenant: str) -> None:
    """A tenant's API keys: prefix, role, created, revoked (never the key)."""
    from api import auth
    from core.db import read_scope

    def read() -> list[str]:
        with read_scope() as session:
            found = auth.tenant_by_name(session=session, name=tenant)
            rows, _ = auth.list_keys(session=session, tenant_id=found.id, limit=10_000)
            return [
                f"{k.prefix}  {k.role:<9}  created {k.created_at:%Y-%m-%d %H:%M}"
                + (f"  revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
                for k in rows
            ]

    for line in _run_service(read):
        click.echo(line)


@keys.command("revoke")
@click.option("--tenant", required=True, help="Tenant name.")
@click.argument("key")
def keys_revoke(tenant: str, key: str) -> None:
    """Revoke a tenant's API key, named by its prefix or id; it authenticates no more. The
    tenant's last active admin key is refused: create another first."""
    from api import auth
    from core.db import session_scope

    def revoke() -> str:
        with session_scope() as session:
            found = auth.tenant_by_name(session=session, name=tenant)
            row = auth.revoke_key(session=session, tenant_id=found.id, key_id=key, actor=CLI_ACTOR)
            return f"revoked API key {row.prefix} ({row.role}) of {tenant}"

    click.echo(_run_service(revoke))


@keys.command("init-signing")
@click.option("--force", is_flag=True, help="Replace an existing signing key and chain.")
def keys_init_signing(force: bool) -> None:
    """Create a local CA and a C2PA signing certificate it issues, at the configured paths
    (default: DATA_DIR/signing/). Released images are signed with it; readers report it as
    untrusted unless they trust local-ca.pem. Production configures a key from a real CA."""
    from pipeline import provenance

    made = _run_service(lambda: provenance.init_signing(get_settings(), force=force))
    click.echo(f"signing key: {made.key}\ncertificate chain: {made.chain}\nlocal CA: {made.ca}")
    click.echo(f"signing certificate sha256: {made.fingerprint}")


# --- dashboard users ---------------------------------------------------------------------


@main.group()
def users() -> None:
    """People who sign in to the reviewer dashboard."""


@users.command("create")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option("--email", required=True, help="What the user signs in with.")
@click.option(
    "--role", required=True, type=click.Choice(["requester", "reviewer", "legal", "admin"])
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of stdin instead of asking for it.",
)
def users_create(tenant: str, email: str, role: str, password_stdin: bool) -> None:
    """Create a dashboard user; prints its id. The password is asked for twice (or read from
    stdin), never taken as an argument, and stored only as an argon2id hash."""
    from api import auth
    from api import users as dashboard_users
    from core.db import session_scope

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)

    def create() -> str:
        with session_scope() as session:
            return dashboard_users.create_user(
                session=session,
                tenant=auth.tenant_by_name(session=session, name=tenant),
                email=email,
                role=role,
                password=password,
                actor=CLI_ACTOR,
            ).id

    click.echo(_run_service(create))


@users.command("disable")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option("--email", required=True)
def users_disable(tenant: str, email: str) -> None:
    """Disable a dashboard user: they cannot sign in, and their sessions end now."""
    from api import auth
    from api import users as dashboard_users
    from core.db import session_scope

    def disable() -> None:
        with session_scope() as session:
            found = auth.tenant_by_name(session=session, name=tenant)
            user = dashboard_users.user_by_email(session=session, tenant_id=found.id, email=email)
            dashboard_users.disable_user(
                session=session, tenant_id=found.id, user_id=user.id, actor=CLI_ACTOR
            )

    _run_service(disable)
    click.echo(f"user {email} of {tenant} disabled", err=True)


# --- processes -----------------------------------------------------------------------------


def _worker_command(queues: str | None = None) -> list[str]:
    # One machine, one worker: it also runs Celery beat (time-based audit checkpoints).
    command = [sys.executable, "-m", "api.cli", "worker", "--beat"]
    return command + (["--queues", queues] if queues else [])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--no-worker", is_flag=True, help="Serve the API only; run workers separately.")
def serve(host: str, port: int, no_worker: bool) -> None:
    """Serve the HTTP API, with a worker unless --no-worker. Ctrl-C stops both."""
    import uvicorn

    _log_info()
    # uvicorn re-raises SIGTERM after its own shutdown; exit through Python instead, so the
    # `finally` below still stops the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    worker = None if no_worker else subprocess.Popen(_worker_command())  # noqa: S603 (our own argv)
    try:
        config = uvicorn.Config(
            "api.app:create_app",
            factory=True,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        _server_class()(config).run()
    finally:
        if worker is not None:
            _stop(worker)


def _server_class() -> Any:
    import uvicorn

    from api.dashboard import reviewing

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # The dashboard's live-update streams never end by themselves, and uvicorn waits
            # for open requests: tell them to end, so stopping takes seconds, not minutes.
            reviewing.close_streams()
            super().handle_exit(sig, frame)

    return Server


def _stop(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish the current task
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@main.command()
@click.option(
    "--queues",
    default="gpu,checks",
    show_default=True,
    help="Comma-separated queues: 'gpu' (generation) and/or 'checks' (everything else).",
)
@click.option("--concurrency", type=int, default=None, help="Default: worker.concurrency setting.")
@click.option(
    "--beat", is_flag=True, help="Also run Celery beat (periodic tasks); in one worker only."
)
def worker(queues: str, concurrency: int | None, beat: bool) -> None:
    """Run a Celery worker for the pipeline stages."""
    from audit import tasks as audit_tasks  # noqa: F401 (registers the checkpoint task)
    from core import celery_app
    from migrations import models  # noqa: F401 (every table, so foreign keys resolve)
    from pipeline import tasks  # noqa: F401 (registers the stage tasks)
    from review import tasks as review_tasks  # noqa: F401 (registers the SLA escalation)

    _log_info()
    settings = get_settings()
    # A missing, incomplete or altered model folder stops the worker here, not mid-job.
    problems = [check for check in _verify_models() if check.problem]
    if problems:
        _fail("; ".join(str(check.problem) for check in problems))
    known = {celery_app.GPU_QUEUE, celery_app.CHECKS_QUEUE}
    unknown = set(queues.split(",")) - known
    if unknown:
        _fail(f"--queues: unknown queue(s) {sorted(unknown)}; valid: {sorted(known)}")
    app = celery_app.configure(settings)
    app.worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--concurrency={concurrency or settings.worker.concurrency}",
            "--loglevel=INFO",
            # The embedded broker has no broadcast; workers need none of these to do their job.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *(["--beat"] if beat else []),
        ]
    )


# --- client --------------------------------------------------------------------------------


def _client() -> Any:
    import httpx

    settings = get_settings()
    if not settings.api_key:
        _fail("set CLEARANCE_API_KEY to an API key (see `clearance keys create`)")
    return httpx.Client(
        base_url=settings.api_url,
        headers={"Authorization": f"Bearer {settings.api_key}"},
        timeout=30.0,
    )


def _checked(response: Any) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            body = response.json()
            _fail(f"{body.get('error')}: {body.get('detail')}")
        except ValueError:
            _fail(f"HTTP {response.status_code}: {response.text[:200]}")
    result: dict[str, Any] = response.json()
    return result


def _describe(job: dict[str, Any]) -> str:
    lines = [f"job {job['id']}: {job['state']}"]
    if job.get("progress") and job["state"] == "generating":
        lines[0] += f" ({job['progress']['text']})"
    if job.get("model"):
        lines.append(f"  model: {job['model']}")
    lines.append(
        f"  cost: ${float(job['cost_usd']):.4f} (estimated ${float(job['estimated_cost_usd']):.4f})"
    )
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    for decision in job["decisions"]:
        lines.append(f"  {decision['stage']}: {decision['decision']}")
        lines.extend(f"    - {reason.get('detail')}" for reason in decision["reasons"])
    for image in job["images"]:
        where = image["url"] or "not released"
        lines.append(f"  image {image['index']} (seed {image['seed']}): {where}")
    return "\n".join(lines)


SETTLED = {"released", "rejected", "blocked", "failed", "cancelled", "in_review"}


@main.command()
@click.argument("prompt")
@click.option("--variant", default="schnell", show_default=True)
@click.option(
    "--use",
    default="commercial",
    show_default=True,
    type=click.Choice(["commercial", "non-commercial"]),
)
@click.option("--n", "n_images", default=1, show_default=True, type=int, help="Images to generate.")
@click.option("--seed", type=int, default=None, help="Default: random (recorded with the job).")
@click.option("--width", type=int, default=1024, show_default=True)
@click.option("--height", type=int, default=1024, show_default=True)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until the job is released, in review, blocked, rejected, failed or cancelled.",
)
@click.option("--timeout", default=900.0, show_default=True, help="Seconds --wait waits at most.")
@click.option("--steps", type=int, default=None, help="Default: the variant's own.")
@click.option("--project", default="", help="Project for budgets and usage.")
@click.option(
    "--input-image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Image to edit (Kontext variants); uploaded first.",
)
@click.option("--lora", "lora_specs", multiple=True, help="NAME or NAME:SCALE; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as the API returns it.")
def submit(
    prompt: str,
    variant: str,
    use: str,
    n_images: int,
    seed: int | None,
    width: int,
    height: int,
    wait: bool,
    timeout: float,
    steps: int | None,
    project: str,
    input_image: Path | None,
    lora_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Submit a job through the HTTP API (CLEARANCE_API_URL, CLEARANCE_API_KEY).

    Exit status: 0 when the job is released (or, without --wait, accepted); 3 when it ended
    in another state; 1 on an error."""
    import httpx

    loras = []
    for spec in lora_specs:
        name, _, scale = spec.partition(":")
        try:
            loras.append({"name": name, "scale": float(scale) if scale else 1.0})
        except ValueError:
            _fail(f"--lora {spec!r}: the scale after ':' must be a number")
    body: dict[str, Any] = {
        "prompt": prompt,
        "steps": steps,
        "project": project,
        "loras": loras,
        "variant": variant,
        "use": use,
        "n_images": n_images,
        "width": width,
        "height": height,
        "seed": seed,
    }
    try:
        with _client() as client:
            if input_image is not None:
                kind = (
                    "image/jpeg" if input_image.suffix.lower() in {".jpg", ".jpeg"} else "image/png"
                )
                files = {"file": (input_image.name, input_image.read_bytes(), kind)}
                body["input_image"] = _checked(client.post("/v1/uploads", files=files))["id"]
            job = _checked(client.post("/v1/jobs", json=body))
            deadline = time.monotonic() + timeout
            shown = ""
            while wait and job["state"] not in SETTLED:
                if time.monotonic() > deadline:
                    _fail(f"job {job['id']} still {job['state']} after {timeout:g} s")
                status = job["state"] + (f" {job['progress']['text']}" if job["progress"] else "")
                if status != shown and not as_json:
                    click.echo(f"job {job['id']}: {status}", err=True)
                    shown = status
                time.sleep(0.25)
                job = _checked(client.get(f"/v1/jobs/{job['id']}"))
    except httpx.HTTPError as e:
        _fail(f"cannot reach the API at {get_settings().api_url}: {e}")
    click.echo(json.dumps(job, indent=2) if as_json else _describe(job))
    if wait and job["state"] != "released":
        sys.exit(3)


# --- audit ---------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """The audit log."""


_PUBLIC_KEY_OPTION = click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust this Ed25519 public key (PEM); repeatable. Default: the configured signing "
    "key and audit.trusted_public_keys.",
)


def _trusted_keys(public_keys: tuple[Path, ...]) -> Any:
    from audit import signing

    def load() -> Any:
        if public_keys:  # named on the command line: trust those alone
            keys = [signing.load_public_key(path) for path in public_keys]
            return {signing.key_id(key): key for key in keys}
        return signing.trusted_keys(get_settings())

    return _run_service(load)


@audit.command("verify")
@_PUBLIC_KEY_OPTION
def audit_verify(public_keys: tuple[Path, ...]) -> None:
    """Check the whole hash chain, then every signed checkpoint (signature, and the hash of
    the event it names); names the first broken event or checkpoint. Exit status 1 if either
    is broken."""
    from audit import service
    from core.db import read_scope

    keys = _trusted_keys(public_keys)
    with read_scope() as session:
        result = service.verify(session=session)
        if result.broken is not None:
            _fail(
                f"audit chain BROKEN at event #{result.broken.seq}: {result.broken.reason} "
                f"({result.events_checked} events before it verified)"
            )
        checkpoints = service.verify_checkpoints(
            session=session,
            public_keys=keys,
            every_events=get_settings().audit.checkpoint_every_events,
        )
    if checkpoints.broken is not None:
        _fail(
            f"audit checkpoint BROKEN at checkpoint #{checkpoints.broken.seq}: "
            f"{checkpoints.broken.reason} ({checkpoints.checkpoints_checked} checkpoints "
            "before it verified)"
        )
    click.echo(
        f"audit chain OK: {result.events_checked} events verified, head #{result.head_seq}; "
        f"{checkpoints.checkpoints_checked} signed checkpoints verified"
        + (f", the last at #{checkpoints.last_seq}" if checkpoints.last_seq else "")
    )


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of the chain head now (beat does this every few minutes)."""
    from audit import service
    from core.db import session_scope

    def write() -> Any:
        with session_scope() as session:
            written = service.write_checkpoint(session=session, settings=get_settings())
            return written.seq if written else None

    seq = _run_service(write)
    click.echo(f"checkpoint at #{seq}" if seq else "the head is checkpointed already")


@audit.command("public-key")
def audit_public_key() -> None:
    """Print the public key (PEM) that checkpoints and exports are signed with; legal keeps
    it to verify exports offline. Its key id goes to stderr."""
    from audit import signing

    signer = _run_service(lambda: signing.signer(get_settings()))
    click.echo(signing.public_pem(signer.public_key), nl=False)
    click.echo(f"key id {signer.key_id}", err=True)


def _bad_parameter(error: Any) -> NoReturn:
    option = f"--{error.field}" if error.field else None
    detail = error.detail.split(": ", 1)[-1] if error.field else error.detail
    raise click.BadParameter(detail, param_hint=option)


@audit.command("export")
@click.option(
    "--from", "start", default=None, help="ISO date or date-time (UTC unless zoned); inclusive."
)
@click.option("--to", "end", default=None, help="Inclusive; a date includes the whole day.")
@click.option("--tenant", default=None, help="Tenant name. Default: every tenant.")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Default: audit-export-TIME.FORMAT here. The signed manifest goes to OUT.manifest.json.",
)
def audit_export(
    start: str | None, end: str | None, tenant: str | None, fmt: str, out: Path | None
) -> None:
    """Export audit events with a signed manifest, for `clearance audit verify-export`."""
    from audit import export, service, signing
    from core.db import read_scope, session_scope, utcnow
    from core.errors import InvalidInputError

    settings = get_settings()
    tenant_id = _tenant_id(tenant) if tenant else None
    try:
        wanted = export.make_filter(
            start=start, end=end, tenant_id=tenant_id, tenant=tenant, fmt=fmt
        )
    except InvalidInputError as e:
        _bad_parameter(e)
    signer = _run_service(lambda: signing.signer(settings))
    out = out or Path(f"audit-export-{utcnow():%Y%m%dT%H%M%SZ}.{fmt}")
    manifest_file = Path(str(out) + export.MANIFEST_SUFFIX)
    with out.open("wb") as file, read_scope() as session:
        manifest = export.write_export(
            session=session, filter=wanted, fmt=fmt, out=file, signer=signer
        )
    manifest_file.write_bytes(export.manifest_bytes(manifest))
    with session_scope() as session:
        service.append(
            session=session,
            actor=CLI_ACTOR,
            type="audit.exported",
            subject="audit",
            tenant_id=tenant_id,
            payload={k: manifest[k] for k in ("filter", "count", "sha256", "export_format")},
        )
    click.echo(f"{manifest['count']} events written to {out}, manifest {manifest_file}", err=True)


def _export_files(file: Path, manifest: Path | None) -> tuple[bytes, bytes]:
    """The export's and the manifest's bytes: from the API's zip, or from FILE and its
    manifest next to it."""
    import zipfile

    from audit.export import MANIFEST_SUFFIX

    if manifest is None and zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
                manifests = [n for n in names if n.endswith(MANIFEST_SUFFIX)]
                exported = [n.removesuffix(MANIFEST_SUFFIX) for n in manifests]
                if len(manifests) != 1 or exported[0] not in names:
                    _fail(f"{file}: the zip does not hold one export and its manifest")
                return archive.read(exported[0]), archive.read(manifests[0])
        except (zipfile.BadZipFile, OSError) as e:
            _fail(f"{file}: damaged zip ({e})")
    manifest = manifest or Path(str(file) + MANIFEST_SUFFIX)
    try:
        return file.read_bytes(), manifest.read_bytes()
    except OSError as e:
        _fail(f"cannot read {e.filename}: {e.strerror}; pass the manifest with --manifest")


@audit.command("verify-export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Default: FILE.manifest.json, or the one inside FILE when it is a zip from the API.",
)
@_PUBLIC_KEY_OPTION
def audit_verify_export(file: Path, manifest: Path | None, public_keys: tuple[Path, ...]) -> None:
    """Check an export offline: the manifest's signature, the export's sha256 and count, and
    every event's hash and link. Exit status 1, naming the problem, on any change."""
    from audit import export
    from core.errors import ClearanceError

    data, manifest_data = _export_files(file, manifest)
    keys = _trusted_keys(public_keys)
    if not keys:
        _fail("no public key to verify with: pass the signer's with --public-key FILE")
    try:
        check = export.verify_export(data, manifest_data, keys)
    except ClearanceError as e:
        _fail(f"export BROKEN: {e.detail}")
    span = f" (#{check.first_seq}..#{check.last_seq})" if check.count else ""
    click.echo(
        f"export OK: {check.count} events{span}, {check.gaps} gaps (events outside the filter); "
        f"sha256 {check.manifest['sha256']}; signed by key {check.key_id[:16]}"
    )


# --- models, adapters, budgets --------------------------------------------------------------


def _verify_models() -> list[Any]:
    from core.db import read_scope
    from generation import service

    with read_scope() as session:
        return service.verify_models(session=session, settings=get_settings())


@main.group()
def models() -> None:
    """Local FLUX.1 model folders and their integrity manifests."""


@models.command("register")
@click.option("--variant", required=True, help="The variant this folder serves, e.g. schnell.")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
def models_register(variant: str, folder: Path | None) -> None:
    """Record the sha256 of every file of a model folder (default: the folder configured for
    the variant in CLEARANCE_GENERATION__LOCAL_MODELS)."""
    from core.db import session_scope
    from generation import service

    chosen = folder or get_settings().generation.local_models.get(variant)
    if chosen is None:
        _fail(f"no folder given, and none is configured for variant {variant!r}")

    def register() -> Any:
        with session_scope() as session:
            return service.register_model(
                session=session, variant=variant, folder=chosen, actor=CLI_ACTOR
            )

    registration = _run_service(register)
    click.echo(
        f"registered {registration.folder} for {variant}: {len(registration.manifest)} files"
    )


@models.command("verify")
def models_verify() -> None:
    """Re-hash every configured model folder against its manifest. Exit status 1 if any
    file changed, is missing, or a folder is not registered."""
    checks = _verify_models()
    if not checks:
        click.echo("no local model folders are configured (the tiny offline fallback is in use)")
    for check in checks:
        click.echo(f"{check.variant}: {check.folder}: {check.problem or 'OK'}")
    if any(check.problem for check in checks):
        sys.exit(1)


@main.group()
def loras() -> None:
    """LoRA adapters."""


@loras.command("register")
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--licence-note", required=True, help="Under which licence the adapter may be used.")
def loras_register(name: str, path: Path, licence_note: str) -> None:
    """Register a LoRA adapter (.safetensors) under NAME; jobs then ask for it by name."""
    from core.db import session_scope
    from generation import service

    def register() -> Any:
        with session_scope() as session:
            return service.register_lora(
                session=session, name=name, path=path, licence_note=licence_note, actor=CLI_ACTOR
            )

    adapter = _run_service(register)
    click.echo(f"registered LoRA {adapter.name}: {adapter.path} (sha256 {adapter.sha256})")


@main.group()
def budgets() -> None:
    """Monthly spending limits."""


@budgets.command("set")
@click.option("--tenant", required=True)
@click.option("--project", default="", help="Default: the whole tenant.")
@click.option("--monthly-usd", required=True, type=str)
def budgets_set(tenant: str, project: str, monthly_usd: str) -> None:
    """Set the monthly budget of a tenant, or of one of its projects."""
    from decimal import Decimal, InvalidOperation

    from api import auth
    from core.db import session_scope
    from generation import costs

    try:
        amount = Decimal(monthly_usd)
    except InvalidOperation:
        _fail(f"--monthly-usd {monthly_usd!r} is not a number")

    def set_budget() -> Any:
        with session_scope() as session:
            found = auth.tenant_by_name(session=session, name=tenant)
            return costs.set_budget(
                session=session,
                tenant_id=found.id,
                project=project,
                monthly_usd=amount,
                actor=CLI_ACTOR,
            )

    budget = _run_service(set_budget)
    scope = f"project {project!r} of {tenant}" if project else tenant
    click.echo(f"monthly budget of {scope}: ${budget.monthly_usd:.2f}")


@main.command()
@click.option("--tenant", required=True)
@click.option("--month", default=None, help="YYYY-MM; default: this month (UTC).")
@click.option("--json", "as_json", is_flag=True)
def usage(tenant: str, month: str | None, as_json: bool) -> None:
    """What a tenant spent in a month, by project and variant, and its budgets."""
    from api import auth
    from core.db import read_scope, utcnow
    from generation import costs

    def read() -> Any:
        start = costs.parse_month(month) if month else costs.month_start(utcnow())
        with read_scope() as session:
            found = auth.tenant_by_name(session=session, name=tenant)
            return costs.usage(session=session, tenant_id=found.id, start=start)

    report = _run_service(read)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "month": report.month,
                    "total_usd": str(report.total_usd),
                    "lines": [
                        vars(line) | {"amount_usd": str(line.amount_usd)} for line in report.lines
                    ],
                    "budgets": [
                        {
                            "project": b.project,
                            "monthly_usd": str(b.monthly_usd),
                            "spent_usd": str(b.spent_usd),
                            "remaining_usd": str(b.remaining_usd),
                        }
                        for b in report.budgets
                    ],
                },
                indent=2,
            )
        )
        return
    click.echo(f"{tenant}, {report.month}: ${report.total_usd:.4f}")
    for line in report.lines:
        click.echo(
            f"  {line.project or '(no project)'} {line.variant} ({line.kind}): "
            f"{line.images} images, {line.gpu_seconds:.1f} s, ${line.amount_usd:.4f}"
        )
    for b in report.budgets:
        click.echo(
            f"  budget {b.project or '(tenant)'}: ${b.spent_usd:.4f} of "
            f"${b.monthly_usd:.2f}, ${b.remaining_usd:.4f} left"
        )


# --- catalogue -----------------------------------------------------------------------------


@main.group()
def assets() -> None:
    """The protected-asset catalogue."""


@assets.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def assets_import(file: Path) -> None:
    """Import a catalogue YAML file: assets, with `exemplars:` and `negative_exemplars:`
    image paths relative to the file. New exemplars are added to the index."""
    from core.blobs import BlobStore
    from core.db import session_scope
    from reference_index import index, service

    settings = get_settings()

    def run() -> Any:
        with session_scope() as session:
            summary = service.import_catalogue(
                session=session, blobs=BlobStore(settings.blob_dir), path=file, actor=CLI_ACTOR
            )
            index.add(
                session=session,
                settings=settings,
                blobs=BlobStore(settings.blob_dir),
                reference_ids=summary.new_reference_ids,
                actor=CLI_ACTOR,
            )
            return summary

    summary = _run_service(run)
    click.echo(
        f"assets: {summary.assets_created} created, {summary.assets_updated} updated; "
        f"reference images added: {summary.references_added}"
    )


@assets.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def assets_export(file: Path | None) -> None:
    """Write the catalogue as YAML (the import format). With FILE, exemplar images are
    written next to it under exemplars/; without, the YAML goes to stdout without them."""
    from core.blobs import BlobStore
    from core.db import read_scope
    from reference_index import service

    with read_scope() as session:
        text = service.export_catalogue(
            session=session,
            blobs=BlobStore(get_settings().blob_dir),
            folder=file.parent if file else None,
        )
    if file is None:
        click.echo(text, nl=False)
    else:
        file.write_text(text, encoding="utf-8")
        click.echo(f"catalogue written to {file}", err=True)


@main.group()
def index() -> None:
    """The reference index (CLIP vectors in FAISS, keypoints, asset texts)."""


@index.command("build")
def index_build() -> None:
    """Embed every exemplar into a new index version and switch to it atomically."""
    from core.blobs import BlobStore
    from core.db import session_scope
    from reference_index import index as versions

    settings = get_settings()
    with click.progressbar(length=1, label="embedding exemplars", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        def build() -> Any:
            with session_scope() as session:
                return versions.build(
                    session=session,
                    settings=settings,
                    blobs=BlobStore(settings.blob_dir),
                    actor=CLI_ACTOR,
                    progress=progress,
                )

        version = _run_service(build)
    click.echo(
        f"index {version.checkpoint}: {version.vectors} vectors ({version.kind}, "
        f"{version.dimension} dimensions, {version.embedder})"
    )


@index.command("stats")
@click.option("--json", "as_json", is_flag=True)
def index_stats(as_json: bool) -> None:
    """The active index version and what it holds."""
    from core.db import read_scope
    from reference_index import index as versions

    with read_scope() as session:
        stats = versions.stats(session=session, settings=get_settings())
    if as_json:
        click.echo(json.dumps(vars(stats), default=str, indent=2))
        return
    if stats.checkpoint is None:
        click.echo(f"no index built yet ({stats.pending_exemplars} exemplars waiting)")
        return
    click.echo(
        f"index {stats.checkpoint} ({stats.built_by}, {stats.created_at:%Y-%m-%d %H:%M} UTC): "
        f"{stats.vectors} vectors, {stats.kind}, {stats.dimension} dimensions\n"
        f"  embedder: {stats.embedder}\n"
        f"  exemplars indexed: {stats.exemplars}, not yet indexed: {stats.pending_exemplars}"
    )
    if stats.embedder != stats.current_embedder:
        click.echo(
            f"  WARNING: this process embeds with {stats.current_embedder}; rebuild the index",
            err=True,
        )


def _check_paths(paths: tuple[Path, ...], tenant: str | None) -> Iterator[dict[str, Any]]:
    """One check result per path, in order, against the shared catalogue and the tenant's
    own assets (no tenant: the shared catalogue only); unreadable files give an error entry."""
    from core.db import read_scope
    from core.errors import ClearanceError
    from reference_index import checks

    settings = get_settings()
    tenant_id = _tenant_id(tenant) if tenant else None
    for path in paths:
        try:
            data = path.read_bytes()
            with read_scope() as session:
                result = checks.check_image(
                    data, session=session, settings=settings, tenant_id=tenant_id
                )
        except (OSError, ClearanceError) as e:
            yield {"path": str(path), "decision": "error", "error": getattr(e, "detail", str(e))}
            continue
        body = result.to_dict()
        yield {
            "path": str(path),
            "decision": body["decision"],
            "matches": [
                {k: m[k] for k in ("asset_id", "matcher", "score", "box", "counted", "detail")}
                for m in body["matches"]
            ],
            "nsfw": body["nsfw"],
            "embedder": body["embedder"],
            "faults": body["faults"],
        }


@index.command("search")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default=None, help="Also match this tenant's own assets.")
def index_search(image: Path, tenant: str | None) -> None:
    """Check one image against the catalogue and print what matched."""
    for result in _check_paths((image,), tenant):
        click.echo(json.dumps(result, indent=2))


@main.group()
def check() -> None:
    """Clear images made anywhere, not only here."""


@check.command("image")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line per path, in order."
)
@click.option("--tenant", default=None, help="Also match this tenant's own assets.")
def check_image(paths: tuple[Path, ...], as_json: bool, tenant: str | None) -> None:
    """Check images against the protected-asset catalogue and for NSFW content. Exit status
    0 when every image is approved, 3 when any needs review or is rejected, 1 when any could
    not be checked."""
    decisions = set()
    for result in _check_paths(paths, tenant):
        decisions.add(result["decision"])
        if as_json:
            click.echo(json.dumps(result))
        else:
            found = ", ".join(
                f"{m['asset_id']} ({m['matcher']} {m['score']})" for m in result.get("matches", [])
            )
            click.echo(f"{result['path']}: {result['decision']}" + (f": {found}" if found else ""))
    if "error" in decisions:
        sys.exit(1)
    sys.exit(3 if decisions - {"approve"} else 0)


# --- prompt policy -------------------------------------------------------------------------

# Prompts judged together: the semantic matcher embeds a batch in one model pass.
POLICY_BATCH = 256


@main.group()
def policy() -> None:
    """Prompt policy, as the prompt_check stage applies it."""


def _policy_results(requests: list[Any]) -> list[dict[str, Any]]:
    """A decision (or an error naming the field) per request, in order. Requests are judged
    in batches; a batch with an invalid request is judged one by one, so one bad line does
    not cost the others their answer."""
    from core.db import read_scope
    from core.errors import ClearanceError
    from pipeline import policy as prompt_policy

    settings = get_settings()
    results: list[dict[str, Any]] = []
    with read_scope() as session:
        for start in range(0, len(requests), POLICY_BATCH):
            batch = requests[start : start + POLICY_BATCH]
            if all(not isinstance(r, dict) for r in batch):
                try:
                    decisions = prompt_policy.check_prompts(
                        batch, session=session, settings=settings
                    )
                    results += [d.to_dict() for d in decisions]
                    continue
                except ClearanceError:
                    pass
            for request in batch:
                if isinstance(request, dict):  # already an error
                    results.append(request)
                    continue
                try:
                    results.append(
                        prompt_policy.check_prompt(
                            request, session=session, settings=settings
                        ).to_dict()
                    )
                except ClearanceError as e:
                    results.append(e.to_dict())
    return results


def _tenant_id(name: str) -> str:
    from api import auth
    from core.db import read_scope

    def find() -> str:
        with read_scope() as session:
            return auth.tenant_by_name(session=session, name=name).id

    return str(_run_service(find))


def _policy_request(line: str, number: int, tenant: str | None) -> Any:
    """A PromptRequest from one JSONL line, or an error object naming the line and field."""
    from pipeline.policy import PromptRequest

    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return {"error": "invalid_input", "detail": f"line {number}: not JSON: {e.msg}"}
    if not isinstance(row, dict):
        return {"error": "invalid_input", "detail": f"line {number}: not a JSON object"}
    for name, default in (("prompt", None), ("variant", "schnell"), ("use", "commercial")):
        value = row.get(name, default)
        if not isinstance(value, str):
            return {
                "error": "invalid_input",
                "detail": f"line {number}: {name} must be a string",
                "field": name,
            }
    return PromptRequest(
        row["prompt"], row.get("variant", "schnell"), row.get("use", "commercial"), tenant
    )


@policy.command("check")
@click.argument("prompt", required=False)
@click.option("--variant", default="schnell", show_default=True, help="The FLUX.1 variant.")
@click.option(
    "--use",
    type=click.Choice(["commercial", "non-commercial"]),
    default="commercial",
    show_default=True,
)
@click.option("--tenant", default=None, help="Tenant name: apply its overrides from the rules.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option(
    "--jsonl",
    "jsonl",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help="Judge many prompts: one JSON object per line ({prompt, variant, use}); '-' reads "
    "stdin. One JSON result per line out, in the same order.",
)
def policy_check(
    prompt: str | None,
    variant: str,
    use: str,
    tenant: str | None,
    as_json: bool,
    jsonl: Any,
) -> None:
    """The decision (allow | review | block) for PROMPT, with every reason. Reads the
    catalogue from the configured database (`clearance assets import`). Exit status 0 when
    allowed, 3 when any prompt is sent to review or blocked, 1 when any cannot be judged."""
    from pipeline.policy import PromptRequest
    from review.schemas import Use

    if (prompt is None) == (jsonl is None):
        _fail("give either a PROMPT or --jsonl FILE", code=2)
    if tenant is not None:
        tenant = _tenant_id(tenant)
    if jsonl is not None:
        lines = [(n, line) for n, line in enumerate(jsonl, start=1) if line.strip()]
        requests = [_policy_request(line, n, tenant) for n, line in lines]
        results = _policy_results(requests)
        for result in results:
            click.echo(json.dumps(result, ensure_ascii=False))
    else:
        # click.Choice has checked `use`; the policy checks the prompt and the variant.
        request = PromptRequest(str(prompt), variant, cast(Use, use), tenant)
        (result,) = _policy_results([request])
        if as_json or "error" in result:
            click.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))
        else:
            click.echo(result["decision"])
            for reason in result["reasons"]:
                click.echo(f"  - {reason['rule']}: {reason['detail']}")
        results = [result]
    decisions = {r.get("decision", "error") for r in results}
    if "error" in decisions:
        sys.exit(1)
    sys.exit(3 if decisions - {"allow"} else 0)


# --- demo ----------------------------------------------------------------------------------

DEMO_JOBS = (
    {"prompt": "a lighthouse in a storm, oil painting", "variant": "schnell", "use": "commercial"},
    {"prompt": "a watercolour fox in a snowy forest", "variant": "dev", "use": "non-commercial"},
    {"prompt": "a product shot of running shoes for an ad", "variant": "dev", "use": "commercial"},
)


@main.group()
def demo() -> None:
    """The demo tenant that `make run` sets up."""


@demo.command("seed")
def demo_seed() -> None:
    """Create the demo tenant, a requester key (saved to DATA_DIR/demo-api-key) and a few demo
    jobs, once. Later runs print the saved key again and change nothing."""
    from sqlalchemy import select

    from api import auth
    from api.models import Tenant
    from core import celery_app
    from core.blobs import BlobStore
    from core.db import session_scope
    from pipeline import service as jobs
    from pipeline import tasks

    settings = get_settings()
    key_file = settings.data_dir / "demo-api-key"
    with session_scope() as session:
        exists = session.scalar(select(Tenant).where(Tenant.name == DEMO_TENANT)) is not None
    if not exists:
        celery_app.configure(settings)
        with session_scope() as session:
            tenant = auth.create_tenant(session=session, name=DEMO_TENANT, actor=CLI_ACTOR)
            key = auth.create_key(session=session, tenant=tenant, role="requester", actor=CLI_ACTOR)
            actor = f"api_key:{key.split('_')[1]}"
            job_ids = [
                jobs.create_job(
                    session=session,
                    settings=settings,
                    blobs=BlobStore(settings.blob_dir),
                    tenant_id=tenant.id,
                    actor=actor,
                    request=jobs.NewJob(
                        prompt=spec["prompt"],
                        variant=spec["variant"],
                        use=spec["use"],
                        width=1024,
                        height=1024,
                        seed=7,
                        n_images=1,
                    ),
                ).id
                for spec in DEMO_JOBS
            ]
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
        for job_id, spec in zip(job_ids, DEMO_JOBS, strict=True):
            tasks.enqueue(job_id)
            click.echo(
                f"queued demo job {job_id}: {spec['prompt']!r} ({spec['variant']}, {spec['use']})",
                err=True,
            )
    elif not key_file.exists():
        _fail(
            f"tenant {DEMO_TENANT!r} exists but {key_file} is gone; create a key with "
            f"`clearance keys create --tenant {DEMO_TENANT} --role requester`"
        )
    key = key_file.read_text().strip()
    click.echo(
        f"\nDemo API key (tenant {DEMO_TENANT!r}, role requester), saved in {key_file}:\n"
        f"  export CLEARANCE_API_KEY={key}\n"
        f"Then, in another terminal:\n"
        f'  .venv/bin/clearance submit "a lighthouse in a storm" --wait\n',
        err=True,
    )


if __name__ == "__main__":
    main()
