"""cnnlab.sweep(..., workers=2) from a script (issue 25, item 4): worker processes are spawned, and spawn imports
the main script again in each of them; a sweep called at the script's top level without
``if __name__ == "__main__":`` is refused before anything runs, saying what to do, instead of every run
failing with "worker process died". Real script files, run by a real interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SPEC = {"base": {"data": {"name": "mnist", "train_limit": 200, "val_size": 100}, "model": {"name": "linear"},
                 "train": {"epochs": 1, "batch_size": 100, "progress": False, "precision": "fp32"}},
        "axes": {"optim.lr": [0.01, 0.001]}}


def script(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sw.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    path = folder / "study.py"
    path.write_text(body)
    return path


def python(path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, CNNLAB_NO_REEXEC="1")
    return subprocess.run([sys.executable, str(path)], cwd=path.parent, capture_output=True, text=True, env=env,
                          timeout=timeout)


UNGUARDED = """import cnnlab
print("the script starts")
cnnlab.sweep("sw.yaml", out="out", workers=2)
"""


def test_an_unguarded_sweep_with_workers_is_refused_before_any_run(tmp_path):
    done = python(script(tmp_path, UNGUARDED))
    assert done.returncode != 0
    assert "ConfigError" in done.stderr and "outside 'if __name__ == \"__main__\":'" in done.stderr
    assert str(tmp_path / "study.py") in done.stderr and "workers=1" in done.stderr
    assert done.stdout.count("the script starts") == 1  # no worker ever imported it again
    assert not (tmp_path / "out").exists() and "worker process died" not in done.stdout + done.stderr


@pytest.mark.parametrize("body", [
    'import cnnlab\nif __name__ == "__main__":\n    cnnlab.sweep("sw.yaml", out="out", workers=2, dry_run=True)\n',
    'import cnnlab\n\n\ndef main():\n    return cnnlab.sweep("sw.yaml", out="out", workers=2, dry_run=True)\n\n\n'
    'if "__main__" == __name__:\n    main()\n',
    'import cnnlab\ncnnlab.sweep("sw.yaml", out="out", workers=1, dry_run=True)\n',  # one worker: no processes
], ids=["guarded", "guarded-in-a-function", "one-worker"])
def test_a_guarded_sweep_or_one_without_workers_is_not_refused(tmp_path, body):
    done = python(script(tmp_path, body))
    assert done.returncode == 0, done.stderr
    assert "2 runs" in done.stdout or "runs" in done.stdout


def test_inside_a_worker_importing_the_script_again_it_is_refused_too(tmp_path):
    """What spawn does in each worker (runpy.run_path(main, run_name="__mp_main__")), done by hand: the sweep
    call meets the same error there, whatever the sweep process could see."""
    script(tmp_path, UNGUARDED)
    starter = tmp_path / "start.py"
    starter.write_text('import runpy\nrunpy.run_path("study.py", run_name="__mp_main__")\n')
    done = python(starter)
    assert done.returncode != 0 and "outside 'if __name__ == \"__main__\":'" in done.stderr


@pytest.mark.slow
def test_a_guarded_script_runs_its_sweep_on_two_workers(tmp_path, data_root):
    body = ('import cnnlab\nprint("the script starts")\nif __name__ == "__main__":\n'
            '    result = cnnlab.sweep("sw.yaml", out="out", workers=2)\n'
            '    print("statuses", sorted(r["status"] for r in result.rows))\n')
    done = python(script(tmp_path, body), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "statuses ['completed', 'completed']" in done.stdout


def test_the_readmes_notebook_example_guards_its_sweep_as_a_script_must():
    """The README's Python API block, saved as a .py file, runs its sweep with workers only under the guard."""
    import ast
    import re

    from cnnlab.sweeps.local import _is_main_test

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "cnnlab.sweep(" in b)
    tree = ast.parse(block)
    guarded = {id(n) for top in tree.body if isinstance(top, ast.If) and _is_main_test(top.test)
               for n in ast.walk(top)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "cnnlab.sweep"
             and any(k.arg == "workers" for k in n.keywords)]
    assert calls and all(id(c) in guarded for c in calls)
