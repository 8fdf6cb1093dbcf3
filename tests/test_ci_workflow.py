"""The scaffold's CI workflow (.github/workflows/mlnb.yml), step by step, in a fresh virtual environment without mlnb."""
import os, shutil, subprocess, sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import mlnb
from mlnb.scaffold import mlnb_requirement
from conftest import git_snapshot, run

STEPS = ['Install', 'Notebooks and package in sync, notebooks clean', 'Notebook tests', 'Pipeline (ci profile)',
         'Build the service (champion model)', 'Verify the service answers as the notebook did']


def checkout():
    "The folder holding the pyproject.toml of the mlnb under test, or None when mlnb is not installed from a checkout."
    root = Path(mlnb.__file__).resolve().parent.parent
    pyproject = root / 'pyproject.toml'
    return root if pyproject.is_file() and 'name = "mlnb"' in pyproject.read_text() else None


def pinned_dependencies(name='mlnb'):
    "`name==version` for every distribution mlnb needs at run time (no extras), as installed here."
    pins, seen, todo = {}, set(), [(name, '')]
    while todo:
        dist, extra = todo.pop()
        if (canonicalize_name(dist), extra) in seen: continue
        seen.add((canonicalize_name(dist), extra))
        try: d = metadata.distribution(dist)
        except metadata.PackageNotFoundError: continue
        if canonicalize_name(dist) != canonicalize_name(name): pins[canonicalize_name(dist)] = f"{d.metadata['Name']}=={d.version}"
        for r in map(Requirement, d.requires or []):
            if r.marker and not r.marker.evaluate({'extra': extra}): continue
            todo += [(r.name, e) for e in (r.extras or {''})] + ([(r.name, '')] if r.extras else [])
    return sorted(pins.values())


def test_pinned_dependencies_are_the_runtime_closure():
    pins = {p.split('==')[0].lower() for p in pinned_dependencies()}
    assert {'nbdev', 'papermill', 'bentoml', 'pandera', 'pandas', 'scikit-learn', 'numpy', 'starlette'} <= pins
    assert 'mlnb' not in pins and 'pytest' not in pins and 'jupyterlab' not in pins


def test_the_scaffold_ci_workflow_runs_locally(scaffold_template, tmp_path, fresh_store):
    "The `run:` steps of .github/workflows/mlnb.yml, in their order, in a fresh venv, mlnb installed from MLNB_REQUIREMENT."
    source = checkout()
    if source is None: pytest.skip(f"mlnb is imported from {mlnb.__file__}, not from a checkout with its pyproject.toml")
    root = tmp_path / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    git_snapshot(root)
    wf = yaml.safe_load((root / '.github' / 'workflows' / 'mlnb.yml').read_text())
    # What `mlnb new` wrote is a requirement a runner can reach, never a path on this machine.
    written = wf['env']['MLNB_REQUIREMENT']
    assert written == mlnb_requirement() and written.startswith(('mlnb @ git+https://', 'mlnb @ https://')), written
    steps = [s for s in wf['jobs']['pipeline']['steps'] if 'run' in s]
    assert [s['name'] for s in steps] == STEPS
    assert '"$MLNB_REQUIREMENT"' in steps[0]['run']

    venv = tmp_path / 'venv'
    run([sys.executable, '-m', 'venv', str(venv)], tmp_path)
    python = venv / 'bin' / 'python'
    assert run([python, '-c', 'import mlnb'], tmp_path, check=False).returncode != 0, 'the fresh venv already has mlnb'
    # Speed only: install mlnb's dependencies, at the versions installed here, with uv (from its cache) when it is
    # at hand, so pip finds them satisfied. mlnb itself, and the project, are installed by the workflow's own step.
    uv = shutil.which('uv', path=str(Path(sys.executable).parent)) or shutil.which('uv')
    if uv:
        pins = pinned_dependencies()
        try: pins.append(f"uv=={metadata.version('uv')}")  # `mlnb build` (bentoml) installs uv when it is missing
        except metadata.PackageNotFoundError: pass
        (tmp_path / 'pins.txt').write_text('\n'.join(pins) + '\n')
        run([uv, 'pip', 'install', '-q', '--python', str(python), '-r', str(tmp_path / 'pins.txt')], tmp_path, timeout=900)

    # Only the fresh venv provides mlnb (and python): no other folder of PATH that has an `mlnb` command.
    path = [str(venv / 'bin')] + [p for p in os.environ['PATH'].split(os.pathsep)
                                  if p and not (Path(p) / 'mlnb').exists() and Path(p) != Path(sys.executable).parent]
    env = {**{k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')},
           'PATH': os.pathsep.join(path), 'VIRTUAL_ENV': str(venv), 'MLNB_REQUIREMENT': str(source)}
    for s in steps:
        res = subprocess.run(['bash', '-eo', 'pipefail', '-c', s['run']], cwd=root, env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"step {s['name']!r} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        if s['name'] == 'Install':
            where = run([python, '-c', 'import mlnb, sys; print(mlnb.__file__)'], tmp_path, env=env).stdout.strip()
            assert Path(where).is_relative_to(venv), f"mlnb comes from {where}, not from the fresh venv"
    assert 'exactly as the notebook did' in res.stdout
    assert any((root / '.mlnb' / 'runs').iterdir())
