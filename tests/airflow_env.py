"""Apache Airflow 3 for the tests: a virtual environment of its own (Airflow is never a dependency of mlnb), and an
Airflow home in a temporary folder (SQLite metadata database, no example DAGs) to run `airflow` commands in.

    from airflow_env import Unavailable, AirflowHome
    home = AirflowHome(tmp_path / 'airflow')    # makes the environment first when it is missing
    home.airflow('dags', 'test', 'my_dag')        # the CompletedProcess

The environment is made once per machine in $MLNB_AIRFLOW_VENV (default /tmp/mlnb-airflow-venv) and reused; making it
takes about a minute or two (pip downloads some 150 packages). `Unavailable` is raised only when it does not exist and the
package index cannot be reached to make it.
"""
import os, subprocess
from pathlib import Path

from side_venv import Unavailable, ensure

VENV = Path(os.environ.get('MLNB_AIRFLOW_VENV', '/tmp/mlnb-airflow-venv'))
AIRFLOW = '3.3.2'


def _python() -> Path: return VENV / 'bin' / 'python'


def _works() -> bool:
    if not (VENV / 'bin' / 'airflow').exists(): return False
    r = subprocess.run([_python(), '-c', f'import airflow; assert airflow.__version__ == {AIRFLOW!r}, airflow.__version__; '
                        'from airflow.providers.standard.operators.bash import BashOperator; from airflow.sdk import DAG'],
                       capture_output=True, timeout=300)
    return r.returncode == 0


def venv() -> Path:
    "The folder of Airflow's environment, made first when it is missing or broken (several test processes wait for one to make it)."
    return ensure(VENV, _works, [[f'apache-airflow=={AIRFLOW}']], 'apache-airflow')


class AirflowHome:
    "An Airflow home in `folder`: its DAG folder is `folder/dags`, its metadata database SQLite, migrated when made."
    def __init__(self, folder: Path):
        self.folder, self.dags = Path(folder), Path(folder) / 'dags'
        self.dags.mkdir(parents=True, exist_ok=True)
        self.bin = venv() / 'bin'
        self.env = {'AIRFLOW_HOME': str(self.folder), 'AIRFLOW__CORE__DAGS_FOLDER': str(self.dags), 'AIRFLOW__CORE__LOAD_EXAMPLES': 'False',
                    'AIRFLOW__DATABASE__SQL_ALCHEMY_CONN': f'sqlite:///{self.folder / "airflow.db"}', 'NO_COLOR': '1'}
        self.airflow('db', 'migrate')

    def airflow(self, *args, check=True, timeout=900) -> subprocess.CompletedProcess:
        "Run `airflow ARGS` in this home (in the working directory of the test); with `check`, raise on a non-zero exit naming its output."
        r = subprocess.run([self.bin / 'airflow', *map(str, args)], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise AssertionError(f"airflow {' '.join(map(str, args))} exited {r.returncode}\nstdout:\n{r.stdout[-6000:]}\nstderr:\n{r.stderr[-6000:]}")
        return r
