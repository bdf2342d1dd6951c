"""Files and folders written beside their target and renamed into place, and the sweep of what
dead writers left (docs/scoring.md, "Atomic output").

A writer holds an exclusive flock(2) on `<temporary>.lock` for as long as its temporary exists; a
sweep removes a temporary only when it can take that lock, which the kernel releases when the
writer ends, whatever its pid namespace. Another host's temporary must also be a day untouched: a
mount may keep locks local to each host (NFS `nolock`, Lustre `localflock`, a lease lost in a
partition), and a lock taken there says nothing of a writer elsewhere. A temporary without a lock file, as
versions before this module wrote them and as a writer leaves where flock fails (ENOLCK…), is judged
by the pid in its name where that names this host, and otherwise by age.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

HOST = socket.gethostname()
LOCK = ".lock"  # `<temporary>.lock`: held by the writer for as long as the temporary exists
ASIDE = ".old"  # `<temporary>.old`: a folder's previous version, set aside until the new one is in place
LEGACY_AGE_S = 86_400  # another host's temporary counts as abandoned once untouched this long (and unlocked)


def prefix_of(target: Path) -> str:
    """How the temporaries of `target` are named: `.NAME.tmp-…`."""
    return f".{target.name}.tmp-"


def new_name(prefix: str) -> str:
    """A new temporary's name: `<prefix><host>@<pid>-<random>` (the host and pid for people; the lock decides)."""
    return f"{prefix}{HOST}@{os.getpid()}-{secrets.token_hex(4)}"


@contextmanager
def written_whole(target: Path) -> Iterator[Path]:
    """A temporary name beside `target` to write, renamed onto it when the block ends and removed if
    it fails: a reader never sees a half-written file. A link is written through, to the file it names."""
    target = Path(os.path.realpath(target)) if target.is_symlink() else target
    with temporary(target.parent, prefix_of(target)) as tmp:
        yield tmp
        _same_mode(tmp, target)
        os.replace(tmp, target)


@contextmanager
def folder_written_whole(target: Path) -> Iterator[Path]:
    """A temporary folder name beside `target` to write, put in `target`'s place when the block ends
    (the previous folder set aside first: a crash in between leaves one of them, and the next run puts a
    dead writer's set-aside back before it sweeps); removed if it fails."""
    with temporary(target.parent, prefix_of(target), target) as tmp:
        yield tmp
        _same_mode(tmp, target)
        replace_folder(tmp, target)


def _same_mode(new: Path, target: Path) -> None:
    """The permissions a previous `target` had, on what replaces it (as a file written over keeps
    them): a group-readable report stays so; a new one gets the umask's, as any new file."""
    with suppress(OSError):  # no previous target; a mount that refuses chmod keeps the output all the same
        os.chmod(new, stat.S_IMODE(target.stat().st_mode))


def replace_folder(new: Path, target: Path) -> None:
    """`new` in `target`'s place; a previous `target` is set aside (`<new>.old`) and put back if the rename fails."""
    aside = new.with_name(new.name + ASIDE)
    try:
        if target.exists():
            os.replace(target, aside)
    except FileNotFoundError:  # set aside by another writer after it was looked for
        raise OSError(f"another run replaced {target} meanwhile") from None
    try:
        os.replace(new, target)
    except BaseException as exc:
        with suppress(OSError):  # another writer's output is there now: the temporary's clean-up removes ours
            os.replace(aside, target)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OSError(f"another run replaced {target} meanwhile") from None
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def temporary(folder: Path, prefix: str, target: Path | None = None) -> Iterator[Path]:
    """A new name in `folder` (nothing created there but its lock), locked for the block and removed
    at its end if still there; what dead writers left under `prefix` is removed first (see `sweep`)."""
    sweep(folder, prefix, target)
    path, fd = _locked(folder, prefix)
    try:
        yield path
    finally:
        aside = path.with_name(path.name + ASIDE)
        _put_back(aside, target)
        if _remove(path) and _remove(aside):  # else the lock stays: a sweep retries
            _remove(path.with_name(path.name + LOCK))
        if fd is not None:
            os.close(fd)


def _locked(folder: Path, prefix: str) -> tuple[Path, int | None]:
    """A new temporary name and the open descriptor of its lock, taken; None, and no lock file, where
    the filesystem cannot lock: the temporary is then judged by its pid or age, as an older version's."""
    while True:
        path = folder / new_name(prefix)
        lock = path.with_name(path.name + LOCK)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a sweep holds it: it found the new file before the lock was taken
            os.close(fd)
            continue
        except OSError:  # ENOLCK, EOPNOTSUPP…: a lock file nobody holds could be taken by a later sweep
            os.close(fd)
            lock.unlink(missing_ok=True)
            return path, None
        if _same(fd, lock):
            return path, fd
        os.close(fd)  # a sweep removed it before the lock was taken: another name


def sweep(folder: Path, prefix: str, target: Path | None = None) -> None:
    """Remove the temporaries named `prefix…` in `folder` (files or folders) whose writers have ended;
    where `target` is missing, a dead writer's set-aside previous version is put back there first."""
    try:
        names = [p.name for p in folder.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = folder / name
        if name.endswith(LOCK):
            _sweep_locked(path.with_name(name.removesuffix(LOCK)), name.removesuffix(LOCK)[len(prefix) :], target)
            continue
        stem = name.removesuffix(ASIDE)
        # the lock is made before the temporary: looked for now, not in a listing that may predate it
        if not path.with_name(stem + LOCK).exists() and _unlocked_ended(stem[len(prefix) :], [path]):
            if name.endswith(ASIDE):
                _put_back(path, target)
            _remove(path)


def _sweep_locked(path: Path, writer: str, target: Path | None) -> None:
    """Remove a temporary, its set-aside and its lock if the lock can be taken (its writer has ended)
    and, another host's, it is a day untouched; where the filesystem cannot lock, if its pid or age says so."""
    lock = path.with_name(path.name + LOCK)
    try:
        fd = os.open(lock, os.O_RDWR)  # written to: NFS's emulation takes an exclusive lock only so
    except OSError:  # gone meanwhile, or another user's
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        here = writer.rpartition("@")[0] == HOST  # elsewhere, the lock may have been local to that host
        ended = _same(fd, lock) and (here or _untouched_s([path, lock]) > LEGACY_AGE_S)
    except BlockingIOError:  # held: its writer runs
        ended = False
    except OSError:  # ENOLCK, EOPNOTSUPP…: a lock file left where locks fail (by an older version)
        ended = _unlocked_ended(writer, [path, lock])
    aside = path.with_name(path.name + ASIDE)
    try:
        if ended:
            _put_back(aside, target)
        if ended and _remove(path) and _remove(aside):
            _remove(lock)
    finally:
        os.close(fd)


def _put_back(aside: Path, target: Path | None) -> None:
    """A set-aside previous version renamed back to `target` if nothing is there: killed between its
    two renames, a writer left no output, and sweeping its set-aside would lose the last one."""
    if target is not None and aside.is_dir() and not os.path.lexists(target):
        with suppress(OSError):  # another run's output is there now
            os.rename(aside, target)


def _unlocked_ended(writer: str, paths: list[Path]) -> bool:
    """Whether an unlocked temporary's writer (`<host>@<pid>…` or `<pid>…` in its name) has ended:
    this host's by its pid; another host's, or one named without a pid, once `paths` are untouched for a day."""
    host, at, rest = writer.rpartition("@")
    pid = rest.partition("-")[0]
    if pid.isdecimal() and (not at or host == HOST):
        return not process_alive(int(pid))
    return _untouched_s(paths) > LEGACY_AGE_S


def _untouched_s(paths: list[Path]) -> float:
    """Seconds since the newest of `paths` that exist was modified (0 when none does)."""
    touched = []
    for path in paths:
        with suppress(OSError):  # gone meanwhile
            touched.append(path.lstat().st_mtime)
    return time.time() - max(touched) if touched else 0.0


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or no valid id: leave its files alone
        return True
    return True


def _same(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        found, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def _remove(path: Path) -> bool:
    """Remove a file or a folder (a link itself, not what it names); whether it is gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
