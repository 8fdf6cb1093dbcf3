"""How long `mlnb report` takes for the scaffold's 4-step run, and how soon `mlnb lab` answers.

    python bench/report_lab.py [--repeat 3]

Baselines measured in the same invocation: `jupyter nbconvert --to html` of the same four executed notebooks (what one
would run to read a run without mlnb), and plain `python -m jupyterlab` with the same flags (what `mlnb lab` adds to it).
Needs `mlnb[lab]` (JupyterLab and nbconvert).
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
MLNB = str(BIN / 'mlnb')


def sh(cmd, cwd, env=None):
    res = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if res.returncode: sys.exit(f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def ready(cmd, cwd, env, token='bench'):
    "Seconds from starting `cmd` (a Jupyter server) until GET /api/status and GET /lab both answer 200."
    port = free_port()
    env = {**os.environ, **env, 'JUPYTER_TOKEN': token}
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, '--port', str(port)] if cmd[0] == MLNB else [*cmd, f'--ServerApp.port={port}'],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                ok = httpx.get(f'http://127.0.0.1:{port}/api/status', params={'token': token}, timeout=2).status_code == 200
                if ok and httpx.get(f'http://127.0.0.1:{port}/lab', params={'token': token}, timeout=5).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError: pass
            if proc.poll() is not None or time.perf_counter() - t0 > 120: sys.exit(f'{cmd} did not start')
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env = {'BENTOML_HOME': str(tmp / 'bentoml')}
    root = tmp / 'churn'
    sh([MLNB, 'new', root], tmp)
    sh([MLNB, 'run', '--engine', 'fast', '--quiet'], root, env)
    run_id = sorted((root / '.mlnb' / 'runs').iterdir())[-1].name
    notebooks = sorted(str(p) for p in (root / '.mlnb' / 'runs' / run_id).glob('*.ipynb'))
    assert len(notebooks) == 4, notebooks

    from mlnb.report import run_report
    inproc = timed(lambda: run_report(root, run_id, tmp / 'r.html'), a.repeat)
    cli = timed(lambda: sh([MLNB, 'report', run_id, '--out', tmp / 'r.html'], root, env), a.repeat)
    out = tmp / 'nbconvert'
    conv = timed(lambda: sh([str(BIN / 'jupyter'), 'nbconvert', '--to', 'html', '--output-dir', str(out), *notebooks], root, env), a.repeat)
    size = (tmp / 'r.html').stat().st_size + sum(p.stat().st_size for p in (tmp / 'r_notebooks').glob('*.html'))

    print(f"4-step run report (median of {a.repeat})      seconds   vs nbconvert")
    print(f"  mlnb report (CLI, whole process)       {cli:7.3f}   {cli / conv:6.2f}x")
    print(f"  run_report() in process                {inproc:7.3f}   {inproc / conv:6.2f}x")
    print(f"  jupyter nbconvert --to html (4 nbs)    {conv:7.3f}   {1:6.2f}x")
    print(f"  report + rendered notebooks: {size / 1024:.0f} KiB")

    flags = ['--ServerApp.ip=127.0.0.1', '--no-browser', f'--ServerApp.root_dir={root}', '--ContentsManager.allow_hidden=True']
    if os.geteuid() == 0: flags.append('--allow-root')
    lab = timed(lambda: ready([MLNB, 'lab', '--no-browser'], root, env), a.repeat)
    plain = timed(lambda: ready([sys.executable, '-m', 'jupyterlab', *flags], root, env), a.repeat)
    print(f"JupyterLab ready: /api/status and /lab answer (median of {a.repeat})")
    print(f"  mlnb lab                               {lab:7.3f}   {lab / plain:6.2f}x")
    print(f"  python -m jupyterlab (same flags)      {plain:7.3f}   {1:6.2f}x")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
