"""offload's pytest plugin (placeholder while issue 4 is written)."""

from __future__ import annotations
