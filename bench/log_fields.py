"""The cost of the guardrails' log fields: each prediction log line carries `latency_ms` (its model call's time) and, for a row the
challenger failed, `failed`. The service's runtime package (`mlnb/serving`, which imports nothing else of mlnb) is loaded twice in
one process: as it stands here, and as it stands at a baseline commit (default: `main`, read with `git show`); both answer the same
batches with the same models and write their log to a file of their own.

Measured per batch, the two answering each batch in turn (alternating which goes first), the median per round over ROUNDS rounds: the time of the answering work (`Runtime._work`: routing, the
model calls, the answers' JSON) plus the log lines' writing (`Runtime._after`), for a canary (two model calls per batch) of two small
logistic regressions on BATCH-row batches (a fast model: the fixed cost per batch shows most). Then the bytes per log line.

Usage: python bench/log_fields.py [--rounds 5] [--batches 2000] [--batch 10] [--base main]
"""
import argparse, importlib.util, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent


def load_serving(folder: Path, name: str):
    "The package in `folder` (mlnb/serving as files) imported as `name`."
    spec = importlib.util.spec_from_file_location(name, folder / '__init__.py', submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def baseline(commit: str, into: Path) -> Path:
    "mlnb/serving at `commit`, written into `into`."
    files = subprocess.run(['git', '-C', str(ROOT), 'ls-tree', '--name-only', commit, 'mlnb/serving/'], capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.endswith('.py'):
            (into / Path(f).name).write_bytes(subprocess.run(['git', '-C', str(ROOT), 'show', f'{commit}:{f}'], capture_output=True, check=True).stdout)
    return into


def runtime(pkg, models, log_path):
    fields = [{'name': 'a', 'type': 'float', 'nullable': False, 'dtype': 'float64'}, {'name': 'b', 'type': 'float', 'nullable': False, 'dtype': 'float64'}]
    cfg = {'model': 'demo:1', 'kind': 'classifier', 'classes': [0, 1], 'fields': fields,
           'variants': {'champion': {'model': 'demo:1'}, 'challenger': {'model': 'demo:2'}}, 'rollout': {'mode': 'canary', 'share': 0.5}}
    Row = pkg.requests.request_model(fields)
    return pkg.runtime.Runtime(cfg, models, log=pkg.logs.JsonLinesLog(log_path)), Row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--batches', type=int, default=2000)
    ap.add_argument('--batch', type=int, default=10)
    ap.add_argument('--base', default='main')
    a = ap.parse_args()
    X = pd.DataFrame({'a': [0.0, 1, 2, 3, 4, 5], 'b': [1.0, 0, 1, 0, 1, 0]})
    models = {'champion': LogisticRegression().fit(X, [0, 0, 0, 1, 1, 1]), 'challenger': LogisticRegression(C=0.1).fit(X, [0, 0, 1, 1, 1, 1])}
    g = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / 'base').mkdir()
        pkgs = {'baseline': load_serving(baseline(a.base, d / 'base'), 'serving_base'), 'here': load_serving(ROOT / 'mlnb' / 'serving', 'serving_here')}
        rts = {k: runtime(p, models, d / f'{k}.jsonl') for k, p in pkgs.items()}
        payloads = [[([rts['here'][1].model_validate({'a': float(x), 'b': 1.0}) for x in g.uniform(0, 5, a.batch)], None, None)] for _ in range(a.batches)]
        per = {k: [] for k in rts}
        for r in range(a.rounds):
            took = {k: [] for k in rts}
            for i, p in enumerate(payloads): # the two answer each batch in turn, in alternating order: paired, under the same load
                for k in (list(rts) if (i + r) % 2 else list(rts)[::-1]):
                    rt = rts[k][0]
                    t = time.perf_counter()
                    rt._after(p, rt._work(p))
                    took[k].append(time.perf_counter() - t)
            for k in rts: per[k].append(statistics.median(took[k]) * 1e6)
        for rt, _ in rts.values(): rt.close()
        size = {k: (d / f'{k}.jsonl').stat().st_size / sum(1 for _ in open(d / f'{k}.jsonl')) for k in rts}
    base, here = statistics.median(per['baseline']), statistics.median(per['here'])
    print(f"{a.batches} batches of {a.batch} rows, canary of two logistic regressions, {a.rounds} rounds (median of the rounds' median batch):")
    print(f"  baseline ({a.base}): {base:.1f} us per batch; here: {here:.1f} us per batch; ratio {here / base:.3f}")
    print(f"  log line: {size['baseline']:.0f} bytes at the baseline, {size['here']:.0f} bytes here (+{size['here'] - size['baseline']:.0f})")
    print(f"  all rounds (us per batch): baseline {[round(x, 1) for x in per['baseline']]}, here {[round(x, 1) for x in per['here']]}")


if __name__ == '__main__':
    main()
