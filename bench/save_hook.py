"""What nbdev's clean-on-save hook (`[tool.nbdev] jupyter_hooks = true`, turned on by `mlnb lab`) costs a Save in JupyterLab.

    python bench/save_hook.py [--repeat 30]

Saves the scaffold's train notebook, with the outputs of an executed run in it, through the contents manager `mlnb lab`
serves (`mlnb.labserver.RunRecords`) with and without `pre_save_hook=nbdev.clean.clean_jupyter`; the baseline is the save
without the hook, in the same invocation. Also reports the size on disk either way.
"""
import argparse, asyncio, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

MLNB = str(Path(sys.executable).parent / 'mlnb')


def main(repeat: int):
    from mlnb.labserver import RunRecords
    tmp = Path(tempfile.mkdtemp())
    subprocess.run([MLNB, 'new', 'churn'], cwd=tmp, check=True, capture_output=True)
    root = tmp / 'churn'
    subprocess.run([MLNB, 'run', '--profile', 'ci', 'train'], cwd=root, check=True, capture_output=True)
    run_id = json.loads(subprocess.run([MLNB, 'runs', '--json'], cwd=root, check=True, capture_output=True, text=True).stdout)[0]['id']
    executed = json.loads((root / '.mlnb' / 'runs' / run_id / 'train.ipynb').read_text()) # a notebook with outputs, as Lab would save it
    os.chdir(root) # as `mlnb lab` runs the server: nbdev's hook reads [tool.nbdev] above the API path, from the working directory
    results = {}
    for name, hook in (('no hook', None), ('nbdev clean on save', 'nbdev.clean.clean_jupyter')):
        cm = RunRecords(root_dir=str(root), **({'pre_save_hook': hook} if hook else {}))
        model = {'type': 'notebook', 'format': 'json', 'content': executed}
        async def save(): await cm.save(json.loads(json.dumps(model)), 'nbs/03_train.ipynb')
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter(); asyncio.run(save()); times.append(time.perf_counter() - t0)
        results[name] = (statistics.median(times), (root / 'nbs' / '03_train.ipynb').stat().st_size)
    base = results['no hook'][0]
    print(f'Save of nbs/03_train.ipynb with outputs, median of {repeat}:')
    for name, (t, size) in results.items(): print(f'  {name:22s} {t * 1000:7.1f} ms  x{t / base:5.2f}  {size:,} bytes on disk')


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=30)
    main(ap.parse_args().repeat)
