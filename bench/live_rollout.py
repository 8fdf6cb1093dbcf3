"""A live rollout's stage changes under load: failed requests, p99 during each change against the steady state just
before it, and the time from the state change to the new share being served.

Setup: a scaffolded churn project (`[tool.mlnb.serve] rollout_key = "customer_id"`) is trained and built (the
champion's Bento), then trained again (the challenger, a model as large as the champion), in a temporary directory with its own
BENTOML_HOME. Each round serves the Bento afresh (`bentoml serve` on 127.0.0.1, the flags file of the project) and puts
it under CONCURRENCY keep-alive clients sending single-row requests, each row with a new customer_id, for the whole
round. After WARMUP seconds, every STEADY seconds the rollout state changes (`mlnb.flags.set_rollout` /
`clear_rollout`, as `mlnb loop` does):

1. champion alone -> challenger at 0.25 (the challenger is loaded from the model store, in the model process, under load);
2. 0.25 -> 0.5 (loaded already: routing only);
3. 0.5 -> off (the champion alone: the rollback).

For each change: requests that failed (not 200, or a broken connection) in the round; p99 of the requests sent in the
WINDOW seconds after the change, over p99 of those sent in the WINDOW seconds before it (the old steady state: same
server, same clients, same round) and over p99 of those sent in the last WINDOW seconds of the stage (the new steady
state: a split between two models costs two model calls per batch, so it is slower than the champion alone whatever the
change costs); and the time from the state change (the call that writes it) to the new share being served, from the
rows whose key the old and the new stage route differently (a row goes to the challenger exactly when
`bucket(customer_id) < share`, so each answer can be checked): when the first of them answered as the new stage routes
arrived, and when the last one answered as the old stage routes arrived (the switch is complete). Medians over rounds.

Usage: python bench/live_rollout.py [--rounds 3] [--concurrency 32] [--warmup 5] [--steady 10] [--window 5]
"""
import argparse, asyncio, itertools, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import read_response, sh  # noqa: E402

TARGETS = {'failed': 0, 'p99_ratio': 1.2}  # no failed request; p99 during a change at most 1.2x the steady state's


def models(mlnb, proj, env):
    return {m['tag'] for m in json.loads(sh([mlnb, 'models', 'churn', '--json'], proj, env))}


def setup(tmp, env):
    "(project, Bento tag, champion tag, challenger tag)."
    mlnb = str(Path(sys.executable).parent / 'mlnb')
    proj = tmp / 'churn'
    sh([mlnb, 'new', str(proj)], tmp, env)
    toml = (proj / 'pyproject.toml').read_text()
    (proj / 'pyproject.toml').write_text(toml.replace('[tool.mlnb.serve]\n', '[tool.mlnb.serve]\nrollout_key = "customer_id"\n', 1))
    sh([mlnb, 'run', '--engine', 'fast', '-q'], proj, env)
    bento = sh([mlnb, 'build'], proj, env).split()[1].rstrip('.')
    champion = models(mlnb, proj, env).pop()
    sh([mlnb, 'run', '--engine', 'fast', '-q', '--force'], proj, env) # a challenger as large as the champion (its load takes about a second)
    challenger = (models(mlnb, proj, env) - {champion}).pop()
    return proj, bento, champion, challenger


async def clients(port, row, concurrency, stop, seen, errors):
    "CONCURRENCY closed-loop clients; each answer is (sent, received, key, model) in `seen`."
    counter = itertools.count()
    async def client():
        r, w = await asyncio.open_connection('127.0.0.1', port)
        while not stop.is_set():
            key = f'K{next(counter):08d}'
            body = json.dumps({'rows': [{**row, 'customer_id': key}]}).encode()
            t0 = time.monotonic()
            w.write(b'POST /predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body))
            try:
                await w.drain()
                status, out = await read_response(r)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                errors.append((t0, repr(e))); r, w = await asyncio.open_connection('127.0.0.1', port); continue
            if status != 200: errors.append((t0, status)); continue
            seen.append((t0, time.monotonic(), key, json.loads(out)[0]['model']))
        w.close()
    await asyncio.gather(*[client() for _ in range(concurrency)])


def p99(lat):
    lat = sorted(lat)
    return lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float('nan')


def one_round(proj, bento, champion, challenger, env, args):
    from mlnb.flags import clear_rollout, set_rollout
    from mlnb.server import Server
    from mlnb.serving import bucket
    flags = proj / '.mlnb' / 'flags.json'
    if flags.exists(): flags.unlink()
    sys.path.insert(0, str(proj))
    from churn.data import simulate
    sys.path.remove(str(proj))
    row = json.loads(simulate(1, seed=5).drop(columns='churned').to_json(orient='records', date_format='iso'))[0]
    seen, errors, changes = [], [], []
    with Server(bento, log_path=Path(tempfile.mkdtemp()) / 'predictions.jsonl', env=env, flags=flags) as srv:
        port = int(srv.url.rsplit(':', 1)[1])
        async def main():
            stop = asyncio.Event()
            load = asyncio.create_task(clients(port, row, args.concurrency, stop, seen, errors))
            await asyncio.sleep(args.warmup + args.steady)
            for share, act in ((0.25, lambda: set_rollout(proj, challenger, 0.25, 'bench')), (0.5, lambda: set_rollout(proj, challenger, 0.5, 'bench')),
                               (0.0, lambda: clear_rollout(proj, 'bench'))):
                t = time.monotonic()
                await asyncio.to_thread(act)
                changes.append((share, t, time.monotonic() - t))
                await asyncio.sleep(args.steady)
            stop.set()
            await load
        asyncio.run(main())
    out = []
    for i, (share, t, took) in enumerate(changes):
        before = [b - a for a, b, _, _ in seen if t - args.window <= a < t]
        during = [b - a for a, b, _, _ in seen if t <= a < t + args.window]
        settled = [b - a for a, b, _, _ in seen if t + args.steady - args.window <= a < t + args.steady]
        old = [0.0, 0.25, 0.5][i]
        # the answers whose key the two stages route differently: answered by the old stage, or by the new one
        moved = [(got, m == challenger) for a, got, k, m in seen if t - args.window <= a < t + args.steady
                 and (float(bucket([k])[0]) < share) != (float(bucket([k])[0]) < old)]
        new = lambda c: c == (share > old) # answered as the new stage routes
        last_old = max((got for got, c in moved if not new(c)), default=t) - t
        first_new = min((got for got, c in moved if new(c) and got >= t), default=float('nan')) - t
        out.append({'change': ['champion -> 0.25 (load)', '0.25 -> 0.5', '0.5 -> off'][i], 'write_s': took,
                    'steady_p99_ms': p99(before) * 1e3, 'change_p99_ms': p99(during) * 1e3, 'settled_p99_ms': p99(settled) * 1e3,
                    'p99_ratio': p99(during) / p99(before), 'p99_ratio_settled': p99(during) / p99(settled),
                    'first_new_s': first_new, 'last_old_s': last_old, 'requests_in_window': len(during)})
    return {'failed': len(errors), 'requests': len(seen), 'changes': out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--concurrency', type=int, default=32)
    ap.add_argument('--warmup', type=float, default=5)
    ap.add_argument('--steady', type=float, default=10)
    ap.add_argument('--window', type=float, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='bench-live-'))
    env = {**os.environ, 'BENTOML_HOME': str(tmp / 'bentoml')}
    os.environ['BENTOML_HOME'] = env['BENTOML_HOME']
    try:
        t0 = time.monotonic()
        proj, bento, champion, challenger = setup(tmp, env)
        print(f'setup: {time.monotonic() - t0:.0f} s; champion {champion}, challenger {challenger}', flush=True)
        rounds = []
        for r in range(args.rounds):
            res = one_round(proj, bento, champion, challenger, env, args)
            rounds.append(res)
            print(f"round {r + 1}: {res['requests']} requests, {res['failed']} failed", flush=True)
            for c in res['changes']:
                print(f"  {c['change']:<26} p99 {c['steady_p99_ms']:.1f} ms before, {c['change_p99_ms']:.1f} ms in the {args.window:g} s after "
                      f"({c['p99_ratio']:.2f}x), {c['settled_p99_ms']:.1f} ms once settled ({c['p99_ratio_settled']:.2f}x); "
                      f"first answer by the new stage {c['first_new_s']:.2f} s, last by the old {c['last_old_s']:.2f} s after the change "
                      f"(writing the state took {c['write_s'] * 1e3:.0f} ms)", flush=True)
        print('\nmedians over rounds:')
        failed = sum(r['failed'] for r in rounds)
        for i, name in enumerate(c['change'] for c in rounds[0]['changes']):
            m = lambda k: statistics.median(r['changes'][i][k] for r in rounds)
            print(f"  {name:<26} p99 {m('steady_p99_ms'):.1f} before -> {m('change_p99_ms'):.1f} during -> {m('settled_p99_ms'):.1f} ms settled; "
                  f"during over before {m('p99_ratio'):.2f}x, over settled {m('p99_ratio_settled'):.2f}x (target <= {TARGETS['p99_ratio']}x); "
                  f"new stage answering after {m('first_new_s'):.2f} s, old stage's last answer {m('last_old_s'):.2f} s after the change")
        print(f"  failed requests: {failed} of {sum(r['requests'] + r['failed'] for r in rounds)} (target {TARGETS['failed']})")
    finally: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
