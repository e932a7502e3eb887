from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BrokenEvent:
    seq: int
    reason: str


@dataclass(frozen=True)
class VerifyResult:
    events_checked: int
    head_seq: int
    broken: BrokenEvent | None

    @property
    def ok(self) -> bool:
        return self.broken is None


@dataclass(frozen=True)
class BrokenCheckpoint:
    seq: int
    reason: str


@dataclass(frozen=True)
class CheckpointResult:
    checkpoints_checked: int
    last_seq: int
    broken: BrokenCheckpoint | None

    @property
    def ok(self) -> bool:
        return self.broken is None
