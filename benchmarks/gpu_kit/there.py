"""The GPU kit, "there" half: run on the borrowed GPU machine, from the project root, with that
machine's own python3 (standard library only here; the steps run cnnlab in child processes).

  1. installs the kit's wheels offline into <kit>/site (pip --no-index --no-deps --target; by
     unzipping them when that python has no pip) and runs everything with PYTHONPATH=<kit>/site:<root>
     and CNNLAB_DATA=<kit>/data;
  2. prints the environment (python, torch, CUDA, the GPU) and checks MNIST (the MD5s a run checks);
  3. runs benchmarks/gpu_check.py, the full check (--quick with --quick);
  4. trains the MNIST speed runs (the quick start recipe and recipes/speedrun/mnist_*.yaml, fp32 and
     bf16; with --quick one speed run at fp32);
  5. writes OUTDIR/gpu_kit_table.md (markdown, to paste into BENCHMARKS.md) and every step's log to OUTDIR.

    python3 benchmarks/gpu_kit/there.py --kit gpu_kit_build --out OUTDIR [--quick] [--budget 480]

(OUTDIR may also be given as the one positional argument; without either, $OUT.) Each step has a
timeout, and no step starts past the budget (default 480 s, all steps together, the install
included), so one hang cannot eat the machine's time. On a GPU the speed runs go fp32 and bf16 by
pairs, cheapest first, after gpu_check.py, which gets the budget less SPEED_RESERVE_S. Runs' folders
(checkpoints) go to <kit>/work, not OUTDIR. Exit code 0 when every step completed, 1 otherwise (the
table is written either way, as far as it got).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
# (name, what, recipe, overrides): each trained at fp32 and at bf16 (fp16 where the GPU has no bf16)
SPEED_RUNS = [  # cheapest first (the budget may end before the last)
    ("mnist_99_0_2s", "speed run 99.0 % (record's net, 1 epoch)", "speedrun/mnist_99_0_2s.yaml", []),
    ("mnist_99_0_fast", "speed run 99.0 % (narrow BN net + TTA, 1 epoch)", "speedrun/mnist_99_0_fast.yaml", []),
    ("mnist_99_5_60s", "speed run 99.5 % (BN net, shifts, 5 epochs)", "speedrun/mnist_99_5_60s.yaml", []),
    ("quickstart", "quick start: LeNet-5, 8 epochs, batch 64", "quickstart_lenet5_mnist.yaml", []),
]
SPEED_RESERVE_S = 150  # what gpu_check.py leaves the speed runs on a GPU (eight runs of ~5-20 s each there)
SPEED_TIMEOUT_S = 150  # one speed run (a CPU without --quick needs most of it for the 5-epoch one)
QUICK_RUNS = [("mnist_99_0_2s", "speed run 99.0 % (record's net, 1 epoch)", "speedrun/mnist_99_0_2s.yaml", [])]

ENV_SCRIPT = r"""
import json, platform, sys
import torch, torchvision, pydantic, torchinfo, cnnlab
cuda = torch.cuda.is_available()
p = torch.cuda.get_device_properties(0) if cuda else None
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
    "gpu": p.name if cuda else None, "gpus": torch.cuda.device_count() if cuda else 0,
    "gpu_memory_gib": round(p.total_memory / 2**30, 1) if cuda else None,
    "capability": f"{p.major}.{p.minor}" if cuda else None, "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
    "pydantic": pydantic.VERSION, "pydantic_from": pydantic.__file__, "torchinfo_from": torchinfo.__file__,
    "cnnlab": cnnlab.__version__, "cnnlab_from": cnnlab.__file__,
}))
"""

# MNIST as a run reads it (the .gz files as they are), with the MD5 of the uncompressed bytes that a run checks.
# (Not `cnnlab data check`: it compares a .gz file's own MD5 with the official download's, and these were
# recompressed.)
DATA_SCRIPT = r"""
import hashlib, sys
from pathlib import Path
from cnnlab.data.common import read_bytes
from cnnlab.data.sources.idx import MNIST, find
raw = Path(sys.argv[1]) / MNIST.folder / "raw"
bad = []
for name, md5 in MNIST.files:
    path = find(raw, name)
    got = hashlib.md5(memoryview(read_bytes(path))).hexdigest() if path else None
    print(f"{'ok ' if got == md5 else 'BAD'}  {path or raw / name}  MD5 {got}")
    bad += [name] if got != md5 else []
sys.exit(f"MNIST in {raw}: {', '.join(bad)} missing or not the official file" if bad else 0)
"""


class Steps:
    """Child processes with a timeout each and one budget for all: a step that would start past the
    budget is skipped, and one still running at its timeout is killed with its whole process group."""

    def __init__(self, out: Path, env: dict, budget_s: float):
        self.out, self.env, self.end = out, env, time.monotonic() + budget_s
        self.failed: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, name: str, cmd: list[str], timeout_s: float, min_s: float = 20) -> tuple[int | None, str, float]:
        """Run ``cmd`` with its output in OUTDIR/<name>.log; return (exit code or None, output, seconds)."""
        timeout_s = min(timeout_s, self.left())
        log = self.out / f"{name}.log"
        if timeout_s < min_s:
            log.write_text(f"skipped: {self.left():.0f} s of the budget left\n")
            print(f"-- {name}: skipped (budget spent)", flush=True)
            self.failed.append(f"{name} skipped")
            return None, "", 0.0
        wheels = [c for c in cmd if str(c).endswith(".whl")]
        shown = " ".join("<script>" if "\n" in str(c) else str(c) for c in cmd if not str(c).endswith(".whl"))
        shown += f" <{len(wheels)} wheels from {Path(wheels[0]).parent}>" if wheels else ""
        print(f"-- {name} (timeout {timeout_s:.0f} s): {shown}", flush=True)
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the check's workers and pytest too
                proc.wait()
                code = None
        took = time.monotonic() - t0
        text = log.read_text(errors="replace")
        if code is None:
            with open(log, "a") as f:
                f.write(f"\n[there.py] killed after the {timeout_s:.0f} s timeout\n")
        if code != 0:
            self.failed.append(f"{name} {'timed out' if code is None else f'exit {code}'}")
        print(f"   {'TIMED OUT' if code is None else f'exit {code}'} in {took:.0f} s", flush=True)
        return code, text, took


def install(kit: Path, site: Path, steps: Steps) -> bool:
    wheels = sorted((kit / "wheels").glob("*.whl"))
    if not wheels:
        print(f"no wheels in {kit / 'wheels'}: build the kit first (benchmarks/gpu_kit/prepare.py)", file=sys.stderr)
        return False
    if site.exists():
        shutil.rmtree(site)
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        code, _, _ = steps.run("install", [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                                           "--disable-pip-version-check", "--no-compile", "--target", site, *wheels],
                               timeout_s=180, min_s=1)
        return code == 0
    site.mkdir(parents=True)  # no pip here: a wheel is a zip of what goes into site-packages
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(site)
    (steps.out / "install.log").write_text(f"no pip: unzipped {len(wheels)} wheels into {site}\n")
    return True


def speed_row(name: str, what: str, recipe: str, precision: str, overrides: list[str], work: Path,
              steps: Steps) -> dict:
    run_dir = work / f"{name}-{precision}"
    cmd = [sys.executable, "-m", "cnnlab.cli", "train", RECIPES / recipe, "--out", run_dir, "--force",
           f"train.precision={precision}", "train.progress=false", *overrides]
    code, _, took = steps.run(f"train_{name}_{precision}", cmd, timeout_s=SPEED_TIMEOUT_S, min_s=15)
    row = {"what": what, "recipe": f"recipes/{recipe}", "precision": precision, "wall_s": took, "status":
           "skipped" if code is None and took == 0 else "timed out" if code is None else f"exit {code}"}
    summary = run_dir / "summary.json"
    if code == 0 and summary.is_file():
        s = json.loads(summary.read_text())
        shutil.copyfile(summary, steps.out / f"train_{name}_{precision}.summary.json")
        row.update(status=s["status"], train_s=s["time"]["train_s"], total_s=s["time"]["total_s"],
                   images_per_s=s["time"]["train_images_per_s"], accuracy=s.get("test", {}).get("accuracy"),
                   device=s["env"].get("device"), steps=s["time"].get("steps"))
    return row


def table(env: dict, rows: list[dict], check: dict, quick: bool, took: float, budget: float) -> str:
    device = (f"{env['gpu']} ({env['gpu_memory_gib']} GiB, compute {env['capability']})" if env.get("gpu")
              else f"no GPU: CPU {cpu_name()}, {os.cpu_count()} threads")
    lines = [f"### MNIST on {device}", "",
             f"GPU kit (benchmarks/gpu_kit), {time.strftime('%Y-%m-%d')}: Python {env.get('python', '?')}, torch "
             f"{env.get('torch', '?')} (CUDA {env.get('cuda') or '-'}, cuDNN {env.get('cudnn') or '-'}), torchvision "
             f"{env.get('torchvision', '?')}, cnnlab {env.get('cnnlab', '?')} at {git_commit()}"
             + ("; --quick (CPU check of the kit)" if quick else "") + ". One run each, seed 0, eager step; "
             "train time is the step loop, total the whole run (data, set-up, evaluation, scoring); "
             f"there.py took {took:.0f} s of its {budget:.0f} s budget.", "",
             "| run | recipe | precision | train time | total | images/s | test accuracy |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] == "completed":
            lines.append(f"| {r['what']} | `{r['recipe']}` | {r['precision']} | {r['train_s']:.1f} s | "
                         f"{r['total_s']:.1f} s | {r['images_per_s']:,.0f} | {100 * r['accuracy']:.2f} % |")
        else:
            lines.append(f"| {r['what']} | `{r['recipe']}` | {r['precision']} | {r['status']} | | | |")
    lines += ["", f"benchmarks/gpu_check.py{' --quick' if quick else ''}: {check.get('result', 'not run')}"]
    if check.get("table"):
        lines += ["", "```", check["table"], "```"]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "(no git)"
    except (OSError, subprocess.SubprocessError):
        return "(no git)"


def check_table(text: str) -> str:
    """gpu_check.py's table: from its header line to its closing time line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("check ")), None)
    if start is not None:
        return "\n".join(lines[start:]).strip()
    # killed before its table: what it had got through ("… check" as each starts, "  N s" as each ends)
    done = [line for line in lines if line.startswith(("CUDA:", "… ")) or line.strip().endswith(" s")]
    return "\n".join(["(no table: gpu_check.py did not finish; its progress)", *done[-20:]]) if done else ""


def stopped(out: Path, step: str, what: str) -> int:
    """A step the others need failed: say so in gpu_kit_table.md too (it is what comes back), with its log's end."""
    log = out / f"{step}.log"
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
    note = f"### GPU kit stopped at `{step}`: {what}\n\nThe end of {log.name}:\n\n```\n{tail.strip()}\n```\n"
    (out / "gpu_kit_table.md").write_text(note)
    print("\n" + note, file=sys.stderr, flush=True)
    return 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", nargs="?", help="folder for the logs and gpu_kit_table.md (or --out)")
    ap.add_argument("--out", dest="out", help="folder for the logs and gpu_kit_table.md (default: $OUT)")
    ap.add_argument("--kit", default=str(ROOT / "gpu_kit_build"), help="the kit folder (default gpu_kit_build/)")
    ap.add_argument("--quick", "--cpu", action="store_true",
                    help="a minute or two, for a CPU: gpu_check.py --quick and one speed run at fp32")
    ap.add_argument("--budget", type=float, default=480, help="seconds for all steps together (default 480)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    outdir = args.out or args.outdir or os.environ.get("OUT")
    if not outdir:
        ap.error("say where the table and logs go: --out DIR (or set $OUT)")
    out, kit = Path(outdir).resolve(), Path(args.kit).resolve()
    out.mkdir(parents=True, exist_ok=True)
    site, work = kit / "site", kit / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, CNNLAB_DATA=str(kit / "data"), CNNLAB_CACHE=str(kit / "cache"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    steps = Steps(out, env, args.budget)
    if (kit / "kit.json").is_file():
        print(f"kit: {json.dumps(json.loads((kit / 'kit.json').read_text()))}", flush=True)
    if not install(kit, site, steps):
        return stopped(out, "install", "the kit's wheels did not install")

    code, text, _ = steps.run("environment", [sys.executable, "-c", ENV_SCRIPT], timeout_s=120, min_s=1)
    if code != 0:
        return stopped(out, "environment", "torch or cnnlab does not import here")
    info = json.loads(text.strip().splitlines()[-1])
    print("environment: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    code, text, _ = steps.run("data_check", [sys.executable, "-c", DATA_SCRIPT, kit / "data"], timeout_s=120, min_s=1)
    print(text.strip(), flush=True)
    if code != 0:
        return stopped(out, "data_check", "MNIST in the kit is missing or damaged")

    quick = args.quick
    gpu_check = [sys.executable, ROOT / "benchmarks" / "gpu_check.py", "--data", kit / "data",
                 "--out", work / "gpu_check"]
    # the full check first, leaving the speed runs their reserve (on a CPU without --quick: what is left anyway)
    code, text, took = steps.run("gpu_check", gpu_check + (["--quick"] if quick else []),
                                 timeout_s=steps.left() - (60 if quick else SPEED_RESERVE_S), min_s=30)
    check = {"table": check_table(text),
             "result": (f"exit {code} ({'every check ok or skipped' if code == 0 else 'a check FAILED'}) in "
                        f"{took:.0f} s" if code is not None else "not finished (timed out or skipped)")}

    low = "bf16" if info.get("bf16") else "fp16"
    plan = ([(r, "fp32") for r in QUICK_RUNS] if quick else
            [(r, p) for r in SPEED_RUNS for p in ("fp32", low)] if info.get("gpu") else
            [(r, "fp32") for r in SPEED_RUNS])
    rows = [speed_row(name, what, recipe, precision, overrides, work, steps)
            for (name, what, recipe, overrides), precision in plan]
    (out / "gpu_kit_table.md").write_text(table(info, rows, check, quick, time.monotonic() - t0, args.budget))
    print("\n" + (out / "gpu_kit_table.md").read_text(), flush=True)
    print(f"{time.monotonic() - t0:.0f} s; logs in {out}" + (f"; not ok: {', '.join(steps.failed)}" if steps.failed
                                                             else ""))
    return 0 if not steps.failed and all(r["status"] == "completed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
