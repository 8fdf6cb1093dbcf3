"""Fan-out: 32 items of a realistic step, and the overhead per item of 1,000 trivial items on Dask.

Everything is measured in this one invocation, so the ratios hold on a shared, noisy machine:

- 32 items of the realistic step of `bench/step_cost.py` (pandas + scikit-learn: read a 20,000-row CSV, fit a
  small random forest, record a metric), one per `seed`:
  (a) the papermill CLI, one notebook after the other (the baseline);
  (b) `mlnb run --executor local --jobs 2 --engine fast`;
  (c) `mlnb run --executor dask --jobs 2 --engine fast` (a `LocalCluster` of 2 worker processes, started and
      stopped by the run, its start included);
- 1,000 items of a trivial step: (d) local and (e) Dask, both `--jobs 2 --engine fast`; the overhead per item
  on Dask is ((e) - (d)) / 1,000.

Each mlnb run is the real command line, `--force`, timed from launch to exit.

Usage: python bench/fanout.py [--items 32] [--trivial 1000 (0: leave out)] [--repeat 1]
"""
import argparse, os, shutil, sys, tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
from step_cost import REALISTIC, TRIVIAL, sh, timed, write_data  # the same steps and data as the step-cost benchmark

MLNB = str(Path(sys.executable).parent / 'mlnb')


def notebook(path: Path, params: str, body: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}),
                                         nbformat.v4.new_code_cell(body)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--items', type=int, default=32)
    ap.add_argument('--trivial', type=int, default=1000)
    ap.add_argument('--repeat', type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='mlnb-fanout-'))
    root = tmp / 'fan'
    (root / 'nbs').mkdir(parents=True)
    write_data(root / 'data.csv')
    body = REALISTIC.replace('random_state=0, n_jobs=1', 'random_state=seed, n_jobs=1')
    assert body != REALISTIC
    notebook(root / 'nbs' / 'realistic.ipynb', f'data_path = "{root / "data.csv"}"\nseed = 0', body)
    notebook(root / 'nbs' / 'trivial.ipynb', 'x = 1', TRIVIAL)
    (root / 'pyproject.toml').write_text(
        '[project]\nname = "fan"\n[tool.nbdev]\nlib_path = "fan"\n'
        f'[tool.mlnb.steps.realistic]\nnotebook = "nbs/realistic.ipynb"\nforeach = {{ seed = {list(range(args.items))} }}\noptional = true\n'
        + (f'[tool.mlnb.steps.trivial]\nnotebook = "nbs/trivial.ipynb"\nforeach = {{ x = {list(range(args.trivial))} }}\noptional = true\n'
           if args.trivial else ''))
    out = tmp / 'out'; out.mkdir()

    def papermill_each():
        for i in range(args.items):
            sh([sys.executable, '-m', 'papermill', '-k', 'python3', '--no-progress-bar', '-p', 'seed', str(i),
                'nbs/realistic.ipynb', str(out / f'pm-{i}.ipynb')], root)

    def mlnb_run(step, *extra):
        return lambda: sh([MLNB, 'run', step, '--force', '-q', '--engine', 'fast', '--jobs', '2', *extra], root)

    sh([MLNB, 'run', 'realistic', '-q', '--engine', 'fast'], root)  # the export and the ledger exist; the page cache is warm
    load = os.getloadavg()
    r = {'(a) papermill CLI, sequential': timed(papermill_each, args.repeat),
         '(b) mlnb --executor local --jobs 2 --engine fast': timed(mlnb_run('realistic', '--executor', 'local'), args.repeat),
         '(c) mlnb --executor dask --jobs 2 --engine fast': timed(mlnb_run('realistic', '--executor', 'dask'), args.repeat)}
    t = {'(d) local --jobs 2 --engine fast': timed(mlnb_run('trivial', '--executor', 'local'), args.repeat),
         '(e) dask --jobs 2 --engine fast': timed(mlnb_run('trivial', '--executor', 'dask'), args.repeat)} if args.trivial else {}
    load_after = os.getloadavg()

    print(f"machine: {os.cpu_count()} cores; load average {load[0]:.2f} before, {load_after[0]:.2f} after; "
          f"median of {args.repeat} per row\n")
    base = r['(a) papermill CLI, sequential']
    print(f"{args.items} items of the realistic step")
    print(f"  {'how':50} {'seconds':>8} {'per item':>9} {'speed-up vs (a)':>16}")
    for k, v in r.items():
        print(f"  {k:50} {v:8.2f} {v / args.items:9.3f} {base / v:15.1f}x")
    if not t: return shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.trivial} items of the trivial step")
    print(f"  {'how':50} {'seconds':>8} {'per item':>9}")
    for k, v in t.items():
        print(f"  {k:50} {v:8.2f} {v / args.trivial * 1000:7.1f}ms")
    over = (t['(e) dask --jobs 2 --engine fast'] - t['(d) local --jobs 2 --engine fast']) / args.trivial * 1000
    print(f"  Dask overhead per item over local: {over:.1f} ms")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
