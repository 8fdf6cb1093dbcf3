"""NannyML as a reference for the tests: a virtual environment of its own (NannyML needs pandas below 3 and is never a
dependency of mlnb), NannyML's synthetic data sets as parquet files, and NannyML code run there on parquet files, with a
JSON answer.

    from nannyml_ref import Unavailable, datasets, run
    files = datasets()                      # {'multiclass_reference': Path(...parquet), ...}: see SETS
    rows = run(SNIPPET, {'reference': files['multiclass_reference']}, {'chunk_size': 6000})

A snippet is Python run in NannyML's environment with `nml` (nannyml), `pd`, `np`, `inputs` (name -> DataFrame read
from the parquet files) and `args` (JSON data) defined; it sets `result` to anything JSON can hold (NumPy numbers,
DataFrames and NaN are turned into plain numbers, lists of records and null). `frame_records(df)` flattens a NannyML
result's two-level columns ('roc_auc', 'value') into 'roc_auc.value'.

The environment is made once per machine in $MLNB_NANNYML_VENV (default /tmp/mlnb-nannyml-venv) and reused;
`Unavailable` is raised only when it does not exist and the package index cannot be reached to make it.
"""
import json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

from side_venv import Unavailable, ensure

VENV = Path(os.environ.get('MLNB_NANNYML_VENV', '/tmp/mlnb-nannyml-venv'))
NANNYML = '0.13.1'
# NannyML's dependencies as its pyproject declares them, less what these tests never touch and that would triple the time to
# make the environment: the cloud file systems (gcsfs, s3fs), plot export (kaleido), and the GPU build of XGBoost that FLAML's
# automl extra brings (about 800 MB; xgboost-cpu gives FLAML the `xgboost` it imports). statsmodels: NannyML imports it
# without declaring it.
DEPENDENCIES = ['pandas>=1.4,<3', 'numpy>=1.23', 'scipy>=1.9.2', 'scikit-learn>=1.3', 'pyarrow>=13', 'python-dateutil>=2.8,<3',
                'joblib>=1.1,<2', 'category-encoders>=2.3,<3', 'matplotlib>=3.7,<4', 'plotly>=5.6,<6', 'seaborn>=0.13,<0.14',
                'pydantic>=2.7', 'rich>=12.5', 'click>=8.1,<9', 'PyYAML>=6,<7', 'Jinja2>=3.1', 'pyfiglet>=0.8.post1,<0.9',
                'lightgbm>=3.3,<4.6', 'flaml>=2.3.3,<3', 'xgboost-cpu', 'fsspec', 'APScheduler>=3.9,<4',
                'segment-analytics-python>=2.3,<3', 'python-dotenv>=1,<2', 'statsmodels']
ENV = {**os.environ, 'NML_DISABLE_USAGE_LOGGING': '1', 'PYTHONWARNINGS': 'ignore'}


def _python() -> Path: return VENV / 'bin' / 'python'


def _works() -> bool:
    if not _python().exists(): return False
    r = subprocess.run([_python(), '-c', f'import nannyml, pandas; assert nannyml.__version__ == {NANNYML!r}, nannyml.__version__; '
                        'assert int(pandas.__version__.split(".")[0]) < 3'], capture_output=True, env=ENV, timeout=300)
    return r.returncode == 0


def python() -> Path:
    "The python of NannyML's environment, made first when it is missing or broken (several test processes wait for one to make it)."
    return ensure(VENV, _works, [['--no-deps', f'nannyml=={NANNYML}'], DEPENDENCIES], 'nannyml', timeout=1200) / 'bin' / 'python'


def run(snippet: str, # NannyML code that sets `result`
        inputs: dict | None = None, # name -> parquet file, read into `inputs[name]`
        args: dict | None = None, # JSON data, as `args`
        timeout: float = 600,
       ):
    "The `result` of `snippet` run in NannyML's environment, as JSON data."
    py = python()
    with tempfile.TemporaryDirectory(prefix='mlnb-nannyml-') as tmp:
        spec, out, code = Path(tmp) / 'spec.json', Path(tmp) / 'result.json', Path(tmp) / 'snippet.py'
        code.write_text(snippet)
        spec.write_text(json.dumps({'code': str(code), 'inputs': {k: str(v) for k, v in (inputs or {}).items()},
                                    'args': args or {}, 'out': str(out)}))
        r = subprocess.run([py, __file__, str(spec)], capture_output=True, text=True, env=ENV, timeout=timeout)
        if r.returncode or not out.exists():
            raise RuntimeError(f"The NannyML snippet failed (exit code {r.returncode}):\n{r.stderr[-5000:]}")
        return json.loads(out.read_text())


SETS = ('car_loan', 'multiclass', 'car_price') # NannyML's synthetic binary classifier, multiclass classifier, regressor
EXPORT = """
out = {}
for name, load in [('car_loan', nml.load_synthetic_car_loan_dataset), ('multiclass', nml.load_synthetic_multiclass_classification_dataset),
                   ('car_price', nml.load_synthetic_car_price_dataset)]:
    for part, df in zip(('reference', 'analysis', 'analysis_targets'), load()):
        path = f"{args['folder']}/{name}_{part}.parquet"
        df.to_parquet(path, index=False)
        out[f'{name}_{part}'] = path
result = out
"""


def datasets() -> dict[str, Path]:
    "NannyML's synthetic data sets as parquet files (made once, kept beside its environment): '<set>_<reference|analysis|analysis_targets>' -> path."
    folder = VENV / f'data-{NANNYML}'
    names = [f'{s}_{p}' for s in SETS for p in ('reference', 'analysis', 'analysis_targets')]
    if not all((folder / f'{n}.parquet').exists() for n in names):
        python()
        part = Path(tempfile.mkdtemp(prefix='data-', dir=VENV))
        run(EXPORT, args={'folder': str(part)})
        shutil.rmtree(folder, ignore_errors=True)
        part.rename(folder)
    return {n: folder / f'{n}.parquet' for n in names}


# ---- run inside NannyML's environment: python nannyml_ref.py SPEC.json ----

def _plain(x):
    "`x` as JSON data: NumPy numbers as numbers, NaN and NaT as null, frames as records, times as ISO text."
    import math
    import numpy as np, pandas as pd
    if isinstance(x, pd.DataFrame): return [_plain(r) for r in x.to_dict('records')]
    if isinstance(x, pd.Series): return _plain(x.tolist())
    if isinstance(x, dict): return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)): return [_plain(v) for v in x]
    if isinstance(x, (np.bool_, bool)): return bool(x)
    if isinstance(x, (np.integer, int)): return int(x)
    if isinstance(x, (np.floating, float)): return float(x) if math.isfinite(x) else None
    if x is None or x is pd.NaT: return None
    if isinstance(x, (pd.Timestamp,)): return x.isoformat()
    return x if isinstance(x, str) else str(x)


def frame_records(df) -> list[dict]:
    "A NannyML result frame (two-level columns) as records with 'level0.level1' keys."
    flat = df.copy()
    flat.columns = ['.'.join(str(p) for p in c) if isinstance(c, tuple) else str(c) for c in df.columns]
    return _plain(flat)


def _main(spec_path: str):
    import numpy as np, pandas as pd
    import nannyml as nml
    spec = json.loads(Path(spec_path).read_text())
    ns = {'nml': nml, 'pd': pd, 'np': np, 'args': spec['args'], 'frame_records': frame_records,
          'inputs': {k: pd.read_parquet(v) for k, v in spec['inputs'].items()}}
    exec(compile(Path(spec['code']).read_text(), spec['code'], 'exec'), ns)
    Path(spec['out']).write_text(json.dumps(_plain(ns['result'])))


if __name__ == '__main__':
    _main(sys.argv[1])
