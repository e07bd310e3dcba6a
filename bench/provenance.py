"""What a benchmark page records about where it ran: the machine and the code's revision."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def machine(libraries: dict[str, str]) -> str:
    """One line: cores, CPU, OS, Python and the given ``{library: version}``."""
    versions = "".join(f", {name} {version}" for name, version in libraries.items())
    return (f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}{versions}")


def git_revision() -> str:
    """The short commit of the checkout the benchmark runs from ("unknown" outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
