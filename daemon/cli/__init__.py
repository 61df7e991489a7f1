"""The ``postd`` command line (click). Operators and acceptance checks use these spellings.

Errors are one line on stderr and a non-zero exit: 2 for a bad config, 1 for anything else
(bad input, unknown ids, an un-migrated database). Nothing is written when a command fails.
"""

from daemon.cli import admin, posts, tokens, webhooks  # noqa: F401  (importing registers them)
from daemon.cli._base import main

__all__ = ["main"]
