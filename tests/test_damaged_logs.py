"""Damaged logs: `mlnb monitor`, `mlnb.production_data` and the log cache skip the lines they cannot use, count them, say where
the first one is, and judge the rest as if the damaged lines were not there.

The lines are the ones a real `bentoml serve` of the scaffolded churn model wrote for 2,000 simulated customers, with their
ground truth; each damaged copy of the log is those lines with damaged ones put among them, so that the verdict on the good
lines must be the verdict on the clean log."""
import contextlib, json, os, shutil, sys, time

import httpx
import pytest

from conftest import mlnb, run, start_server
from test_monitor import request_rows, send

ROWS = 2000
VERDICT = ('columns', 'predictions', 'bias', 'performance', 'action_limits', 'timeline')


@pytest.fixture(scope='module')
def logged(served, tmp_path_factory):
    "A copy of the served churn project, and the prediction and feedback lines its service wrote for 2,000 customers."
    from mlnb.serving import feedback_path
    root = tmp_path_factory.mktemp('damaged') / 'churn'
    shutil.copytree(served[0], root, ignore=shutil.ignore_patterns('__pycache__'))  # with .mlnb: the ledger knows the build
    log = tmp_path_factory.mktemp('damaged_log') / 'churn.jsonl'
    srv = start_server(served, log)
    sys.path.insert(0, str(root))
    try:
        from churn.data import simulate
        frame = simulate(ROWS, seed=11, drift=0.0)
        answers = send(srv, request_rows(frame, 'churned'))
        truth = [{'request_id': a['request_id'], 'label': int(y)} for a, y in zip(answers, frame['churned'])]
        assert httpx.post(srv.url + '/feedback', json={'feedback': truth}, timeout=60).json() == {'received': ROWS}
        deadline = time.time() + 30
        while time.time() < deadline and log.read_bytes().count(b'\n') < ROWS: time.sleep(0.2)
    finally:
        srv.stop()
        sys.path.remove(str(root))
    lines, fb = log.read_bytes().splitlines(keepends=True), feedback_path(log).read_bytes().splitlines(keepends=True)
    assert len(lines) == ROWS and len(fb) == ROWS
    return root, served[1], lines, fb


def write_case(root, name, lines, fb, old=False):
    "A log and its feedback log in a folder of their own; `old`: written long ago (so a columnar copy of it can be trusted at once)."
    d = root.parent / 'cases' / name
    d.mkdir(parents=True)
    (d / 'churn.jsonl').write_bytes(b''.join(lines))
    (d / 'churn.feedback.jsonl').write_bytes(b''.join(fb))
    if old:
        for f in d.iterdir(): os.utime(f, ns=(time.time_ns() - 3600 * 10**9,) * 2)
    return d / 'churn.jsonl'


def monitor(root, env, log, *args, codes=(0, 1)):
    "`mlnb monitor --json` on `log` (its last 2,000 predictions): (exit code, result, stderr); never a traceback."
    res = mlnb('monitor', '--json', '--log', log, '--last', ROWS, *args, cwd=root, env=env, check=False)
    assert 'Traceback' not in res.stderr and res.returncode in codes, res.stderr[-3000:]
    return res.returncode, (json.loads(res.stdout) if res.stdout.strip() else None), res.stderr


@contextlib.contextmanager
def monitor_setting(root, line):
    "The project with `line` added to [tool.mlnb.monitor], for the time of the block."
    toml = root / 'pyproject.toml'
    text = toml.read_text()
    assert text.count('[tool.mlnb.monitor]\n') == 1
    toml.write_text(text.replace('[tool.mlnb.monitor]\n', f'[tool.mlnb.monitor]\n{line}\n'))
    try: yield
    finally: toml.write_text(text)


@pytest.fixture(scope='module')
def clean(logged):
    "The verdict on the clean log."
    root, env, lines, fb = logged
    code, res, _ = monitor(root, env, write_case(root, 'clean', lines, fb))
    assert res['window']['rows'] == ROWS and res['performance']['joined'] == ROWS
    assert res['window']['damaged']['predictions'] == {'lines': 0, 'read': ROWS, 'share': 0.0, 'files': []}
    assert res['window']['damaged']['feedback']['lines'] == 0 and res['window']['damaged']['bound'] == 0.01
    return code, res


def edit(line, change):
    "The JSON line `line` with `change` applied to its parsed value."
    event = json.loads(line)
    change(event)
    return json.dumps(event).encode() + b'\n'


def put(lines, at, extra):
    return lines[:at] + extra + lines[at:]


def number_field(line):
    return next(k for k, v in json.loads(line)['row'].items() if isinstance(v, float))


def cases(L):
    "name -> (the damaged prediction log, lines skipped, the first one's line number (from 1), what its reason says)."
    num = number_field(L[0])
    not_utf8 = L[8].replace(b'"customer_id":"', b'"customer_id":"\xff\xfe', 1)
    assert not_utf8 != L[8]
    huge = [b'{"request_id":"' + b'x' * (20 << 20) + b'\n',  # cut, 20 MiB long
            json.dumps({**json.loads(L[9]), 'padding': 'y' * (20 << 20), 'prediction': None}).encode() + b'\n']
    return {
        'cut line': (put(L, 700, [L[3][:len(L[3]) // 2] + b'\n']), 1, 701, 'the line is not JSON'),
        'cut line, the next glued on': (put(L, 1000, [L[5][:60] + L[6]]), 1, 1001, 'the line is not JSON'),
        'garbage': (put(L, 5, [b'hello world\n', b'}{\n', b'[1, 2, 3]\n', b'"text"\n']), 4, 6, 'the line is not a JSON object'),
        'NUL bytes': (put(put(L, 1500, [L[7].replace(b'"variant"', b'"vari\x00ant"')]), 0, [b'\x00' * 300 + b'\n']), 2, 1,
                      'the line is not a JSON object'),
        'a null line first': (put(L, 0, [b'null\n']), 1, 1, 'the line is not a JSON object'),
        'invalid UTF-8': (put(L, 1200, [not_utf8]), 1, 1201, 'row.customer_id is text that is not UTF-8'),
        'wrong types': (put(L, 300, [edit(L[10], lambda e: e['row'].update({num: 'old'})), edit(L[11], lambda e: e['prediction'].update(label='yes')),
                                     edit(L[12], lambda e: e.update(row=5))]), 3, 301, f'row.{num} is text, not '),
        'missing fields': (put(L, 1999, [edit(L[13], lambda e: e.pop(k)) for k in ('prediction', 'ts', 'request_id', 'row', 'model')]), 5, 2000,
                           'the line has no prediction'),
        'probabilities of the wrong length': (put(L, 42, [edit(L[14], lambda e: e['prediction'].update(probabilities=[0.1, 0.2, 0.7]))]), 1, 43,
                                              'prediction.probabilities holds 3 values, not 2'),
        'bad timestamps': (put(L, 900, [edit(L[15], lambda e: e.update(ts=t)) for t in ('not a date', '2026-13-45T99:00:00+00:00', 12345)]), 3, 901,
                           "ts 'not a date' is not an ISO 8601 time"),
        'an empty line': (put(put(L, 10, [b'\n']), 20, [b'   \r\n']), 0, None, None),
        'a huge line': (put(L, 1800, huge), 2, 1801, 'the line is not JSON'),
        'a last line being written': (L + [L[16][:100]], 0, None, None),
    }


def bad_feedback(fb):
    "The feedback log with five damaged lines: cut, garbage, a label of the wrong type, no request id, a time that is not one."
    edited = lambda line, change: edit(line, change)
    return put(fb, 100, [fb[0][:30] + b'\n', b'<html>\n', edited(fb[1], lambda e: e.update(label='yes')), edited(fb[2], lambda e: e.pop('request_id')),
                         edited(fb[3], lambda e: e.update(ts='yesterday'))])


def test_damaged_prediction_logs(logged, clean):
    root, env, lines, fb = logged
    base_code, base = clean
    for name, (damaged, n, first, why) in cases(lines).items():
        code, res, _ = monitor(root, env, write_case(root, name, damaged, fb))
        d = res['window']['damaged']['predictions']
        assert (d['lines'], d['read']) == (n, ROWS + n), (name, d)
        if n:
            assert d['files'][0]['first'] == first and why in d['files'][0]['why'], (name, d['files'])
            assert d['files'][0]['message'].startswith(f"{n} line{'s' * (n > 1)} of churn.jsonl could not be read (first at line {first}: "), d
        assert code == base_code and res['alerts'] == base['alerts'], (name, res['alerts'])  # a few lines: no alert
        assert res['window']['rows'] == ROWS, name
        for k in VERDICT: assert res[k] == base[k], (name, k)


def test_damaged_feedback_log(logged, clean):
    root, env, lines, fb = logged
    base_code, base = clean
    code, res, _ = monitor(root, env, write_case(root, 'feedback', lines, bad_feedback(fb)))
    d = res['window']['damaged']['feedback']
    assert (d['lines'], d['read'], d['files'][0]['first']) == (5, ROWS + 5, 101), d
    assert 'the line is not JSON' in d['files'][0]['why']
    assert res['window']['damaged']['predictions']['lines'] == 0
    assert code == base_code and res['alerts'] == base['alerts']
    for k in VERDICT: assert res[k] == base[k], k


def test_an_alert_only_past_the_bound(logged, clean):
    root, env, lines, fb = logged
    base_code, base = clean
    many = write_case(root, 'many', put(lines, 1000, [b'garbage %d\n' % i for i in range(30)]), fb)  # 30 of 2,030 lines: 1.5%
    code, res, _ = monitor(root, env, many)
    assert code == 1 and [a['kind'] for a in res['alerts']] == [a['kind'] for a in base['alerts']] + ['damaged_log']
    alert = res['alerts'][-1]
    assert alert['log'] == str(many) and alert['message'].startswith(f'1.5% of the lines of {many} could not be read (30 of 2030), more than damaged_share = 0.01')
    assert '30 lines of churn.jsonl could not be read (first at line 1001' in alert['message']
    for k in VERDICT: assert res[k] == base[k], k
    # the table says so too
    text = mlnb('monitor', '--log', many, '--last', ROWS, cwd=root, env=env, check=False)
    assert text.returncode == 1 and 'Traceback' not in text.stderr
    assert '30 lines of churn.jsonl could not be read (first at line 1001: the line is not a JSON object): skipped' in text.stdout
    assert 'alert damaged_log: 1.5% of the lines' in text.stdout
    with monitor_setting(root, 'damaged_share = 0.02'):
        code, res, _ = monitor(root, env, many)
        assert code == base_code and res['alerts'] == base['alerts'] and res['window']['damaged']['bound'] == 0.02
    with monitor_setting(root, 'damaged_share = 2'):
        code, _, err = monitor(root, env, many, codes=(2,))
        assert 'damaged_share must be a number in [0, 1]' in err
    # the feedback log is held to the same bound
    code, res, _ = monitor(root, env, write_case(root, 'many_feedback', lines, put(fb, 7, [b'garbage\n'] * 30)))
    assert code == 1 and res['alerts'][-1]['kind'] == 'damaged_log' and res['alerts'][-1]['log'].endswith('many_feedback/churn.feedback.jsonl')
    for k in VERDICT: assert res[k] == base[k], k


def test_a_log_with_nothing_usable_is_a_request_that_cannot_be_used(logged):
    root, env, lines, fb = logged
    code, _, err = monitor(root, env, write_case(root, 'nothing', [b'garbage\n'] * 500, fb), codes=(2,))
    assert 'holds 0 predictions' in err and '500 lines of churn.jsonl could not be read (first at line 1' in err


def cache_record(root, log):
    "The record of the columnar copy of `log` in the project's cache."
    records = [json.loads(p.read_text()) for p in (root / '.mlnb' / 'cache' / 'logs').glob('*.json')]
    return next(r for r in records if r['log'] == str(log.resolve()))


def test_the_cache_reads_a_damaged_log_as_a_parse_does(logged):
    root, env, lines, fb = logged
    L = cases(lines)
    damaged = L['garbage'][0][:1500] + L['bad timestamps'][0][-1200:]  # damage here and there, not the same line twice
    log = write_case(root, 'cached', damaged, fb, old=True)
    _, first, _ = monitor(root, env, log)
    record = cache_record(root, log)
    assert record['skipped']['lines'] == 7 and record['skipped']['first'] == 6
    _, again, _ = monitor(root, env, log)
    assert cache_record(root, log) == record  # read from the copy
    with monitor_setting(root, 'cache = false'): _, parsed, _ = monitor(root, env, log)
    for k in (*VERDICT, 'window'): assert again[k] == first[k] == parsed[k], k
    # more lines, some damaged, are parsed alone; their line numbers count from the file's start
    more = [edit(lines[i], lambda e: e.update(request_id=e['request_id'] + '-again')) for i in range(20)]
    with open(log, 'ab') as f: f.write(b''.join(more[:10]) + b'{"request_id": "cut\n' + b''.join(more[10:]))
    _, grown, _ = monitor(root, env, log)
    with monitor_setting(root, 'cache = false'): _, parsed, _ = monitor(root, env, log)
    for k in (*VERDICT, 'window'): assert grown[k] == parsed[k], k
    d = grown['window']['damaged']['predictions']
    assert (d['lines'], d['files'][0]['first']) == (8, 6), d
    assert cache_record(root, log)['skipped'] == {'lines': 8, 'first': 6, 'why': d['files'][0]['why']}


def test_the_cache_notices_a_rewrite_in_the_middle(logged):
    root, env, lines, fb = logged
    log = write_case(root, 'rewritten', lines, fb, old=True)
    _, before, _ = monitor(root, env, log)
    record = cache_record(root, log)
    _, again, _ = monitor(root, env, log)
    assert cache_record(root, log) == record and again['bias'] == before['bias']  # read from the copy
    data = log.read_bytes()
    start, end = data.index(b'\n', len(data) // 3), data.index(b'\n', 2 * len(data) // 3)
    middle = data[start:end].replace(b'"label":0', b'"label":1')  # the same length, the same first and last 4 KiB
    assert middle != data[start:end] and len(middle) == end - start
    log.write_bytes(data[:start] + middle + data[end:])
    _, after, _ = monitor(root, env, log)
    assert after['bias']['predicted'] != before['bias']['predicted']
    with monitor_setting(root, 'cache = false'): _, parsed, _ = monitor(root, env, log)
    for k in (*VERDICT, 'window'): assert after[k] == parsed[k], k


PRODUCTION = """import json, sys, warnings
from mlnb.stream import production_data
frame = production_data(since=None, source=sys.argv[1])
print(json.dumps({'frame': json.loads(frame.to_json(orient='records', date_format='iso')), 'window': frame.attrs['production_window']}))
"""


def production(root, env, log, check=True):
    res = run([sys.executable, '-c', PRODUCTION, str(log)], root, env=env, check=check)
    return res if not check else (json.loads(res.stdout.splitlines()[-1]), res.stderr)


def test_production_data_from_a_damaged_log(logged):
    root, env, lines, fb = logged
    (clean, _), (damaged, warned) = (production(root, env, write_case(root, f'production_{name}', L, F))
                                     for name, L, F in (('clean', lines, fb), ('damaged', cases(lines)['garbage'][0], bad_feedback(fb))))
    assert len(clean['frame']) == ROWS and damaged['frame'] == clean['frame']
    d = damaged['window']['damaged']
    assert (d['predictions']['lines'], d['predictions']['files'][0]['first'], d['feedback']['lines']) == (4, 6, 5), d
    assert '4 lines of churn.jsonl could not be read (first at line 6: the line is not a JSON object): skipped' in warned
    assert '5 lines of churn.feedback.jsonl could not be read (first at line 101' in warned
    res = production(root, env, write_case(root, 'production_many', put(lines, 9, [b'x\n'] * 30), fb), check=False)
    assert res.returncode == 1 and 'MlnbError: No training set was made from' in res.stderr
    assert 'more than damaged_share = 0.01: 30 lines of churn.jsonl could not be read (first at line 10' in res.stderr
