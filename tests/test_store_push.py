"""Moving in: `mlnb store push` copies a project's own history (SQLite ledger, artifacts, models, Bentos) into a team's store
(a real PostgreSQL and a real S3 server), idempotently and with nothing lost; a fresh clone then works from the team's store alone."""
import json, secrets, shutil, sqlite3
from pathlib import Path

import pytest

from conftest import git_snapshot, mlnb, run

WORSE = ['-p', 'n_estimators=3', '-p', 'max_depth=2']
TABLES = ('runs', 'steps', 'gates', 'champions', 'builds', 'evidence')
KEYS = {'runs': 'id', 'steps': "run_id || '/' || step", 'gates': 'uid', 'champions': 'uid', 'builds': 'uid', 'evidence': 'uid'}


def local_keys(root: Path) -> dict:
    "The key of every row of the project's own ledger, table by table."
    db = sqlite3.connect(root / '.mlnb' / 'ledger.db')
    try: return {t: sorted(k for (k,) in db.execute(f'select {KEYS[t]} from {t}')) for t in TABLES}
    finally: db.close()


def team_keys(postgres, db: str) -> dict:
    "The key of every row of the team's store, table by table."
    return {t: sorted(k for (k,) in postgres.admin(f'select {KEYS[t]} from {t}', dbname=db)) for t in TABLES}


def pushed(root, env, *args, check=True):
    "`mlnb store push --json` (with `args`): what it says it did."
    res = mlnb('store', 'push', *args, '--json', cwd=root, env=env, check=check)
    return json.loads(res.stdout) if res.returncode == 0 else res


@pytest.fixture(scope='module')
def moved(scaffold_template, postgres, s3_server, tmp_path_factory):
    "A project that worked alone (two runs, a champion with a history, a Bento), then pushed once into a new team store."
    base = tmp_path_factory.mktemp('push')
    a = base / 'a' / 'churn'
    shutil.copytree(scaffold_template, a, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    git_snapshot(a)
    solo = {'BENTOML_HOME': str(base / 'home_a')}
    mlnb('run', '--engine', 'fast', '--profile', 'ci', *WORSE, cwd=a, env=solo)
    mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=a, env=solo)
    bento = mlnb('build', cwd=a, env=solo).stdout.split()[1].rstrip('.')
    db = 'team_' + secrets.token_hex(4)
    url, prefix = postgres.new_database(db), f'{s3_server.bucket}/team-{secrets.token_hex(3)}'
    # the team's settings, as one machine gives them (the environment wins over pyproject.toml)
    team = {**solo, **postgres.env, **s3_server.env(), 'MLNB_STORE': url, 'MLNB_ARTIFACTS': f's3://{prefix}'}
    mlnb('store', 'upgrade', cwd=a, env=team)
    before = local_keys(a)
    text = mlnb('store', 'push', cwd=a, env=team).stdout
    return {'a': a, 'solo': solo, 'team': team, 'db': db, 'url': url, 'prefix': prefix, 'bento': bento, 'before': before, 'text': text,
            'base': base}


def test_a_push_copies_every_row_and_file_once(moved, postgres, s3_server):
    m, fs = moved, s3_server.client()
    a, before = m['a'], m['before']
    assert [len(before[t]) for t in ('runs', 'gates', 'champions', 'builds')] == [2, 2, 2, 1], before
    history = json.loads(mlnb('history', 'churn', '--json', cwd=a, env=m['solo']).stdout)
    models = {h['tag'] for h in history}
    assert len(models) == 2
    artifacts = [f for f in (a / '.mlnb' / 'artifacts').rglob('*') if f.is_file()]
    # what it said, and what it did: every row of the project's ledger is in the team's store, nothing else is
    assert m['text'].startswith(f"Pushed 2 runs, {len(before['steps'])} steps, 2 gate decisions, 1 champion's history (2 changes), "
                                f"1 build, {len(artifacts)} artifacts, 2 models, 1 Bento to {m['url']} and s3://{m['prefix']}; 0 already there."), m['text']
    assert team_keys(postgres, m['db']) == before
    assert local_keys(a) == before # the source is read, never changed
    stored = set(fs.find(m['prefix']))
    for f in artifacts: assert f"{m['prefix']}/{f.relative_to(a / '.mlnb' / 'artifacts').as_posix()}" in stored
    for tag in models: assert f"{m['prefix']}/models/{tag.replace(':', '/')}.bentomodel" in stored
    assert f"{m['prefix']}/bentos/{m['bento'].replace(':', '/')}.bento" in stored
    # a second push copies nothing, and says so
    again = mlnb('store', 'push', cwd=a, env=m['team']).stdout
    assert again.startswith(f"Nothing to push: {m['url']} and s3://{m['prefix']} already have all of it (2 runs, {len(before['steps'])} steps, "
                            "2 gate decisions, 1 champion's history (2 changes), 1 build"), again
    assert team_keys(postgres, m['db']) == before and set(fs.find(m['prefix'])) == stored
    # a push after another run on this machine alone copies that run only
    mlnb('run', 'data', '--engine', 'fast', '--profile', 'ci', cwd=a, env=m['solo'])
    r = pushed(a, m['team'])
    assert {k: v for k, v in r['pushed'].items() if v} == {'runs': 1, 'steps': 1}, r
    assert r['already']['runs'] == 2 and r['team']['after']['runs'] == r['team']['before']['runs'] + 1
    assert team_keys(postgres, m['db']) == local_keys(a)
    assert s3_server.secret not in m['text'] + again and postgres.password not in m['text'] + again


def test_a_fresh_clone_works_from_the_team_store_alone(moved, postgres, tmp_path):
    m = moved
    b = tmp_path / 'b' / 'churn'
    run(['git', 'clone', '-q', str(m['a']), str(b)], tmp_path)
    env = {**m['team'], 'BENTOML_HOME': str(tmp_path / 'home_b')} # another machine: no ledger, no artifacts, no models of its own
    runs = json.loads(mlnb('runs', '--json', cwd=b, env=env).stdout)
    assert {r['id'] for r in runs} == set(local_keys(m['a'])['runs'])
    ours = json.loads(mlnb('history', 'churn', '--json', cwd=m['a'], env=m['solo']).stdout)
    theirs = json.loads(mlnb('history', 'churn', '--json', cwd=b, env=env).stdout)
    assert [(h['uid'], h['kind'], h['tag']) for h in theirs] == [(h['uid'], h['kind'], h['tag']) for h in ours]
    champion = ours[-1]['tag']
    # the same pipeline here: every step comes from the team's cache, the champion's model from the object store
    out = mlnb('run', '--engine', 'fast', '--profile', 'ci', cwd=b, env=env).stdout
    assert ': 4 cached.' in out, out
    assert json.loads(mlnb('runs', '-n', '1', '--json', cwd=b, env=env).stdout)[0]['steps'] == {'cached': 4}
    out = mlnb('build', cwd=b, env=env).stdout
    assert out.startswith('Built churn:'), out
    assert (tmp_path / 'home_b' / 'models' / champion.replace(':', '/') / 'model.yaml').is_file()
    assert not (b / '.mlnb' / 'ledger.db').exists() # nothing of it came from a ledger of its own


def test_a_different_champion_history_is_refused_naming_the_model(moved, postgres, tmp_path):
    m = moved
    a = m['a']
    b = tmp_path / 'b' / 'churn'
    run(['git', 'clone', '-q', str(a), str(b)], tmp_path)
    env_b = {**m['team'], 'BENTOML_HOME': str(tmp_path / 'home_b')}
    # the team rolls its champion back; meanwhile this machine, alone, rolls back its own: two histories
    mlnb('rollback', 'churn', cwd=b, env=env_b)
    mlnb('rollback', 'churn', cwd=a, env=m['solo'])
    mlnb('run', 'data', '--engine', 'fast', '--profile', 'ci', cwd=a, env=m['solo']) # and one more run to push
    team_before = team_keys(postgres, m['db'])
    res = pushed(a, m['team'], check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    err = ' '.join(res.stderr.split())
    assert f"Nothing was pushed: the team's store {m['url']} and this project disagree" in err, err
    assert "model 'churn': the team's champion is" in err and 'rollback' in err and '--keep-team-champion churn' in err, err
    assert team_keys(postgres, m['db']) == team_before # refused before anything was written
    # keeping the team's history of churn, everything else goes: the new run, and this rollback stays here alone
    r = pushed(a, m['team'], '--keep-team-champion', 'churn')
    assert r['pushed']['runs'] == 1 and r['pushed']['champions'] == 0 and r['left_out']['kept_histories'] == ['churn'], r
    after, local = team_keys(postgres, m['db']), local_keys(a)
    assert set(local['runs']) <= set(after['runs']) and set(local['steps']) <= set(after['steps'])
    assert after['champions'] == team_before['champions'] and len(set(local['champions']) - set(after['champions'])) == 1
    assert mlnb('store', 'push', '--keep-team-champion', 'churn', cwd=a, env=m['team']).stdout.startswith('Nothing to push:')
