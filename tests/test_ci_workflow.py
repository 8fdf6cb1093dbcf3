"""The scaffold's CI workflow (.github/workflows/mlnb.yml), step by step, in a fresh virtual environment without mlnb."""
import json, os, re, secrets, shutil, subprocess, sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import mlnb
from mlnb.scaffold import mlnb_requirement
from conftest import git_snapshot, run
from conftest import mlnb as mlnb_cli

STEPS = ['Install', 'Notebooks and package in sync, notebooks clean', 'Notebook tests', 'Pipeline (ci profile)',
         'Build the service (champion model)', 'Verify the service answers as the notebook did']


def checkout():
    "The folder holding the pyproject.toml of the mlnb under test, or None when mlnb is not installed from a checkout."
    root = Path(mlnb.__file__).resolve().parent.parent
    pyproject = root / 'pyproject.toml'
    return root if pyproject.is_file() and 'name = "mlnb"' in pyproject.read_text() else None


def pinned_dependencies(name='mlnb', extras=()):
    "`name==version` for every distribution mlnb needs at run time (and with `extras`), as installed here."
    pins, seen, todo = {}, set(), [(name, e) for e in ('', *extras)]
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


def pipeline_steps(root):
    "The workflow `mlnb new` wrote into `root`, and its `run:` steps in their order."
    wf = yaml.safe_load((root / '.github' / 'workflows' / 'mlnb.yml').read_text())
    steps = [s for s in wf['jobs']['pipeline']['steps'] if 'run' in s]
    assert [s['name'] for s in steps] == STEPS
    return wf, steps


TEAM = ('MLNB_STORE', 'MLNB_ARTIFACTS', 'PGPASSWORD', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL')


def workflow_env(wf, secrets: dict, default_branch: bool = True) -> dict:
    "The team's variables of the workflow's `env:` as GitHub would give them: a secret's value on the default branch, empty otherwise."
    out = {}
    for name in TEAM:
        m = re.fullmatch(r"\$\{\{ github\.ref_name == github\.event\.repository\.default_branch && secrets\.(\w+) \|\| '' \}\}", wf['env'][name])
        assert m and m.group(1) == name, wf['env'][name]
        out[name] = secrets.get(name, '') if default_branch else ''
    return out


@pytest.fixture(scope='module')
def ci_venv(tmp_path_factory):
    "A fresh virtual environment without mlnb, its dependencies (the team's clients too) installed ahead for speed; returns (venv, env)."
    source = checkout()
    if source is None: pytest.skip(f"mlnb is imported from {mlnb.__file__}, not from a checkout with its pyproject.toml")
    base = tmp_path_factory.mktemp('ci_venv')
    venv = base / 'venv'
    run([sys.executable, '-m', 'venv', str(venv)], base)
    python = venv / 'bin' / 'python'
    assert run([python, '-c', 'import mlnb'], base, check=False).returncode != 0, 'the fresh venv already has mlnb'
    # Speed only: install mlnb's dependencies, at the versions installed here, with uv (from its cache) when it is
    # at hand, so pip finds them satisfied. mlnb itself, and the project, are installed by the workflow's own step.
    uv = shutil.which('uv', path=str(Path(sys.executable).parent)) or shutil.which('uv')
    if uv:
        pins = pinned_dependencies(extras=('team',))
        try: pins.append(f"uv=={metadata.version('uv')}")  # `mlnb build` (bentoml) installs uv when it is missing
        except metadata.PackageNotFoundError: pass
        (base / 'pins.txt').write_text('\n'.join(pins) + '\n')
        run([uv, 'pip', 'install', '-q', '--python', str(python), '-r', str(base / 'pins.txt')], base, timeout=900)
    # Only the fresh venv provides mlnb (and python): no other folder of PATH that has an `mlnb` command.
    path = [str(venv / 'bin')] + [p for p in os.environ['PATH'].split(os.pathsep)
                                  if p and not (Path(p) / 'mlnb').exists() and Path(p) != Path(sys.executable).parent]
    env = {**{k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', *TEAM)},
           'PATH': os.pathsep.join(path), 'VIRTUAL_ENV': str(venv), 'MLNB_REQUIREMENT': str(source)}
    return venv, env


def run_steps(steps, root, venv, env) -> dict:
    "Run the workflow's `run:` steps in `root` with `env`, as the runner's shell does; returns each step's output."
    outs = {}
    for s in steps:
        res = subprocess.run(['bash', '-eo', 'pipefail', '-c', s['run']], cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"step {s['name']!r} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        outs[s['name']] = res.stdout
        if s['name'] == 'Install':
            where = run([venv / 'bin' / 'python', '-c', 'import mlnb, sys; print(mlnb.__file__)'], root, env=env).stdout.strip()
            assert Path(where).is_relative_to(venv), f"mlnb comes from {where}, not from the fresh venv"
    return outs


def test_the_scaffold_ci_workflow_runs_locally(scaffold_template, tmp_path, fresh_store, ci_venv):
    "The `run:` steps of .github/workflows/mlnb.yml, in their order, in a fresh venv, mlnb installed from MLNB_REQUIREMENT; no team secrets."
    venv, env = ci_venv
    root = tmp_path / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    git_snapshot(root)
    wf, steps = pipeline_steps(root)
    # What `mlnb new` wrote is a requirement a runner can reach, never a path on this machine.
    written = wf['env']['MLNB_REQUIREMENT']
    assert written == mlnb_requirement() and written.startswith(('mlnb @ git+https://', 'mlnb @ https://')), written
    assert '"$MLNB_REQUIREMENT"' in steps[0]['run']
    # without the secrets, the team's variables are empty: the run keeps everything on the runner, as it always did
    outs = run_steps(steps, root, venv, {**env, 'BENTOML_HOME': str(fresh_store), **workflow_env(wf, {})})
    assert 'exactly as the notebook did' in outs[STEPS[-1]]
    assert any((root / '.mlnb' / 'runs').iterdir()) and (root / '.mlnb' / 'ledger.db').is_file()
    assert 'psycopg' not in outs['Install'] # the team's clients were not asked for


def test_on_the_default_branch_with_the_secrets_ci_gates_against_the_teams_champion(scaffold_template, tmp_path, fresh_store, ci_venv,
                                                                                     postgres, s3_server):
    "With the team's secrets, a run on the default branch gates against the champion another clone promoted; its model and Bento land in S3."
    venv, env = ci_venv
    db = 'ci_' + secrets.token_hex(4)
    url, prefix = postgres.new_database(db), f'{s3_server.bucket}/ci-{secrets.token_hex(3)}'
    team = {'MLNB_STORE': url, 'MLNB_ARTIFACTS': f's3://{prefix}', 'PGPASSWORD': postgres.password,
            'AWS_ACCESS_KEY_ID': s3_server.key, 'AWS_SECRET_ACCESS_KEY': s3_server.secret, 'AWS_ENDPOINT_URL': s3_server.endpoint}
    # another clone, on a laptop: the team upgrades its store once, and this clone promotes a (weak) champion
    laptop = tmp_path / 'laptop' / 'churn'
    shutil.copytree(scaffold_template, laptop, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    git_snapshot(laptop)
    on_laptop = {**team, 'BENTOML_HOME': str(tmp_path / 'home_laptop')}
    mlnb_cli('store', 'upgrade', cwd=laptop, env=on_laptop)
    mlnb_cli('run', '--engine', 'fast', '--profile', 'ci', '-p', 'n_estimators=3', '-p', 'max_depth=2', cwd=laptop, env=on_laptop)
    (weak,) = [h['tag'] for h in json.loads(mlnb_cli('history', 'churn', '--json', cwd=laptop, env=on_laptop).stdout)]
    # the CI runner: a clone of the repository, the workflow's steps with the secrets GitHub gives on the default branch
    root = tmp_path / 'churn'
    run(['git', 'clone', '-q', str(laptop), str(root)], tmp_path)
    wf, steps = pipeline_steps(root)
    assert workflow_env(wf, team, default_branch=False) == dict.fromkeys(TEAM, '') # a branch or a pull request: no secrets
    outs = run_steps(steps, root, venv, {**env, 'BENTOML_HOME': str(fresh_store), **workflow_env(wf, team)})
    assert 'vs champion' in outs['Pipeline (ci profile)'] and '(now the champion)' in outs['Pipeline (ci profile)'], outs['Pipeline (ci profile)']
    hist = json.loads(mlnb_cli('history', 'churn', '--json', cwd=laptop, env=on_laptop).stdout)
    assert [(h['kind'], h['previous']) for h in hist] == [('gate', None), ('gate', weak)] # the team's champion, seen from the laptop
    strong = hist[-1]['tag']
    assert not (root / '.mlnb' / 'ledger.db').exists() # the runner kept no ledger of its own
    stored = s3_server.client().find(prefix)
    assert f"{prefix}/models/{strong.replace(':', '/')}.bentomodel" in stored, stored
    bentos = [p for p in stored if '/bentos/churn/' in p]
    assert len(bentos) == 1, stored
    # the laptop serves what CI built: the Bento, from the object store
    assert mlnb_cli('pull', bentos[0].split('/bentos/')[1].replace('/', ':').removesuffix('.bento'), cwd=laptop, env=on_laptop).stdout.startswith('Fetched bento')
    assert not [o for o in outs.values() if s3_server.secret in o or postgres.password in o]
