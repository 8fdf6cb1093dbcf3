"""The service's columnar copy of its log: `read_events` takes from it only the lines whose bytes are still the ones copied,
and returns exactly the rows (and the skipped lines) of a parse of the JSON lines, whatever happened to the copy or to the
log: damaged, truncated or missing segments, segments of another file, a log rewritten or truncated under its copy,
rotation, writers killed mid-write, and the real service writing it."""
import json, os, random, shutil, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from conftest import start_server
from test_damaged_logs import VERDICT, monitor, monitor_setting
from test_monitor import request_rows, send

COLUMNS = {'customer_id': 'str', 'snapshot_date': 'datetime', 'age': 'float', 'monthly_charges': 'float', 'plan': 'str'}


def line(i, who='a', ts=None, label=None, age=None):
    "A prediction line as the service writes it."
    row = {'customer_id': f'C{i}', 'snapshot_date': '2026-01-01', 'age': 30 + i % 50 if age is None else age,
           'monthly_charges': 50.5 + i % 7, 'plan': ['basic', 'pro'][i % 2]}
    return json.dumps({'request_id': f'{who}{i}-0', 'ts': ts or f'2026-12-05T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}+00:00',
                       'model': 'churn:abc', 'variant': 'champion', 'row': row,
                       'prediction': {'label': i % 2 if label is None else label, 'probability': 0.7, 'probabilities': [0.3, 0.7]}},
                      separators=(',', ':')) + '\n'


def read(log):
    from mlnb.events import read_events
    return read_events(log, COLUMNS, 'int64', last=10**9, classes=2)


def parsed(log):
    "What a parse of the JSON lines alone reads (the copy moved away meanwhile)."
    from mlnb.serving import columns_dir
    d, away = columns_dir(log), log.with_name('away')
    if d.exists(): d.rename(away)
    try: return read(log)
    finally:
        if away.exists(): away.rename(d)


def same(log):
    "The frame read with the copy, checked against a parse of the JSON lines: the same rows, probabilities and lines skipped."
    from mlnb.events import probabilities
    a, b = read(log), parsed(log)
    pd.testing.assert_frame_equal(a, b)
    assert (probabilities(a) == probabilities(b)).all()
    assert a.attrs['source']['damaged'] == b.attrs['source']['damaged']
    return a


def covered(log) -> int:
    "Bytes of each file of `log` that its copy verifiably holds."
    import pyarrow as pa
    from mlnb.events import _copied, log_files
    n = 0
    for f in log_files(log):
        with pa.memory_map(str(f)) as m:
            view = memoryview(m.read_buffer())
            n += sum(e - s for s, e, *_ in _copied(log.resolve(), f.stat(), view, 0, len(view)))
    return n


def write(log, lines, batch=7, every=4096, **kw):
    "Write `lines` in batches as the service does, with a columnar copy of a segment per `every` bytes."
    from mlnb.serving import JsonLinesLog
    jl = JsonLinesLog(log, columnar=True, **kw)
    jl.copy.every = every
    for i in range(0, len(lines), batch): assert jl.write(''.join(lines[i:i + batch]))
    jl.close()
    return jl


@pytest.fixture
def log(tmp_path):
    "A log of 2,000 lines with a copy in segments, some lines damaged (written as the service writes)."
    lines = [line(i) for i in range(2000)]
    lines[5] = line(5, ts='not a date')
    lines[700] = line(700, label='yes')  # text where labels are numbers: that segment cannot be typed as the reader's
    lines[1500] = line(1500, age='old')
    p = tmp_path / 'p.jsonl'
    write(p, lines)
    return p


def test_the_copy_is_read_and_reads_as_a_parse(log):
    from mlnb.serving import columns_dir
    assert len(list(columns_dir(log).glob('*.arrow'))) > 50
    assert covered(log) > 0.9 * log.stat().st_size  # all but the segments whose lines pyarrow could not type alike
    ev = same(log)
    assert len(ev) == 1997 and ev.attrs['source']['damaged']['files'][0]['first'] == 6


def _segments(log):
    from mlnb.serving import columns_dir
    return sorted(columns_dir(log).glob('*.arrow'))


def truncated(log):
    for s in _segments(log)[::2]: s.write_bytes(s.read_bytes()[:s.stat().st_size // 2])


def flipped(log):  # a byte of each segment changed, the name kept: its checksum tells
    for s in _segments(log):
        b = bytearray(s.read_bytes()); b[len(b) // 2] ^= 0x55; s.write_bytes(bytes(b))


def renamed_garbage(log):  # not an Arrow file, named with its right checksum (as the service writes them, and as format 1 did)
    from mlnb.serving import Checksum
    for i, s in enumerate(_segments(log)[:10]):
        junk = os.urandom(500)
        s.unlink(); s.with_name('.'.join(s.name.split('.')[:3] + [Checksum(2 - i % 2).update(junk).hex(), 'arrow'])).write_bytes(junk)


def missing(log):
    from mlnb.serving import columns_dir
    shutil.rmtree(columns_dir(log))


def other_file(log):  # the segments of an older file, named as if they were this file's (an inode used again)
    other = log.with_name('o.jsonl')
    write(other, [line(i, who='o') for i in range(2000)])
    ident = f'{log.stat().st_dev}-{log.stat().st_ino}'
    for s in _segments(log): s.unlink()
    for s in _segments(other): shutil.copy(s, _segments_dir(log) / (ident + '.' + s.name.split('.', 1)[1]))


def _segments_dir(log):
    from mlnb.serving import columns_dir
    return columns_dir(log)


def rewritten(log):  # the log changed in place under its copy, the same length
    data = log.read_bytes()
    mid = data.index(b'"a1000-0"')
    log.write_bytes(data[:mid] + data[mid:].replace(b'"label":0', b'"label":1', 1))


def truncated_log(log):  # emptied, then written again by the service: the old segments no longer hold its bytes
    os.truncate(log, 0)
    write(log, [line(i, who='n') for i in range(300)])


@pytest.mark.parametrize('damage', [truncated, flipped, renamed_garbage, missing, other_file, rewritten, truncated_log])
def test_a_copy_that_does_not_hold_the_lines_is_passed_over(log, damage):
    damage(log)
    ev = same(log)
    if damage is rewritten: assert ev.loc[ev['request_id'] == 'a1000-0', 'prediction.label'].tolist() == [1]
    if damage is truncated_log: assert len(ev) == 300 and ev['request_id'].str.startswith('n').all() and covered(log) == log.stat().st_size
    if damage is other_file: assert covered(log) == 0


def test_rotated_files_keep_their_copy(tmp_path):
    from mlnb.events import log_files
    log = tmp_path / 'p.jsonl'
    write(log, [line(i) for i in range(1500)], max_bytes=100_000)
    assert len(log_files(log)) > 3
    assert covered(log) > 0.9 * sum(f.stat().st_size for f in log_files(log))
    assert len(same(log)) == 1500


WRITER = '''import sys, time
from mlnb.serving.logs import JsonLinesLog
sys.path.insert(0, sys.argv[4])
from test_columnar_copy import line
log, who, n = JsonLinesLog(sys.argv[1], columnar=True), sys.argv[2], int(sys.argv[3])
log.copy.every = 50_000
print("writing", flush=True)
i = 0
while True:
    log.write("".join(line(i + j, who) for j in range(n)))
    i += n
    if who == "s": time.sleep(0.005)
'''


def test_writers_killed_again_and_again_leave_a_copy_that_reads_as_a_parse(tmp_path):
    log = tmp_path / 'p.jsonl'
    here = str(Path(__file__).parent)
    steady = subprocess.Popen([sys.executable, '-c', WRITER, str(log), 's', '20', here], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert steady.stdout.readline() == 'writing\n'
    try:
        for _ in range(8):  # each killed a few milliseconds into writing 500-line batches: often mid-write, or mid-segment
            victim = subprocess.Popen([sys.executable, '-c', WRITER, str(log), 'k', '500', here], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            victim.stdout.readline()
            time.sleep(random.uniform(0.05, 0.3))
            victim.kill(); victim.communicate()
        time.sleep(1)
    finally:
        steady.kill(); steady.communicate()
    from mlnb.serving import JsonLinesLog
    JsonLinesLog(log).repair()  # as the next process does: a line the last writer left unfinished is removed
    assert covered(log) > 0
    ev = same(log)
    assert ev['request_id'].str[0].unique().tolist() in (['s', 'k'], ['k', 's'])
    assert len(ev) == log.read_bytes().count(b'\n')


def test_the_service_writes_a_copy_the_monitor_reads(served, tmp_path_factory):
    "A real `bentoml serve` writes the copy beside its log; `mlnb monitor` judges alike with it, without it, and from a parse."
    from mlnb.serving import columns_dir
    root = tmp_path_factory.mktemp('copy') / 'churn'
    shutil.copytree(served[0], root, ignore=shutil.ignore_patterns('__pycache__'))
    env = served[1]
    log = tmp_path_factory.mktemp('copy_log') / 'churn.jsonl'
    srv = start_server(served, log)
    sys.path.insert(0, str(root))
    try:
        from churn.data import simulate
        send(srv, request_rows(simulate(1200, seed=5, drift=0.2), 'churned'), size=100)
        deadline = time.time() + 30
        while time.time() < deadline and log.read_bytes().count(b'\n') < 1200: time.sleep(0.2)
    finally:
        srv.stop()
        sys.path.remove(str(root))
    assert log.read_bytes().count(b'\n') == 1200
    assert list(columns_dir(log).glob('*.arrow')) and covered(log) == log.stat().st_size  # the service wrote it on stopping
    with monitor_setting(root, 'cache = false'):
        _, copied, _ = monitor(root, env, log)
        shutil.rmtree(columns_dir(log))
        _, plain, _ = monitor(root, env, log)
    assert copied['window']['rows'] == 1200
    for k in (*VERDICT, 'window'): assert copied[k] == plain[k], k
