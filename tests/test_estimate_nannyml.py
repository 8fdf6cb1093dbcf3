"""mlnb's realised metrics, bands and estimates (mlnb.estimate) against NannyML's, chunk by chunk, on NannyML's own synthetic
data sets: a multiclass classifier (credit card products) and a regressor (car prices). NannyML runs in an environment of
its own (tests/nannyml_ref.py); both sides read the same parquet files and judge the same rows in each chunk."""
import math

import numpy as np
import pandas as pd
import pytest

from mlnb.estimate import CBPE, DLE, metric_band
from mlnb.monitor import score
from nannyml_ref import Unavailable, datasets, run

SIGMAS = 3.0 # NannyML's default band
CLASSIFIERS = { # NannyML's data set -> its chunk size (10 chunks of the reference and 10 of the analysis rows), target column, classes
    'car_loan': (5000, 'repaid', 'binary'), 'multiclass': (6000, 'y_true', 'multiclass')}
METRICS = {'binary': {'roc_auc': 'roc_auc', 'f1': 'f1', 'precision': 'precision', 'recall': 'recall', 'accuracy': 'accuracy'}, # NannyML's name -> mlnb's
           'multiclass': {'roc_auc': 'roc_auc', 'f1': 'f1_macro', 'precision': 'precision_macro', 'recall': 'recall_macro', 'accuracy': 'accuracy'}}

CLASSIFIER = """
ref = inputs['reference']
ana = inputs['analysis'].merge(inputs['analysis_targets'], on='id', how='left')
binary = len(args['classes']) == 2
kw = dict(y_pred_proba='y_pred_proba' if binary else {c: f'y_pred_proba_{c}' for c in args['classes']}, y_pred='y_pred', y_true=args['target'],
          problem_type='classification_binary' if binary else 'classification_multiclass', chunk_size=args['chunk_size'], metrics=args['metrics'])
result = {'realised': frame_records(nml.PerformanceCalculator(**kw).fit(ref).calculate(ana).to_df()),
          'estimated': frame_records(nml.CBPE(**kw).fit(ref).estimate(ana).to_df())}
"""

REGRESSOR = """
ref = inputs['reference']
ana = inputs['analysis'].merge(inputs['analysis_targets'], on='id', how='left')
kw = dict(y_pred='y_pred', y_true='y_true', chunk_size=args['chunk_size'], metrics=['mae', 'rmse'])
result = {'realised': frame_records(nml.PerformanceCalculator(problem_type='regression', **kw).fit(ref).calculate(ana).to_df()),
          'estimated': frame_records(nml.DLE(feature_column_names=args['features'], **kw).fit(ref).estimate(ana).to_df())}
"""


@pytest.fixture(scope='module')
def files():
    try: return datasets()
    except Unavailable as e: pytest.skip(str(e))


def frames(files, name):
    "(reference, analysis with its targets) of one of NannyML's data sets, as mlnb reads them."
    ref = pd.read_parquet(files[f'{name}_reference'])
    ana = pd.read_parquet(files[f'{name}_analysis']).merge(pd.read_parquet(files[f'{name}_analysis_targets']), on='id', how='left')
    return ref, ana


def nannyml(files, name, snippet, **args):
    return run(snippet, {part: files[f'{name}_{part}'] for part in ('reference', 'analysis', 'analysis_targets')}, args)


def chunks(records, period, size):
    "NannyML's chunks of `period` as (row slice, record): ten of `size` rows."
    rows = [r for r in records if r['chunk.period'] == period]
    assert len(rows) == 10 and all(r['chunk.end_index'] - r['chunk.start_index'] + 1 == size for r in rows), rows[:1]
    return [(slice(r['chunk.start_index'], r['chunk.end_index'] + 1), r) for r in rows]


def close(a, b, tol=1e-9):
    "Equal to `tol`, relative to the size of `b` when it is above 1 (a car's price)."
    return a is not None and b is not None and abs(a - b) <= tol * max(1.0, abs(b))


def check_realised(nml, frames_by_period, realised, metrics, size):
    "mlnb's realised metric of every chunk, reference and analysis, and its band, are NannyML's."
    for metric in metrics:
        mine = {}
        for period, df in frames_by_period.items():
            mine[period] = [(realised(df.iloc[rows], metric), r[f'{metric}.value']) for rows, r in chunks(nml['realised'], period, size)]
            assert all(close(a, b) for a, b in mine[period]), (metric, period, mine[period])
        band = metric_band([a for a, _ in mine['reference']], SIGMAS, metrics[metric])
        first = chunks(nml['realised'], 'analysis', size)[0][1]
        assert close(band[0], first[f'{metric}.lower_threshold']) and close(band[1], first[f'{metric}.upper_threshold']), (band, first)


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_classifier_realised_band_and_cbpe_as_nannyml(files, name):
    size, target, kind = CLASSIFIERS[name]
    metrics = METRICS[kind]
    ref, ana = frames(files, name)
    classes = sorted(ref[target].unique().tolist())
    cols = ['y_pred_proba'] if kind == 'binary' else [f'y_pred_proba_{c}' for c in classes]
    proba = lambda df: df['y_pred_proba'].to_numpy() if kind == 'binary' else df[cols].to_numpy()
    nml = nannyml(files, name, CLASSIFIER, classes=classes, target=target, chunk_size=size, metrics=list(metrics))

    def realised(df, metric):
        p = proba(df)
        return score(metrics[metric], df[target].to_numpy(), df[['y_pred']].rename(columns={'y_pred': 'prediction.label'}), classes,
                     np.c_[1 - p, p] if kind == 'binary' else p)[0]

    check_realised(nml, {'reference': ref, 'analysis': ana}, realised, metrics, size)

    # CBPE from the probabilities alone: NannyML's estimate (the same calibration, the same expected confusion matrix), so it
    # tracks the realised metric exactly as closely as NannyML's own
    cbpe = CBPE.fit(ref[target].to_numpy(), proba(ref), classes)
    est = chunks(nml['estimated'], 'analysis', size)
    for metric, ours_name in metrics.items():
        ours = np.array([cbpe.estimate(proba(ana.iloc[rows]), ours_name, labels=ana.iloc[rows]['y_pred'].to_numpy())[0] for rows, _ in est])
        theirs = np.array([r[f'{metric}.value'] for _, r in est])
        truth = np.array([r[f'{metric}.realized'] for _, r in est])
        assert np.allclose(truth, [realised(ana.iloc[rows], metric) for rows, _ in est], rtol=0, atol=1e-9)
        assert np.abs(ours - theirs).max() < 1e-9, (metric, ours, theirs)
        assert np.abs(ours - truth).mean() <= np.abs(theirs - truth).mean() + 1e-9, (metric, ours, theirs, truth)


def test_car_price_realised_band_and_dle_as_nannyml(files):
    ref, ana = frames(files, 'car_price')
    features = ['car_age', 'km_driven', 'price_new', 'accident_count', 'door_count', 'fuel', 'transmission']
    size = 6000
    nml = nannyml(files, 'car_price', REGRESSOR, features=features, chunk_size=size)

    def realised(df, metric):
        return score(metric, df['y_true'].to_numpy(), df[['y_pred']].rename(columns={'y_pred': 'prediction.value'}))[0]

    check_realised(nml, {'reference': ref, 'analysis': ana}, realised, {'mae': 'mae', 'rmse': 'rmse'}, size)

    # DLE from the features and predictions alone: as near the realised metric as NannyML's DLE (LightGBM there,
    # scikit-learn's gradient boosting here) give or take a sampling error, near NannyML's estimate, and it sees the
    # second half's lower error
    dle = DLE.fit(ref[features], ref['y_pred'], ref['y_true'])
    est = chunks(nml['estimated'], 'analysis', size)
    for metric in ('mae', 'rmse'):
        ours = np.array([dle.estimate(ana.iloc[rows][features], ana.iloc[rows]['y_pred'], metric)[0] for rows, _ in est])
        theirs = np.array([r[f'{metric}.value'] for _, r in est])
        truth = np.array([r[f'{metric}.realized'] for _, r in est])
        sampling = np.array([r[f'{metric}.sampling_error'] for _, r in est])
        assert np.abs(ours - truth).mean() <= np.abs(theirs - truth).mean() + sampling.mean(), (metric, ours, theirs, truth, sampling)
        assert (np.abs(ours - theirs) / theirs).max() < 0.01, (metric, ours, theirs)
        assert ours[5:].mean() < ours[:5].mean() - 10 * sampling.mean() and truth[5:].mean() < truth[:5].mean() - 10 * sampling.mean(), (ours, truth)
