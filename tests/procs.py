"""Child processes a test drives, made independent of how the test run was launched and unable
to outlive it (the `procs` fixture in conftest.py).

- A child starts with SIGINT and SIGTERM at their defaults, whatever this process inherited: a
  test suite launched in the background (`pytest &` from a script, nohup, some CI runners)
  inherits SIGINT ignored, and so would every child, which then could not see a test's Ctrl-C.
- Every wait is on an event (a text on the child's stderr, a file, the exit) and bounded; a
  wait that runs out fails the test with what the child printed.
- When the test ends, passed, failed or timed out, every child and everything it started
  (torchrun's workers run in sessions of their own) is killed and reaped.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def default_signals():  # runs in the child between fork and exec
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def descendants(pid: int) -> list:
    """Every live process below pid (read from /proc), children before their children."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [], [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


class Child:
    """One child process: its stderr collected by a thread, waits bounded."""

    def __init__(self, args, env=None, timeout: float = 300):
        self.args, self.timeout = [str(a) for a in args], timeout
        self.proc = subprocess.Popen(self.args, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_signals)
        self._out, self._err, self._lock = bytearray(), bytearray(), threading.Lock()
        self._readers = [threading.Thread(target=self._read, args=(f, buf), daemon=True)
                         for f, buf in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for r in self._readers:
            r.start()

    def _read(self, f, buf):
        for chunk in iter(lambda: os.read(f.fileno(), 65536), b""):
            with self._lock:
                buf += chunk

    def _join(self, timeout):
        for r in self._readers:
            r.join(timeout)

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._err.decode(errors="replace")

    @property
    def stdout(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, text: str, timeout: float = None) -> str:
        """Until `text` is on the child's stderr; fails if the child exits or time runs out first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while text not in self.stderr:
            if self.proc.poll() is not None:
                self._join(5)
                if text in self.stderr:
                    break
                raise AssertionError(f"{self.args[2:4]} exited ({self.proc.returncode}) before printing {text!r}:\n"
                                     f"{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.args[2:4]} did not print {text!r} within {timeout or self.timeout} s:\n"
                                     f"{self.stderr[-3000:]}")
            time.sleep(0.02)
        return self.stderr

    def wait_until(self, ready, what: str, timeout: float = None) -> None:
        """Until ready() is true (a file appeared, ...), or the child ends, or time runs out."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.args[2:4]}: {what} did not happen (exit status {self.proc.poll()}):\n"
                                     f"{self.stderr[-3000:]}")
            time.sleep(0.02)

    def send(self, sig) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = None) -> tuple:
        """(exit status, all of stderr), once it exits; fails if it does not in time."""
        try:
            rc = self.proc.wait(timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args[2:4]} still running after {timeout or self.timeout} s:\n"
                                 f"{self.stderr[-3000:]}") from None
        self._join(10)
        return rc, self.stderr

    def kill(self) -> None:
        """SIGKILL the child and everything below it, then reap the child."""
        if self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self._join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


class Procs:
    """The children of one test (the `procs` fixture): all killed and reaped at its end."""

    def __init__(self):
        self.children = []

    def start(self, *args, env=None, timeout: float = 300) -> Child:
        child = Child(list(args), env=env, timeout=timeout)
        self.children.append(child)
        return child

    def python(self, *args, env=None, timeout: float = 300) -> Child:
        return self.start(sys.executable, *args, env=env, timeout=timeout)

    def run(self, *args, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
        """`python ARGS` to its end: the CompletedProcess, stdout and stderr as text."""
        child = self.python(*args, env=env, timeout=timeout)
        rc, err = child.finish()
        return subprocess.CompletedProcess(child.args, rc, child.stdout, err)

    def close(self) -> None:
        for child in self.children:
            child.kill()
        self.children = []
