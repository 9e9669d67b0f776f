"""Files that hold secrets or money: the data dir is 0700, what the server writes in it 0600, and
a secret is read only from a file no one else may read.

SQLite creates a database's -wal and -shm files with the database file's own mode, so creating
the database 0600 keeps all three private.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class UnsafeFile(ValueError):
    """A secret's file that others may read, or one that cannot be read at all."""


def private_dir(path: Path) -> Path:
    """Create ``path`` (0700) if it is missing; warn when an existing one is open to others."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if mode & 0o077:
        log.warning("%s is accessible to other users (mode %o): chmod 700 it", path, stat.S_IMODE(mode))
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists and only its owner may read or write it (creating it 0600, and
    taking group and other permissions away from one an older version left open)."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
            log.warning("%s was readable by other users (mode %o): now %o", path, mode, mode & 0o700)
    finally:
        os.close(fd)
    return path


def read_secret_file(path: Path) -> str:
    """The secret in ``path``, refusing a file that its group or other users may read or write."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"the secret file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise UnsafeFile(
                f"the secret file {path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it"
            )
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UnsafeFile(f"cannot read the secret file {path}: {exc}") from None
