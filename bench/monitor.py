"""Monitoring cost: `mlnb monitor` on a million logged predictions (or ten million) against Evidently's data drift report
and NannyML's univariate drift plus realised performance, in one invocation.

Setup (not timed): a scaffolded churn project is trained (`mlnb run --engine fast`); its champion carries the reference
`log_model` froze from the 1,250 held-out customers. ROWS customers are simulated with some drift, predicted by the
champion, and written to a prediction log as the service writes it: `JsonLinesLog` (rotated past 256 MiB), in batches
of 100 lines with their own time, with the service's columnar copy beside it; their ground truth goes to the feedback
log beside it the same way. Past 10^6 rows, the 10^6 simulated rows are logged again under new request ids.

Measured, each in a fresh process, median of REPEAT runs:
- mlnb, first run: `mlnb monitor --log LOG --last ROWS --json`, end to end, with no cache: start, read the lines from the
  service's columnar copy (verified against the JSON lines' bytes) and keep them in .mlnb/cache/logs, drift of the 11
  request columns and of the answers, realised performance against the ground truth, action limits, timeline; wall
  time and peak memory (max RSS).
- mlnb, first run on the JSON lines alone: the same, the columnar copy moved away (a log written before the copy existed,
  or by another writer): every line parsed.
- mlnb, next run: the same command again, as a scheduled monitor runs it: the lines read before come from the cache.
- Evidently: `Report([DataDriftPreset()]).run(current, reference)` on the same 11 columns and the answers, with the
  held-out rows as the reference and the ROWS rows as current data, both already loaded as DataFrames (reading them is
  not timed).
- mlnb's computation alone: `mlnb.monitor.check` timed inside a run with the ground truth (the lines already read, as
  Evidently and NannyML are given DataFrames already in memory; the lookup of each prediction's ground truth is inside):
  every statistic of the window, its chunks and its timeline, the work beside NannyML's below.
- mlnb's computation of NannyML's work: the same, with `multivariate = false` and `estimate = false` (no PCA reconstruction
  error, no CBPE): the univariate drift of each column per chunk against its learned threshold and the realised metric per chunk
  with its band, what NannyML's two calculators compute (plus the window's own statistics and timeline, which mlnb always gives).
  The difference between the two computation rows is the cost of the multivariate score and the estimate.
- mlnb's computation of NannyML's work, the labels already joined: the same, each prediction's ground truth looked up before the timing
  starts, as NannyML is given its labels already beside the predictions (a column of the DataFrame). Shown beside the row above, not in
  its place: what part of mlnb's computation the lookup is.
- NannyML: `UnivariateDriftCalculator` (Kolmogorov-Smirnov and chi-squared, the same columns) and a realised
  `PerformanceCalculator` (ROC AUC), each `.fit(reference)` then `.calculate(current)` in 10 chunks (mlnb's default),
  DataFrames already loaded.
- Start and imports: a fresh Python importing what `mlnb monitor` imports (`mlnb.cli`, `mlnb.monitor`: pandas, pyarrow,
  NumPy) and ending as `mlnb monitor` ends (`mlnb.cli._leave`: no teardown of the modules), timed as the runs above are: the part of
  every end-to-end run that no work on the rows can shorten.
mlnb's own modules are compiled to bytecode first, as pip does when it installs a wheel (an editable install on a machine
that sets PYTHONDONTWRITEBYTECODE would compile them again on every run). Evidently and NannyML are each installed in a virtual environment of their own (made on the first run), never
dependencies of mlnb; with 10^7 rows they are not run (each would need tens of GB of memory and minutes).

The serving side's cost of the copy is measured too: `JsonLinesLog.write` per batch, with and without the columnar
copy, CPU time of the process (the copy's parsing thread included) per line.

Usage: python bench/monitor.py [--rows 1000000] [--repeat 3] [--no-ground-truth] [--evidently-venv DIR] [--nannyml-venv DIR]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

EVIDENTLY = '''
import json, resource, sys, time
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
ref, cur = ref.drop(columns=['churned']), cur.drop(columns=['churned'])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = Report([DataDriftPreset()]).run(cur, ref)
secs = time.perf_counter() - t0
drifted = [m for m in result.dict()['metrics'] if 'ValueDrift' in m.get('metric_id', '') or 'ValueDrift' in m.get('metric_name', '')]
print(json.dumps({'seconds': secs, 'max_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'columns': len(drifted)}))
'''

NANNYML = '''
import json, os, resource, sys, time
os.environ['NML_DISABLE_USAGE_LOGGING'] = '1'
import pandas as pd
import nannyml as nml
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
columns = [c for c in cur.columns if c != 'churned']
t0 = time.perf_counter()
drift = nml.UnivariateDriftCalculator(column_names=columns, chunk_number=10, continuous_methods=['kolmogorov_smirnov'],
                                      categorical_methods=['chi2']).fit(ref).calculate(cur)
t1 = time.perf_counter()
perf = nml.PerformanceCalculator(y_pred_proba='probability', y_pred='label', y_true='churned', problem_type='classification_binary',
                                 metrics=['roc_auc'], chunk_number=10).fit(ref).calculate(cur)
t2 = time.perf_counter()
print(json.dumps({'seconds': t2 - t0, 'drift': t1 - t0, 'performance': t2 - t1, 'chunks': len(drift.filter(period='analysis').to_df()),
                  'max_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

COMPUTE = '''
import dataclasses, json, sys, time
import mlnb.monitor as M
took, check = {}, M.check
def timed(events, ref, cfg, *a, **k):
    if sys.argv[4] in ('same', 'joined'): cfg = dataclasses.replace(cfg, multivariate=False, estimate=False)
    if sys.argv[4] == 'joined': # the lookup before the timing: `check` is given its result
        found = M._matched(a[0], events['request_id'])
        M._matched = lambda feedback, ids: found
    t0 = time.perf_counter()
    try: return check(events, ref, cfg, *a, **k)
    finally: took['seconds'] = time.perf_counter() - t0
M.check = timed
M.monitor(model=sys.argv[1], log=sys.argv[2], last=int(sys.argv[3]), alert=False, record=False)
print(json.dumps(took))
'''

MEASURED = '''
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
res = subprocess.run(sys.argv[1:], capture_output=True, text=True)
secs = time.perf_counter() - t0
if res.returncode not in (0, 1): sys.exit(res.stderr)
out = json.loads(res.stdout)
print(json.dumps({'seconds': secs, 'max_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  'drifted': [k for k, d in out['columns'].items() if d['drifted']], 'rows': out['window']['rows'],
                  'performance': out.get('performance')}))
'''


FLOOR = '''
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
subprocess.run([sys.executable, '-c', 'import mlnb.cli, mlnb.monitor; mlnb.cli._leave(0)'], check=True)
print(json.dumps({'seconds': time.perf_counter() - t0, 'max_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''


def sh(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def venv_python(venv: Path, what: str, packages: list) -> str:
    "The Python of a virtual environment with `packages` (made on first use)."
    py = venv / 'bin' / 'python'
    if not py.exists():
        print(f'installing {what} into {venv} (once)...', file=sys.stderr)
        sh([sys.executable, '-m', 'venv', str(venv)], '.', os.environ)
        sh([str(py), '-m', 'pip', 'install', '-q', *packages], '.', os.environ)
    return str(py)


BATCH = 100  # lines per write, as a service's batch


def write_log(path: Path, project: Path, tag: str, rows: int, chunk: int = 100_000, distinct: int = 1_000_000, truth: bool = True):
    "`rows` simulated customers with drift, predicted by model `tag`, logged as the service logs them (with the columnar copy), and their ground truth; returns the current frame (None past `distinct` rows)."
    sys.path.insert(0, str(project))
    import datetime as dt
    import bentoml, pandas as pd
    from churn.data import simulate
    from churn.features import prepare
    from mlnb.serving import JsonLinesLog, answers, feedback_lines, feedback_path
    model = bentoml.sklearn.load_model(tag)
    log, fb = JsonLinesLog(path, columnar=True), JsonLinesLog(feedback_path(path), columnar=True)
    frames, made, t = [], [], dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=rows // BATCH)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        if start < distinct:
            df = simulate(n, seed=1000 + start, drift=0.3)
            labels = df.pop('churned').tolist()
            ans, _ = answers(model, prepare(df), 'classifier', [0, 1])
            lines = df.to_json(orient='records', lines=True, date_format='iso', double_precision=15).splitlines()
            preds = [json.dumps(a) for a in ans]
            made.append((lines, preds, labels))
            if rows <= distinct: frames.append(df.assign(label=[a['label'] for a in ans], probability=[a['probability'] for a in ans], churned=labels))
        else: lines, preds, labels = made[(start // chunk) % len(made)]
        for b in range(0, n, BATCH):
            t += dt.timedelta(seconds=1)
            ts = json.dumps(t.isoformat())
            log.write(''.join(f'{{"request_id":"b{start + i}-0","ts":{ts},"model":"{tag}","variant":"champion","row":{lines[i]},'
                              f'"prediction":{preds[i]}}}\n' for i in range(b, min(b + BATCH, n))))
            if truth: fb.write(feedback_lines((f'b{start + i}-0', labels[i]) for i in range(b, min(b + BATCH, n))))
        log.copy.flush(); fb.copy.flush()  # this writer outpaces a service: let the copy keep up
    log.close(); fb.close()
    return pd.concat(frames, ignore_index=True) if frames else None


def write_cost(tmp: Path) -> dict:
    "CPU time per line of `JsonLinesLog.write`, with and without the columnar copy (its parsing thread included), for batches of 1 and of 100 service lines."
    from mlnb.serving import JsonLinesLog
    line = ('{"request_id":"0123456789abcdef0123-0","ts":"2026-12-05T10:00:00.123456+00:00","model":"churn:abcdefghijklmnop","variant":"champion",'
            '"row":{"customer_id":"C000123","snapshot_date":"2026-01-01T00:00:00.000","age":41.0,"tenure_months":17,"monthly_charges":70.35,'
            '"plan":"pro","support_calls":2,"region":"north","paperless":true,"payment":"card","contract":"monthly"},'
            '"prediction":{"label":0,"probability":0.2137,"probabilities":[0.7863,0.2137]}}\n')
    out = {}
    for batch, writes in ((1, 20_000), (100, 2_000)):
        for columnar in (False, True):
            p = tmp / f'cost-{batch}-{columnar}.jsonl'
            jl = JsonLinesLog(p, max_bytes=2**40, columnar=columnar)
            if columnar: jl.copy.backlog = 2**40  # every line copied, however fast this loop writes
            text = line * batch
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(writes): jl.write(text)
            w1 = time.perf_counter()
            jl.close()  # the copy's last segment
            out[(batch, columnar)] = {'cpu_us_per_line': (time.process_time() - c0) / (batch * writes) * 1e6,
                                      'wall_us_per_write': (w1 - w0) / writes * 1e6}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, default=1_000_000)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--evidently-venv', type=Path, default=Path(tempfile.gettempdir()) / 'mlnb-bench-evidently')
    ap.add_argument('--no-ground-truth', action='store_true', help='log no ground truth, and time drift only')
    ap.add_argument('--nannyml-venv', type=Path, default=Path(tempfile.gettempdir()) / 'mlnb-bench-nannyml')
    args = ap.parse_args()
    baselines = args.rows <= 2_000_000 and not args.no_ground_truth
    if baselines:
        # Evidently 0.7 and NannyML 0.13 import pandas helpers that pandas 3 removed
        ev_python = venv_python(args.evidently_venv, 'Evidently', ['evidently', 'pandas<3', 'pyarrow'])
        nml_python = venv_python(args.nannyml_venv, 'NannyML', ['nannyml', 'statsmodels', 'pandas<3', 'pyarrow'])  # (its plots import statsmodels, which it does not declare)
    tmp = Path(tempfile.mkdtemp(prefix='mlnb-monitor-bench-'))
    env = {**os.environ, 'BENTOML_HOME': str(tmp / 'bentoml'), 'NML_DISABLE_USAGE_LOGGING': '1'}
    os.environ['BENTOML_HOME'] = env['BENTOML_HOME']
    load = f'{os.getloadavg()[0]:.2f}'
    cost = write_cost(tmp)
    mlnb = str(Path(sys.executable).parent / 'mlnb')
    import compileall, mlnb as package
    compileall.compile_dir(str(Path(package.__file__).parent), quiet=1)
    sh([mlnb, 'new', str(tmp / 'churn')], tmp, env)
    proj = tmp / 'churn'
    sh([mlnb, 'run', '-q', '--engine', 'fast'], proj, env)
    tag = next(m['tag'] for m in json.loads(sh([mlnb, 'models', '--json'], proj, env)) if m['champion'])
    logs = tmp / 'logs'
    log = logs / 'predictions.jsonl'
    t0 = time.perf_counter()
    current = write_log(log, proj, tag, args.rows, truth=not args.no_ground_truth)
    from mlnb.events import log_files
    from mlnb.serving import columns_dir, feedback_path
    size = sum(f.stat().st_size for f in log_files(log))
    copy = sum(f.stat().st_size for f in columns_dir(log).glob('*.arrow'))
    print(f'setup: {args.rows} predictions written in {time.perf_counter() - t0:.0f} s ({size / 2**20:.0f} MiB of JSON lines in '
          f'{len(log_files(log))} files; columnar copy {copy / 2**20:.0f} MiB)', file=sys.stderr)
    os.environ['MLNB_PROJECT_ROOT'] = str(proj)
    if baselines:
        import mlnb as api
        from churn.features import prepare
        from mlnb.serving import answers
        import bentoml
        held = api.upstream('data')['test']
        truth = held.pop('churned').tolist()
        ref_ans, _ = answers(bentoml.sklearn.load_model(tag), prepare(held), 'classifier', [0, 1])
        held = held.assign(label=[a['label'] for a in ref_ans], probability=[a['probability'] for a in ref_ans], churned=truth)
        drop = ['customer_id', 'snapshot_date']  # keys and timestamps are not drift-tested by any of the tools
        held.drop(columns=drop).to_parquet(tmp / 'ref.parquet')
        current.drop(columns=drop).to_parquet(tmp / 'cur.parquet')
        del current

    first, plain, nxt = 'drift only, first run', 'drift only, first, JSON only', 'drift only, next run'
    gfirst, gnxt = 'ground truth too, first run', 'ground truth too, next run'
    ev, nml = 'Evidently DataDriftPreset', 'NannyML drift + performance'
    comp, same, joined = 'mlnb computation (check)', "mlnb computation, NannyML's work", "  the same, labels already joined"
    floor = 'start and imports alone'
    truthful = not args.no_ground_truth
    runs = {floor: [], first: [], plain: [], nxt: [], **({gfirst: []} if truthful else {}), **({gnxt: [], comp: [], same: [], joined: [], ev: [], nml: []} if baselines else {})}
    cmd = [sys.executable, '-c', MEASURED, mlnb, 'monitor', '--model', tag, '--log', str(log), '--last', str(args.rows), '--json']
    fb = feedback_path(log)
    copies = [columns_dir(log), *([columns_dir(fb)] if truthful else [])]
    away = tmp / 'away'
    away.mkdir()

    def measured(hide=()):
        "A run of the command, `hide` moved away meanwhile, with no cache."
        shutil.rmtree(proj / '.mlnb' / 'cache', ignore_errors=True)
        for p in hide: p.rename(away / p.name)
        try: return json.loads(sh(cmd, proj, env))
        finally:
            for p in hide: (away / p.name).rename(p)

    for _ in range(args.repeat):  # alternate, so the machine's noise is shared
        truth = [*log_files(fb), columns_dir(fb)] if truthful else []
        runs[floor].append(json.loads(sh([sys.executable, '-c', FLOOR], proj, env)))
        runs[first].append(measured(truth))
        for p in truth: p.rename(away / p.name)  # the next run, drift only
        try: runs[nxt].append(json.loads(sh(cmd, proj, env)))
        finally:
            for p in truth: (away / p.name).rename(p)
        runs[plain].append(measured([*truth[:-1], *copies]))
        if truthful: runs[gfirst].append(measured())
        if baselines:
            runs[gnxt].append(json.loads(sh(cmd, proj, env)))
            for k, how in ((comp, 'all'), (same, 'same'), (joined, 'joined')):
                runs[k].append(json.loads(sh([sys.executable, '-c', COMPUTE, tag, str(log), str(args.rows), how], proj, env)) | {'max_rss_mb': 0})
            runs[ev].append(json.loads(sh([ev_python, '-c', EVIDENTLY, str(tmp / 'ref.parquet'), str(tmp / 'cur.parquet')], tmp, env)))
            runs[nml].append(json.loads(sh([nml_python, '-c', NANNYML, str(tmp / 'ref.parquet'), str(tmp / 'cur.parquet')], tmp, env)))
    med = {k: statistics.median(r['seconds'] for r in v) for k, v in runs.items()}
    mem = {k: max(r['max_rss_mb'] for r in v) for k, v in runs.items()}
    for a, b in ((first, plain), (first, nxt), *([(first, gfirst)] if truthful else []), *([(gfirst, gnxt)] if baselines else [])):
        assert runs[a][0]['drifted'] == runs[b][0]['drifted'] and runs[a][0]['rows'] == runs[b][0]['rows'], b
    if baselines: assert runs[gfirst][0]['performance'] == runs[gnxt][0]['performance']
    cached = sum(f.stat().st_size for f in (proj / '.mlnb' / 'cache').rglob('*.arrow'))
    print(f"{os.cpu_count()} cores; load average before: {load}; after: {os.getloadavg()[0]:.2f}; reference: 1250 held-out rows; current: {args.rows} predictions; median of {args.repeat}\n")
    print(f"{'':34} {'seconds':>8} {'peak MiB':>9}" + (f" {'Evidently / this':>17} {'NannyML / this':>15}" if baselines else ''))
    for k in runs:
        print(f"{k:34} {med[k]:8.2f} {(f'{mem[k]:.0f}' if mem[k] else '-'):>9}" + (f" {med[ev] / med[k]:16.1f}x {med[nml] / med[k]:14.1f}x" if baselines else ''))
    if baselines: print(f"(start and imports alone: no end-to-end run can take less, so none can be more than {med[ev] / med[floor]:.1f}x Evidently)")
    print("(drift only: the feedback log moved away, so no realised performance: the work Evidently's preset does; "
          "ground truth too: the work NannyML's two calculators do)")
    if baselines:
        print(f"\nNannyML: drift {statistics.median(r['drift'] for r in runs[nml]):.2f} s, realised performance "
              f"{statistics.median(r['performance'] for r in runs[nml]):.2f} s ({runs[nml][0]['chunks']} chunks of the current rows)")
    if baselines:
        print(f"\nthe multivariate score and the estimate (CBPE) together: {med[comp] - med[same]:.2f} s of mlnb's computation "
              "(each alone, and the learned thresholds against fixed ones: bench/monitor_tests.py)")
    print(f"\nmlnb read and judged {runs[first][0]['rows']} rows end to end (JSON lines {size / 2**20:.0f} MiB, columnar copy "
          f"{copy / 2**20:.0f} MiB; the cache of the next runs: {cached / 2**20:.0f} MiB); drifted: {', '.join(runs[first][0]['drifted'])}.")
    if baselines: print("Evidently and NannyML were given the DataFrames in memory.")
    print('\nthe service writing its log (JsonLinesLog.write), CPU per line and wall time per write:')
    for (batch, columnar), c in cost.items():
        print(f"  batches of {batch:3} lines, {'with' if columnar else 'without'} the columnar copy: {c['cpu_us_per_line']:6.1f} us CPU per line, {c['wall_us_per_write']:7.1f} us per write")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
