"""The `clearance` commands for generation: model folders (register, verify), LoRA adapters,
budgets and usage, and the worker's refusal to start on a bad model folder. Real database
(SQLite and PostgreSQL), real tiny model folders."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from api.cli import main
from core.db import read_scope, session_scope
from core.settings import Settings
from generation.models import Budget, CostEntry, LoraAdapter, ModelRegistration
from tests.conftest import TenantKeys, reset_caches
from tests.generation.lora_helpers import tiny_lora_fixture  # noqa: F401

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def configure(monkeypatch: pytest.MonkeyPatch, **folders: Path) -> None:
    """Set CLEARANCE_GENERATION__LOCAL_MODELS for the commands that follow."""
    monkeypatch.setenv(
        "CLEARANCE_GENERATION__LOCAL_MODELS",
        json.dumps({variant: str(folder) for variant, folder in folders.items()}),
    )
    reset_caches()


@pytest.fixture
def schnell_folder(settings: Settings, tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny weights, standing in for a FLUX.1 [schnell] snapshot."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "models" / "flux-schnell"))


# --- models ----------------------------------------------------------------------------------


def test_register_then_verify_prints_ok(
    schnell_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models register` records every file of the folder; `models verify` then prints OK
    for it and exits 0."""
    configure(monkeypatch, schnell=schnell_folder)
    code, out, err = run("models", "register", "--variant", "schnell", str(schnell_folder))
    assert code == 0, err
    files = sum(1 for p in schnell_folder.rglob("*") if p.is_file())
    assert out == f"registered {schnell_folder} for schnell: {files} files\n"
    with read_scope() as session:
        registration = session.get_one(ModelRegistration, str(schnell_folder))
        assert len(registration.manifest) == files

    code, out, err = run("models", "verify")
    assert (code, out) == (0, f"schnell: {schnell_folder}: OK\n"), err


def test_register_defaults_to_the_configured_folder(
    schnell_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without FOLDER, `models register` takes the folder configured for the variant; with
    none configured it says so and exits 1."""
    code, _, err = run("models", "register", "--variant", "schnell")
    assert code == 1
    assert "none is configured for variant 'schnell'" in err
    configure(monkeypatch, schnell=schnell_folder)
    code, out, err = run("models", "register", "--variant", "schnell")
    assert code == 0, err
    assert out.startswith(f"registered {schnell_folder} for schnell")
    assert run("models", "verify")[0] == 0


def test_verify_names_a_changed_file_and_exits_1(
    schnell_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a weights file changes, `models verify` exits 1 naming the file."""
    configure(monkeypatch, schnell=schnell_folder)
    assert run("models", "register", "--variant", "schnell", str(schnell_folder))[0] == 0
    weights = schnell_folder / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    code, out, _ = run("models", "verify")
    assert code == 1
    assert f"schnell: {schnell_folder}:" in out
    assert f"changed: {WEIGHTS}" in out


def test_verify_shows_how_to_register_an_unregistered_folder(
    schnell_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured folder nobody registered fails verification (exit 1) with the command
    that registers it."""
    configure(monkeypatch, schnell=schnell_folder)
    code, out, _ = run("models", "verify")
    assert code == 1
    assert "is not registered" in out
    assert f"clearance models register --variant schnell {schnell_folder}" in out


def test_verify_without_configured_folders_says_the_fallback_is_in_use(
    settings: Settings,
) -> None:
    """With no local folders configured there is nothing to verify: exit 0, and the
    message says the tiny offline fallback is in use."""
    code, out, _ = run("models", "verify")
    assert code == 0
    assert "tiny offline fallback" in out


def test_register_refuses_an_incomplete_folder(settings: Settings, tmp_path: Path) -> None:
    """Registering a folder that is not a diffusers folder exits 1 naming what is missing,
    and records nothing."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run("models", "register", "--variant", "schnell", str(empty))
    assert code == 1
    assert "missing: model_index.json" in err
    code, _, err = run("models", "register", "--variant", "turbo", str(empty))
    assert code == 1
    assert "variant 'turbo' is unknown" in err
    with read_scope() as session:
        assert session.scalars(select(ModelRegistration)).all() == []


@pytest.mark.timeout(120)
def test_worker_refuses_to_start_on_a_broken_model_folder(
    schnell_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`worker` verifies the configured model folders first: a registered folder whose
    weights changed stops it with exit 1 and the reason, before Celery starts (a started
    worker would not return)."""
    configure(monkeypatch, schnell=schnell_folder)
    assert run("models", "register", "--variant", "schnell", str(schnell_folder))[0] == 0
    (schnell_folder / WEIGHTS).write_bytes(b"not weights any more")
    code, _, err = run("worker")
    assert code == 1
    assert err.startswith("error: ")
    assert f"{schnell_folder} differs from its registration" in err
    assert f"changed: {WEIGHTS}" in err


@pytest.mark.timeout(120)
def test_worker_refuses_to_start_on_an_unregistered_folder(
    schnell_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unregistered configured folder also stops the worker, with the register
    command."""
    configure(monkeypatch, schnell=schnell_folder)
    code, _, err = run("worker")
    assert code == 1
    assert f"clearance models register --variant schnell {schnell_folder}" in err


# --- LoRA adapters ---------------------------------------------------------------------------


def test_loras_register(settings: Settings, tiny_lora: Path, tiny_model_dir: Path) -> None:
    """`loras register NAME PATH --licence-note ...` records the adapter with its hash; the
    licence note is required; a file without LoRA tensors is refused (exit 1)."""
    code, out, err = run(
        "loras", "register", "watercolour", str(tiny_lora), "--licence-note", "CC-BY-4.0"
    )
    assert code == 0, err
    with read_scope() as session:
        adapter = session.get_one(LoraAdapter, "watercolour")
        assert adapter.licence_note == "CC-BY-4.0"
    assert out == (
        f"registered LoRA watercolour: {tiny_lora.resolve()} (sha256 {adapter.sha256})\n"
    )

    code, _, err = run("loras", "register", "ink", str(tiny_lora))
    assert code == 2
    assert "--licence-note" in err
    plain = tiny_model_dir / WEIGHTS
    code, _, err = run("loras", "register", "ink", str(plain), "--licence-note", "ours")
    assert code == 1
    assert "holds no LoRA weights" in err
    with read_scope() as session:
        assert session.get(LoraAdapter, "ink") is None


# --- budgets and usage -----------------------------------------------------------------------


def test_budgets_set(tenant: TenantKeys) -> None:
    """`budgets set` sets the tenant's or a project's monthly budget; a bad amount or an
    unknown tenant exits 1 and changes nothing."""
    code, out, err = run("budgets", "set", "--tenant", "acme", "--monthly-usd", "5")
    assert (code, out) == (0, "monthly budget of acme: $5.00\n"), err
    code, out, _ = run(
        "budgets", "set", "--tenant", "acme", "--project", "posters", "--monthly-usd", "1.5"
    )
    assert (code, out) == (0, "monthly budget of project 'posters' of acme: $1.50\n")
    code, _, err = run("budgets", "set", "--tenant", "acme", "--monthly-usd", "five")
    assert code == 1
    assert "'five' is not a number" in err
    code, _, err = run("budgets", "set", "--tenant", "globex", "--monthly-usd", "5")
    assert code == 1
    assert "tenant 'globex' does not exist" in err
    with read_scope() as session:
        rows = session.execute(
            select(Budget.tenant_id, Budget.project, Budget.monthly_usd).order_by(Budget.project)
        ).all()
    assert [tuple(r) for r in rows] == [
        (tenant.id, "", Decimal("5")),
        (tenant.id, "posters", Decimal("1.5")),
    ]


def charge(tenant: TenantKeys, job_id: str, index: int, **fields: object) -> None:
    with session_scope() as session:
        session.add(CostEntry(tenant_id=tenant.id, job_id=job_id, image_index=index, **fields))


def test_usage_as_text_and_json(tenant: TenantKeys) -> None:
    """`usage --tenant` prints this month's spending by project and variant and the
    budgets; --json prints the same figures as JSON; a malformed --month exits 1."""
    assert run("budgets", "set", "--tenant", "acme", "--monthly-usd", "5")[0] == 0
    local = {"project": "posters", "variant": "schnell", "kind": "local", "gpu_seconds": 1.5}
    for index in range(2):
        charge(tenant, "job-a", index, **local, amount_usd=Decimal("0.00165"))
    charge(tenant, "job-b", 0, variant="pro", kind="api", amount_usd=Decimal("0.055"))

    code, out, err = run("usage", "--tenant", "acme")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("acme, ")
    assert lines[0].endswith(": $0.0583")
    assert "  (no project) pro (api): 1 images, 0.0 s, $0.0550" in lines
    assert "  posters schnell (local): 2 images, 3.0 s, $0.0033" in lines
    assert "  budget (tenant): $0.0583 of $5.00, $4.9417 left" in lines

    code, out, err = run("usage", "--tenant", "acme", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["total_usd"] == "0.058300"
    assert [(line["project"], line["variant"], line["images"]) for line in report["lines"]] == [
        ("", "pro", 1),
        ("posters", "schnell", 2),
    ]
    assert report["budgets"] == [
        {
            "project": "",
            "monthly_usd": "5.000000",
            "spent_usd": "0.058300",
            "remaining_usd": "4.941700",
        }
    ]

    code, out, _ = run("usage", "--tenant", "acme", "--month", "2020-01", "--json")
    assert code == 0
    assert (json.loads(out)["total_usd"], json.loads(out)["lines"]) == ("0.000000", [])
    code, _, err = run("usage", "--tenant", "acme", "--month", "nov")
    assert code == 1
    assert "YYYY-MM" in err
