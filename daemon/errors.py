"""postd's exception root.

PostdError
 ├── ConfigError        the configuration file or environment is invalid (exit 2)
 ├── NotMigratedError   the database schema is behind the code (run ``postd migrate``)
 ├── InputError         bad input from an operator or a client: carries a stable ``code``
 │    └── NotFoundError
 └── InstanceLockError  another postd already runs on this SQLite database
"""

from __future__ import annotations

from typing import Any


class PostdError(Exception):
    code = "SERVER_ERROR"


class ConfigError(PostdError):
    code = "CONFIG_INVALID"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class NotMigratedError(PostdError):
    code = "NOT_MIGRATED"


class InstanceLockError(PostdError):
    code = "INSTANCE_LOCKED"


class InputError(PostdError):
    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class NotFoundError(InputError):
    def __init__(self, message: str) -> None:
        super().__init__("NOT_FOUND", message)
