"""End a tritonserver's process group, and a watchdog that does so when the server's owner dies.

A tritonserver started by `TritonServer` runs in a session (process group) of its own, with its
Python-backend stubs. The stubs ignore SIGTERM and keep their /dev/shm regions when the server
exits quickly, so ending a server means killing its whole group and freeing those regions.

The watchdog covers the one exit its owner cannot observe, kill -9: run as a script
(`python server_watchdog.py OWNER OWNER_START SERVER [PID_FILE]`) in a session of its
own, it waits for the owner to die and then ends the server's group (and removes the pid file that
records it); an owner that stops the server itself terminates the watchdog. Standard library only,
so it starts fast and needs nothing of ours on its path.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
SHM_PREFIX = b"triton_python_backend_shm_region"
POLL_S = 0.25


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after "pid (comm)": state, ppid, pgrp, ... (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a process from a later one with its PID).

    Parameters
    ----------
    pid : int
        A process id.

    Returns
    -------
    int or None
        None when there is no such process.
    """
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, given `started`, is the process that started then.

    Parameters
    ----------
    pid : int
        A process id.
    started : int or None
        Its recorded start time; None: not checked.

    Returns
    -------
    bool
        True when alive.
    """
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def command_line(pid: int) -> list[str]:
    """A process's command line, from /proc.

    Parameters
    ----------
    pid : int
        A process id.

    Returns
    -------
    list of str
        The arguments; [] when unreadable.
    """
    try:
        return [arg.decode(errors="replace") for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
    except OSError:
        return []


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (Linux /proc; zombies excluded).

    Parameters
    ----------
    pgid : int
        The group.

    Returns
    -------
    list of int
        PIDs.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def is_triton_process(pid: int) -> bool:
    """Whether a process is a tritonserver or one of its Python-backend stubs.

    Used to kill nothing else under a reused group id.

    Parameters
    ----------
    pid : int
        A process id.

    Returns
    -------
    bool
        True for Triton's processes.
    """
    return any(Path(arg).name in ("tritonserver", STUB_NAME) for arg in command_line(pid)[:1])


def end_group(pgid: int, *, only_triton: bool = False, wait_s: float = 5.0) -> list[int]:
    """SIGKILL every process of group `pgid` and free the stubs' shared memory.

    Parameters
    ----------
    pgid : int
        The group.
    only_triton : bool
        Kill only tritonserver and stub processes (for a group recorded by an earlier run, whose id may
        since have been reused).
    wait_s : float
        Seconds to wait for them to exit.

    Returns
    -------
    list of int
        The PIDs killed.
    """
    killed = []
    for pid in group_members(pgid):
        argv = command_line(pid)
        if only_triton and not is_triton_process(pid):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        for region in (arg for arg in argv if arg.encode().startswith(SHM_PREFIX)):
            with contextlib.suppress(OSError):
                (Path("/dev/shm") / region).unlink()
    deadline = time.monotonic() + wait_s  # SIGKILL is asynchronous: wait until they are gone
    while any(is_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def remove_pid_file(pid_file: Path, server: int) -> None:
    """Remove `pid_file` if it still records `server` (a later run may have written its own).

    Parameters
    ----------
    pid_file : pathlib.Path
        The record.
    server : int
        The server's PID.
    """
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(pid_file.read_text())["server_pid"]) == server:
            pid_file.unlink()


def watch(owner: int, owner_start: int, server: int, pid_file: Path | None) -> None:
    """Return once the owner is gone, after ending the server's group and removing the pid file.

    The server going first is no reason to return: a dying owner's death signal kills the server before
    the owner itself is gone, and the stubs and the pid file are still to be removed. An owner that
    stops the server normally terminates this watchdog itself.

    Parameters
    ----------
    owner : int
        The serve process's PID.
    owner_start : int
        Its start time.
    server : int
        The server's PID (its process group).
    pid_file : pathlib.Path or None
        The record to remove.
    """
    try:
        handle: int | None = os.pidfd_open(owner)  # readable once the owner exits: no polling delay
    except (AttributeError, OSError):
        handle = None
    while is_alive(owner, owner_start):
        if handle is not None:
            select.select([handle], [], [], POLL_S)
        else:
            time.sleep(POLL_S)
    end_group(server, only_triton=True)
    if pid_file is not None:
        remove_pid_file(pid_file, server)


def main(argv: list[str]) -> int:
    """The watchdog process's entry point.

    Parameters
    ----------
    argv : list of str
        OWNER_PID OWNER_START SERVER_PID [PID_FILE].

    Returns
    -------
    int
        Exit status 0.
    """
    owner, owner_start, server = (int(arg) for arg in argv[:3])
    pid_file = Path(argv[3]) if len(argv) > 3 and argv[3] else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the owner, which stops the server
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(owner, owner_start, server, pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
