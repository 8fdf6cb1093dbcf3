"""The loop's latency guardrail on a real service: a running `bentoml serve` of the scaffolded churn project takes a slow challenger
(a forest of 100 times more trees) live at stage 0.5; each log line carries its model call's time (`latency_ms`); one `mlnb loop` pass
reads the stage's window, finds the challenger's p99 above `p99_ratio` times the champion's and rolls it back at once, with the numbers;
the champion is unchanged and the rollout state is off."""
import json, shutil, sys, time

import httpx
import pytest

from conftest import mlnb
from test_live_rollout import Traffic, tags, wait_for
from test_monitor import request_rows

LOOP = '''
[tool.mlnb.loop]
triggers = { drift = false, performance = false }
stages = [0.5, 1.0]
min_rows = 200
min_time = "1s"
guardrails = { p99_ratio = 1.5, error_rate = 0.001 }
'''


@pytest.fixture(scope='module')
def slow(scaffold_template, tmp_path_factory):
    "The churn project: a champion of 10 trees built into a Bento; a challenger of 1000 trees trained with the same code, held by the gate."
    root = tmp_path_factory.mktemp('guard') / 'churn'
    shutil.copytree(scaffold_template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
    (root / 'pyproject.toml').write_text((root / 'pyproject.toml').read_text() + LOOP)
    env = {'BENTOML_HOME': str(tmp_path_factory.mktemp('guard_home'))}
    mlnb('run', '--engine', 'fast', '-p', 'n_estimators=10', cwd=root, env=env)
    bento = mlnb('build', cwd=root, env=env).stdout.split()[1].rstrip('.')
    champion = tags(root, env).pop()
    toml = (root / 'pyproject.toml').read_text()
    assert 'min_improvement = 0.005' in toml
    (root / 'pyproject.toml').write_text(toml.replace('min_improvement = 0.005', 'min_improvement = 0.5'))  # the gate holds the challenger back
    mlnb('run', '--engine', 'fast', '--force', '-p', 'n_estimators=1000', cwd=root, env=env)
    challenger = (tags(root, env) - {champion}).pop()
    return root, env, bento, champion, challenger


def test_a_slow_challenger_is_rolled_back_by_the_p99_guardrail(slow):
    from mlnb.flags import set_rollout
    from mlnb.server import Server
    root, env, bento, champion, challenger = slow
    sys.path.insert(0, str(root))
    try:
        from churn.data import simulate
        rows = request_rows(simulate(300, seed=41), 'churned')
    finally: sys.path.remove(str(root))
    log = root / '.mlnb' / 'predictions' / 'churn.jsonl'  # where [tool.mlnb.serve] prediction_log says: the loop reads it
    with Server(bento, log_path=log, env=env, flags=root / '.mlnb' / 'flags.json') as srv:
        meta = lambda: httpx.get(srv.url + '/metadata').json()
        set_rollout(root, challenger, 0.5, 'a retrained challenger')
        wait_for(lambda: meta()['live_rollout']['status'] == 'serving', 'the service serves stage 0.5', timeout=60)
        with Traffic(srv.url, rows, size=10) as traffic:  # one request at a time: each batch is one call of each variant
            wait_for(lambda: sum(m == challenger for _, _, m in list(traffic.seen)) >= 1500, '1500 rows answered by the challenger', timeout=240)
        assert not traffic.failed, traffic.failed[:3]
        time.sleep(1)  # the last lines are written after their answers
        lines = [json.loads(l) for l in log.read_text().splitlines()]
        by = {v: [l['latency_ms'] for l in lines if l['variant'] == v] for v in ('champion', 'challenger')}
        assert all(isinstance(x, float) and x > 0 for v in by.values() for x in v), lines[:2]
        median = lambda xs: sorted(xs)[len(xs) // 2]
        assert median(by['challenger']) > 3 * median(by['champion']), (median(by['challenger']), median(by['champion']))  # really slower per call
        out = mlnb('loop', '--json', cwd=root, env=env)
        d = json.loads(out.stdout)
        assert d['action'] == 'rollback', d
        assert d['reason'].startswith('rolled back at once: p99_ratio ') and 'breaks its guardrail (at most 1.5)' in d['reason'], d['reason']
        assert "the challenger's p99 latency is" in d['reason'] and 'model calls' in d['reason'], d['reason']
        ev = d['evidence']
        assert ev['test'] == 'guardrails' and 'p99_ratio' in ev['threshold'] and ev['readings']['p99_ratio'] > 1.5, ev
        v = ev['variants']
        assert v['challenger']['calls'] >= 100 and v['champion']['calls'] >= 100, v
        assert abs(ev['readings']['p99_ratio'] - v['challenger']['p99_ms'] / v['champion']['p99_ms']) < 1e-9, ev
        assert f"{v['challenger']['p99_ms']:.1f} ms against the champion's {v['champion']['p99_ms']:.1f} ms" in d['reason']
        assert ev['readings']['error_rate'] == 0.0 and v['challenger']['errors'] == 0, ev  # measured: nothing failed
        assert 'p99_ratio' not in ev['unmeasured'] and 'error_rate' not in ev['unmeasured'], ev
        # the champion is unchanged, the rollout is off, and the service answers with the champion alone again
        models = json.loads(mlnb('models', 'churn', '--json', cwd=root, env=env).stdout)
        assert next(m['tag'] for m in models if m['champion']) == champion
        assert json.loads((root / '.mlnb' / 'flags.json').read_text())['rollout']['on'] is False
        wait_for(lambda: meta()['live_rollout']['status'] == 'off', 'the rollout is off in the service')
        answers = httpx.post(srv.url + '/predict', json={'rows': rows[:50]}, timeout=60).json()
        assert {a['model'] for a in answers} == {champion}
