"""The `clearance` commands that talk to the database directly (the HTTP client commands
are driven end to end in tests/e2e)."""

from __future__ import annotations

import re

from click.testing import CliRunner
from sqlalchemy import select

from api.cli import main
from api.models import ApiKey
from core.db import read_scope
from core.settings import Settings


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_tenants_and_keys(settings: Settings) -> None:
    code, out, _ = run("tenants", "create", "acme")
    assert code == 0
    assert re.fullmatch(r"[0-9a-f]{32}\n", out)

    code, out, _ = run("keys", "create", "--tenant", "acme", "--role", "reviewer")
    assert code == 0
    # Only the key on stdout, so `KEY=$(clearance keys create ...)` works.
    assert re.fullmatch(r"clr_[0-9a-f]{12}_[A-Za-z0-9_-]{43}\n", out)
    key = out.strip()
    with read_scope() as session:
        (stored,) = session.scalars(select(ApiKey)).all()
    assert stored.role == "reviewer"
    assert key not in (stored.key_hash, stored.prefix)


def test_bad_input_is_named_and_changes_nothing(settings: Settings) -> None:
    assert run("tenants", "create", "acme")[0] == 0
    code, _, err = run("tenants", "create", "acme")
    assert (code, err) == (1, "error: tenant 'acme' already exists\n")
    code, _, err = run("tenants", "create", "Not A Name")
    assert code == 1
    assert "tenant name 'Not A Name' is not allowed" in err

    code, _, err = run("keys", "create", "--tenant", "globex", "--role", "admin")
    assert code == 1
    assert "tenant 'globex' does not exist; existing tenants: 'acme'" in err
    code, _, err = run("keys", "create", "--tenant", "acme", "--role", "owner")
    assert code == 2
    assert "'owner' is not one of 'requester', 'reviewer', 'legal', 'admin'" in err
    with read_scope() as session:
        assert session.scalars(select(ApiKey)).all() == []


def test_submit_needs_a_key(settings: Settings) -> None:
    code, _, err = run("submit", "a lighthouse")
    assert code == 1
    assert "CLEARANCE_API_KEY" in err


def test_worker_refuses_unknown_queues(settings: Settings) -> None:
    code, _, err = run("worker", "--queues", "gpu,fast")
    assert code == 1
    assert "unknown queue(s) ['fast']" in err


def test_a_tenant_can_require_human_approval_of_every_image(settings: Settings) -> None:
    from api.models import Tenant

    assert run("tenants", "create", "plain")[0] == 0
    assert run("tenants", "create", "careful", "--require-human-approval")[0] == 0
    with read_scope() as session:
        rows = session.execute(select(Tenant.name, Tenant.require_human_approval)).all()
    flags = {row.name: row.require_human_approval for row in rows}
    assert flags == {"plain": False, "careful": True}
