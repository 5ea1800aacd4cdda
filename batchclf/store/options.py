"""``--storage-options``: the keyword arguments of an fsspec file system, whose values are never shown.

They carry endpoints and credentials, so their ``repr`` lists the keys only, and every message that
could quote a storage library's error passes through ``redact`` first.
"""

from __future__ import annotations

import json

from ..errors import UsageError


class StorageOptions:
    """Keyword arguments for the fsspec file system; printed as their keys only, never their values."""

    def __init__(self, options: dict | None = None):
        self.options = dict(options or {})

    @classmethod
    def parse(cls, text: str | None) -> StorageOptions:
        """``--storage-options`` text: a JSON object, refused with a message that never echoes it."""
        if not text:
            return cls()
        try:
            value = json.loads(text)
        except ValueError:
            raise UsageError(
                '--storage-options must be a JSON object, e.g. \'{"endpoint_url": "https://..."}\''
            ) from None
        if not isinstance(value, dict):
            raise UsageError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
        return cls(value)

    def __repr__(self) -> str:
        return f"StorageOptions(keys={sorted(self.options)})"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, StorageOptions) and self.options == other.options

    def __hash__(self) -> int:
        return hash(json.dumps(self.options, sort_keys=True, default=str))

    def secrets(self) -> list[str]:
        """Every text value, nested ones included: what must never be shown."""
        found: list[str] = []

        def walk(value) -> None:
            if isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)
            elif isinstance(value, str) and len(value) >= 4:
                found.append(value)

        walk(self.options)
        return found

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text
