"""mlnb's drift verdicts per column and chunk against NannyML's univariate drift alerts, on NannyML's own synthetic data sets:
a multiclass classifier (credit card products) and a regressor (car prices). Both judge the same rows in each chunk, with the
same method (Jensen-Shannon distance) and the same column kinds; mlnb's thresholds are learned as `mlnb monitor` learns them
(each reference chunk left out of the reference it is scored against, and random samples beside the contiguous chunks), NannyML's
by its default (mean + 3 standard deviations of the reference chunks scored in the reference). NannyML runs in an environment
of its own (tests/nannyml_ref.py)."""
import pandas as pd
import pytest

from mlnb.config import MonitorConfig
from mlnb.drift import chunk_slices, column_kind, column_reference
from mlnb.monitor import chunked_drift
from nannyml_ref import Unavailable, datasets, run

SETS = { # NannyML's data set -> its features (10 chunks of 6,000 rows in the reference and in the analysis rows)
    'multiclass': ['acq_channel', 'app_behavioral_score', 'requested_credit_limit', 'app_channel', 'credit_bureau_score', 'stated_income', 'is_customer'],
    'car_price': ['car_age', 'km_driven', 'price_new', 'accident_count', 'door_count', 'fuel', 'transmission']}
SIZE = 6000

DRIFT = """
calc = nml.UnivariateDriftCalculator(column_names=args['columns'], treat_as_categorical=args['categorical'], treat_as_numerical=args['numeric'],
                                     chunk_size=args['chunk_size'], continuous_methods=['jensen_shannon'], categorical_methods=['jensen_shannon'])
df = calc.fit(inputs['reference']).calculate(inputs['analysis']).filter(period='analysis').to_df()
result = {c: {'value': df[(c, 'jensen_shannon', 'value')].tolist(), 'threshold': df[(c, 'jensen_shannon', 'upper_threshold')].tolist(),
              'alert': df[(c, 'jensen_shannon', 'alert')].tolist()} for c in args['columns']}
"""


@pytest.fixture(scope='module')
def files():
    try: return datasets()
    except Unavailable as e: pytest.skip(str(e))


@pytest.mark.parametrize('name', SETS)
def test_drift_verdicts_agree_with_nannyml(files, name):
    columns = SETS[name]
    ref, ana = pd.read_parquet(files[f'{name}_reference']), pd.read_parquet(files[f'{name}_analysis'])
    kinds = {c: column_kind(ref[c]) for c in columns}
    assert set(kinds.values()) == {'numeric', 'categorical'}, kinds
    theirs = run(DRIFT, {'reference': files[f'{name}_reference'], 'analysis': files[f'{name}_analysis']},
                 {'columns': columns, 'chunk_size': SIZE, 'categorical': [c for c, k in kinds.items() if k == 'categorical'],
                  'numeric': [c for c, k in kinds.items() if k == 'numeric']})
    slices = chunk_slices(len(ana), SIZE)
    assert len(slices) == 10
    cells = agree = 0
    both = {}
    for c in columns:
        mine = chunked_drift(ana[c], column_reference(ref[c], kinds[c]), ref[c], slices, MonitorConfig(chunk=SIZE), small=False)
        assert mine['thresholds'] == 'learned' and mine['method'] == 'jensen_shannon'
        # the same distance, chunk by chunk: the bins and the leftover bin are NannyML's
        assert all(abs(a['score'] - b) < 1e-9 for a, b in zip(mine['chunks'], theirs[c]['value'])), (c, mine['chunks'], theirs[c]['value'])
        verdicts = [(a['drifted'], bool(b)) for a, b in zip(mine['chunks'], theirs[c]['alert'])]
        both[c] = verdicts
        cells += len(verdicts)
        agree += sum(x == y for x, y in verdicts)
    assert cells == 10 * len(columns)
    print(f'{name}: {agree} of {cells} (column, chunk) verdicts agree with NannyML; drifted by mlnb {sum(x for v in both.values() for x, _ in v)}, by NannyML {sum(y for v in both.values() for _, y in v)}')
    assert agree / cells >= 0.95, (agree, cells, both)
    assert any(x for v in both.values() for x, _ in v), 'the data sets drift: some cells must be drifted'
