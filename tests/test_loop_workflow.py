"""The scaffold's scheduled workflow (.github/workflows/mlnb-loop.yml): `mlnb loop` on a cron schedule, with the team's store
from the repository secrets; without them it makes no pass and says why."""
import os, subprocess

import yaml


def _workflow(root):
    wf = yaml.safe_load((root / '.github' / 'workflows' / 'mlnb-loop.yml').read_text())
    return wf, wf[True] if True in wf else wf['on']  # YAML 1.1 reads the key `on` as true


def _gate(step, tmp_path, env):
    "Run the workflow's first step (does the team's store exist?) as the runner's shell does; returns (its output, what it set)."
    out = tmp_path / 'github_output'
    out.write_text('')
    r = subprocess.run(['bash', '-eo', 'pipefail', '-c', step['run']], env={'PATH': os.environ['PATH'], 'GITHUB_OUTPUT': str(out), **env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout, out.read_text()


def test_the_loop_runs_on_a_schedule_with_the_team_store(scaffold_template, tmp_path):
    wf, on = _workflow(scaffold_template)
    assert on['schedule'] == [{'cron': '17 * * * *'}] and 'workflow_dispatch' in on
    assert wf['concurrency'] == {'group': 'mlnb-loop', 'cancel-in-progress': False}
    for name in ('MLNB_STORE', 'MLNB_ARTIFACTS', 'PGPASSWORD', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL'):
        assert wf['env'][name] == f'${{{{ secrets.{name} }}}}'
    ci = yaml.safe_load((scaffold_template / '.github' / 'workflows' / 'mlnb.yml').read_text())
    assert wf['env']['MLNB_REQUIREMENT'] == ci['env']['MLNB_REQUIREMENT']  # the same mlnb as CI
    steps = wf['jobs']['loop']['steps']
    assert [s['run'] for s in steps if s.get('name') == 'One pass of the loop'] == ['mlnb loop']
    assert all(s.get('if', '').endswith("steps.store.outputs.ready == 'true'") for s in steps[1:])

    said, set_ = _gate(steps[0], tmp_path, {})
    assert set_ == '' and '::notice::' in said and 'MLNB_STORE and MLNB_ARTIFACTS' in said  # no store: no pass, and why
    said, set_ = _gate(steps[0], tmp_path, {'MLNB_STORE': 'postgresql://mlnb@db/mlnb'})
    assert set_ == ''  # a ledger without an object store is not enough
    said, set_ = _gate(steps[0], tmp_path, {'MLNB_STORE': 'postgresql://mlnb@db/mlnb', 'MLNB_ARTIFACTS': 's3://bucket/mlnb'})
    assert set_.strip() == 'ready=true' and said == ''
