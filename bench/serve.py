"""Serving throughput: the generated service against hand-written BentoML services, in one invocation.

Setup: a scaffolded churn project is trained (`mlnb run --engine fast`) and built (`mlnb build`) in a
temporary directory with its own BENTOML_HOME. Then, one server at a time on 127.0.0.1:

- generated: the Bento `mlnb build` made (strict contract-typed rows, per-row isolation, prediction log, its own
  batching: what arrives while the model is busy is predicted together in the next call);
- (a) hand-written: the same model at class level, pydantic rows, no batching;
- (b) hand-written + BentoML's adaptive batching (same max_batch_size, max_latency_ms 1000);
- (c) in-process `predict_proba(prepare(row))`, one row per call: the limit without HTTP.

The three servers run side by side (an idle one costs nothing); in each of ROUNDS rounds each gets
single-row requests from CONCURRENCY keep-alive clients (asyncio, raw HTTP/1.1) for WARMUP then
DURATION seconds, one server at a time, and the medians over rounds are reported (the machine's
noise is shared). Also measured: start-up time (launch to first 200 on /predict; each server is started and
stopped once per round, one at a time, before the load) and rows/s for requests of MANY rows against in-process rows/s
(the median of 15 requests sent one after the other, and of 15 in-process calls).

With --compare hand (the default) the summary ends with the four targets, as ratios within this invocation:
start-up of the generated service over the faster hand-written one (at most 1.1x), its p50 with one client over the
unbatched hand-written service's (a) (at most 1.5x), and its req/s with CONCURRENCY clients over the batched
hand-written service's (b) (at least 1.66x, the ratio the generated service had when the service was
first measured), and its rows/s with requests of MANY rows over in-process rows/s (at least 50%).

With --compare rollout: the generated service plain, with a shadow challenger, and with a 10% canary (same champion).
It counts the challenger's shadow predictions in the log against the champion's answers and ends with the rollout targets
(shadow at least 0.8x the plain service's req/s with p99 within 1.2x, canary at least 0.95x, no errors).
With --compare kafka: the generated service logging to JSON lines, and to a Kafka topic (librdkafka's mock cluster in a
process of its own: the real protocol on a loopback port).
With --before REV (and --compare hand): also the same model built by the mlnb of an earlier commit of this repository
(checked out in a temporary git worktree), served beside the others: the summary ends with the generated service
over that one.

Each server is also measured with a single client (p50 latency of a lone request).

Usage: python bench/serve.py [--compare hand|rollout|kafka] [--before REV] [--duration 20] [--warmup 5] [--concurrency 32] [--many 1000] [--rounds 3]
"""
import argparse, asyncio, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HAND = '''
import datetime as dt
from typing import List, Optional
import bentoml, pandas as pd
from pydantic import BaseModel
from churn.features import prepare

class Row(BaseModel):
    customer_id: str
    snapshot_date: dt.datetime
    age: Optional[int]
    tenure_months: int
    contract: str
    internet_service: str
    payment_method: Optional[str]
    region: str
    monthly_charges: float
    total_charges: Optional[float]
    support_calls: int

@bentoml.service(name="hand")
class Hand:
    model_ref = bentoml.models.BentoModel("__TAG__")
    def __init__(self):
        self.model = bentoml.sklearn.load_model(self.model_ref)
    @bentoml.api__BATCH__
    def predict(self, rows: List[Row]) -> List[float]:
        X = prepare(pd.DataFrame([r.model_dump() for r in rows]))
        return self.model.predict_proba(X)[:, 1].tolist()
'''


HAND_LATENCY_MS = 1000  # the hand-written batched service's dispatcher setting (BentoML's default is 10 s)
MANY_SAMPLES = 15  # requests of MANY rows, one after the other, and in-process calls of as many rows: the median of each
TARGETS = {'startup': 1.1, 'p50_1': 1.5, 'rps': 1.66, 'many': 0.5}  # generated over hand-written: at most, at most, at least; rows/s over in-process: at least


def sh(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


async def request(host, port, body, n=1):
    "One POST /predict on a fresh connection; returns (status, seconds)."
    r, w = await asyncio.open_connection(host, port)
    t0 = time.perf_counter()
    w.write(b'POST /predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body))
    await w.drain()
    status, _ = await read_response(r)
    w.close()
    return status, time.perf_counter() - t0


async def get(host, port, path):
    "The body of GET `path`."
    r, w = await asyncio.open_connection(host, port)
    w.write(b'GET %s HTTP/1.1\r\nHost: b\r\n\r\n' % path.encode()); await w.drain()
    _, body = await read_response(r)
    w.close()
    return body


async def read_response(r):
    head = await r.readuntil(b'\r\n\r\n')
    status = int(head.split(b' ', 2)[1])
    length = 0
    for line in head.split(b'\r\n'):
        if line.lower().startswith(b'content-length:'): length = int(line.split(b':')[1])
        if line.lower().startswith(b'transfer-encoding: chunked'): length = -1
    if length >= 0: body = await r.readexactly(length)
    else:
        body = b''
        while True:
            size = int((await r.readline()).strip(), 16)
            if size == 0: await r.readline(); break
            body += await r.readexactly(size); await r.readline()
    return status, body


async def load(host, port, body, concurrency, warmup, duration):
    "Closed-loop load; returns (requests/s, p50, p99, errors) over the measured window."
    lat, errors, stop_at = [], [0], time.perf_counter() + warmup + duration
    start_measure = time.perf_counter() + warmup
    req = b'POST /predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body)
    async def client():
        r, w = await asyncio.open_connection(host, port)
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at: break
            w.write(req); await w.drain()
            try: status, _ = await read_response(r)
            except (asyncio.IncompleteReadError, ConnectionError):
                errors[0] += 1; r, w = await asyncio.open_connection(host, port); continue
            t1 = time.perf_counter()
            if t0 >= start_measure:
                if status == 200: lat.append(t1 - t0)
                else: errors[0] += 1
        w.close()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float('nan')
    return len(lat) / duration, q(0.5), q(0.99), errors[0]


class Served:
    "A `bentoml serve` process on a free loopback port, with a BentoML home of its own linked to the store."
    def __init__(self, target, cwd, home, env):
        self.port = free_port()
        own = Path(tempfile.mkdtemp(prefix='bench-home-'))
        for sub in ('models', 'bentos'): (own / sub).symlink_to(Path(home) / sub)
        self.own = own
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, '-m', 'bentoml', 'serve', target, '--host', '127.0.0.1', '--port', str(self.port)],
                                     cwd=cwd, env={**env, 'BENTOML_HOME': str(own)}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_first_200(self, body):
        while True:
            if self.proc.poll() is not None: raise SystemExit('server exited')
            try:
                status, _ = asyncio.run(request('127.0.0.1', self.port, body))
                if status == 200: return time.perf_counter() - self.t0
            except OSError: pass
            time.sleep(0.05)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try: self.proc.wait(15)
        except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait()
        shutil.rmtree(self.own, ignore_errors=True)


BROKER = """import time
from confluent_kafka import Producer
p = Producer({'test.mock.num.brokers': 1, 'log_level': 0})
print(','.join(f'{b.host}:{b.port}' for b in p.list_topics(timeout=10).brokers.values()), flush=True)
time.sleep(36000)
"""


def build(mlnb, proj, env, *args):
    return sh([mlnb, 'build', *args], proj, env).split()[1].rstrip('.')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--duration', type=float, default=20)
    ap.add_argument('--warmup', type=float, default=5)
    ap.add_argument('--concurrency', type=int, default=32)
    ap.add_argument('--many', type=int, default=1000)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--compare', choices=['hand', 'rollout', 'kafka'], default='hand',
                    help='hand: the generated service against hand-written ones; rollout: plain, shadow and canary builds; '
                         'kafka: the JSON-lines log against a Kafka topic (librdkafka mock cluster)')
    ap.add_argument('--before', metavar='REV', help='with --compare hand: also serve the Bento that the mlnb of this git revision builds')
    args = ap.parse_args()
    if args.before and args.compare != 'hand': ap.error('--before goes with --compare hand')
    tmp = Path(tempfile.mkdtemp(prefix='mlnb-serve-bench-'))
    home = tmp / 'bentoml'
    env = {**os.environ, 'BENTOML_HOME': str(home)}
    mlnb = str(Path(sys.executable).parent / 'mlnb')
    sh([mlnb, 'new', str(tmp / 'churn')], tmp, env)
    proj = tmp / 'churn'
    sh([mlnb, 'run', '-q', '--engine', 'fast'], proj, env)
    tag = next(m['tag'] for m in json.loads(sh([mlnb, 'models', '--json'], proj, env)) if m['champion'])
    os.environ['BENTOML_HOME'] = str(home)
    sys.path.insert(0, str(proj))
    from mlnb.registry import model_info
    import bentoml, pandas as pd
    from churn.features import prepare
    cfg = __import__('tomllib').loads((proj / 'pyproject.toml').read_text())['tool']['mlnb']['serve']
    golden = model_info(tag)['golden']['rows']
    one = json.dumps({'rows': [golden[0]]}).encode()
    rows = [dict(golden[i % len(golden)], customer_id=f'B{i}') for i in range(args.many)]
    many = json.dumps({'rows': rows}).encode()
    hand_dir = tmp / 'hand'; hand_dir.mkdir()
    shutil.copytree(proj / 'churn', hand_dir / 'churn')
    empty = tmp / 'empty'; empty.mkdir()  # Bentos are served from an empty folder, as `mlnb serve` does
    broker = None
    logs = lambda i: {'MLNB_PREDICTION_LOG': str(tmp / f'predictions-{i}.jsonl')}
    if args.compare == 'hand':
        batch = f"(batchable=True, max_batch_size={cfg['max_batch_size']}, max_latency_ms={HAND_LATENCY_MS})"
        (hand_dir / 'plain.py').write_text(HAND.replace('__TAG__', tag).replace('__BATCH__', ''))
        (hand_dir / 'batched.py').write_text(HAND.replace('__TAG__', tag).replace('__BATCH__', batch))
        specs = [('(a) hand-written', 'plain:Hand', hand_dir, {}), ('(b) hand-written + batching', 'batched:Hand', hand_dir, {}),
                 ('generated (mlnb build)', build(mlnb, proj, env), empty, logs(2))]
        base_name = '(b) hand-written + batching'
        if args.before:  # the same model, built by the mlnb of REV: its runtime goes into the Bento
            old = tmp / 'before'
            sh(['git', '-C', str(Path(__file__).resolve().parent), 'worktree', 'add', '-q', '--detach', str(old), args.before], tmp, env)
            try: specs.append((f'generated at {args.before[:10]}', build(mlnb, proj, {**env, 'PYTHONPATH': str(old)}, '--model', tag), empty, logs(3)))
            finally: sh(['git', '-C', str(Path(__file__).resolve().parent), 'worktree', 'remove', '--force', str(old)], tmp, env)
    elif args.compare == 'rollout':
        sh([mlnb, 'run', '-q', '--engine', 'fast', '-p', 'n_estimators=100'], proj, env)
        other = next(m['tag'] for m in json.loads(sh([mlnb, 'models', '--json'], proj, env)) if m['tag'] != tag)
        specs = [('generated, plain', build(mlnb, proj, env, '--model', tag), empty, logs(0)),
                 ('generated, shadow', build(mlnb, proj, env, '--model', tag, '--challenger', other, '--mode', 'shadow'), empty, logs(1)),
                 ('generated, canary 10%', build(mlnb, proj, env, '--model', tag, '--challenger', other, '--mode', 'canary', '--key', 'customer_id'), empty, logs(2))]
        base_name = 'generated, plain'
    else:
        broker = subprocess.Popen([sys.executable, '-c', BROKER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        url = f'kafka://{broker.stdout.readline().strip()}/churn-predictions'
        plain = build(mlnb, proj, env)
        text = (proj / 'pyproject.toml').read_text()
        (proj / 'pyproject.toml').write_text(text.replace('prediction_log = ".mlnb/predictions/churn.jsonl"', f'prediction_log = "{url}"'))
        specs = [('generated, JSON lines', plain, empty, logs(0)), ('generated, Kafka', build(mlnb, proj, env), empty, {})]
        base_name = 'generated, JSON lines'
    servers, results = {}, {name: {'startups': [], 'rounds': [], 'single': []} for name, *_ in specs}
    envs = {name: {**env, **extra, 'PYTHONPATH': str(hand_dir)} for name, _, _, extra in specs}
    try:
        for rnd in range(args.rounds):  # start-up: launch to the first 200, one server at a time, in turns
            for name, target, cwd, _ in specs:
                srv = Served(target, cwd, home, envs[name])
                try: results[name]['startups'].append(srv.wait_first_200(one))
                finally: srv.stop()
        for name, target, cwd, _ in specs:
            servers[name] = srv = Served(target, cwd, home, envs[name])
            srv.wait_first_200(one)
        for rnd in range(args.rounds):  # the same load on each server in turn, so the machine's noise is shared
            for name, srv in servers.items():
                results[name]['rounds'].append(asyncio.run(load('127.0.0.1', srv.port, one, args.concurrency, args.warmup, args.duration)))
                results[name]['single'].append(asyncio.run(load('127.0.0.1', srv.port, one, 1, 1, max(args.duration / 4, 3))))
        for name, srv in servers.items():
            results[name]['many_rows_s'] = args.many / statistics.median(asyncio.run(request('127.0.0.1', srv.port, many))[1] for _ in range(MANY_SAMPLES))
        if args.compare == 'rollout':  # every row the champion answered was predicted by the shadow challenger too
            time.sleep(2)
            meta = json.loads(asyncio.run(get('127.0.0.1', servers['generated, shadow'].port, '/metadata')))
            text = (tmp / 'predictions-1.jsonl').read_text()
            shadowed = {'champion': text.count('"variant":"champion"'), 'challenger': text.count('"variant":"challenger"'), **meta['shadow']}
    finally:
        for srv in servers.values(): srv.stop()
        if broker is not None: broker.kill()
    for r in results.values():
        rs = r['rounds']
        r.update(startup=statistics.median(r['startups']), rps=statistics.median(x[0] for x in rs), p50=statistics.median(x[1] for x in rs),
                 p99=statistics.median(x[2] for x in rs), errors=sum(x[3] for x in rs) + sum(x[3] for x in r['single']),
                 p50_1=statistics.median(x[1] for x in r['single']))
    model = bentoml.sklearn.load_model(tag)
    frame1 = pd.DataFrame([golden[0]]).astype({'snapshot_date': 'datetime64[ns]'})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 5: model.predict_proba(prepare(frame1)); n += 1
    inproc_rps = n / (time.perf_counter() - t0)
    framen = pd.DataFrame(rows).astype({'snapshot_date': 'datetime64[ns]'})
    inproc_many = args.many / statistics.median(_timed(lambda: model.predict_proba(prepare(framen))) for _ in range(MANY_SAMPLES))

    base = results[base_name]
    print(f"{os.cpu_count()} cores; {args.concurrency} clients (and 1), single-row requests, {args.warmup:.0f} s warm-up, "
          f"{args.duration:.0f} s measured, median of {args.rounds} interleaved rounds; max_batch_size={cfg['max_batch_size']}"
          + (f" (the hand-written batched service: max_latency_ms={HAND_LATENCY_MS})" if args.compare == 'hand' else '') + "\n")
    print(f"{'service':30} {'req/s':>8} {'vs base':>8} {'p50 ms':>7} {'p99 ms':>7} {'1-client p50':>12} {'errors':>6} {'start s':>8} "
          f"{f'rows/s ({args.many}/req)':>20}")
    for k, r in results.items():
        print(f"{k:30} {r['rps']:8.1f} {r['rps'] / base['rps']:7.2f}x {r['p50'] * 1000:7.1f} {r['p99'] * 1000:7.1f} {r['p50_1'] * 1000:10.1f}ms "
              f"{r['errors']:6d} {r['startup']:8.2f} {r['many_rows_s']:20.0f}")
    print(f"{'(c) in-process, one row/call':30} {inproc_rps:8.1f} {inproc_rps / base['rps']:7.2f}x {'':7} {'':7} {'':12} {'':6} {'':8} {inproc_many:20.0f}")
    print(f"\nbase: {base_name}; in-process rows/s of {args.many}-row calls: {inproc_many:.0f}")
    for k, r in results.items():
        if k == base_name: continue
        print(f"{k}: {r['rps'] / base['rps']:.2f}x req/s, p99 {r['p99'] / base['p99']:.2f}x, 1-client p50 {r['p50_1'] / base['p50_1']:.2f}x, "
              f"start-up {r['startup'] / base['startup']:.2f}x; {args.many}-row requests at {r['many_rows_s'] / inproc_many:.0%} of in-process rows/s")
    if args.compare == 'hand':
        gen, plain = results['generated (mlnb build)'], results['(a) hand-written']
        hand_start = min(plain['startup'], base['startup'])
        checks = [('start-up, launch to first 200', gen['startup'] / hand_start, '<=', TARGETS['startup'],
                   f"{gen['startup']:.2f} s / {hand_start:.2f} s (the faster of (a), (b))"),
                  ('p50 of a lone request (1 client)', gen['p50_1'] / plain['p50_1'], '<=', TARGETS['p50_1'],
                   f"{gen['p50_1'] * 1000:.1f} ms / {plain['p50_1'] * 1000:.1f} ms of (a), unbatched"),
                  (f'req/s at {args.concurrency} clients', gen['rps'] / base['rps'], '>=', TARGETS['rps'],
                   f"{gen['rps']:.1f} / {base['rps']:.1f} of (b), batched"),
                  (f'rows/s of {args.many}-row requests', gen['many_rows_s'] / inproc_many, '>=', TARGETS['many'],
                   f"{gen['many_rows_s']:.0f} / {inproc_many:.0f} in process")]
        print(f"\ntargets, generated / hand-written (load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
        for what, ratio, op, target, detail in checks:
            met = ratio <= target if op == '<=' else ratio >= target
            print(f"  {what:34} {ratio:5.2f}x  target {op} {target}x  {'met' if met else 'MISSED':6}  ({detail})")
        if args.before:
            old = results[f'generated at {args.before[:10]}']
            print(f"\ngenerated now / generated at {args.before[:10]}: req/s {gen['rps'] / old['rps']:.2f}x, p50 {gen['p50'] / old['p50']:.2f}x, "
                  f"p99 {gen['p99'] / old['p99']:.2f}x, 1-client p50 {gen['p50_1'] / old['p50_1']:.2f}x, start-up {gen['startup'] / old['startup']:.2f}x, "
                  f"{args.many}-row rows/s {gen['many_rows_s'] / old['many_rows_s']:.2f}x")
    if args.compare == 'rollout':
        sh_, can = results['generated, shadow'], results['generated, canary 10%']
        print(f"\nshadow: the challenger predicted {shadowed['challenger']} of the {shadowed['champion']} rows the champion answered "
              f"({shadowed['done']} batches done, {shadowed['skipped']} skipped)")
        checks = [('shadow req/s', sh_['rps'] / base['rps'], '>=', 0.8), ('shadow p99', sh_['p99'] / base['p99'], '<=', 1.2),
                  ('canary req/s', can['rps'] / base['rps'], '>=', 0.95), ('errors', sum(r['errors'] for r in results.values()), '<=', 0)]
        print(f"\ntargets, against the plain service (load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
        for what, ratio, op, target in checks:
            met = ratio <= target if op == '<=' else ratio >= target
            print(f"  {what:14} {ratio:5.2f}{'x' if what != 'errors' else ' '}  target {op} {target}  {'met' if met else 'MISSED'}")
    shutil.rmtree(tmp, ignore_errors=True)


def _timed(fn):
    t0 = time.perf_counter(); fn(); return time.perf_counter() - t0


if __name__ == '__main__':
    main()
