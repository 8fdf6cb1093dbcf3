"""Decision quality of `mlnb loop`, by simulation (no server): the false promotion rate of A/A rollouts, and the labelled rows a truly better
challenger needs before it is promoted, against the power calculation's prediction.

Each simulated rollout goes through `[tool.mlnb.loop] stages` as `mlnb loop` does: at every pass (a "look") a batch of labelled rows arrives,
`mlnb.compare.compare` tests the gate's metric on the stage's rows (paired in the shadow, each variant's own rows in a canary) and
`mlnb.decide.decide_stage` says wait, advance, promote or roll back. Nothing is re-implemented: the bench calls the loop's own functions.

The metric is accuracy; the champion is right on a share `--p0` of the rows. In the shadow both answer the same rows and agree on 90% of
them; in a canary each answers its own rows. A/A: the challenger is exactly as good. Better: its accuracy is higher by `min_effect`.
The power calculation's prediction is the classic fixed-sample one for the deciding stage's split (two independent proportions, or the
paired design in a shadow-only rollout): n = (z(1-alpha/2) + z(power))^2 * (variance of one row's difference) / min_effect^2.

Usage: python bench/loop.py [--rollouts 500] [--min-effect 0.02] [--p0 0.8] [--look 500] [--min-rows 1000] [--stages shadow,0.05,0.25,0.5,1.0]
"""
import argparse, json, math, statistics, time
from statistics import NormalDist

import numpy as np

from mlnb.compare import compare
from mlnb.config import LoopConfig
from mlnb.decide import decide_stage, deciding_stage, next_stage

AGREE = 0.9  # in the shadow, the share of rows where the challenger's rightness copies the champion's


def rows(rng, n, p0, p1, paired):
    "Rightness (1: right) of the champion and the challenger on `n` labelled rows of each (paired: the same rows)."
    a = (rng.random(n) < p0).astype(np.int8)
    if paired:  # copy the champion on AGREE of the rows, else right with a probability that gives the challenger the share p1
        q = (p1 - AGREE * p0) / (1 - AGREE)
        b = np.where(rng.random(n) < AGREE, a, (rng.random(n) < q).astype(np.int8))
        return a, b
    return a, (rng.random(n) < p1).astype(np.int8)


def rollout(rng, cfg: LoopConfig, p0: float, p1: float, look: int) -> dict:
    "One simulated rollout: its outcome, the stage it ended in, the labelled rows of every stage, and the deciding stage's horizon."
    d, stage, total, looks = cfg.decide, cfg.stages[0], 0, 0
    last = deciding_stage(cfg.stages)
    while True:
        paired = stage == 'shadow'
        ch_a, ch_b, own_a, own_b = [], [], [], []
        horizon = None
        while True:
            looks += 1
            if paired:
                a, b = rows(rng, look, p0, p1, True)
                ch_a.append(a); ch_b.append(b)
                A, B = np.concatenate(ch_a), np.concatenate(ch_b)
                t = compare('accuracy', np.ones(len(A), np.int8), A, B, None, [0, 1], 'maximize', d['alpha'], d['power'], d['min_effect'])
            else:  # the challenger answers `look` rows, the champion the rest of the traffic
                other = max(1, round(look * (1 - stage) / stage))
                own_a.append((rng.random(other) < p0).astype(np.int8)); own_b.append((rng.random(look) < p1).astype(np.int8))
                A, B = np.concatenate(own_a), np.concatenate(own_b)
                t = compare('accuracy', np.ones(len(A), np.int8), A, B, np.ones(len(B), np.int8), [0, 1], 'maximize', d['alpha'], d['power'], d['min_effect'])
            r = decide_stage(stage, stage == last, t, {}, math.inf, cfg, horizon)
            horizon = r['horizon']
            if r['action'] != 'wait': break
        total += t['rows']
        if r['action'] == 'advance' and stage != last:
            stage = next_stage(cfg.stages, stage)
            continue
        return {'action': r['action'], 'stage': stage, 'rows': total, 'last_rows': t['rows'], 'horizon': horizon, 'looks': looks,
                'harm': r['action'] == 'rollback' and stage != last or (r['action'] == 'rollback' and horizon is not None and t['rows'] < horizon)}


def predicted(cfg: LoopConfig, p0: float, p1: float) -> int:
    "The fixed-sample power calculation for the deciding stage: labelled rows (both variants) to detect p1 - p0 at alpha with power."
    d, s = cfg.decide, deciding_stage(cfg.stages)
    z = NormalDist().inv_cdf(1 - d['alpha'] / 2) + NormalDist().inv_cdf(d['power'])
    if s == 'shadow':  # per paired row: the variance of (b - a)
        q = (p1 - AGREE * p0) / (1 - AGREE)
        disagree = (1 - AGREE) * (p0 * (1 - q) + (1 - p0) * q)
        var = disagree - (p1 - p0) ** 2
        return math.ceil(z * z * var / d['min_effect'] ** 2)
    var = p0 * (1 - p0) / (1 - s) + p1 * (1 - p1) / s  # per row of traffic, a share s of it the challenger's
    return math.ceil(z * z * var / d['min_effect'] ** 2)


def run(cfg, p0, p1, n, look, seed):
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    out = [rollout(rng, cfg, p0, p1, look) for _ in range(n)]
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    for name, default in (('rollouts', 500), ('alpha', 0.05), ('min-effect', 0.02), ('power', 0.8), ('p0', 0.8), ('min-rows', 1000), ('seed', 0),
                          ('look', 500), ('stages', 'shadow,0.05,0.25,0.5,1.0')): # look: labelled rows of the challenger between two passes
        ap.add_argument(f'--{name}', type=type(default), default=default)
    a = ap.parse_args()
    stages = [s if s == 'shadow' else float(s) for s in a.stages.split(',')]
    cfg = LoopConfig(stages=stages, min_rows=a.min_rows, min_time='1s', decide={'alpha': a.alpha, 'min_effect': a.min_effect, 'power': a.power})
    aa, t_aa = run(cfg, a.p0, a.p0, a.rollouts, a.look, a.seed)
    better, t_b = run(cfg, a.p0, a.p0 + a.min_effect, a.rollouts, a.look, a.seed + 1)
    share = lambda rs, act: sum(r['action'] == act for r in rs) / len(rs)
    prom = [r for r in better if r['action'] == 'promote']
    pred = predicted(cfg, a.p0, a.p0 + a.min_effect)
    res = {'settings': {'rollouts': a.rollouts, 'alpha': a.alpha, 'min_effect': a.min_effect, 'power': a.power, 'p0': a.p0, 'look': a.look,
                        'min_rows': a.min_rows, 'stages': stages, 'deciding_stage': deciding_stage(stages)},
           'aa': {'promoted': share(aa, 'promote'), 'rolled_back': share(aa, 'rollback'),
                  'rolled_back_before_the_horizon': sum(r['harm'] for r in aa) / len(aa),
                  'median_looks': statistics.median(r['looks'] for r in aa), 'seconds': round(t_aa, 1)},
           'better': {'promoted': share(better, 'promote'), 'rolled_back_before_the_horizon': sum(r['harm'] for r in better) / len(better),
                      'median_rows_to_promotion_all_stages': statistics.median(r['rows'] for r in prom) if prom else None,
                      'median_rows_of_the_deciding_stage': statistics.median(r['last_rows'] for r in prom) if prom else None,
                      'median_horizon': statistics.median(r['horizon'] for r in better if r['horizon']) if any(r['horizon'] for r in better) else None,
                      'power_calculation_rows': pred, 'seconds': round(t_b, 1)}}
    b = res['better']
    if b['median_rows_of_the_deciding_stage']: b['deciding_stage_rows_over_prediction'] = round(b['median_rows_of_the_deciding_stage'] / pred, 3)
    print(json.dumps(res, indent=1))
    ok = res['aa']['promoted'] <= a.alpha
    print(f"A/A: {res['aa']['promoted']:.1%} promoted (alpha {a.alpha}: {'within' if ok else 'ABOVE'}); better by {a.min_effect}: "
          f"{b['promoted']:.1%} promoted, median {b['median_rows_of_the_deciding_stage']} labelled rows in the deciding stage against "
          f"{pred} predicted by the power calculation ({b.get('deciding_stage_rows_over_prediction')}x); "
          f"{b['median_rows_to_promotion_all_stages']} over all stages.")


if __name__ == '__main__':
    main()
