"""Shared test set-up: `tests.loopback` importable however pytest is started, and its fixtures
(`no_network_but_loopback`, `gemini_server`, `openai_server`) available to every test module."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.loopback import gemini_server, no_network_but_loopback, openai_server  # noqa: E402,F401  (fixtures)
