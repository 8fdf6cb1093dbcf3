"""Machine time from `mlnb new --data` to a verified Bento, for each table of tests/tables.py.

For each table, in a fresh folder and a BentoML store of its own, the commands a data scientist types, timed one by
one: `mlnb new NAME --data FILE --label COLUMN ...`, `nbdev-test`, `mlnb run` (the default engine, or `--engine`),
`mlnb build`, `mlnb verify`. The total is the time from the table to a Bento proven to answer as the notebook
did; the target is at most 60 s on 2 cores for tables up to 10^5 rows. The churn scaffold (`mlnb new` without
`--data`, its 5,000 simulated customers) is timed the same way in the same invocation, as the baseline.

Usage: python bench/new_data.py [--tables NAME,...] [--engine fast|kernel] [--repeat N]
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))
from tables import CASES  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmd, cwd, env) -> float:
    "Seconds `cmd` took; exits with its output if it failed."
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def one(name: str | None, engine: str | None, work: Path) -> dict:
    "The seconds of each command for table `name` (None: the churn scaffold), and the table's rows."
    folder = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, 'BENTOML_HOME': str(folder / 'bentoml')}
    mlnb = str(BIN / 'mlnb')
    if name is None:
        rows, new = 5000, [mlnb, 'new', 'churn']
        root = folder / 'churn'
    else:
        case = CASES[name]
        data = case.write(folder)
        rows = sum(1 for _ in open(data)) - 1 if data.suffix == '.csv' else None
        new = [mlnb, 'new', name, '--data', data.name, '--label', case.label, *case.options]
        root = folder / name
    out = {'new': timed(new, folder, env)}
    out['nbdev-test'] = timed([str(BIN / 'nbdev-test')], root, env)
    out['run'] = timed([mlnb, 'run', *(['--engine', engine] if engine else [])], root, env)
    out['build'] = timed([mlnb, 'build'], root, env)
    out['verify'] = timed([mlnb, 'verify'], root, env)
    if rows is None:
        import pandas as pd
        rows = len(pd.read_parquet(root / 'data' / case.file))
    shutil.rmtree(folder, ignore_errors=True)
    return {'rows': rows, **out, 'total': sum(out.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--tables', default=','.join(CASES), help='comma-separated names of tests/tables.py (default: all)')
    ap.add_argument('--engine', choices=['fast', 'kernel'], help="`mlnb run --engine` (default: none, mlnb run's own default)")
    ap.add_argument('--repeat', type=int, default=1, help='runs per table; the median is shown')
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix='mlnb-bench-new-data-'))
    names = [None, *[n for n in args.tables.split(',') if n]]
    print(f"mlnb new --data -> nbdev-test -> mlnb run{' --engine ' + args.engine if args.engine else ''} -> mlnb build -> mlnb verify; "
          f"{os.cpu_count()} cores, median of {args.repeat}")
    cols = ['new', 'nbdev-test', 'run', 'build', 'verify', 'total']
    print(f"{'table':<16} {'rows':>7} {'problem':<11} {'metric':<9} " + ' '.join(f'{c:>10}' for c in cols))
    try:
        for name in names:
            runs = [one(name, args.engine, work) for _ in range(args.repeat)]
            med = {c: statistics.median(r[c] for r in runs) for c in cols}
            case = CASES.get(name)
            label = name or 'churn (no --data)'
            problem, metric = (case.problem, case.metric) if case else ('binary', 'roc_auc')
            print(f"{label:<16} {runs[0]['rows']:>7} {problem:<11} {metric:<9} " + ' '.join(f'{med[c]:>9.1f}s' for c in cols), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
