"""The GPU kit, "here" half: build the folder that travels to a borrowed GPU machine (no internet,
64 MiB of files in all, the project's own files included; benchmarks/gpu_kit/README.md).

It holds
  wheels/      what `cnnlab train` needs that such a machine lacks (it brings Python 3.12, torch,
               torchvision, numpy, scipy, matplotlib, jinja2, pyyaml, tqdm, pillow, onnx...): pydantic
               and its own dependencies, torchinfo, plus pytest for gpu_check.py's test row. Pinned to
               the versions installed in .venv (what the tests ran on), downloaded for the target
               Python as manylinux x86-64 binary wheels;
  data/MNIST/raw/*.gz   MNIST, the four IDX files gzip-compressed (cnnlab reads them as they are and
               checks the MD5 of the uncompressed bytes, as this script does too);
  kit.json     what was put in, for there.py to print.

    .venv/bin/python benchmarks/gpu_kit/prepare.py [--python-version 3.12] [--out gpu_kit_build]

Prints the kit's size and the total with the project's files; exit code 1 when that is over 64 MiB
(or a wheel could not be downloaded).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 64 * 2**20  # what a borrowed GPU machine accepts from here, all files together
# `cnnlab train` imports pydantic (cnnlab/config/schema.py) and torchinfo (cnnlab/models/layers.py); the GPU machines
# have neither. typing-extensions is there (torch needs it), but maybe older than pydantic asks for:
# carried too (backwards compatible, so shadowing the machine's copy costs nothing).
TRAIN = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "torchinfo")
# gpu_check.py's "CUDA-relevant tests" row runs pytest, which the GPU machines do not bring.
TESTS = ("pytest", "pluggy", "iniconfig", "pygments", "packaging")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64")
MORE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_34_x86_64")  # tried only when pip finds none above
MNIST_MD5 = {  # of the uncompressed official files, what cnnlab checks (cnnlab.data.sources.idx.MNIST.files)
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def installed_versions(venv: Path, names) -> dict[str, str]:
    """The versions installed in ``venv`` (else in the running interpreter's environment)."""
    sites = sorted(venv.glob("lib/python3*/site-packages"))
    found = {}
    for name in names:
        dists = [d for site in sites for d in metadata.distributions(path=[str(site)])
                 if d.metadata["Name"] and canonical(d.metadata["Name"]) == canonical(name)]
        try:
            found[name] = dists[0].version if dists else metadata.version(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"prepare: {name} is installed neither in {venv} nor here: run `make setup` first")
    return found


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def download(pins: dict[str, str], python_version: str, wheels: Path) -> list[str]:
    """Download each pinned wheel (no dependencies: the list is complete); return the failures."""
    failed = []
    for name, version in pins.items():
        for platforms in (PLATFORMS, PLATFORMS + MORE_PLATFORMS):
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                   "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
                   *[a for p in platforms for a in ("--platform", p)], "-d", str(wheels), f"{name}=={version}"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                break
        else:
            failed.append(f"{name}=={version}: {' '.join(done.stderr.split())[-300:]}")
    return failed


def mnist(source: Path, raw: Path) -> None:
    """The four MNIST files, gzip-compressed, into ``raw``: copied from ``source`` (a MNIST/raw folder), or
    compressed from the uncompressed files there; their uncompressed bytes' MD5s checked either way."""
    raw.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_MD5.items():
        packed, plain, dest = source / (name + ".gz"), source / name, raw / (name + ".gz")
        if packed.is_file():
            shutil.copyfile(packed, dest)
        elif plain.is_file():
            with open(plain, "rb") as f, gzip.GzipFile(dest, "wb", compresslevel=9, mtime=0) as g:
                shutil.copyfileobj(f, g)
        else:
            raise SystemExit(f"prepare: neither {packed} nor {plain} exists: pass --mnist DIR (a MNIST/raw folder)")
        with gzip.open(dest, "rb") as f:
            got = hashlib.md5(f.read()).hexdigest()
        if got != md5:
            raise SystemExit(f"prepare: {dest} is not the official {name} (MD5 of its bytes {got}, expected {md5})")


def project_bytes() -> int:
    """The project's files that travel with the kit: tracked, and untracked ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / n).stat().st_size for n in set(names) if n and (ROOT / n).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python, major.minor (default 3.12)")
    ap.add_argument("--out", default=str(ROOT / "gpu_kit_build"), help="the kit folder (default gpu_kit_build/ in "
                                                                        "the project root, ignored by git)")
    ap.add_argument("--venv", default=str(ROOT / ".venv"), help="the environment whose versions to pin (default .venv)")
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared" / "device-data" / "MNIST" / "raw"),
                    help="a MNIST/raw folder with the .gz (or uncompressed) files (default "
                         "../shared/device-data/MNIST/raw)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / "kit.json").is_file() and not (out / "wheels").is_dir():
            print(f"prepare: {out} holds files but is not a kit: not removing them; pick another --out",
                  file=sys.stderr)
            return 1
        shutil.rmtree(out)  # nothing left from another Python version or pin, nor a there.py run's site/ and work/
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    pins = installed_versions(Path(args.venv), TRAIN + TESTS)
    print(f"wheels for Python {args.python_version}: " + ", ".join(f"{n}=={v}" for n, v in pins.items()), flush=True)
    failed = download(pins, args.python_version, wheels)
    if failed:
        print("prepare: no wheel found for\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    mnist(Path(args.mnist), out / "data" / "MNIST" / "raw")
    kit = {"python_version": args.python_version, "train": {n: pins[n] for n in TRAIN},
           "tests": {n: pins[n] for n in TESTS}, "wheels": sorted(p.name for p in wheels.glob("*.whl")),
           "data": "data/MNIST/raw: the four MNIST IDX files, gzip-compressed"}
    (out / "kit.json").write_text(json.dumps(kit, indent=1) + "\n")
    size, project = folder_bytes(out), project_bytes()
    total = size + project
    for w in kit["wheels"]:
        print(f"  {w}  {mib((wheels / w).stat().st_size)}")
    print(f"kit {out}: {mib(size)} (wheels {mib(folder_bytes(wheels))}, MNIST {mib(folder_bytes(out / 'data'))}); "
          f"with the project's files ({mib(project)}): {mib(total)} of the {mib(LIMIT)} a GPU machine accepts")
    if total > LIMIT:
        print(f"prepare: {mib(total)} is over the {mib(LIMIT)} limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
