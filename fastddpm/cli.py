"""How every `python -m fastddpm.*` speaks when something goes wrong (argparse's convention).

    prog: error: <message>          a usage mistake (exit 2, argparse's own) or a failure at run
                                    time the library names (ValueError, TypeError, OSError,
                                    FloatingPointError, ImportError: exit 1), no stack
    prog: interrupted: <what was kept and how to go on>      Ctrl-C (exit 130)
    prog: interrupted (SIGTERM): <what was kept ...>          SIGTERM (exit 143): a scheduler's stop

A genuine bug (any other exception) still shows its stack; `--debug` or FASTDDPM_DEBUG=1
shows it for every error.
"""

import os
import signal
import sys

from .io import stop
from .io.checkpoint import FolderInUse

USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError, ImportError, FolderInUse)


def debug_requested(argv) -> bool:
    return "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("FASTDDPM_DEBUG", "") not in ("", "0")


def strip_debug(argv):
    """argv without --debug (the commands accept it everywhere, argparse need not know it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [a for a in argv if a != "--debug"]


def run(prog: str, main, argv=None):
    """main(argv) with the library's errors as one line and an exit status, when run as a command.
    SIGTERM stops the command as Ctrl-C does (fastddpm.io.stop), with exit status 143."""
    debug = debug_requested(argv)
    try:
        with stop.term_raises():
            return main(strip_debug(argv))
    except KeyboardInterrupt as e:
        if debug:
            raise
        signum = stop.signal_of(e)
        how = "" if signum == signal.SIGINT else f" ({stop.name(signum)})"
        sys.stderr.write(f"\n{prog}: interrupted{how}" + (f": {e}" if str(e) else "") + "\n")
        raise SystemExit(128 + signum) from None
    except USER_ERRORS as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {message(e)}\n")
        raise SystemExit(1) from None


def message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}" + (" (the disk is full: free space and run the same command to resume)"
                                         if e.errno == 28 else "")
    return str(e) or type(e).__name__
