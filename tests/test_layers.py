"""The map of the house: the import layers in pyproject.toml hold, name every module, and catch an upward import."""
import ast, shutil, subprocess, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).parent / 'lint-imports')


def layered(container):
    "The modules named in the layers contract on `container`."
    contracts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['importlinter']['contracts']
    layers = next(c for c in contracts if c.get('containers') == [container])['layers']
    return sorted(m.strip() for layer in layers for m in layer.replace(':', '|').split('|'))


def lint(cwd):
    return subprocess.run([LINT], cwd=cwd, capture_output=True, text=True, env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(cwd)})


def test_the_layers_hold():
    res = lint(ROOT)
    assert res.returncode == 0 and ' 0 broken' in res.stdout, res.stdout[-3000:]


def test_every_module_stands_in_a_layer():
    lib = ROOT / 'mlnb'
    top = {p.stem for p in lib.glob('*.py') if not p.stem.startswith('_')} | {p.name for p in lib.iterdir() if (p / '__init__.py').is_file()}
    assert layered('mlnb') == sorted(top)
    assert layered('mlnb.serving') == sorted(p.stem for p in (lib / 'serving').glob('*.py') if p.stem != '__init__')


def test_no_module_imports_a_private_name_of_another():
    found = []
    for f in sorted((ROOT / 'mlnb').rglob('*.py')):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom): continue
            ours = node.level > 0 or (node.module or '').split('.')[0] == 'mlnb'
            found += [f"{f.relative_to(ROOT)}: {a.name}" for a in node.names if ours and a.name.startswith('_') and a.name != '__version__']
    assert found == []


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / 'mlnb', tmp_path / 'mlnb', ignore=shutil.ignore_patterns('__pycache__', 'templates'))
    shutil.copy(ROOT / 'pyproject.toml', tmp_path)
    with open(tmp_path / 'mlnb' / 'pipeline.py', 'a') as f: f.write('\n\ndef _up():\n    from mlnb.runner import run_pipeline\n')
    res = lint(tmp_path)
    assert res.returncode != 0 and 'mlnb.pipeline is not allowed to import mlnb.runner' in res.stdout, res.stdout[-3000:]
    (tmp_path / 'mlnb' / 'pipeline.py').write_text((ROOT / 'mlnb' / 'pipeline.py').read_text())
    with open(tmp_path / 'mlnb' / 'serving' / 'requests.py', 'a') as f: f.write('\n\ndef _up():\n    from mlnb.errors import MlnbError\n')
    res = lint(tmp_path)
    assert res.returncode != 0 and 'mlnb.serving is not allowed to import mlnb.errors' in res.stdout, res.stdout[-3000:]
