"""`mlnb loop` verifies a candidate the gate passed before its rollout starts: the golden replay (the candidate, loaded as the service loads it,
answers its golden rows as the notebook did) and the safe-to-serve check (the candidate and the champion each answer the same batches in a
process of their own; the candidate's p99 latency and memory are held to `guardrails.p99_ratio` and `guardrails.memory_ratio`).

On the scaffolded churn project (tests/test_loop.py's fixtures): a candidate of a thousand trees is stopped before any rollout; a normal one
passes and its rollout starts. On the ported projects (a multiclass and a regression): one pass retrains, verifies and starts a rollout."""
import json

from conftest import mlnb
from test_loop import alerts_sent, champion, flags, project, trained, write_log  # noqa: F401 (fixtures)


def test_a_slow_candidate_is_stopped_before_its_rollout(project):  # noqa: F811
    root, tag = project
    toml = (root / 'pyproject.toml').read_text()
    slow = 'retrain = { params = { source = "production", production_since = "1d", n_estimators = 1000 } }'
    (root / 'pyproject.toml').write_text(toml.replace('retrain = { params = { source = "production", production_since = "1d" } }', slow)
                                     .replace('p99_ratio = 5.0', 'p99_ratio = 1.5'))
    assert slow in (root / 'pyproject.toml').read_text()
    write_log(root, {'champion': tag}, n=3000, seed=8)
    assert 'would be verified (golden replay, safe-to-serve check' in mlnb('loop', '--dry-run', cwd=root).stdout
    d = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert d['action'] == 'verify_failed', d
    assert 'failed its verification before the rollout: p99_ratio ' in d['reason'] and 'breaks its guardrail (at most 1.5)' in d['reason'], d['reason']
    safe = d['evidence']['verify']['safe_to_serve']
    assert safe['readings']['p99_ratio'] > 1.5 and safe['bounds'] == {'p99_ratio': 1.5, 'memory_ratio': 2.0}, safe
    assert safe['candidate']['p99_ms'] > 1.5 * safe['champion']['p99_ms'], safe
    assert safe['candidate']['calls'] == safe['champion']['calls'] == 300 and safe['candidate']['failed_rows'] == 0, safe
    assert all(isinstance(safe[w]['memory_mb'], float) for w in ('candidate', 'champion')), safe
    assert f"{safe['candidate']['p99_ms']:.2f} ms against the champion's {safe['champion']['p99_ms']:.2f} ms" in d['reason']
    assert d['evidence']['verify']['golden']['differences'] == [] and d['evidence']['verify']['golden']['rows'] > 0
    # nothing rolled out, the champion stays, the held gate decision is declined, the decision was alerted
    assert 'rollout' not in flags(root) and champion(root) == tag
    gate = json.loads(mlnb('show', d['run_id'], '--json', cwd=root).stdout)['gates'][0]
    assert gate['status'] == 'declined' and 'its verification before the rollout failed' in gate['outcome'], gate
    assert [a['action'] for a in alerts_sent(root)] == ['verify_failed']
    # the cooldown applies to the next retraining run
    after = json.loads(mlnb('loop', '--dry-run', '--json', cwd=root).stdout)
    assert after['action'] == 'nothing' and f"the candidate {d['challenger']} failed its verification" in after['reason'], after


def test_a_normal_candidate_is_verified_and_its_rollout_starts(project):  # noqa: F811
    root, tag = project
    write_log(root, {'champion': tag}, n=3000, seed=8)
    d = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert d['action'] == 'start' and d['stage'] == 'shadow', d
    assert 'and its verification (its ' in d['reason'] and 'golden rows answer as in the notebook; safe to serve' in d['reason'], d['reason']
    v = d['evidence']['verify']
    assert v['golden']['differences'] == [] and v['golden']['rows'] > 0, v
    assert v['safe_to_serve']['broken'] == [] and v['safe_to_serve']['readings']['p99_ratio'] <= 5.0, v  # (test_loop.py allows a forest 5 times a stump's p99)
    assert v['safe_to_serve']['readings']['memory_ratio'] <= 2.0, v
    ro = flags(root)['rollout']
    assert (ro['on'], ro['challenger'], ro['stage']) == (True, d['challenger'], 'shadow') and champion(root) == tag
    assert [a['action'] for a in alerts_sent(root)] == ['start']


LOOP = '''
[tool.mlnb.loop]
triggers = { drift = false, performance = false, max_age = "1s" }
stages = [0.5, 1.0]
guardrails = { p99_ratio = 10.0 }
'''


def test_the_loop_retrains_verifies_and_starts_a_rollout_on_a_ported_project(ported, fresh_store):
    from projects import PROJECTS
    p = PROJECTS[ported.name]
    # a weak champion, and a smaller one (wine: 5 trees of depth 2; diabetes: 10 boosting rounds): the retraining run with the project's
    # defaults beats it, and is twice as slow per call, so the LOOP table above allows it 10 times the champion's p99
    mlnb('run', *p.worse, cwd=ported)
    old = json.loads(mlnb('models', p.name, '--json', cwd=ported).stdout)
    (champ,) = [m['tag'] for m in old if m['champion']]
    (ported / 'pyproject.toml').write_text((ported / 'pyproject.toml').read_text() + LOOP)
    d = json.loads(mlnb('loop', '--json', cwd=ported).stdout)
    assert d['action'] == 'start' and d['stage'] == 0.5 and d['champion'] == champ, d
    v = d['evidence']['verify']
    assert v['golden']['differences'] == [] and v['golden']['rows'] > 0 and v['safe_to_serve']['broken'] == [], v
    assert v['safe_to_serve']['candidate']['failed_rows'] == 0 and v['safe_to_serve']['champion']['failed_rows'] == 0, v
    assert v['safe_to_serve']['bounds'] == {'p99_ratio': 10.0, 'memory_ratio': 2.0} and v['safe_to_serve']['candidate']['calls'] == 300, v
    ro = json.loads((ported / '.mlnb' / 'flags.json').read_text())['rollout']
    assert (ro['on'], ro['challenger'], ro['stage']) == (True, d['challenger'], 0.5)
    now = json.loads(mlnb('models', p.name, '--json', cwd=ported).stdout)
    assert next(m['tag'] for m in now if m['champion']) == champ
