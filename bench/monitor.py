"""Monitoring cost: `mlnb monitor` on a million logged predictions against Evidently's data drift report, in one invocation.

Setup (not timed): a scaffolded churn project is trained (`mlnb run --engine fast`); its champion carries the reference
`log_model` froze from the 1,250 held-out customers. ROWS customers are simulated with some drift, predicted by the
champion, and written to a prediction log in the service's format (one JSON line per prediction).

Measured, each in a fresh process, median of REPEAT runs:
- mlnb, first run: `mlnb monitor --log LOG --last ROWS --json`, end to end, with no cache: start, read and parse the
  JSON lines (and keep their columnar copy in .mlnb/cache/logs), drift of the 11 request columns and of the answers,
  action limits, timeline; wall time and peak memory (max RSS).
- mlnb, next run: the same command again, as a scheduled monitor runs it: the lines parsed before are read from the
  columnar copy (here: all of them; on a live log, all but those written since).
- Evidently: `Report([DataDriftPreset()]).run(current, reference)` on the same 11 columns and the answers, with the
  held-out rows as the reference and the ROWS rows as current data, both already loaded as DataFrames (reading them is
  not timed); Evidently is installed in a virtual environment of its own (created on the first run), never a
  dependency of mlnb.

Usage: python bench/monitor.py [--rows 1000000] [--repeat 3] [--evidently-venv DIR]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

EVIDENTLY = '''
import json, resource, sys, time
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = Report([DataDriftPreset()]).run(cur, ref)
secs = time.perf_counter() - t0
drifted = [m for m in result.dict()['metrics'] if 'ValueDrift' in m.get('metric_id', '') or 'ValueDrift' in m.get('metric_name', '')]
print(json.dumps({'seconds': secs, 'max_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'columns': len(drifted)}))
'''

MEASURED = '''
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
res = subprocess.run(sys.argv[1:], capture_output=True, text=True)
secs = time.perf_counter() - t0
if res.returncode not in (0, 1): sys.exit(res.stderr)
out = json.loads(res.stdout)
print(json.dumps({'seconds': secs, 'max_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  'drifted': [k for k, d in out['columns'].items() if d['drifted']], 'rows': out['window']['rows']}))
'''


def sh(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def evidently_python(venv: Path) -> str:
    "The Python of a virtual environment with Evidently (made on first use)."
    py = venv / 'bin' / 'python'
    if not py.exists():
        print(f'installing Evidently into {venv} (once)...', file=sys.stderr)
        sh([sys.executable, '-m', 'venv', str(venv)], '.', os.environ)
        # Evidently 0.7 imports a pandas helper that pandas 3 removed
        sh([str(py), '-m', 'pip', 'install', '-q', 'evidently', 'pandas<3', 'pyarrow'], '.', os.environ)
    return str(py)


def write_log(path: Path, project: Path, tag: str, rows: int, chunk: int = 100_000):
    "`rows` simulated customers with drift, predicted by model `tag`, as the service logs them; returns the current frame."
    sys.path.insert(0, str(project))
    import bentoml, pandas as pd
    from churn.data import simulate
    from churn.features import prepare
    from mlnb.serving import answers
    model = bentoml.sklearn.load_model(tag)
    frames = []
    with open(path, 'w') as f:
        for start in range(0, rows, chunk):
            df = simulate(min(chunk, rows - start), seed=1000 + start, drift=0.3).drop(columns='churned')
            ans, _ = answers(model, prepare(df), 'classifier', [0, 1])
            lines = df.to_json(orient='records', lines=True, date_format='iso', double_precision=15).splitlines()
            ts = pd.Timestamp.now(tz='UTC').isoformat()
            f.write(''.join(f'{{"request_id":"b{start + i}","ts":"{ts}","model":"{tag}","variant":"champion","row":{r},'
                            f'"prediction":{json.dumps(a)}}}\n' for i, (r, a) in enumerate(zip(lines, ans))))
            frames.append(df.assign(label=[a['label'] for a in ans], probability=[a['probability'] for a in ans]))
    return pd.concat(frames, ignore_index=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, default=1_000_000)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--evidently-venv', type=Path, default=Path(tempfile.gettempdir()) / 'mlnb-bench-evidently')
    args = ap.parse_args()
    ev_python = evidently_python(args.evidently_venv)
    tmp = Path(tempfile.mkdtemp(prefix='mlnb-monitor-bench-'))
    env = {**os.environ, 'BENTOML_HOME': str(tmp / 'bentoml')}
    os.environ['BENTOML_HOME'] = env['BENTOML_HOME']
    mlnb = str(Path(sys.executable).parent / 'mlnb')
    sh([mlnb, 'new', str(tmp / 'churn')], tmp, env)
    proj = tmp / 'churn'
    sh([mlnb, 'run', '-q', '--engine', 'fast'], proj, env)
    tag = next(m['tag'] for m in json.loads(sh([mlnb, 'models', '--json'], proj, env)) if m['champion'])
    log = tmp / 'predictions.jsonl'
    t0 = time.perf_counter()
    current = write_log(log, proj, tag, args.rows)
    print(f'setup: {args.rows} predictions written in {time.perf_counter() - t0:.0f} s ({log.stat().st_size / 2**20:.0f} MiB)', file=sys.stderr)
    os.environ['MLNB_PROJECT_ROOT'] = str(proj)
    import mlnb as api
    from churn.features import prepare
    from mlnb.serving import answers
    import bentoml
    held = api.upstream('data')['test'].drop(columns='churned')
    ref_ans, _ = answers(bentoml.sklearn.load_model(tag), prepare(held), 'classifier', [0, 1])
    held = held.assign(label=[a['label'] for a in ref_ans], probability=[a['probability'] for a in ref_ans])
    drop = ['customer_id', 'snapshot_date']  # keys and timestamps are not drift-tested by either tool
    held.drop(columns=drop).to_parquet(tmp / 'ref.parquet')
    current.drop(columns=drop).to_parquet(tmp / 'cur.parquet')
    del current

    first, nxt, ev = 'mlnb monitor, first run', 'mlnb monitor, next run', 'Evidently DataDriftPreset'
    runs = {first: [], nxt: [], ev: []}
    cmd = [sys.executable, '-c', MEASURED, mlnb, 'monitor', '--model', tag, '--log', str(log), '--last', str(args.rows), '--json']
    for _ in range(args.repeat):  # alternate, so the machine's noise is shared
        shutil.rmtree(proj / '.mlnb' / 'cache', ignore_errors=True)
        runs[first].append(json.loads(sh(cmd, proj, env)))
        runs[nxt].append(json.loads(sh(cmd, proj, env)))
        runs[ev].append(json.loads(sh([ev_python, '-c', EVIDENTLY, str(tmp / 'ref.parquet'), str(tmp / 'cur.parquet')], tmp, env)))
    med = {k: statistics.median(r['seconds'] for r in v) for k, v in runs.items()}
    mem = {k: max(r['max_rss_mb'] for r in v) for k, v in runs.items()}
    assert runs[first][0]['drifted'] == runs[nxt][0]['drifted'] and runs[first][0]['rows'] == runs[nxt][0]['rows']
    cached = sum(f.stat().st_size for f in (proj / '.mlnb' / 'cache').rglob('*.arrow'))
    print(f"{os.cpu_count()} cores; reference: {len(held)} held-out rows; current: {args.rows} predictions; median of {args.repeat}\n")
    print(f"{'':28} {'seconds':>8} {'peak MiB':>9} {'Evidently / this':>17}")
    for k in runs: print(f"{k:28} {med[k]:8.2f} {mem[k]:9.0f} {med[ev] / med[k]:16.1f}x")
    print(f"\nmlnb read and judged {runs[first][0]['rows']} rows end to end (JSON lines, {log.stat().st_size / 2**20:.0f} MiB, included; "
          f"the columnar copy of the next runs: {cached / 2**20:.0f} MiB); drifted: {', '.join(runs[first][0]['drifted'])}. "
          "Evidently was given the DataFrames in memory.")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
