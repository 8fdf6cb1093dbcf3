"""Tables from packages that ship them, written as a data scientist would have them, for `mlnb new --data`.

Each `TableCase` makes its file and says which options `mlnb new --data` gets and what it should find. Between them
they cover a binary problem with a text label, multiclass problems with text and numeric labels, regressions
(scikit-learn's and statsmodels' data), a boolean label, missing values, timestamps used with `--time`, categories,
integer keys, column names with spaces, a per-segment project, and a table of 10^5 rows made from a shipped one.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


def penguins() -> pd.DataFrame:
    "palmerpenguins' 344 penguins with an integer key: species, island and sex as text, with missing values."
    from palmerpenguins import load_penguins
    df = load_penguins()
    return df.assign(**{'penguin id': np.arange(1000, 1000 + len(df))})


def iris() -> pd.DataFrame:
    "scikit-learn's iris: four measurements named with spaces ('sepal length (cm)'), the class as a number 0, 1, 2."
    from sklearn.datasets import load_iris
    d = load_iris(as_frame=True)
    return d.frame.rename(columns={'target': 'class'})


def diabetes() -> pd.DataFrame:
    "scikit-learn's diabetes, unscaled: ten measurements and the disease progression a year later (a number)."
    from sklearn.datasets import load_diabetes
    d = load_diabetes(as_frame=True, scaled=False)
    return d.frame.rename(columns={'target': 'progression'})


def grunfeld() -> pd.DataFrame:
    "statsmodels' Grunfeld investment data: the investment of eleven firms (text) from their value and capital, 1935-1954."
    import statsmodels.api as sm
    df = sm.datasets.grunfeld.load_pandas().data
    return df.assign(year=df['year'].astype(int))


def breast_cancer() -> pd.DataFrame:
    "scikit-learn's breast cancer data as an extract: an id, a nullable timestamp, 30 measurements with spaces, gaps, a text diagnosis."
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer(as_frame=True)
    rng = np.random.default_rng(7)
    df = d.frame.drop(columns='target')
    for c in ('mean texture', 'worst smoothness', 'area error'): df.loc[rng.random(len(df)) < 0.04, c] = np.nan
    at = pd.Timestamp('2024-01-01') + pd.to_timedelta(np.sort(rng.integers(0, 300 * 24, len(df))), unit='h')
    out = pd.DataFrame({'patient id': rng.permutation(np.arange(90000, 90000 + len(df))),
                        'measured at': pd.Series(at).dt.strftime('%Y-%m-%dT%H:%M:%S').where(rng.random(len(df)) > 0.03)})
    return pd.concat([out, df, pd.Series(np.where(d.target == 0, 'malignant', 'benign'), name='diagnosis')], axis=1)


def big_penguins(n: int = 100_000) -> pd.DataFrame:
    "10^5 penguins drawn from palmerpenguins' (measurements jittered), each with an integer key, a sighting time and a boolean label: heavy or not."
    base = penguins().dropna(subset=['body_mass_g']).reset_index(drop=True)
    rng = np.random.default_rng(11)
    df = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
    for c, sd in (('bill_length_mm', 1.0), ('bill_depth_mm', 0.4), ('flipper_length_mm', 3.0), ('body_mass_g', 150.0)):
        df[c] = (df[c] + rng.normal(0, sd, n)).round(1)
    df.loc[rng.random(n) < 0.02, 'bill_depth_mm'] = np.nan
    seen = pd.Timestamp('2023-03-01') + pd.to_timedelta(rng.integers(0, 365 * 24 * 60, n), unit='min')
    df = df.assign(**{'penguin id': np.arange(n), 'seen at': seen.strftime('%Y-%m-%d %H:%M'),
                      'heavy': df['body_mass_g'] > 4200}).drop(columns=['body_mass_g'])
    return df


@dataclass(frozen=True)
class TableCase:
    "A table and what `mlnb new --data` is told and should find."
    name: str # the project (and package) name
    make: object # () -> DataFrame
    file: str # the file name ('.csv' or '.parquet')
    label: str
    options: tuple = () # more `mlnb new` options
    problem: str = 'binary' # what it should find
    metric: str = 'roc_auc'
    classes: tuple | None = None
    rows: int = 0 # at least this many rows

    def write(self, folder: Path) -> Path:
        "The table's file in `folder`."
        path = Path(folder) / self.file
        df = self.make()
        df.to_parquet(path, index=False) if self.file.endswith('.parquet') else df.to_csv(path, index=False)
        return path


CASES = {c.name: c for c in [
    TableCase('penguin_sex', penguins, 'penguins.csv', 'sex', ('--key', 'penguin id'), classes=('female', 'male')),
    TableCase('penguin_species', penguins, 'penguins.parquet', 'species', ('--key', 'penguin id', '--segment', 'sex'),
              problem='multiclass', metric='f1_macro', classes=('Adelie', 'Chinstrap', 'Gentoo')),
    TableCase('iris', iris, 'iris.csv', 'class', problem='multiclass', metric='f1_macro', classes=(0, 1, 2)),
    TableCase('diabetes', diabetes, 'diabetes.csv', 'progression', ('--metric', 'mae'), problem='regression', metric='mae'),
    TableCase('grunfeld', grunfeld, 'grunfeld.csv', 'invest', problem='regression', metric='rmse'),
    TableCase('cancer', breast_cancer, 'breast_cancer.csv', 'diagnosis', ('--key', 'patient id', '--time', 'measured at'),
              classes=('benign', 'malignant')),
    TableCase('sightings', big_penguins, 'sightings.csv', 'heavy', ('--key', 'penguin id', '--time', 'seen at'),
              classes=(False, True), rows=100_000),
]}
