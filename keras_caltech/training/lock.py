"""One process per run folder: a lock file holding the owner's PID.

Two runs writing one folder would interleave checkpoints, history rows and training
state. The first process to create ``<run>/.lock`` (``O_CREAT | O_EXCL``: atomic) owns
the folder; another is refused with the owner's PID. A lock left by a killed process
(its PID no longer runs on this host) is stale and taken over, so ``--resume`` works
after a SIGKILL. Lock files from another host cannot be checked and are never taken over.

Acquiring happens under ``flock`` on the folder itself, so two processes that find the
same stale lock cannot both take it over. (A plain ``fcntl.flock`` lock alone would also
vanish with its process, but says nothing about who holds it, and is unreliable on the
network file systems multi-machine runs use; the PID file names the owner.)
"""

import contextlib
import fcntl
import functools
import os
import pathlib
import socket

from keras_caltech.errors import TrainingInterrupted, UserError
from keras_caltech.runs import LOCK_FILE  # runs.py knows it too: a lone lock file is no run

_held = []  # RunLocks taken during the @holds_run_folder call in progress


def _process_is_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


@contextlib.contextmanager
def _folder_flock(folder):
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the flock


class RunLock:
    """The lock file of one run folder.

    Args:
        run_dir: an existing run folder.
    """

    def __init__(self, run_dir):
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.held = False

    def owner(self):
        """Returns (pid, host) written in the lock file, or None if it is missing or unreadable."""
        try:
            pid, host = self.path.read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def acquire(self):
        """Creates the lock file, taking over a stale one.

        Raises:
            UserError: a live process (or one on another host) holds the folder.
        """
        with _folder_flock(self.run_dir):  # on this host, one acquirer at a time
            while True:
                try:
                    descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    self._check_not_a_folder()
                    self._check_stale()
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                except PermissionError:
                    raise UserError(f"cannot write to run folder {self.run_dir}: permission denied")
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
                self.held = True
                return self

    def _check_not_a_folder(self):
        """Raises UserError if something other than a file (a folder) holds the lock file's name."""
        if self.path.is_dir():
            raise UserError(f"run folder {self.run_dir} holds a folder named {LOCK_FILE} where its lock file "
                            f"belongs; move it away (e.g. rmdir {self.path} if it is empty) and try again")

    def _check_stale(self):
        """Raises UserError unless the existing lock file's owner is gone."""
        owner = self.owner()
        if owner is None:
            return  # empty or garbled: its writer died between create and write
        pid, host = owner
        if host != socket.gethostname():
            raise UserError(f"run folder {self.run_dir} is locked by process {pid} on host {host}. "
                            f"If no run is active there, delete {self.path} and try again")
        if _process_is_alive(pid):
            raise UserError(f"run folder {self.run_dir} is in use by process {pid} (lock file {self.path}); "
                            "wait for it to finish or stop it, or pick another --output-dir")

    def release(self):
        """Deletes the lock file if this process holds it."""
        if self.held:
            owner = self.owner()
            if owner is not None and owner[0] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def lock_run_folder(run_dir):
    """Locks ``run_dir`` for the enclosing :func:`holds_run_folder` call; returns the RunLock."""
    lock = RunLock(run_dir).acquire()
    _held.append(lock)
    return lock


def holds_run_folder(function):
    """Decorator for a function that locks a run folder with :func:`lock_run_folder`.

    However the call ends, the lock is released. A Ctrl-C (KeyboardInterrupt) that
    arrives after the folder was locked becomes :class:`TrainingInterrupted` naming it,
    so the script can say how to resume. (A decorator rather than a ``with`` block, so the
    trainer's body is not indented under it.)
    """

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        depth = len(_held)
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt:
            if len(_held) > depth:
                raise TrainingInterrupted(_held[-1].run_dir) from None
            raise
        finally:
            while len(_held) > depth:
                _held.pop().release()

    return guarded
