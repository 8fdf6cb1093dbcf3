"""The cost of `mlnb serve --swappable`'s front, in one invocation: the same backend called directly and through `mlnb.swap.Front`.

The backend is uvicorn serving a small ASGI app that answers a JSON body of ~300 bytes (what a one-row answer of the churn service
weighs), so what is measured is the front alone: the loopback hop, the copy of the request and of the answer. For each of ROUNDS rounds,
one after the other: CONCURRENCY keep-alive clients (asyncio, httpx) post single-row requests for DURATION seconds, to the backend, then to
the front; a single client measures the p50 latency of a lone request. The summary gives the medians over rounds and the ratios front /
direct, which a real Bento's own time (milliseconds per call, `bench/serve.py`) then dilutes.

Usage: python bench/swap_front.py [--duration 5] [--concurrency 16] [--rounds 3]
"""
import argparse, asyncio, json, socket, statistics, threading, time

import httpx
import uvicorn

from mlnb.swap import Front

ANSWER = json.dumps([{'request_id': 'f' * 32, 'model': 'churn:abcdefghijklmnop', 'label': 1, 'probability': 0.73,
                      'probabilities': {'0': 0.27, '1': 0.73}, 'variant': 'champion', 'fallback': False}] * 2).encode()
ROW = {'rows': [{'customer_id': 'K0000001', 'tenure_months': 12, 'monthly_charges': 70.5, 'contract': 'month-to-month',
                 'support_calls': 2, 'snapshot_date': '2026-01-31'}]}


async def backend_app(scope, receive, send):
    if scope['type'] != 'http': return
    more = True
    while more: more = (await receive()).get('more_body', False)
    await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(ANSWER)).encode())]})
    await send({'type': 'http.response.body', 'body': ANSWER})


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_backend(port):
    server = uvicorn.Server(uvicorn.Config(backend_app, host='127.0.0.1', port=port, log_level='warning', access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started: time.sleep(0.05)
    return server


async def load(url, clients, duration):
    "Requests per second with `clients` keep-alive clients for `duration` seconds; failed requests."
    done, failed, stop = [0], [0], time.monotonic() + duration
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=clients)) as c:
        async def one():
            while time.monotonic() < stop:
                try:
                    r = await c.post('/predict', json=ROW)
                    done[0] += r.status_code == 200; failed[0] += r.status_code != 200
                except httpx.HTTPError: failed[0] += 1
        t = time.monotonic()
        await asyncio.gather(*[one() for _ in range(clients)])
        return done[0] / (time.monotonic() - t), failed[0]


def lone_p50(url, n=300):
    with httpx.Client(base_url=url) as c:
        c.post('/predict', json=ROW)
        times = []
        for _ in range(n):
            t = time.perf_counter(); c.post('/predict', json=ROW); times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(a: argparse.Namespace):
    bport, fport = free_port(), free_port()
    backend = start_backend(bport)
    front = Front('127.0.0.1', fport, f'http://127.0.0.1:{bport}').start()
    urls = {'direct': f'http://127.0.0.1:{bport}', 'front': f'http://127.0.0.1:{fport}'}
    got = {k: {'rps': [], 'p50_ms': [], 'failed': 0} for k in urls}
    for r in range(a.rounds):
        for k, url in urls.items():
            rps, failed = asyncio.run(load(url, a.concurrency, a.duration))
            got[k]['rps'].append(rps); got[k]['failed'] += failed
            got[k]['p50_ms'].append(lone_p50(url))
            print(f'round {r + 1} {k}: {rps:.0f} req/s with {a.concurrency} clients, lone p50 {got[k]["p50_ms"][-1]:.2f} ms, {failed} failed', flush=True)
    front.stop(); backend.should_exit = True
    med = {k: {'rps': statistics.median(v['rps']), 'p50_ms': statistics.median(v['p50_ms']), 'failed': v['failed']} for k, v in got.items()}
    print(json.dumps(med, indent=2))
    print(f"front / direct: req/s {med['front']['rps'] / med['direct']['rps']:.2f}x, lone p50 +{med['front']['p50_ms'] - med['direct']['p50_ms']:.2f} ms "
          f"({med['front']['p50_ms'] / med['direct']['p50_ms']:.2f}x); failed {med['front']['failed']} through the front")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description='The cost of the front of `mlnb serve --swappable`.')
    for name, kind, default in (('--duration', float, 5), ('--concurrency', int, 16), ('--rounds', int, 3)): ap.add_argument(name, type=kind, default=default)
    main(ap.parse_args())
