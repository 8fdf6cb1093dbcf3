"""The cost of judging a window in chunks: `mlnb.monitor.check` on the same rows with the thresholds of before (fixed, the
window judged as one block, no reference rows), with thresholds learned from the reference rows per chunk, and with the
multivariate score on top; each as a ratio to the first, run in turns in one process (machines are shared and noisy).

The rows are simulated (not timed): a reference of REF held-out rows and a window of ROWS predictions with 6 numeric and 5
categorical request columns, a binary classifier's answers, in 10 chunks. Only `check` is timed: reading the log is the
same for all three (see bench/monitor.py for a whole `mlnb monitor` run).

Usage: python bench/monitor_tests.py [--rows 1000000] [--ref 1250] [--repeat 5]
"""
import argparse, json, statistics, time

import numpy as np
import pandas as pd

from mlnb.config import MonitorConfig
from mlnb.drift import reference as freeze, reference_rows
from mlnb.monitor import check


def frame(rng, n, shift=0.0):
    d = {f'n{i}': rng.normal(shift, 1, n) for i in range(6)}
    d.update({f'c{i}': rng.choice(list('abcdef'), n) for i in range(5)})
    return pd.DataFrame(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, default=1_000_000)
    ap.add_argument('--ref', type=int, default=1250)
    ap.add_argument('--repeat', type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    ref = frame(rng, a.ref)
    fields = [{'name': c, 'type': 'float' if c[0] == 'n' else 'str'} for c in ref]
    p = 1 / (1 + np.exp(-ref['n0'].to_numpy()))
    answers = [{'label': int(q > .5), 'probability': float(q), 'probabilities': [1 - float(q), float(q)]} for q in p]
    labelled = ref.assign(label=(rng.random(a.ref) < p).astype(int))
    summary = {**freeze(labelled, fields, answers, 'classifier', 'label'), 'classes': [0, 1]}
    rows = reference_rows(labelled, fields, answers, 'classifier', 'label')
    cur = frame(rng, a.rows, 0.05)
    q = 1 / (1 + np.exp(-cur['n0'].to_numpy()))
    ev = pd.DataFrame({f'row.{c}': cur[c] for c in cur})
    ev['prediction.label'], ev['prediction.probability'] = (q > .5).astype(int), q
    ev['request_id'] = [f'r{i}' for i in range(a.rows)]
    ev['ts'] = pd.Timestamp('2026-01-01', tz='UTC') + pd.to_timedelta(np.arange(a.rows), unit='s')
    ev['model'], ev['variant'] = 'm', 'champion'
    ways = {'fixed thresholds (per chunk and the window)': (MonitorConfig(thresholds='fixed', multivariate=False, estimate=False), None),
            'learned thresholds per chunk': (MonitorConfig(multivariate=False, estimate=False), rows),
            'learned + multivariate': (MonitorConfig(estimate=False), rows),
            'learned + multivariate + CBPE estimate': (MonitorConfig(), rows)}
    times = {k: [] for k in ways}
    for _ in range(a.repeat):
        for name, (cfg, r) in ways.items():
            t = time.perf_counter()
            check(ev, summary, cfg, metric='roc_auc', classes=[0, 1], rows=r)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times[next(iter(ways))])
    out = {k: {'seconds': round(statistics.median(v), 3), 'ratio': round(statistics.median(v) / base, 2)} for k, v in times.items()}
    print(json.dumps({'rows': a.rows, 'reference': a.ref, 'repeat': a.repeat, 'median': out}, indent=1))


if __name__ == '__main__':
    main()
