"""``make exp-all``: every chapter's runs as independent jobs, several at a time.

A chapter's table is a list of (variant, seed) runs that share nothing but the cached tiny
teachers and the results file, both guarded by file locks. One training process uses the
two cores of this project's machine poorly (two threads are ~1.3x one thread on these small
models), two single-threaded processes use them fully, so the chapters finish ~1.5x sooner
than one after another. This module plans the jobs and runs ``--jobs`` of them at once:

1. every tiny teacher a run needs and the cache lacks, bootstrapped once by its own job
   (the one most runs wait for first);
2. the runs, longest first (``train.steps`` as the cost), each as soon as its teacher is in
   the cache: a variant chapter gives one job per (variant, seed), called as
   ``run.py only=[<variant>] seeds=1 train.seed=<k>`` (the same run folder and rows as the
   chapter's own loop); a chapter without variants is one job that loops its seeds.

Each job writes its log to ``runs/exp-all/<job>.log``; this prints one line per start and
end. A failed job stops new starts; the running ones finish, then it exits with one line
naming the job, its last log line and the log. ``PRESET=full`` runs one job at a time
through ``accelerate launch`` (one GPU) unless ``--jobs`` says otherwise.

    python -m common.run_all                      # all chapters, tiny preset, one job per core
    python -m common.run_all --jobs 1 --dry-run   # the plan only
    SEEDS=3 python -m common.run_all              # three seeds per run (the reference run)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from common.chapters import Chapter, chapters
from common.chapters import chapter as find_chapter
from common.cli import main
from common.errors import UserError
from common.paths import REPO_ROOT, runs_dir
from common.sweep import chapter_runs, seed_count

# the Makefile's chapter order (the order of the thesis); a chapter not listed runs last
ORDER = ("shre", "unimodal_vision_kd", "separate_self_attention", "itc_ablation", "teacher_comparison")


@dataclass
class Job:
    """One process: ``argv`` after the interpreter (or launcher), with ``env`` changes."""

    name: str
    argv: List[str]
    cost: float  # relative run time: longest first
    env: Dict[str, Optional[str]] = field(default_factory=dict)  # None removes a variable
    needs: List[Path] = field(default_factory=list)  # teacher cache folders to wait for


def _teacher_folder(cfg: Any) -> Optional[Path]:
    """The cache folder of ``cfg``'s tiny teacher, or None (published weights, no teacher)."""
    from common.tiny_teachers.bootstrap import TINY_RECIPES, cache_folder
    teacher = getattr(cfg, "teacher", None)
    if teacher is None or teacher.name not in TINY_RECIPES:
        return None
    return cache_folder(teacher, cfg.data)


def _cached(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file()


def chapter_jobs(chapter: Chapter, preset: str, args: Sequence[str]) -> tuple[List[Job], Dict[Path, List[str]]]:
    """The run jobs of one chapter and ``{teacher folder: --teacher arguments}`` of the tiny
    teachers they use (the chapter and the overrides that give the teacher's config)."""
    cfg = chapter.load_config(preset, args)
    script = str(chapter.folder / "run.py")
    base = [script, f"preset={preset}", *args]
    teachers: Dict[Path, List[str]] = {}
    if getattr(cfg, "variants", None):
        runs = chapter_runs(cfg)
        jobs = []
        for variant, vcfg in runs:
            folder = _teacher_folder(vcfg)
            if folder is not None:  # the unimodal pair builds the teacher too (its width)
                teachers[folder] = [chapter.name, f"preset={preset}", *args, *variant.overrides]
            jobs.append(Job(f"{chapter.name}/{variant.name}/seed{vcfg.train.seed}",
                            base + [f"only=[{variant.name}]", "seeds=1", f"train.seed={vcfg.train.seed}"],
                            cost=vcfg.train.steps if variant.kind == "train" else 0.0,
                            env={"SEEDS": None}, needs=[folder] if folder else []))
        return jobs, teachers
    seeds = seed_count(getattr(cfg, "seeds", 1))  # the chapter loops its seeds (SEEDS passes on)
    folder = _teacher_folder(cfg)
    if folder is not None:
        teachers[folder] = [chapter.name, f"preset={preset}", *args]
    return [Job(chapter.name, base, cost=seeds * _steps(cfg), needs=[folder] if folder else [])], teachers


def _steps(cfg: Any) -> float:
    """Training steps of a run, its fine-tuning and probe runs included (at half weight:
    smaller batches and frozen encoders)."""
    steps = float(cfg.train.steps)
    for section in ("finetune", "linear_probe"):
        if hasattr(cfg, section):
            copies = 1 + int(bool(getattr(cfg, "finetune_untrained", False)))
            steps += 0.5 * copies * getattr(cfg, section).train.steps
    return steps


def plan(preset: str, args: Sequence[str], names: Sequence[str] = ()) -> List[Job]:
    """Teacher bootstraps first, then the runs longest first (ties in chapter order)."""
    found = {c.name: c for c in chapters(preset)}
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise UserError(f"unknown chapter(s) {unknown}; choose from {sorted(found)}")
    selected = [found[n] for n in sorted(found, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
                if not names or n in names]
    runs: List[Job] = []
    teachers: Dict[Path, List[str]] = {}
    for chapter in selected:
        jobs, used = chapter_jobs(chapter, preset, args)
        runs += jobs
        teachers.update(used)
    for job in runs:
        job.needs = [f for f in job.needs if not _cached(f)]
    # the teacher most runs wait for first (tiny-cnn: most chapters, and the quickest)
    waiting = {f: sum(f in j.needs for j in runs) for f in teachers}
    boots = [Job(f"teacher/{folder.name}", ["-m", "common.run_all", "--teacher", *args_],
                 cost=float(waiting[folder]))
             for folder, args_ in teachers.items() if not _cached(folder)]
    return sorted(boots, key=lambda j: -j.cost) + sorted(runs, key=lambda j: -j.cost)


def _teacher_config(teacher_args: Sequence[str]) -> Any:
    """The chapter config that ``--teacher <chapter> preset=<p> key=value ...`` names."""
    name, preset, *overrides = teacher_args
    return find_chapter(name).load_config(preset.split("=", 1)[1], overrides)


def bootstrap_teacher(teacher_args: Sequence[str]) -> None:
    """``--teacher``: bootstrap (or find cached) the tiny teacher of a chapter config."""
    from common.tiny_teachers.bootstrap import bootstrap
    cfg = _teacher_config(teacher_args)
    bootstrap(cfg.teacher, cfg.data)


def _launcher(preset: str) -> List[str]:
    if preset != "full":
        return [sys.executable]
    config = os.environ.get("ACCELERATE_CONFIG", "configs/accelerate_1gpu.yaml")
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", config]


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    return lines[-1].strip() if lines else "(empty log)"


def execute(jobs: List[Job], workers: int, preset: str, threads: int) -> None:
    """Run ``jobs`` ``workers`` at a time (see the module docstring); raises :class:`UserError`
    naming the first failed job."""
    logs = runs_dir("exp-all")
    launcher = _launcher(preset)
    pending, running, failed = list(jobs), {}, []
    start = time.monotonic()

    def stamp() -> str:
        return f"[{(time.monotonic() - start) / 60:5.1f} min]"

    try:
        while pending or running:
            for name, (job, proc, began, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                took = (time.monotonic() - began) / 60
                if proc.returncode:
                    failed.append((job, proc.returncode, log))
                print(f"{stamp()} {'done' if not proc.returncode else 'FAILED'} {job.name} "
                      f"({took:.1f} min)", flush=True)
            while not failed and pending and len(running) < workers:
                ready = next((j for j in pending if all(_cached(f) for f in j.needs)), None)
                if ready is None:
                    if not running:
                        raise UserError(f"job {pending[0].name} waits for a teacher no job builds "
                                        f"({pending[0].needs[0]}); rerun make exp-all")
                    break
                pending.remove(ready)
                log = logs / (ready.name.replace("/", "__") + ".log")
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                for key, value in ready.env.items():
                    if value is None:
                        env.pop(key, None)
                    else:
                        env[key] = value
                with log.open("w") as out:
                    proc = subprocess.Popen(launcher + ready.argv, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=REPO_ROOT, env=env)
                running[ready.name] = (ready, proc, time.monotonic(), log)
                print(f"{stamp()} start {ready.name} (log: {log})", flush=True)
            if failed and not running:
                break
            time.sleep(0.5)
    finally:
        for _, proc, _, _ in running.values():
            proc.terminate()
    if failed:
        job, code, log = failed[0]
        raise UserError(f"{job.name} failed (exit {code}): {_last_line(log)} (full log: {log}); "
                        f"fix it and run the same command again: finished runs are kept and only "
                        f"evaluate again")
    print(f"{stamp()} all {len(jobs)} jobs done", flush=True)


def run(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=0,
                        help="processes at a time (default: one per core for tiny, 1 for full)")
    parser.add_argument("--chapters", default="", help="comma list of chapter folders (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--teacher", action="store_true", help=argparse.SUPPRESS)  # a bootstrap job
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every chapter")
    args = parser.parse_args(argv)
    if args.teacher:
        bootstrap_teacher(args.overrides)
        return
    preset = os.environ.get("PRESET") or "tiny"
    overrides = [o for o in args.overrides if not o.startswith("preset=")]
    preset = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("preset=")), preset)
    cores = os.cpu_count() or 1
    workers = args.jobs or (1 if preset == "full" else cores)
    if workers < 1:
        raise UserError(f"--jobs={args.jobs} must be >= 1")
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, cores // workers))
    jobs = plan(preset, overrides, [n for n in args.chapters.split(",") if n])
    print(f"exp-all: {len(jobs)} jobs, {workers} at a time, {threads} thread(s) each, "
          f"preset {preset}", flush=True)
    if args.dry_run:
        for job in jobs:
            wait = f"  (after {', '.join(f.name for f in job.needs)})" if job.needs else ""
            print(f"  {job.name}: {' '.join(job.argv)}{wait}")
        return
    execute(jobs, workers, preset, threads)


if __name__ == "__main__":
    main(run)
