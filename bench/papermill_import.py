"""The cost of importing papermill, and of a scaffold run, with and without jsonschema's `iri` checker deferred.

Where JupyterLab is installed (`mlnb[lab]`), jsonschema imports `rfc3987_syntax`, which builds its Earley parsers at
import. Every process that imports papermill pays for it; `mlnb.engines.import_papermill` puts it off until an `iri`
format is checked. Measured in this one invocation, alternating the two, as CPU seconds of the child processes
(user + system: the tests and the machine are bound by CPU) and wall seconds:

- `import papermill` in a new process, against `mlnb.engines.import_papermill()`;
- `mlnb run --engine fast --force` on the scaffold, with this checkout's mlnb against the mlnb of `--before REV`
  (checked out in a temporary git worktree, put first on PYTHONPATH).

Usage: python bench/papermill_import.py [--repeat N] [--before REV]
"""
import argparse, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(cmd, cwd, env=None):
    "(CPU seconds of the children, wall seconds) of running `cmd` once."
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def compare(label, cases, repeat, cwd):
    "Run each case of `cases` ({name: (cmd, env)}) `repeat` times, alternating; print medians and the ratio to the first."
    got = {name: [] for name in cases}
    for _ in range(repeat):
        for name, (cmd, env) in cases.items(): got[name].append(timed(cmd, cwd, env))
    print(f'\n| {label} | CPU s | wall s | CPU vs {next(iter(cases))} |\n|---|---:|---:|---:|')
    base = statistics.median(c for c, _ in next(iter(got.values())))
    for name, runs in got.items():
        cpu, wall = statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)
        print(f'| {name} | {cpu:.2f} | {wall:.2f} | {cpu / base:.2f}x |')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--before', default=None, help='a commit whose mlnb imports papermill directly')
    args = ap.parse_args()
    try: import rfc3987_syntax  # noqa: F401
    except ImportError: sys.exit('rfc3987_syntax is not installed (it comes with mlnb[lab]): there is nothing to defer.')
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix='mlnb-bench-'))
    try:
        compare('a new process', {'`import papermill`': ([py, '-c', 'import papermill'], None),
                                  '`import_papermill()`': ([py, '-c', 'from mlnb.engines import import_papermill; import_papermill()'], None)},
                args.repeat, tmp)
        if not args.before: return
        mlnb = str(Path(py).parent / 'mlnb')
        env = {**os.environ, 'BENTOML_HOME': str(tmp / 'bentoml')}
        subprocess.run([mlnb, 'new', 'churn'], cwd=tmp, env=env, check=True, capture_output=True)
        root = tmp / 'churn'
        subprocess.run([mlnb, 'run', '--engine', 'fast'], cwd=root, env=env, check=True, capture_output=True)
        old = tmp / 'before'
        subprocess.run(['git', '-C', str(HERE), 'worktree', 'add', '-q', '--detach', str(old), args.before], check=True)
        try:
            run = [mlnb, 'run', '--engine', 'fast', '--force']
            compare('`mlnb run --engine fast --force` (scaffold)',
                    {f'mlnb at {args.before[:10]}': (run, {**env, 'PYTHONPATH': str(old)}), 'this checkout': (run, env)},
                    args.repeat, root)
        finally: subprocess.run(['git', '-C', str(HERE), 'worktree', 'remove', '--force', str(old)], check=True)
    finally: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__': main()
