"""Two gloo CPU ranks for the multi-process tests, started as torchrun would (rank and world in the environment).

Started directly rather than through torchrun, whose workers live in sessions of their own: ranks that hang
(collectives out of step, the bug these tests guard against) can then be killed, not left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_two_ranks(script: str, out: Path, port: int, timeout: float = 120, args: tuple = (),
                  extra_env: dict | None = None) -> None:
    """Run ``tests/<script> <out> <args…>`` on ranks 0 and 1 (``extra_env``: e.g. accelerate's launch settings);
    fail with their stderr if one fails or they hang."""
    out.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    env = {**os.environ, **(extra_env or {}), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(here), *sys.path]),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    logs = [out / f"stderr_{r}.txt" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, str(here / script), str(out), *args], stdout=subprocess.DEVNULL,
                              stderr=logs[r].open("w"), env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in (0, 1)]
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:  # a no-op for a rank that has exited
            p.kill()
            p.wait()
    err = "\n".join(f"--- rank {r}:\n{log.read_text()[-1500:]}" for r, log in enumerate(logs))
    assert codes is not None, f"the two ranks hung for {timeout} s\n{err}"
    assert codes == [0, 0], f"exit codes {codes}\n{err}"
