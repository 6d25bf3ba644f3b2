"""One run from its config to a finished folder, the same for every caller: ``cnnlab train``, the Python
API's ``cnnlab.training.loop``, a sweep's worker and a Ray trial.

1. :func:`cnnlab.training.loop.run` trains and writes ``summary.json``, also for a run that failed, diverged or was
   interrupted (a crash while training writes status ``failed``, then re-raises);
2. :func:`cnnlab.reporting.html.finish_run`: the doctor's findings into ``summary.json``, ``curves.png`` and, with
   ``html``, ``report.html``;
3. :func:`cnnlab.training.tracking.upload_run_files`: the trackers' copies of the finished files (the run's MLflow
   run gets summary.json, metrics, curves and report once they exist).

Steps 2 and 3 run after a failure too, as soon as step 1 wrote a ``summary.json``: a folder refused before
training (a bad value, a run that exists) is left exactly as it was. A problem in step 2 or 3 is logged and
never hides the run's own error, which is re-raised as it was.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from cnnlab.reporting import html as report
from cnnlab.training import tracking
from cnnlab.training import loop as train
from cnnlab.config.schema import Config

SUMMARY = "summary.json"


def train_and_finish(cfg: Config, out_dir: str | Path, *, resume: bool = False, force: bool = False,
                     log: Callable[[str], None] = train.say, verbose: bool = False, finish: bool = True,
                     html: bool = True, trackers: tuple = (), resume_from: str | Path = "last") -> dict:
    """Train ``cfg`` into ``out_dir`` (:func:`cnnlab.training.loop.run`'s arguments), then :func:`finish_folder` it
    unless ``finish`` is False; returns the summary as the folder holds it."""
    out_dir = Path(out_dir)
    before = _stamp(out_dir / SUMMARY)
    try:
        summary = train.run(cfg, out_dir, resume=resume, force=force, log=log, verbose=verbose, trackers=trackers,
                            resume_from=resume_from)
    except BaseException:  # Ctrl-C included: an interrupted set-up that wrote a summary is finished too
        if finish and _stamp(out_dir / SUMMARY) not in (before, None):
            try:
                finish_folder(out_dir, log=log, html=html)
            except Exception as e:  # noqa: BLE001 - the run's own error is what the caller must see
                log(f"warning: could not finish {out_dir} after the failure: {type(e).__name__}: {e}")
        raise
    return (finish_folder(out_dir, log=log, html=html) or summary) if finish else summary


def finish_folder(out_dir: str | Path, *, log: Callable[[str], None] = print, html: bool = True) -> dict | None:
    """Steps 2 and 3 on a run folder that has a ``summary.json`` (else None): findings, curves, report, uploads.
    With ``html`` the report's mistakes also get their Grad-CAM pictures (:func:`explain_mistakes`)."""
    if html:
        explain_mistakes(Path(out_dir), log)
    summary = report.finish_run(Path(out_dir), log=log, html=html)
    if summary is not None:
        tracking.upload_run_files(Path(out_dir), log=log)
    return summary


def explain_mistakes(out_dir: Path, log: Callable[[str], None]) -> None:
    """misclassified.pt's images under the Grad-CAM of their predicted class (cnnlab.inference.explain), for
    report.html; a problem is logged, never raised (the run is trained and scored already)."""
    if not (out_dir / "misclassified.pt").exists() or not (out_dir / "best.pt").exists():
        return
    try:
        from cnnlab.inference.explain import explain_mistakes as add_cams
        from cnnlab.inference.load import load_run

        add_cams(load_run(out_dir, "best.pt", "cpu"))
    except Exception as e:  # noqa: BLE001 - the pictures are extra; the run stands without them
        log(f"warning: no Grad-CAM pictures of the mistakes in {out_dir / 'misclassified.pt'}: {type(e).__name__}: {e}")


def _stamp(path: Path):
    """(inode, modification time in ns) of a file, or None: tells whether a call rewrote it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
