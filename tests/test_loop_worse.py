"""A worse challenger is rolled back by `mlnb loop` at its first stage, with the evidence, and the champion stays.

The champion and the service's log are made as in tests/test_loop.py (its fixtures and helpers). The ground truth the retraining run learns
from is poisoned: the labels of the production customers are shuffled among them (a permutation, so the share of churners is what training
saw and the label guard cannot tell), churn going to the oldest customers. A forest learns that rule, so on the retraining run's held-out
rows, poisoned the same way, it beats the champion and the gate passes it. Live, in the shadow, the true labels come back: the paired test
shows the champion better, and the loop rolls the challenger back before it answers anyone."""
import json, time

import pandas as pd

from conftest import mlnb
from test_loop import alerts_sent, champion, flags, project, trained, write_log  # noqa: F401 (fixtures)


def shuffle_labels(root, frame):
    "Rewrite the ground truth of the customers of `frame` (the whole feedback log) as a permutation of their labels: the oldest churn."
    path = root / '.mlnb' / 'predictions' / 'churn.feedback.jsonl'
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(lines) == len(frame)
    churners = int(frame['churned'].sum())
    oldest = frame['age'].astype('float').fillna(-1).rank(method='first', ascending=False) <= churners
    labels = oldest.astype(int).tolist()
    assert sorted(labels) == sorted(frame['churned'].tolist())  # the same labels, given to other customers
    path.write_text(''.join(json.dumps({**l, 'label': y}) + '\n' for l, y in zip(lines, labels)))
    return pd.Series(labels)


def test_a_challenger_trained_on_shuffled_labels_is_rolled_back_at_its_first_stage(project):
    root, tag = project
    frame = write_log(root, {'champion': tag}, n=3000, seed=8)
    poisoned = shuffle_labels(root, frame)
    assert (poisoned != frame['churned']).mean() > 0.2
    # pass 1: new labels trigger a retraining run on the poisoned production data; the label guard cannot see a permutation, and the gate,
    # scoring on held-out rows poisoned the same way, passes the challenger: it starts in the shadow
    first = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert first['action'] == 'start' and first['stage'] == 'shadow', first
    new = first['challenger']
    gate = json.loads(mlnb('show', first['run_id'], '--json', cwd=root).stdout)['gates'][0]
    assert gate['status'] == 'held' and gate['candidate'] == new and 'promoted' in gate['reason'], gate
    print('gate:', gate['reason'])
    assert champion(root) == tag
    # pass 2: the shadow's rows, both models answering each, with the true labels: the champion is better; rolled back at once
    time.sleep(1.5)
    write_log(root, {'champion': tag, 'challenger': new}, n=300, mode='shadow', seed=9)
    second = json.loads(mlnb('loop', '--json', cwd=root).stdout)
    assert (second['action'], second['stage'], second['challenger']) == ('rollback', 'shadow', new), second
    assert 'rolled back at once: the champion is better' in second['reason'], second['reason']
    print('loop:', second['reason'])
    test = second['evidence']['statistics']
    assert test['test'] == "DeLong's test, paired ROC curves" and test['verdict'] == 'champion better', test
    assert test['difference'] < -0.1 and test['ci'][1] < 0 and test['p_value'] < 0.05 and test['rows'] == 300, test
    assert test['challenger_value'] < test['champion_value']
    assert second['evidence']['threshold'] == {'alpha': 0.05, 'min_effect': 0.1}
    # no further than the first stage; the champion unchanged; the held gate decision declined, with why
    assert champion(root) == tag and flags(root)['rollout']['on'] is False
    gate = json.loads(mlnb('show', first['run_id'], '--json', cwd=root).stdout)['gates'][0]
    assert gate['status'] == 'declined' and gate['outcome'].startswith('rolled back by `mlnb loop` in stage shadow: rolled back at once: the champion is better')
    status = json.loads(mlnb('loop', 'status', '--json', cwd=root).stdout)
    assert not status['rolling_out'] and status['latest']['action'] == 'rollback' and status['champion'] == tag
    from mlnb.loop import decisions
    mine = decisions(root, 'churn', rollout=first['rollout'])
    assert [(d['action'], d['stage']) for d in mine] == [('start', 'shadow'), ('rollback', 'shadow')], mine
    # the evidence, as people read it: the test and its numbers in the history
    table = mlnb('history', 'churn', cwd=root, env={'COLUMNS': '400'}).stdout
    assert 'rollback' in table and 'the champion is better' in table and "DeLong's test" in table and f"p = {test['p_value']:.3g}" in table, table
    assert [a['action'] for a in alerts_sent(root)] == ['start', 'rollback']
    assert alerts_sent(root)[1]['evidence']['statistics']['verdict'] == 'champion better'
