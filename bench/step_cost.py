"""Per-step cost of executing a notebook step, and the cost of a no-change re-run.

Everything is measured in this one invocation, so the ratios hold on a shared, noisy machine:

- a trivial step and a realistic step (pandas + scikit-learn, 20k rows, a small model, one
  recorded metric), run as `python script.py`, with the papermill CLI, with mlnb's kernel
  engine starting a kernel for the step (as it did before warm kernels), with warm kernels
  (the next step's kernel starts while this one runs), with warm kernels and `preload`, and
  with mlnb's fast engine (a warm worker);
- the scaffold pipeline (4 steps, `mlnb run --force`): papermill's own engine (a kernel started
  per step), the kernel engine (warm kernels), with `preload`, the fast engine; a no-change re-run.
  With `--before REV`, also the kernel engine of an earlier commit of this repository (checked
  out in a temporary git worktree), on the same scaffold.

Usage: python bench/step_cost.py [--repeat N] [--before REV]
"""
import argparse, os, re, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

REALISTIC = '''import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
import mlnb
df = pd.read_csv(data_path)
X, y = df.drop(columns="label"), df["label"]
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
pre = ColumnTransformer([("num", StandardScaler(), ["a", "b", "c"]), ("cat", OneHotEncoder(handle_unknown="ignore"), ["kind"])])
model = make_pipeline(pre, RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0, n_jobs=1)).fit(Xtr, ytr)
auc = float(roc_auc_score(yte, model.predict_proba(Xte)[:, 1]))
mlnb.record("roc_auc", auc)
print(auc)'''

PRELOAD = ('numpy', 'pandas', 'sklearn.ensemble', 'sklearn.pipeline', 'sklearn.compose', 'sklearn.preprocessing',
           'sklearn.impute', 'sklearn.metrics', 'sklearn.model_selection', 'mlnb')

TRIVIAL = '''import mlnb
y = x + 1
mlnb.record("y", y)'''


def write_case(d: Path, name: str, params: str, body: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}),
                                         nbformat.v4.new_code_cell(body)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, d / f'{name}.ipynb')
    (d / f'{name}.py').write_text(params + '\n' + body + '\n')


def write_data(path: Path, n: int = 20_000):
    "The realistic step's input: `n` rows of three numeric columns, a category and a binary label, as CSV."
    rng = np.random.default_rng(0)
    df = pd.DataFrame({'a': rng.normal(size=n), 'b': rng.normal(size=n), 'c': rng.uniform(size=n),
                       'kind': rng.choice(['x', 'y', 'z'], size=n)})
    df['label'] = ((df.a + 0.5 * df.b + rng.normal(scale=0.8, size=n)) > 0).astype(int)
    df.to_csv(path, index=False)


def timed(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def sh(cmd, cwd, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if r.returncode: raise SystemExit(f"{cmd} failed:\n{r.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--before', metavar='REV', help='also run the scaffold with the mlnb of this git revision')
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='mlnb-bench-'))
    write_data(tmp / 'data.csv')
    (tmp / 'pyproject.toml').write_text('[project]\nname = "bench"\n[tool.nbdev]\nlib_path = "bench_pkg"\n'
                                        '[tool.mlnb.steps.realistic]\nnotebook = "realistic.ipynb"\n'
                                        '[tool.mlnb.steps.trivial]\nnotebook = "trivial.ipynb"\n')
    write_case(tmp, 'realistic', f'data_path = "{tmp / "data.csv"}"', REALISTIC)
    write_case(tmp, 'trivial', 'x = 1', TRIVIAL)

    from mlnb import engines
    from mlnb.pipeline import make_plan
    from mlnb.project import load_project
    from mlnb.executors import execute_step
    proj = load_project(tmp)
    plan = make_plan(proj)
    out = tmp / 'out'; out.mkdir()
    results = {}
    for case in ('trivial', 'realistic'):
        step = plan[case]
        r = {}
        r['python script.py'] = timed(lambda: sh([sys.executable, f'{case}.py'], tmp), args.repeat)
        r['papermill CLI'] = timed(lambda: sh([sys.executable, '-m', 'papermill', '-k', 'python3', '--no-progress-bar',
                                               f'{case}.ipynb', str(out / f'pm-{case}.ipynb')], tmp), args.repeat)
        r['kernel engine, kernel per step'] = timed(lambda: execute_step(step, out / f'k-{case}.ipynb', {}, 'mlnb_kernel', tmp), args.repeat)
        for name, pre in (('kernel engine, warm kernels', ()), ('warm kernels + preload', PRELOAD)):
            with engines.kernels(1, preload=pre):
                execute_step(step, out / f'w-{case}.ipynb', {}, 'mlnb_kernel', tmp)  # the first kernel starts with the step
                r[name] = timed(lambda: execute_step(step, out / f'w-{case}.ipynb', {}, 'mlnb_kernel', tmp), args.repeat)
        with engines.pool(1):
            execute_step(step, out / f'f-{case}.ipynb', {}, 'mlnb_fast', tmp)  # warm-up: the worker's imports
            r['mlnb fast engine (warm step)'] = timed(lambda: execute_step(step, out / f'f-{case}.ipynb', {}, 'mlnb_fast', tmp), args.repeat)
        results[case] = r

    # the scaffold: cold run vs no-change re-run, through the real CLI
    proj_dir = tmp / 'churn'
    mlnb = str(Path(sys.executable).parent / 'mlnb')
    sh([mlnb, 'new', str(proj_dir)], tmp)
    toml = (proj_dir / 'pyproject.toml').read_text()
    plain = re.sub(r'\n\[tool\.mlnb\]\npreload = \[[^\]]*\]\n', '\n', toml)  # the scaffold without its preload
    plain = re.sub(r'\nalways_run = [^\n]*', '', plain)  # (a key an earlier mlnb does not know; it changes nothing with --force)
    (proj_dir / 'pyproject.toml').write_text(plain)
    sh([mlnb, 'run', '-q'], proj_dir)  # the package exported, the data cached by the OS
    scaffold = {}
    def cold(label, *extra, env=None):
        scaffold[label] = timed(lambda: sh([mlnb, 'run', '-q', '--force', *extra], proj_dir, env), args.repeat)
    if args.before:
        old = tmp / 'before'
        sh(['git', '-C', str(Path(__file__).resolve().parent), 'worktree', 'add', '-q', '--detach', str(old), args.before], tmp)
        try: cold(f'kernel engine at {args.before[:10]}', env={**os.environ, 'PYTHONPATH': str(old)})
        finally: sh(['git', '-C', str(Path(__file__).resolve().parent), 'worktree', 'remove', '--force', str(old)], tmp)
    cold('papermill engine (kernel per step)', '--engine', 'nbclient')
    cold('kernel engine (warm kernels)')
    (proj_dir / 'pyproject.toml').write_text(toml if toml != plain else toml + f'\n[tool.mlnb]\npreload = {list(PRELOAD)!r}\n'.replace("'", '"'))
    cold('kernel engine + preload')
    cold('fast engine', '--engine', 'fast')
    warm = timed(lambda: sh([mlnb, 'run', '-q'], proj_dir), args.repeat)

    print(f"machine: {os.cpu_count()} cores; median of {args.repeat} runs per cell\n")
    for case, r in results.items():
        base = r['python script.py']
        print(f"{case} step")
        print(f"  {'how':32} {'seconds':>8} {'vs script':>10} {'vs papermill CLI':>17}")
        for k, v in r.items():
            print(f"  {k:32} {v:8.3f} {v / base:9.2f}x {v / r['papermill CLI']:16.2f}x")
        print()
    base = scaffold['papermill engine (kernel per step)']
    first = next(iter(scaffold))
    print(f"scaffold pipeline (4 steps, `mlnb run --force`)\n  {'how':36} {'seconds':>8} {'vs kernel per step':>19} {'vs ' + first:>30}")
    for k, v in scaffold.items(): print(f"  {k:36} {v:8.3f} {v / base:18.2f}x {v / scaffold[first]:29.2f}x")
    print(f"  {'no-change re-run':36} {warm:8.3f} {warm / base:18.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
