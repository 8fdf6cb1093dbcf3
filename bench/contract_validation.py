"""Contract validation cost: mlnb.contract.check against pandera's own validate, same schema, same run.

For 10^4, 10^5 and 10^6 rows x 20 columns (8 float, 4 int, 6 categorical strings, a unique id,
a timestamp), the schema is inferred once by mlnb; then, alternating to share the machine's noise:
pandera `schema.validate(df, lazy=True)`, `mlnb.contract.check(df, schema)`, and
`mlnb.contract.check(df, "bench")` (the contract read from contracts/bench.yaml). Also reported:
`mlnb.contract.profile(df)`.

Usage: python bench/contract_validation.py [--repeat N] [--max-rows N]
"""
import argparse, statistics, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd

from mlnb import contract


def frame(n, rng):
    d = {f'f{i}': rng.normal(i, 1 + i, n) for i in range(8)}
    d.update({f'i{i}': rng.integers(0, 100 * (i + 1), n) for i in range(4)})
    d.update({f'c{i}': pd.array(rng.choice([f'v{j}' for j in range(3 + i)], n), dtype='str') for i in range(6)})
    d['id'] = pd.array([f'id{j}' for j in range(n)], dtype='str')
    d['ts'] = pd.Timestamp.now().normalize() - pd.to_timedelta(rng.integers(0, 5, n), unit='D')
    return pd.DataFrame(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--max-rows', type=int, default=1_000_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp())
    print(f"{'rows':>9} {'pandera validate':>17} {'mlnb check(schema)':>19} {'ratio':>6} {'mlnb check(name)':>17} {'ratio':>6} {'profile':>9}")
    n = 10_000
    while n <= args.max_rows:
        df = frame(n, rng)
        schema = contract.infer(df, 'bench', keys=['id'], freshness=('ts', '30D'), overwrite=True, root=root)
        contract.check(df, 'bench', root=root)  # warm-up (and reads the YAML once)
        t = {'pandera': [], 'schema': [], 'name': [], 'profile': []}
        for _ in range(args.repeat):
            for k, fn in (('pandera', lambda: schema.validate(df, lazy=True)),
                          ('schema', lambda: contract.check(df, schema)),
                          ('name', lambda: contract.check(df, 'bench', root=root)),
                          ('profile', lambda: contract.profile(df))):
                t0 = time.perf_counter(); fn(); t[k].append(time.perf_counter() - t0)
        m = {k: statistics.median(v) for k, v in t.items()}
        print(f"{n:>9} {m['pandera']:>16.3f}s {m['schema']:>18.3f}s {m['schema'] / m['pandera']:>5.2f}x "
              f"{m['name']:>16.3f}s {m['name'] / m['pandera']:>5.2f}x {m['profile']:>8.3f}s")
        n *= 10


if __name__ == '__main__':
    main()
