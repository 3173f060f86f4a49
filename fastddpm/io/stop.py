"""Stopping a run cleanly: SIGTERM honoured like Ctrl-C, one owner for both.

Clusters stop jobs with SIGTERM (Slurm before a time limit or a preemption, Kubernetes before
an eviction, torchrun when it is itself stopped), a terminal with SIGINT. Every command treats
the two alike (`fastddpm.cli.run` makes SIGTERM raise as Python makes SIGINT raise: term_raises), and:

- `Interrupted(signum, message)` is the KeyboardInterrupt they raise: the command line turns it
  into `prog: interrupted (SIGTERM): <what was kept>` and exit status 128 + signum (130, 143).
- `deferred()`: while training, a signal is noted and the step in flight finishes and is kept;
  a second one (single process) acts at once, as usual.
- `raising()`: while generating, a signal raises at once (the work in flight is dropped), and
  a raise Python swallowed (in a weakref callback, say) is raised again at the next check().
- `shielded()`: a short critical section (a shard being written) runs to its end, then the
  noted signal is delivered again to whatever handled it before.

A signal the launcher set to SIG_IGN stays ignored, as Python itself leaves an inherited
SIG_IGN for SIGINT: a job started in the background by a shell ignores Ctrl-C on purpose (the
terminal's Ctrl-C is for the job in the foreground); such a job is stopped with SIGTERM.
Handlers are installed only in the main thread, where Python delivers signals.
"""

import contextlib
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; str() says what was kept and how to go on."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def signal_of(e: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (a plain one is Ctrl-C)."""
    return e.signum if isinstance(e, Interrupted) else int(signal.SIGINT)


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def term_raises():
    """Within the block SIGTERM raises Interrupted, as SIGINT raises KeyboardInterrupt (unless
    it is ignored); the handler before is restored after it."""
    old = signal.getsignal(signal.SIGTERM) if _main_thread() else signal.SIG_IGN
    if old is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


class _Noted:
    """Replaces the handlers of SIGINT and SIGTERM (those not ignored) with one that notes the
    signal; restores them on exit."""

    def __init__(self, on_signal=None, once: bool = True):
        self.signum, self.old, self.on_signal, self.once = 0, {}, on_signal, once

    def __enter__(self):
        if _main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self.old[s] = signal.signal(s, self._note)
        return self

    def _note(self, signum, frame):
        first = not self.signum
        self.signum = self.signum or signum
        if self.once:  # a second signal reaches the handlers as they were: it acts at once
            self._restore()
        if first and self.on_signal is not None:
            self.on_signal(signum)

    def _restore(self):
        for s, h in self.old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self.old = {}

    def __exit__(self, *exc):
        self._restore()
        return False


class _Raising(_Noted):
    """Handlers that raise Interrupted at once and remember the signal: a raise that lands where
    Python cannot propagate it (a weakref callback, a __del__: "Exception ignored in ...", the
    fate of any KeyboardInterrupt there) is raised again at the caller's next check()."""

    def _note(self, signum, frame):
        self.signum = self.signum or signum
        raise Interrupted(signum)

    def check(self) -> None:
        if self.signum:
            raise Interrupted(self.signum)


def raising() -> _Raising:
    """A context in which SIGINT and SIGTERM raise Interrupted at once; call .check() at safe
    points so that a raise Python swallowed is not lost."""
    return _Raising(once=False)


def deferred(announce: str = None, repeat_acts: bool = True) -> _Noted:
    """A context in which SIGINT and SIGTERM are noted (`.signum`, 0 while none came), not acted
    on: the caller stops at a point of its choosing. announce: a line written to stderr at the
    first signal. repeat_acts: a second signal acts at once (False for DDP ranks, which may
    see one stop twice: Slurm signals every process of a job and torchrun forwards its own copy;
    the launcher's SIGKILL after its grace period is the hard stop there)."""

    def say(signum):
        if announce:
            again = " (Ctrl-C again to stop at once)" if repeat_acts else ""
            sys.stderr.write(f"\n{name(signum)}: {announce}{again}\n")

    return _Noted(say, once=repeat_acts)


@contextlib.contextmanager
def shielded():
    """Run the block to its end whatever signal comes meanwhile; then deliver that signal again
    to the handler that was there before (which raises, or ends the process, as it would have)."""
    noted = _Noted(once=False)
    with noted:
        yield
    if noted.signum:
        signal.raise_signal(noted.signum)
