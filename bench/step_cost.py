"""Per-step cost of executing a notebook step, and the cost of a no-change re-run.

Everything is measured in this one invocation, so the ratios hold on a shared, noisy machine:

- a trivial step and a realistic step (pandas + scikit-learn, 20k rows, a small model, one
  recorded metric), run as `python script.py`, with the papermill CLI, with mlnb's kernel
  engine and with mlnb's fast engine (a warm worker);
- the scaffold pipeline: a cold `mlnb run` against a no-change re-run.

Usage: python bench/step_cost.py [--repeat N]
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time
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


def sh(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{cmd} failed:\n{r.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=5)
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
    from mlnb.runner import execute_step
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
        r['mlnb kernel engine (step)'] = timed(lambda: execute_step(step, out / f'k-{case}.ipynb', {}, 'mlnb_kernel', tmp), args.repeat)
        with engines.pool(1):
            execute_step(step, out / f'f-{case}.ipynb', {}, 'mlnb_fast', tmp)  # warm-up: the worker's imports
            r['mlnb fast engine (warm step)'] = timed(lambda: execute_step(step, out / f'f-{case}.ipynb', {}, 'mlnb_fast', tmp), args.repeat)
        results[case] = r

    # the scaffold: cold run vs no-change re-run, through the real CLI
    proj_dir = tmp / 'churn'
    mlnb = str(Path(sys.executable).parent / 'mlnb')
    sh([mlnb, 'new', str(proj_dir)], tmp)
    t0 = time.perf_counter(); sh([mlnb, 'run', '-q'], proj_dir); cold = time.perf_counter() - t0
    warm = timed(lambda: sh([mlnb, 'run', '-q'], proj_dir), args.repeat)
    t0 = time.perf_counter(); sh([mlnb, 'run', '-q', '--force', '--engine', 'fast'], proj_dir); cold_fast = time.perf_counter() - t0

    print(f"machine: {os.cpu_count()} cores; median of {args.repeat} runs per cell\n")
    for case, r in results.items():
        base = r['python script.py']
        print(f"{case} step")
        print(f"  {'how':32} {'seconds':>8} {'vs script':>10} {'vs papermill CLI':>17}")
        for k, v in r.items():
            print(f"  {k:32} {v:8.3f} {v / base:9.2f}x {v / r['papermill CLI']:16.2f}x")
        print()
    print("scaffold pipeline (4 steps, kernel engine)")
    print(f"  cold `mlnb run`                  {cold:8.3f}")
    print(f"  no-change re-run                 {warm:8.3f}   {warm / cold:.1%} of cold")
    print(f"  `mlnb run --force --engine fast` {cold_fast:8.3f}   {cold_fast / cold:.1%} of cold (includes starting the worker)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
