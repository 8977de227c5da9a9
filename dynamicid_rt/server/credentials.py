"""The server's credentials as ``--api-auth`` gives them, read by the command and by each Ray replica."""
from __future__ import annotations

from .. import DynamicIDError


def parse_auth(text: str | None) -> list[tuple[str, str]]:
    """``user:pass[,user:pass]`` as pairs; refused when a pair lacks its user or password."""
    if text is None:
        return []
    pairs = []
    for item in text.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise DynamicIDError(f"--api-auth {item!r}: expected USER:PASS (several separated by commas)")
        pairs.append((user, password))
    return pairs
