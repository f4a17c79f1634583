"""Another process that holds a run directory's lock (pgm.runlock) until it is killed or its
stdin closes: the second writer of the lock tests, with no sleeps or timing luck.

``Holder(run)`` returns once the lock is held; ``RAW`` holds it as pgm.runlock does (flock on
RUN/.lock, "PID pgm train" in the file) without importing pgm, so it starts in milliseconds;
``PGM`` holds it through pgm.runlock itself; ``SILENT`` holds it with no record in the file.
"""

import signal
import subprocess
import sys
from pathlib import Path

RAW = """
import fcntl, os, sys
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()} pgm train\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""
SILENT = RAW.replace('os.write(fd, f"{os.getpid()} pgm train\\n".encode())', "")  # no record
PGM = """
import sys
from pgm import runlock
with runlock.hold(sys.argv[1], "pgm train"):
    print("locked", flush=True)
    sys.stdin.read()
"""


class Holder:
    def __init__(self, run: Path, script: str = RAW):
        self.proc = subprocess.Popen([sys.executable, "-c", script, str(run)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        self.pid = self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up runs; the kernel frees the lock."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
