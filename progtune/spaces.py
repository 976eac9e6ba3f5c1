"""Search spaces: load one (shipped name or file), pin CLI knobs, turn a trial into a config."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

from progtune.config import KNOB_TYPES, Config, with_overrides
from progtune.errors import ConfigError, ProgtuneError

SHIPPED = ("apollo", "methods", "smoke")


class SpaceError(ProgtuneError):
    """A search-space file that cannot be used."""


@dataclass(frozen=True)
class Space:
    name: str
    source: str  # "progtune.search_spaces.NAME" or the file's absolute path
    sha256: str  # of the source text: a resumed search refuses a changed file
    define: Callable[..., Any]
    points: Callable[..., list[dict[str, Any]]] | None  # fixed points instead of a search
    doc: str
    # starts(base, pinned) -> Optuna parameter dicts tried first (enqueued), then the sampler
    starts: Callable[..., list[dict[str, Any]]] | None = None


def _load_module(spec: str) -> tuple[ModuleType, str, str]:
    if spec.endswith(".py") or "/" in spec or Path(spec).suffix:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise SpaceError(
                f"--space file {spec!r} does not exist; pass a .py file or one of {SHIPPED}"
            )
        text = path.read_text(encoding="utf-8", errors="replace")
        name = f"progtune_user_space_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        assert loader_spec and loader_spec.loader
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise SpaceError(
                f"--space file {spec} has a syntax error at line {exc.lineno}: {exc.msg}; fix it"
            ) from None
        except Exception as exc:  # user code: any failure is bad input, reported in one line
            raise SpaceError(
                f"--space file {spec} failed to import ({type(exc).__name__}: {exc}); fix it"
            ) from None
        return module, str(path), text
    if spec not in SHIPPED:
        raise SpaceError(
            f"unknown search space {spec!r}; use one of {', '.join(SHIPPED)} or a .py file"
        )
    module = importlib.import_module(f"progtune.search_spaces.{spec}")
    text = Path(module.__file__ or "").read_text(encoding="utf-8")
    return module, f"progtune.search_spaces.{spec}", text


def load_space(spec: str) -> Space:
    """A shipped space by name, or a user's .py file defining `define(trial[, base])`."""
    module, source, text = _load_module(spec)
    define = getattr(module, "define", None)
    if not callable(define):
        raise SpaceError(f"search space {spec} has no define(trial) function; add one")
    points = getattr(module, "points", None)
    starts = getattr(module, "starts", None)
    return Space(
        name=Path(spec).stem if source.endswith(".py") else spec,
        source=source,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        define=define,
        points=points if callable(points) else None,
        doc=(inspect.getdoc(module) or "").strip(),
        starts=starts if callable(starts) else None,
    )


class PinnedTrial:
    """Wraps an Optuna trial so that knobs pinned on the command line are not searched.

    `suggest_*(name, ...)` returns the pinned value for a pinned knob without asking Optuna, so
    the pinned knob never enters the study's space. Everything else is passed through.
    """

    def __init__(self, trial: Any, pinned: Mapping[str, Any]):
        self._trial, self._pinned = trial, dict(pinned)

    def pinned(self, name: str) -> Any:
        """The value the user pinned for knob `name`, or None (lets a space adapt to pins)."""
        return self._pinned.get(name)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr

        def suggest(param: str, *args: Any, **kwargs: Any) -> Any:
            if param in self._pinned:
                return self._pinned[param]
            return attr(param, *args, **kwargs)

        return suggest


def call_define(space: Space, trial: Any, base: Config, pinned: Mapping[str, Any]) -> dict:
    """Run the space's define on a (pinned-wrapped) trial; returns dotted overrides, pinned last."""
    wrapped = PinnedTrial(trial, pinned)
    n_params = len(inspect.signature(space.define).parameters)
    args = (wrapped, base) if n_params >= 2 else (wrapped,)
    return check_overrides(space.name, _user_call(space, "define", *args), pinned)


def _user_call(space: Space, function: str, *args: Any) -> Any:
    """The space's `function`(*args); a failure of user code becomes a one-line SpaceError."""
    try:
        return getattr(space, function)(*args)
    except ProgtuneError:
        raise
    except Exception as exc:  # user code
        raise SpaceError(
            f"search space {space.name}: {function}() raised {type(exc).__name__}: {exc}; "
            "fix the space"
        ) from None


def check_overrides(space_name: str, out: Any, pinned: Mapping[str, Any]) -> dict:
    if not isinstance(out, Mapping):
        raise SpaceError(
            f"search space {space_name}: define() must return a dict of knob overrides, "
            f"got {type(out).__name__}"
        )
    unknown = [k for k in out if k not in KNOB_TYPES]
    if unknown:
        raise SpaceError(
            f"search space {space_name} returns unknown knob(s) {', '.join(map(repr, unknown))}; "
            "use names from `progtune knobs`"
        )
    return {**dict(out), **dict(pinned)}


def build_config(space_name: str, base: Config, overrides: Mapping[str, Any]) -> Config:
    """Base config + a trial's overrides, validated; errors name the space."""
    try:
        return with_overrides(base, overrides)
    except ConfigError as exc:
        raise SpaceError(f"search space {space_name} proposed an invalid config: {exc}") from None


def unique_layer_schedules(n_layers: int) -> dict[str, tuple[int, ...]]:
    """Candidate growth schedules for an L-layer target, keyed by their readable text.

    Doubling (1-2-4-...-L), Apollo-like thirds (L/12 x 1-3-6-12 where it divides), a one-step
    halving (L/2-L) and a single jump (1-L); all end at L.
    """
    out: list[tuple[int, ...]] = []
    doubling = [n_layers]
    while doubling[0] > 1:
        doubling.insert(0, doubling[0] // 2)
    out.append(tuple(dict.fromkeys(doubling)))
    if n_layers % 12 == 0:
        out.append(tuple(n_layers // 12 * x for x in (1, 3, 6, 12)))
    if n_layers >= 2:
        out.append((n_layers // 2, n_layers))
        out.append((1, n_layers))
    unique = [s for s in dict.fromkeys(out) if len(s) >= 2 and all(a < b for a, b in pairwise(s))]
    return {"-".join(map(str, s)): s for s in unique}


def start_points(space: Space, base: Config, pinned: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The space's starting points as Optuna parameters, pinned knobs left out (never asked)."""
    if space.starts is None:
        return []
    points = _user_call(space, "starts", base, dict(pinned))
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise SpaceError(
            f"search space {space.name}: starts() must return a list of parameter dicts"
        )
    return [{k: v for k, v in p.items() if k not in pinned} for p in points]


def enqueue_starts(study: Any, space: Space, base: Config, pinned: Mapping[str, Any]) -> int:
    """Queue the starting points in an Optuna study (once: a resumed study skips known ones)."""
    points = start_points(space, base, pinned)
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    return len(points)


def sample_configs(
    space: Space, base: Config, pinned: Mapping[str, Any], n: int, seed: int
) -> list:
    """n configs drawn without Ray (for --dry-run and tests): fixed points, or the space's
    starting points and then Optuna's sampler."""
    import optuna

    if space.points is not None:
        points = [check_overrides(space.name, p, pinned) for p in space.points(base)]
        return [build_config(space.name, base, points[i % len(points)]) for i in range(n)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    enqueue_starts(study, space, base, pinned)
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(build_config(space.name, base, call_define(space, trial, base, pinned)))
        study.tell(trial, 0.0)
    return configs
