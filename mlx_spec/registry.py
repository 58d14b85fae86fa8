"""The curated draft/target pairs of `models.toml`, validated against a small schema.

A bad entry is reported as one SpecError naming the pair and the field, so a user editing the
file (or pointing `$MLX_SPEC_MODELS` at their own) sees exactly what to fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlx_spec.errors import SpecError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

GOOD_FOR = {"chat", "code", "math", "writing"}
SOURCES = {"hf", "pypi-gguf"}
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


@dataclass(frozen=True)
class PairSpec:
    name: str
    target: str
    draft: str
    memory_gb: float
    good_for: list[str]
    k: int
    description: str
    source: str = "hf"  # "pypi-gguf": built offline by `mlx-spec models pull` (offline.py)


@dataclass
class Registry:
    pairs: dict[str, PairSpec]
    default: str
    path: Path | None = None
    names: list[str] = field(init=False)

    def __post_init__(self):
        self.names = list(self.pairs)

    def get(self, name: str | None = None) -> PairSpec:
        """The pair called `name` (the default pair for None)."""
        name = name or self.default
        if name not in self.pairs:
            raise SpecError(f"unknown pair '{name}'",
                            f"known pairs: {', '.join(self.names)} (see `mlx-spec models list`)")
        return self.pairs[name]


def _repo_id(v) -> bool:
    return isinstance(v, str) and bool(_REPO_ID.match(v))


def _str_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(x in GOOD_FOR for x in v)


# field -> (required, check, what a valid value looks like)
SCHEMA = {
    "target": (True, _repo_id, "a Hugging Face repo id 'org/name'"),
    "draft": (True, _repo_id, "a Hugging Face repo id 'org/name'"),
    "memory_gb": (True, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                  and 0 < v <= 1024, "a number of GB in (0, 1024]"),
    "good_for": (True, _str_list, f"a non-empty list drawn from {sorted(GOOD_FOR)}"),
    "k": (True, lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16,
          "an integer from 1 to 16"),
    "description": (True, lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "source": (False, lambda v: v in SOURCES, f"one of {sorted(SOURCES)}"),
}


def default_path() -> Path:
    """`$MLX_SPEC_MODELS`, else the repo-root models.toml beside the package."""
    env = os.environ.get("MLX_SPEC_MODELS")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models.toml", here / "data" / "models.toml"):
        if candidate.is_file():
            return candidate
    return here.parent / "models.toml"


def _pair(name: str, entry, where: str) -> PairSpec:
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: pair '{name}' must be a table", "write it as [pairs.\"NAME\"]")
    for key in entry:
        if key not in SCHEMA:
            raise SpecError(f"{where}: pair '{name}': unknown field '{key}'",
                            f"allowed fields: {', '.join(SCHEMA)}")
    for key, (required, check, wanted) in SCHEMA.items():
        if key not in entry:
            if required:
                raise SpecError(f"{where}: pair '{name}': missing field '{key}'",
                                f"add {key} = <{wanted}>")
            continue
        if not check(entry[key]):
            raise SpecError(f"{where}: pair '{name}': field '{key}' = {entry[key]!r} is invalid",
                            f"'{key}' must be {wanted}")
    return PairSpec(name=name, **{**entry, "memory_gb": float(entry["memory_gb"])})


def parse_registry(data: dict, where: str = "models.toml") -> Registry:
    pairs = data.get("pairs")
    if not isinstance(pairs, dict) or not pairs:
        raise SpecError(f"{where}: no [pairs.NAME] tables", "see the repository's models.toml")
    specs = {name: _pair(name, entry, where) for name, entry in pairs.items()}
    default = data.get("default")
    if default not in specs:
        raise SpecError(f"{where}: default = {default!r} is not one of the pairs",
                        f"set default to one of: {', '.join(specs)}")
    return Registry(pairs=specs, default=default)


def load_registry(path: str | Path | None = None) -> Registry:
    """Read and validate models.toml (`path`, `$MLX_SPEC_MODELS` or the bundled file)."""
    path = Path(path) if path else default_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SpecError(f"models file {path} not found",
                        "set $MLX_SPEC_MODELS to a models.toml, or reinstall mlx-spec") from e
    except IsADirectoryError as e:
        raise SpecError(f"models file {path} is a directory, not a file",
                        "set $MLX_SPEC_MODELS to the models.toml file itself") from e
    except UnicodeDecodeError as e:
        raise SpecError(f"{path} is not valid UTF-8 text (bad byte at offset {e.start})",
                        "save it as UTF-8, or set $MLX_SPEC_MODELS to the right file") from e
    except OSError as e:  # unreadable: permissions, I/O error
        raise SpecError(f"cannot read models file {path}: {e.strerror or e}",
                        "check the file's permissions, or set $MLX_SPEC_MODELS to another "
                        "models.toml") from e
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}", "fix the syntax at that line") from e
    registry = parse_registry(data, where=str(path))
    registry.path = path
    return registry
