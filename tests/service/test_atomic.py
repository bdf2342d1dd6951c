"""service/atomic.py: a temporary is removed by a later run only once its writer's lock is free,
whatever the pid in its name says; older versions' unlocked temporaries by pid or age."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service import atomic

HOLD = """
import sys
from pathlib import Path
from service.atomic import folder_written_whole, written_whole
target = Path(sys.argv[1])
with (folder_written_whole if sys.argv[2] == "folder" else written_whole)(target) as tmp:
    tmp.mkdir() if sys.argv[2] == "folder" else tmp.write_text("live")
    print(tmp, flush=True)
    sys.stdin.readline()  # held until told
    (tmp / "part-0.csv").write_text("live") if sys.argv[2] == "folder" else None
"""


def holding(target: Path, kind: str = "file") -> tuple[subprocess.Popen[str], Path]:
    """A process in the middle of writing `target` (a file or a folder), and its temporary."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def unshared() -> list[str]:
    """The command prefix that runs a process in a pid namespace of its own; the test skips without one."""
    prefix = ["unshare", "--user", "--map-root-user", "--pid", "--fork"]
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("unshare cannot make a pid namespace here")
    return prefix


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_live_writers_temporary_stays_when_its_pid_looks_dead_and_goes_once_it_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The review: a writer in another pid namespace (same host name) looked dead by its pid, and its
    live temporary was deleted under it. Its lock, not its pid, now says whether it runs."""
    target = tmp_path / "out.csv"
    proc, tmp = holding(target, kind)
    monkeypatch.setattr(atomic, "process_alive", lambda pid: False)  # every pid looks dead, as from elsewhere
    atomic.sweep(tmp_path, atomic.prefix_of(target))
    assert tmp.exists() and tmp.with_name(tmp.name + atomic.LOCK).exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    monkeypatch.undo()
    with atomic.written_whole(target) as mine:  # the next run into that name sweeps what the dead one left
        mine.write_text("next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"] and target.read_text() == "next"


def test_a_run_in_another_pid_namespace_leaves_a_live_temporary_and_its_writer_finishes(tmp_path: Path) -> None:
    """The fault as found (docker --network host, hostNetwork): the same host name, another pid table."""
    prefix = unshared()
    target = tmp_path / "out.csv"
    proc, tmp = holding(target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    sweep = (
        "import sys; from pathlib import Path; from service.atomic import sweep; sweep(Path(sys.argv[1]), sys.argv[2])"
    )
    other = [*prefix, sys.executable, "-c", sweep, str(tmp_path), atomic.prefix_of(target)]
    done = subprocess.run(other, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert tmp.exists()
    assert proc.communicate("go\n", timeout=30)[0] == "" and proc.returncode == 0
    assert target.read_text() == "live" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_kill_9ed_folder_writer_leaves_its_previous_output_set_aside_until_the_next_run(tmp_path: Path) -> None:
    """Killed between setting the previous output aside and renaming the new one in: both go with the lock."""
    target = tmp_path / "out.csv"
    name = atomic.new_name(atomic.prefix_of(target)).replace(f"@{os.getpid()}-", "@1-")
    for left in (name, name + atomic.ASIDE):
        (tmp_path / left).mkdir()
    (tmp_path / (name + atomic.LOCK)).touch()  # a lock file no process holds
    with atomic.folder_written_whole(target) as tmp:
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from service.atomic import folder_written_whole
renamed = os.replace
def then_killed(src, dst):
    renamed(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)  # the previous output set aside, the new one not yet in place
os.replace = then_killed
with folder_written_whole(Path(sys.argv[1])) as tmp:
    tmp.mkdir()
    (tmp / "part-0.csv").write_text("new")
"""


def test_a_kill_between_the_renames_then_a_failed_run_still_leaves_the_previous_output(tmp_path: Path) -> None:
    """The review: the next run swept the killed one's new folder and set-aside before writing, and
    when that run failed too, both outputs were gone. It now puts the set-aside back first."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "part-0.csv").write_text("previous")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(target)], env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL and not target.exists()
    assert sum(1 for p in tmp_path.iterdir() if p.name.endswith(atomic.ASIDE)) == 1
    with pytest.raises(RuntimeError), atomic.folder_written_whole(target) as tmp:
        tmp.mkdir()
        raise RuntimeError("the next run fails")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "part-0.csv").read_text() == "previous"
    with atomic.folder_written_whole(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0.csv").write_text("next")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "part-0.csv").read_text() == "next"


def test_an_interrupt_between_the_renames_puts_the_previous_output_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after the previous output is set aside (outside the rename's rollback): the
    writer's own clean-up puts it back rather than deleting it with the temporary."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "part-0.csv").write_text("previous")
    renamed = os.replace

    def then_interrupted(src: Path, dst: Path) -> None:
        renamed(src, dst)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), atomic.folder_written_whole(target) as tmp:
        tmp.mkdir()
        monkeypatch.setattr(os, "replace", then_interrupted)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "part-0.csv").read_text() == "previous"


def meanwhile(rename: int, other_run: Callable[[], object], monkeypatch: pytest.MonkeyPatch) -> None:
    """`other_run` done just before this process's `rename`-th os.replace: two writers into one target."""
    renamed, calls = os.replace, []

    def replace(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == rename:
            monkeypatch.setattr(os, "replace", renamed)
            other_run()
        renamed(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def whole_run(target: Path) -> None:
    with atomic.folder_written_whole(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0.csv").write_text("theirs")


@pytest.mark.parametrize("rename", [1, 2])
def test_two_folder_writers_into_one_target_fail_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rename: int
) -> None:
    """The review: the loser saw the rollback's ENOTEMPTY (naming its `.old`), or a FileNotFoundError
    from between its look and its rename. Another run sets the target aside before our first rename
    (1), or writes it whole between our two (2)."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "part-0.csv").write_text("previous")
    other_run = (lambda: os.replace(target, tmp_path / "theirs.old")) if rename == 1 else (lambda: whole_run(target))
    meanwhile(rename, other_run, monkeypatch)
    with pytest.raises(OSError) as raised, atomic.folder_written_whole(target) as tmp:
        tmp.mkdir()
        (tmp / "part-0.csv").write_text("ours")
    assert str(raised.value) == f"another run replaced {target} meanwhile"
    left = {p.name: (p / "part-0.csv").read_text() for p in tmp_path.iterdir()}
    assert left == ({"theirs.old": "previous"} if rename == 1 else {"out": "theirs"})


def test_unlocked_temporaries_of_older_versions_by_pid_here_and_by_age_elsewhere(tmp_path: Path) -> None:
    """Names written before the lock: this host's pid decides; another host's (or no pid) after a day."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, day_ago = socket.gethostname(), time.time() - atomic.LEGACY_AGE_S - 60
    names = {
        f".x.tmp-{host}@{dead.stdout.strip()}": False,
        f".x.tmp-{dead.stdout.strip()}.old": False,
        f".x.tmp-{host}@{os.getpid()}": True,
        f".x.tmp-{os.getpid()}": True,
        ".x.tmp-other-host@1": True,  # fresh: its pid means nothing here
        ".x.tmp-other-host@2": False,  # a day untouched
    }
    for name in names:
        (tmp_path / name).write_text("")
    os.utime(tmp_path / ".x.tmp-other-host@2", (day_ago, day_ago))
    atomic.sweep(tmp_path, ".x.tmp-")
    assert {name: (tmp_path / name).exists() for name in names} == names


def test_a_failed_replace_puts_the_previous_folder_back(tmp_path: Path) -> None:
    """The previous output is set aside, not deleted, until the new one is in its place."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-0.csv").write_text("a\n1\n")
    with pytest.raises(FileNotFoundError):
        atomic.replace_folder(tmp_path / ".out.tmp-gone", out)  # the rename fails: a crash's stand-in
    assert (out / "part-0.csv").read_text() == "a\n1\n" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_temporary_that_cannot_be_removed_keeps_its_lock_for_the_next_sweep(tmp_path: Path) -> None:
    """The review: the lock went even when the temporary stayed, which the pid rule then judged (pid 1
    in a container always looks alive: never swept). A mount inside it makes its removal fail (EBUSY)."""
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic.folder_written_whole(target) as tmp:
        (tmp / "mnt").mkdir(parents=True)
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp / "mnt")], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        raise RuntimeError("the run fails")
    try:
        assert tmp.exists() and tmp.with_name(tmp.name + atomic.LOCK).exists()
    finally:
        subprocess.run(["umount", str(tmp / "mnt")], check=False)
    atomic.sweep(tmp_path, atomic.prefix_of(target))  # its writer is done: the lock is free
    assert list(tmp_path.iterdir()) == []


def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """flock(2) failing as on a filesystem mounted without locks (Lustre `noflock`, NFS with lockd down)."""

    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refused)


def test_a_writer_whose_lock_fails_leaves_no_lock_file_a_later_sweep_could_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review: the writer ran on with a lock file it did not hold; once locks worked again (a
    transient ENOLCK) a sweep took it and deleted the live temporary. Without one, its pid judges it."""
    target = tmp_path / "out.csv"
    no_flock(monkeypatch)
    with atomic.written_whole(target) as tmp:
        tmp.write_text("live")
        assert [p.name for p in tmp_path.iterdir()] == [tmp.name]
        monkeypatch.undo()  # locks work again
        atomic.sweep(tmp_path, atomic.prefix_of(target))
        assert tmp.read_text() == "live"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"] and target.read_text() == "live"


def test_where_flock_fails_the_sweep_judges_lock_files_by_pid_or_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review: lock files left where locks fail (by a writer before this fix) were never swept."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine = atomic.new_name(".x.tmp-")
    names = {
        mine.replace(f"@{os.getpid()}-", f"@{dead.stdout.strip()}-"): False,
        mine: True,  # this process: alive
        ".x.tmp-other-host@1-00": True,  # another host's, fresh
    }
    for name in names:
        (tmp_path / name).write_text("")
        (tmp_path / (name + atomic.LOCK)).write_text("")
    no_flock(monkeypatch)
    atomic.sweep(tmp_path, ".x.tmp-")
    assert {name: (tmp_path / name).exists() for name in names} == names
    assert {name: (tmp_path / (name + atomic.LOCK)).exists() for name in names} == names


def test_another_hosts_temporary_needs_its_lock_free_and_a_day_untouched(tmp_path: Path) -> None:
    """The review: where locks are local to each host (NFS `nolock`, Lustre `localflock`), a lock
    file another host's live writer holds looks free here, and its staging folder was deleted."""
    day_ago = time.time() - atomic.LEGACY_AGE_S - 60
    names = {".x.tmp-other-host@7-aa": True, ".x.tmp-other-host@7-bb": False}  # fresh; a day untouched
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / (name + atomic.LOCK)).touch()  # no process here holds it
    for old in (".x.tmp-other-host@7-bb", ".x.tmp-other-host@7-bb" + atomic.LOCK):
        os.utime(tmp_path / old, (day_ago, day_ago))
    atomic.sweep(tmp_path, ".x.tmp-")
    assert {name: (tmp_path / name).exists() for name in names} == names
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.tmp-other-host@7-aa", ".x.tmp-other-host@7-aa.lock"]


def test_a_replaced_file_or_folder_keeps_the_permissions_its_previous_version_had(tmp_path: Path) -> None:
    """A review: the rename put a file of the writer's umask in place, so a report kept group-readable (or
    private) changed its permissions on each run. A new target gets the umask's, as any new file."""
    umask = os.umask(0)
    os.umask(umask)
    for write, target in [(atomic.written_whole, tmp_path / "out.csv"), (atomic.folder_written_whole, tmp_path / "d")]:
        fresh = (0o777 if target.name == "d" else 0o666) & ~umask
        for mode in (fresh, 0o640, 0o600):
            with write(target) as tmp:
                tmp.mkdir() if target.name == "d" else tmp.write_text("scores")
            assert target.stat().st_mode & 0o777 == mode, (target, oct(mode))
            os.chmod(target, 0o640 if mode == fresh else 0o600)
