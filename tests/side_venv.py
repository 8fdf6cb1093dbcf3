"""A virtual environment of its own for a tool the tests run beside mlnb and that is never a dependency of mlnb (NannyML,
Apache Airflow): made once per machine at a fixed path, reused while it works, remade when it does not.

    from side_venv import Unavailable, ensure
    ensure(VENV, works, [['apache-airflow==3.3.2']], 'apache-airflow')   # VENV, made first when `works()` is false

Several test processes wait for one to make it (a lock file beside it). `Unavailable` is raised only when the environment
does not work and the package index cannot be reached to make it.
"""
import shutil, subprocess, sys
from pathlib import Path
from typing import Callable

OFFLINE = ('NewConnectionError', 'ConnectTimeout', 'ConnectionError', 'Max retries exceeded', 'Temporary failure in name resolution',
           'Name or service not known', 'Network is unreachable', 'ProxyError', 'ReadTimeout', 'timed out')


class Unavailable(Exception):
    "Raised when a tool's environment is missing and the package index cannot be reached to make it."


def reachable(venv: Path, package: str):
    "Raise `Unavailable` when pip cannot reach the package index for `package` (and only then)."
    r = subprocess.run([sys.executable, '-m', 'pip', 'index', 'versions', package, '--timeout', '20', '--retries', '1'],
                       capture_output=True, text=True, timeout=300)
    said = [line.strip() for line in (r.stdout + r.stderr).splitlines() if any(word in line for word in OFFLINE)]
    if r.returncode and said:
        raise Unavailable(f"The environment {venv} for {package} does not exist and the package index cannot be reached to make it: {said[0][:300]}")


def ensure(venv: Path, # where the environment lives
           works: Callable[[], bool], # whether it exists and works
           installs: list[list[str]], # `pip install` arguments, one install after another
           package: str, # the tool, named when it cannot be had
           timeout: float = 1800, # seconds for each install
          ) -> Path:
    "The folder `venv`, made first (a new virtual environment, then each of `installs`) when `works()` is false."
    import fcntl
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f'.{venv.name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if works(): return venv
        reachable(venv, package)
        if venv.exists() and (venv / 'pyvenv.cfg').exists(): shutil.rmtree(venv)
        subprocess.run([sys.executable, '-m', 'venv', venv], check=True, capture_output=True, timeout=300)
        for what in installs:
            r = subprocess.run([venv / 'bin' / 'python', '-m', 'pip', 'install', '-q', *what], capture_output=True, text=True, timeout=timeout)
            if r.returncode: raise RuntimeError(f"pip could not install {' '.join(what)} into {venv}:\n{r.stderr[-3000:]}")
        if not works(): raise RuntimeError(f"{package} was installed into {venv} but does not work there.")
        return venv
