"""The API's operations as its OpenAPI document lists them: the methods of each path, and
which operations need the API key.

Read from the document rather than from the router, whose internals FastAPI reorganises
between versions (included routers are no longer flattened into `app.routes`), and so that
what the server enforces and what it documents cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.routing import compile_path

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


class Operations:
    """Paths as regular expressions, each with its methods and those that need the key."""

    def __init__(self, openapi: Mapping[str, Any]) -> None:
        self._paths: list[tuple[re.Pattern[str], set[str], set[str]]] = []
        for path, item in openapi["paths"].items():
            methods = {method.upper() for method in item if method in _METHODS}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
            guarded = {
                method.upper()
                for method, operation in item.items()
                if method in _METHODS and operation.get("security")
            }
            self._paths.append((compile_path(path)[0], methods, guarded))
        self.guarded_methods = {method for *_, guarded in self._paths for method in guarded}

    def allowed(self, path: str) -> set[str]:
        """Every method some operation on `path` answers; empty for an undocumented path."""
        return {
            method for regex, methods, _ in self._paths if regex.match(path) for method in methods
        }

    def needs_api_key(self, method: str, path: str) -> bool:
        """Whether an operation that declares the key answers `method` on `path`."""
        return method in self.guarded_methods and any(
            method in guarded for regex, _, guarded in self._paths if regex.match(path)
        )
