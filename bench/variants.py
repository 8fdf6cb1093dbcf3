"""Champion against challenger on a window of many requests: `mlnb.monitor.compare_variants`, the comparison `mlnb monitor`
makes whenever the log holds a challenger's rows (a shadow or a canary build), against the joins any comparison needs.

Setup (not timed): REQUESTS simulated requests of a binary classifier, each answered by the champion and, in a shadow, also by
the challenger (2 x REQUESTS rows), or, in a canary, by one of the two (a fifth by the challenger); ground truth for 90% of
the requests, in another order. Request ids are text, as in a log.

Measured, in one process, median of REPEAT runs, alternated:
- mlnb: `compare_variants(events, ...)` with the gate's metric (accuracy, then ROC AUC): each variant's rows, answers, ground
  truth, realised metric, the shadow's agreement, and the significance test with its power calculation;
- baseline: the joins a pandas user writes for the same comparison, and nothing else: each variant's rows merged with the
  ground truth on the request id, and, in a shadow, the two variants' rows merged with each other.

Usage: python bench/variants.py [--requests 1000000] [--repeat 3] [--mlnb-src DIR]
(--mlnb-src: import mlnb from another checkout, to time two commits on the same machine)
"""
import argparse, statistics, sys, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--requests', type=int, default=1_000_000)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--mlnb-src', default=None)
    args = ap.parse_args()
    if args.mlnb_src: # an editable install's finder comes before sys.path: take it away
        sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]
        sys.path.insert(0, args.mlnb_src)
    import numpy as np, pandas as pd
    import mlnb
    from mlnb.config import GateConfig, MonitorConfig
    from mlnb.monitor import compare_variants
    ts = pd.Timestamp('2026-11-21', tz='UTC')

    def window(n, canary, seed=3):
        g = np.random.default_rng(seed)
        y = g.integers(0, 2, n)
        rid = np.array([f'q{i:07d}-{seed}' for i in range(n)], dtype=object)
        right, split = {'m:1': g.random(n) < 0.80, 'm:2': g.random(n) < 0.81}, g.random(n) < 0.2
        rows = []
        for tag, variant in (('m:1', 'champion'), ('m:2', 'challenger')):
            mine = split == (variant == 'challenger') if canary else np.ones(n, dtype=bool)
            p = np.where(right[tag], y, 1 - y)[mine]
            rows.append(pd.DataFrame({'request_id': pd.Series(rid[mine], dtype='str'), 'ts': ts, 'model': tag, 'variant': variant,
                                      'prediction.label': p, 'prediction.probability': np.clip(p * 0.7 + g.random(mine.sum()) * 0.3, 0, 1)}))
        truth = pd.DataFrame({'request_id': pd.Series(rid, dtype='str'), 'label': y, 'ts': ts})
        return pd.concat(rows, ignore_index=True), truth.iloc[g.permutation(n)[:int(n * 0.9)]].reset_index(drop=True)

    def joins(events, truth, shadow):
        a, b = (events[(events['variant'] == v).to_numpy()] for v in ('champion', 'challenger'))
        out = [a.merge(truth, on='request_id'), b.merge(truth, on='request_id')]
        if shadow: out.append(a.merge(b, on='request_id'))
        return out

    print(f"mlnb from {mlnb.__file__}; {args.requests} requests; median of {args.repeat}\n")
    print(f"{'':28} {'mlnb s':>8} {'joins s':>8} {'mlnb / joins':>13}")
    for canary in (False, True):
        events, truth = window(args.requests, canary)
        for metric in ('accuracy', 'roc_auc'):
            took, base = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = compare_variants(events, 'm:1', 'classifier', [0, 1], truth, GateConfig(metric=metric), MonitorConfig())
                took.append(time.perf_counter() - t)
                t = time.perf_counter()
                joins(events, truth, not canary)
                base.append(time.perf_counter() - t)
            assert r['mode'] == ('canary/ab' if canary else 'shadow') and r['statistics'] is not None
            m, j = statistics.median(took), statistics.median(base)
            print(f"{('canary' if canary else 'shadow') + ', ' + metric:28} {m:8.2f} {j:8.2f} {m / j:12.2f}x")
    print(f"\n({len(events)} rows in the canary's window, {2 * args.requests} in the shadow's)")


if __name__ == '__main__':
    main()
