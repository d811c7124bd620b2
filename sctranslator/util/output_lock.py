"""One writer per output: a lock file beside each output while a job writes it.

The lock of an output `DIR/NAME` is the file `DIR/.NAME.sctranslator-lock`, created with
O_CREAT|O_EXCL (atomic on local file systems and on NFSv3+), holding one JSON record:
host, PID, the process's start time (from /proc, so that a reused PID is told apart), the boot
id, a human-readable start time and a random token. It lives beside the output, not inside it,
because outputs are built aside and renamed into place.

A lock is stale, and is taken over, when its holder is gone:
- same host (and same boot): the PID is not alive, or it is alive but started at another time
  (the PID was reused);
- another host (a shared file system): its holder refreshes the file's mtime every
  `HEARTBEAT_S` seconds while it works; a lock whose mtime is older than `stale_after_s()`
  (default 120 s, `$SCTRANSLATOR_LOCK_STALE_S`) is taken as abandoned. Clocks of the hosts must
  agree to well within that age.
Taking over goes through a second O_EXCL file (`...sctranslator-lock.takeover`) held for
milliseconds: its holder re-reads the lock and removes it only if it still holds the token judged
stale, so two processes can never both remove a lock and both believe they own the output.

This module imports only `errors`, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sctranslator.errors import OutputLockedError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".sctranslator-lock"
HEARTBEAT_S = 10.0
POLL_S = 0.2
DEFAULT_STALE_S = 120.0
TAKEOVER_STALE_S = 30.0  # a take-over guard is held for milliseconds; older means its holder died


def stale_after_s() -> float:
    """Seconds without a heartbeat after which another host's lock counts as abandoned.

    Returns
    -------
    float
        From $SCTRANSLATOR_LOCK_STALE_S when set, else the default.
    """
    try:
        return max(3 * HEARTBEAT_S, float(os.environ.get("SCTRANSLATOR_LOCK_STALE_S", DEFAULT_STALE_S)))
    except ValueError:
        return DEFAULT_STALE_S


def lock_path(output: str | Path) -> Path:
    """The lock file of `output`: a hidden sibling, ``.NAME.sctranslator-lock``.

    Parameters
    ----------
    output : str or pathlib.Path
        The output.

    Returns
    -------
    pathlib.Path
        The lock file's path.
    """
    output = Path(os.path.abspath(Path(output).expanduser()))
    return output.with_name(f".{output.name}{LOCK_SUFFIX}")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The start time of process `pid`, to tell a live holder from a reused PID.

    Parameters
    ----------
    pid : int
        A process id on this host.

    Returns
    -------
    str or None
        Clock ticks since boot (/proc/PID/stat field 22); None when there is no such process or it has
        exited (a zombie its parent has not reaped yet); "" where /proc is not available (then only
        liveness is known).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid) or "",
            "boot_id": _boot_id(), "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "token": secrets.token_hex(16)}


def _read(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    """(record, mtime) of a lock file; (None, mtime) while it is being written or when damaged;
    (None, None) when there is none."""
    try:
        mtime = path.stat().st_mtime
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, UnicodeDecodeError):
        try:
            return None, path.stat().st_mtime
        except OSError:
            return None, None
    return (record if isinstance(record, dict) and "token" in record else None), mtime


def why_stale(record: dict[str, Any] | None, mtime: float) -> str | None:
    """Why a lock is abandoned, or None while its holder lives.

    Parameters
    ----------
    record : dict or None
        The lock's record (host, PID, start, token); None while it is being written.
    mtime : float
        The lock file's modification time (its last heartbeat), in seconds since the epoch.

    Returns
    -------
    str or None
        The reason, for the log; None when the lock is live.
    """
    age = time.time() - mtime
    if record is None:  # created but never filled: its writer died between open and write
        return f"an unreadable lock {age:.0f} s old" if age > TAKEOVER_STALE_S else None
    same_host = record.get("host") == socket.gethostname() and record.get("boot_id", "") == _boot_id()
    if same_host:
        pid = int(record.get("pid", -1))
        if pid == os.getpid() and str(record.get("process_start", "")) == (process_start(pid) or ""):
            return None  # this process: another thread of ours holds it
        started = process_start(pid)
        if started is None or not _alive(pid):
            return f"PID {pid} is no longer running"
        if started and record.get("process_start") and started != str(record["process_start"]):
            return f"PID {pid} now belongs to another process"
        return None
    if age > stale_after_s():
        return f"no heartbeat from host {record.get('host')} for {age:.0f} s"
    return None


def describe(record: dict[str, Any] | None) -> str:
    """Who holds a lock, for messages: host, PID and start time.

    Parameters
    ----------
    record : dict or None
        The lock's record.

    Returns
    -------
    str
        One phrase.
    """
    if record is None:
        return "a job whose lock record is still being written"
    return f"host {record.get('host')}, PID {record.get('pid')}, started {record.get('started')}"


class OutputLock:
    """The lock on one output, held by this process. Create with `acquire`; `release` when done.

    Parameters
    ----------
    output : pathlib.Path
        The locked output.
    path : pathlib.Path
        The lock file.
    record : dict
        This lock's record (host, PID, start, token).
    """

    def __init__(self, output: Path, path: Path, record: dict[str, Any]):
        self.output = output
        self.path = path
        self.record = record
        self.lost: str | None = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {output.name}", daemon=True)
        self._beat.start()

    @classmethod
    def acquire(cls, output: str | Path, *, wait: bool = False, timeout_s: float | None = None) -> OutputLock:
        """Lock `output` for this process, taking over a stale lock; with `wait`, poll until it is free.

        Parameters
        ----------
        output : str or pathlib.Path
            The output.
        wait : bool
            Poll while another live job holds it.
        timeout_s : float or None
            Give up waiting after this many seconds; None: wait as long as it takes.

        Returns
        -------
        OutputLock
            The held lock (its heartbeat runs in a thread).

        Raises
        ------
        OutputLockedError
            Another live job holds it (and `wait` is False or `timeout_s` passed).
        OSError
            The lock file cannot be created (read-only or full file system).
        """
        output = Path(os.path.abspath(Path(output).expanduser()))
        path = lock_path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        said = False
        while True:
            record = _record()
            if _create_exclusive(path, record):
                return cls(output, path, record)
            held, mtime = _read(path)
            if mtime is None:
                continue  # released between our attempt and the read: try again at once
            if held is None and time.time() - mtime < 1.0:
                time.sleep(POLL_S / 8)  # its holder is between creating and filling it: read it again
                continue
            reason = why_stale(held, mtime)
            if reason is not None:
                _take_over(path, held, reason)
                continue
            if not wait or (deadline is not None and time.monotonic() > deadline):
                raise OutputLockedError(
                    f"{output} is being written by another sctranslator job ({describe(held)}); lock file "
                    f"{path}. Wait for it with --wait (wait=True), or choose another output path. A lock whose "
                    "job has died is taken over automatically")
            if not said:
                log.warning("waiting for %s: it is being written by %s", output,
                                                    describe(held))
                said = True
            time.sleep(POLL_S)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            held, _ = _read(self.path)
            if held is not None and held.get("token") != self.record["token"]:
                self.lost = describe(held)  # taken over: another job judged this one dead
                return
            if held is not None:
                with contextlib.suppress(OSError):
                    os.utime(self.path)

    def still_held(self) -> bool:
        """Whether the lock file still carries this lock's token.

        Returns
        -------
        bool
            False once another job took the lock over.
        """
        held, _ = _read(self.path)
        return held is not None and held.get("token") == self.record["token"]

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours.

        Raises OutputLockedError when another process took the lock over meanwhile (its holder
        was judged dead): the caller's results may have been overwritten, so it must not report success.
        """
        self._stop.set()
        held, mtime = _read(self.path)
        if held is not None and held.get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        if self.lost is None and mtime is None:
            return  # removed with the output's folder (a temporary output), never taken over
        raise OutputLockedError(
            f"the lock on {self.output} was taken over by another job ({self.lost or describe(held)}) while this "
            "one wrote it; "
            "its results may be mixed with that job's. Re-run once that job has finished")


def _create_exclusive(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    return True


def _take_over(path: Path, judged: dict[str, Any] | None, reason: str) -> None:
    """Remove the stale lock at `path`, if it still is the one judged stale, under the take-over guard."""
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                guard.unlink()  # its holder died within the few milliseconds it holds it
        time.sleep(POLL_S / 4)
        return
    os.close(fd)
    try:
        current, mtime = _read(path)
        same = (current is None and judged is None) or (
            current is not None and judged is not None and current.get("token") == judged.get("token"))
        if same and mtime is not None:
            log.warning("taking over the lock %s: %s (%s)", path, reason, describe(judged))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            guard.unlink()

