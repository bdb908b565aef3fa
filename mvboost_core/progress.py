"""Progress of long loops as one number, elapsed time and an ETA, shared by the CLI and the ComfyUI nodes.

The library reports progress through callbacks ``progress(stage, done, total)`` (see
:data:`mvboost_core.pipeline.Progress`); stages run one after another. :class:`StageProgress` folds those reports
into one overall position ``(value, maximum)`` in work units and measures time, so every front end shows the same
numbers:

* ``expected`` gives each stage's total before it starts (e.g. from :func:`mvboost_core.pipeline.pose_stage_totals`);
  when the library reports a different total for a stage (its own count is authoritative), that one is used.
* The ETA extrapolates the current stage from its own rate (units per second) and the stages still to come from the
  rate seen so far over all stages. It is ``None`` until one unit is done.

Nothing here touches ComfyUI or a terminal: :meth:`StageProgress.describe` returns a line such as
``"Era3D denoising 12/40 · 0:45 elapsed · ETA 1:45"``.

Interruption (Ctrl-C in a terminal, Cancel in ComfyUI) uses one convention everywhere: long loops call a
``check_interrupt()`` callable (ComfyUI passes ``comfy.model_management.throw_exception_if_processing_interrupted``;
the core never imports ComfyUI) and let whatever it raises propagate; in a terminal, Ctrl-C raises
``KeyboardInterrupt`` at the next Python bytecode. Loops that can leave a resumable state behind turn that into
:class:`Interrupted` (a ``KeyboardInterrupt`` carrying a one-line ``summary`` of what is complete), which the
commands print as ``interrupted; <summary>`` and exit with status 130 (:func:`report_interrupt`).
:class:`DeferInterrupt` keeps a short critical section (e.g. one optimizer update) whole: a Ctrl-C arriving inside
it is raised when it ends. :func:`interrupt_hooks` adds interruption points inside one long network forward (a
forward pre-hook on chosen sub-modules; the maths is untouched).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, Optional

__all__ = ["StageProgress", "format_duration", "Interrupted", "DeferInterrupt", "report_interrupt",
           "interrupt_hooks", "EXIT_INTERRUPTED"]

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, the shell convention).
EXIT_INTERRUPTED = 130


class Interrupted(KeyboardInterrupt):
    """The user stopped a resumable run. ``summary``: what is complete and how to continue, one line without the
    leading ``"interrupted; "``. A ``KeyboardInterrupt`` so that ``except Exception`` handlers never swallow it."""

    def __init__(self, summary: str):
        super().__init__(summary)
        self.summary = summary


#: ``__main__`` of the processes that are the ``mvboost`` command itself (``python -m``, the console script, the
#: modules ``accelerate launch -m`` runs).
_CLI_MAINS = ("mvboost_core.__main__", "mvboost_core.cli", "mvboost_core.boost.cli", "mvboost")


def _is_cli_process() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else os.path.basename(getattr(main, "__file__", "") or "")
    return name in _CLI_MAINS


def report_interrupt(exc: BaseException, default: str = "re-run the same command to resume", file=None,
                     exit_now: bool = False) -> int:
    """Print ``interrupted; <summary>`` (one line, no traceback) to stderr and return :data:`EXIT_INTERRUPTED`.

    ``exit_now``: when this process is the ``mvboost`` command itself (never when called as a library, e.g. from
    pytest), flush the streams and logging and leave with ``os._exit(130)``: Python's normal teardown of a process
    holding torch, accelerate and the models took 1.5-2.5 s on the loaded 2-core test host, after the work had
    already stopped. Everything on disk is complete at this point (atomic writes, temp files removed)."""
    summary = getattr(exc, "summary", None) or default
    print(f"interrupted; {summary}", file=file or sys.stderr, flush=True)
    if exit_now and _is_cli_process():
        import logging

        logging.shutdown()
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001 - a closed pipe must not turn Ctrl-C into a traceback
                pass
        os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED


class DeferInterrupt:
    """Hold SIGINT during short critical sections: ``hold()`` ... ``release()`` (or ``with DeferInterrupt():``).

    A Ctrl-C that arrives while held is remembered and raised as ``KeyboardInterrupt`` by :meth:`release`. Outside
    the main thread (where Python cannot install signal handlers) it does nothing."""

    def __init__(self):
        self._prev = None
        self._pending = False
        self._held = False

    def _handler(self, signum, frame):
        self._pending = True

    def hold(self) -> None:
        if self._held or threading.current_thread() is not threading.main_thread():
            return
        self._pending = False
        self._prev = signal.signal(signal.SIGINT, self._handler)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        signal.signal(signal.SIGINT, self._prev)
        self._held = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def release_quietly(self) -> None:
        """Restore the previous handler and forget a pending Ctrl-C (the caller is already handling one)."""
        if self._held:
            signal.signal(signal.SIGINT, self._prev)
            self._held = False
        self._pending = False

    def __enter__(self):
        self.hold()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:  # already leaving with an exception: do not replace it
            if self._held:
                signal.signal(signal.SIGINT, self._prev)
                self._held = False
            return False
        self.release()
        return False


@contextlib.contextmanager
def interrupt_hooks(modules, check_interrupt: Optional[Callable[[], None]],
                    kinds: Iterable[str] = ("Block", "Transformer", "Attention", "Resnet", "Layer")):
    """Call ``check_interrupt()`` before the forward of every sub-module of ``modules`` (one ``nn.Module`` or a
    list; None entries are skipped) whose class name contains one of ``kinds`` (each ResnetBlock / transformer
    block of a UNet or VAE, each CLIP layer, each LGM block), so a cancel is honoured inside one long forward instead
    of after it. Nothing happens when ``check_interrupt`` is None. The hooks are removed on exit."""
    if check_interrupt is None or modules is None:
        yield
        return
    kinds = tuple(kinds)
    mods = [modules] if hasattr(modules, "modules") else [m for m in modules if m is not None]

    def pre_hook(_mod, _args):
        check_interrupt()

    handles = [m.register_forward_pre_hook(pre_hook) for root in mods for m in root.modules()
               if any(k in type(m).__name__ for k in kinds)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def format_duration(seconds: Optional[float]) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``, ``None`` -> ``"?"``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StageProgress:
    """Overall progress of consecutive stages, with elapsed time and an ETA.

    Args:
        expected: ``{stage: total units}`` in run order (stages with 0 units are skipped). Unknown stages reported
            later are appended.
        labels: optional ``{stage: human label}`` used by :meth:`describe` (default: the stage name).
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, expected: dict[str, int], labels: Optional[dict[str, str]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.totals: dict[str, int] = {k: max(0, int(v)) for k, v in expected.items()}
        self.done: dict[str, int] = {k: 0 for k in self.totals}
        self.labels = dict(labels or {})
        self._clock = clock
        self.start = clock()
        self.stage: Optional[str] = None
        self._stage_start = self.start
        self._stage_start_units = 0
        self._last_time = self.start

    # ---------------------------------------------------------------- updates
    def update(self, stage: str, done: int, total: Optional[int] = None) -> None:
        """Record that ``stage`` has ``done`` of ``total`` units done (``total`` None: keep the known one)."""
        if stage not in self.totals:
            self.totals[stage] = 0
            self.done[stage] = 0
        if total is not None and int(total) > 0:
            self.totals[stage] = int(total)
        if stage != self.stage:
            # earlier stages are complete once a later one reports
            names = list(self.totals)
            for k in names[: names.index(stage)]:
                self.done[k] = self.totals[k]
            self.stage = stage
            # a stage reporting 0 starts now; one whose first report already counts units began after the last report
            self._stage_start = self._clock() if int(done) == 0 else self._last_time
            self._stage_start_units = 0 if int(done) > 0 else self.done.get(stage, 0)
        self.done[stage] = max(0, min(int(done), self.totals[stage] or int(done)))
        self._last_time = self._clock()

    # ---------------------------------------------------------------- readings
    @property
    def value(self) -> int:
        return sum(self.done.values())

    @property
    def maximum(self) -> int:
        return max(1, sum(self.totals.values()))

    @property
    def elapsed(self) -> float:
        return self._clock() - self.start

    @property
    def eta(self) -> Optional[float]:
        """Seconds still to go (None until something was measured)."""
        now = self._clock()
        remaining_other = sum(self.totals[k] - self.done[k] for k in self.totals if k != self.stage)
        overall_rate = self.value / max(now - self.start, 1e-9) if self.value else None
        if self.stage is None:
            return None
        st_done = self.done[self.stage] - self._stage_start_units
        st_left = self.totals[self.stage] - self.done[self.stage]
        stage_rate = st_done / max(now - self._stage_start, 1e-9) if st_done > 0 else overall_rate
        if stage_rate is None or stage_rate <= 0:
            return None
        eta = st_left / stage_rate
        if remaining_other:
            if overall_rate is None or overall_rate <= 0:
                return None
            eta += remaining_other / overall_rate
        return max(0.0, eta)

    def describe(self) -> str:
        """``"<label> done/total · m:ss elapsed · ETA m:ss"`` for the current stage."""
        if self.stage is None:
            return f"starting · {format_duration(self.elapsed)} elapsed"
        label = self.labels.get(self.stage, self.stage)
        eta = self.eta
        tail = "done" if self.value >= self.maximum else f"ETA {format_duration(eta)}"
        return (f"{label} {self.done[self.stage]}/{self.totals[self.stage]} · "
                f"{format_duration(self.elapsed)} elapsed · {tail}")
