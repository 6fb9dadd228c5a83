"""What the emulator's checks report."""

from __future__ import annotations

from dataclasses import dataclass

CHECKS = ("budget", "race", "coverage", "dead_write", "layout")


@dataclass(frozen=True)
class Finding:
    """One check result. ``message`` is self-contained: it names the kernel, the scope
    (``pl.at`` name_hint), the loop indices, the tensor and the region where it applies.

    check: 'budget' | 'race' | 'coverage' | 'dead_write' | 'layout'
    severity: 'fail' | 'warning'
    loop_indices: ((loop variable, value), ...) outermost first, at the finding's place
    """

    check: str
    severity: str
    kernel: str
    scope: str | None
    loop_indices: tuple[tuple[str, int], ...]
    tensor: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()} [{self.check}] {self.message}"


class HasFindings:
    """``failures`` / ``warnings`` views for a result holding ``findings: list[Finding]``."""

    findings: list[Finding]

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "fail"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


class KernelDefect(Exception):
    """Raised by the emulator for something the kernel itself gets wrong (an access out of a
    tensor's bounds, ...): a FAIL of the kernel, never an emulator gap."""


class OutOfBounds(KernelDefect, IndexError):
    """A load, store or read outside a tensor's or tile's bounds."""
