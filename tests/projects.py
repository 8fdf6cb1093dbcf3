"""The ported projects of tests/projects/: mlnb on other tables than the scaffold's churn example.

Each was made as a new user would: `mlnb new NAME`, then the notebooks' data, features, train and
evaluate code, the data contract and `[tool.mlnb]` replaced. Only their source is kept; `make_project`
makes one runnable the way its README says (export the package, write the CSV, infer the contract).
"""
import shutil, sys
from dataclasses import dataclass
from pathlib import Path

from conftest import run

SOURCE = Path(__file__).parent / 'projects'


@dataclass(frozen=True)
class Ported:
    "What the tests need to know of a ported project."
    name: str # project folder, package and model name
    kind: str # 'multiclass' or 'regression'
    csv: str # the extract the data step reads, relative to the root
    make: str # the function of `NAME.data` that makes the extract from scikit-learn's data
    load: str # the function of `NAME.data` that reads it with its column types
    contract: str # the data contract's name
    key: str # the key column
    label: str # the label column
    metric: str # the gate's metric
    worse: tuple # `mlnb run` options that train a worse model than the defaults


PROJECTS = {
    'wine': Ported(name='wine', kind='multiclass', csv='data/wines.csv', make='make_wines', load='load_wines',
                   contract='wines', key='wine_id', label='cultivar', metric='f1_macro',
                   worse=('-p', 'n_estimators=5', '-p', 'max_depth=2')),
    'diabetes': Ported(name='diabetes', kind='regression', csv='data/patients.csv', make='make_patients', load='load_patients',
                       contract='patients', key='patient_id', label='progression', metric='rmse',
                       worse=('-p', 'max_iter=10')),
}


def make_project(name: str, dest: Path) -> Path:
    "Copy tests/projects/NAME to `dest`, export its package, write its CSV and infer its contract; returns `dest`."
    p = PROJECTS[name]
    shutil.copytree(SOURCE / name, dest, ignore=shutil.ignore_patterns('.mlnb', '__pycache__', 'data', 'contracts', name))
    run(['nbdev-export'], dest)
    (dest / 'data').mkdir()
    code = (f"import mlnb.contract\nfrom {name}.data import {p.make}, {p.load}\n"
            f"{p.make}().to_csv({p.csv!r}, index=False)\n"
            f"mlnb.contract.infer({p.load}({p.csv!r}), {p.contract!r}, keys=[{p.key!r}], root={str(dest)!r})\n")
    run([sys.executable, '-c', code], dest, env={'PYTHONPATH': str(dest)})
    return dest
