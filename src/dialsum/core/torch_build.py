"""Can the installed torch build run this GPU? Checked before anything loads.

A torch wheel carries GPU kernels for a fixed list of architectures
(``torch.cuda.get_arch_list()``: ``sm_75 sm_80 ... sm_120``, sometimes ``compute_90``).
The default install (torch from PyPI, built with CUDA 13) has no kernels for Volta
(V100, compute capability 7.0): CUDA 13 dropped it. Such a run would load the data and
the weights and then die inside the first step with "no kernel image is available for
execution on the device". ``train``, ``predict`` and ``probe`` check first and exit 2
with the command that installs a build carrying the GPU (the CUDA 12.6 wheel for Volta).

Which entries run on a device of compute capability (major, minor):

- ``sm_XY`` (machine code, SASS) runs on the same major version from minor Y up: sm_80
  code runs on 8.0, 8.6 and 8.9, never on 9.0. ``sm_XYf`` (family) likewise.
- ``sm_XYa`` (architecture-specific features, e.g. sm_90a) runs on exactly X.Y.
- ``compute_XY`` (PTX) is compiled by the driver at load time for any device of
  capability X.Y or newer (forward compatible, slow first start), so compute_80 covers 9.0.

Jetson exceptions (7.2, 8.7 need their own builds) are ignored: dialsum targets discrete
GPUs.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass

from dialsum.core.errors import UserError

PYTORCH_INDEX = "https://download.pytorch.org/whl"

# CUDA builds PyTorch publishes and the sm_XY (as 10 * major + minor) each carries, per
# host architecture. Used only when the installed torch lacks its own table
# (``torch.cuda.PYTORCH_RELEASES_CODE_CC``, kept in sync with PyTorch's release matrix).
FALLBACK_RELEASE_ARCHS: dict[str, dict[str, frozenset[int]]] = {
    "12.6": {
        "x86_64": frozenset({50, 60, 70, 75, 80, 86, 90}),
        "aarch64": frozenset({80, 90}),
    },
    "13.0": {
        "x86_64": frozenset({75, 80, 86, 90, 100, 120}),
        "aarch64": frozenset({80, 90, 100, 110, 120}),
    },
}

_ARCH_RE = re.compile(r"^(sm|compute)_(\d+)([af]?)$")


@dataclass(frozen=True)
class TorchBuild:
    """What the installed torch was built for."""

    version: str  # torch.__version__, e.g. "2.15.0+cu132"
    cuda: str | None  # torch.version.cuda, e.g. "13.2"; None for CPU-only and ROCm builds
    arch_list: tuple[str, ...]  # torch.cuda.get_arch_list()

    @property
    def public_version(self) -> str:
        """The version without the local build label: "2.15.0+cu132" -> "2.15.0"."""
        return self.version.split("+", 1)[0]

    def describe(self) -> str:
        cuda = f"CUDA {self.cuda}" if self.cuda else "no CUDA"
        archs = " ".join(self.arch_list) or "none"
        return f"torch {self.version} ({cuda}; kernels for {archs})"


def installed_build() -> TorchBuild:
    """The installed torch build; reading it does not start CUDA."""
    import torch

    return TorchBuild(torch.__version__, torch.version.cuda, tuple(torch.cuda.get_arch_list()))


def parse_arch(entry: str) -> tuple[str, tuple[int, int], str] | None:
    """``"sm_86"`` -> ("sm", (8, 6), ""); ``"sm_90a"`` -> ("sm", (9, 0), "a");
    ``"compute_120"`` -> ("compute", (12, 0), ""). None for anything else (gfx names)."""
    match = _ARCH_RE.match(entry.strip())
    if match is None:
        return None
    kind, digits, suffix = match.groups()
    number = int(digits)
    return kind, (number // 10, number % 10), suffix


def arch_runs_on(entry: str, capability: tuple[int, int]) -> bool:
    """Whether code compiled as ``entry`` runs on a device of ``capability`` (see module)."""
    parsed = parse_arch(entry)
    if parsed is None:
        return False
    kind, code, suffix = parsed
    if suffix == "a":
        return code == capability
    if kind == "compute":
        return capability >= code
    return capability[0] == code[0] and capability[1] >= code[1]


def build_runs_on(arch_list: tuple[str, ...] | list[str], capability: tuple[int, int]) -> bool:
    """Whether any entry of the build's arch list runs on ``capability``."""
    return any(arch_runs_on(entry, capability) for entry in arch_list)


def release_archs() -> dict[str, frozenset[int]]:
    """CUDA version -> sm_XY codes of the published builds of the installed torch release,
    for this host's CPU architecture."""
    import torch

    table = getattr(torch.cuda, "PYTORCH_RELEASES_CODE_CC", None) or FALLBACK_RELEASE_ARCHS
    host = "aarch64" if platform.machine().lower() == "aarch64" else "x86_64"
    return {cuda: frozenset(by_host.get(host, ())) for cuda, by_host in table.items()}


def matching_cuda_builds(
    capability: tuple[int, int], releases: dict[str, frozenset[int]]
) -> list[str]:
    """CUDA versions (newest first) whose published build runs on ``capability``."""
    fits = [
        cuda
        for cuda, codes in releases.items()
        if build_runs_on([f"sm_{code}" for code in codes], capability)
    ]
    return sorted(fits, key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True)


def cuda_tag(cuda: str) -> str:
    """ "12.6" -> "cu126": the wheel label and the PyTorch index folder."""
    return "cu" + cuda.replace(".", "")


def install_command(build: TorchBuild, cuda: str) -> str:
    """The command that puts the same torch version, built with ``cuda``, into the project
    environment. The local label pins the build: a plain ``torch==2.15.0`` is already
    satisfied by 2.15.0+cu132 and would install nothing."""
    tag = cuda_tag(cuda)
    return f'uv pip install "torch=={build.public_version}+{tag}" --index-url {PYTORCH_INDEX}/{tag}'


def needed_build_text(capability: tuple[int, int], build: TorchBuild, releases=None) -> str:
    """Which build a GPU of ``capability`` needs, with its install command."""
    releases = release_archs() if releases is None else releases
    fits = matching_cuda_builds(capability, releases)
    if not fits:
        return (
            f"no published build of torch {build.public_version} carries compute capability "
            f"{capability[0]}.{capability[1]}; pick an older torch release that does "
            "(see README, Older GPUs)"
        )
    command = install_command(build, fits[0])
    return f"the CUDA {fits[0]} build of torch {build.public_version}: {command}"


def unsupported_message(
    gpu_name: str, capability: tuple[int, int], build: TorchBuild, releases=None
) -> str:
    """The exit-2 message: the GPU, the build, the command, and how to keep it installed."""
    major, minor = capability
    return (
        f"this GPU cannot run the installed torch: {gpu_name} has compute capability "
        f"{major}.{minor} (sm_{major}{minor}), and {build.describe()} has no kernel for it; "
        "it would fail inside the first step with 'no kernel image is available'. "
        f"Install {needed_build_text(capability, build, releases)} "
        "-- then start runs with `uv run --no-sync dialsum ...` (a plain `uv run` syncs the "
        "environment back to uv.lock), or pin the build in pyproject.toml as the README "
        "section 'Older GPUs' shows. No data or weights were loaded."
    )


def require_supported_gpu(device_index: int = 0, build: TorchBuild | None = None) -> None:
    """Raise ``UserError`` when the CUDA device ``device_index`` cannot run the installed
    build. No-op without CUDA or on a non-CUDA (ROCm) build. Starts CUDA: call it after
    the allocator settings are in place (``allocator_env.configure_allocator``)."""
    import torch

    build = build or installed_build()
    if build.cuda is None or not build.arch_list or not torch.cuda.is_available():
        return
    capability = tuple(torch.cuda.get_device_capability(device_index))
    if build_runs_on(build.arch_list, capability):  # type: ignore[arg-type]
        return
    name = torch.cuda.get_device_name(device_index)
    raise UserError(unsupported_message(name, capability, build))  # type: ignore[arg-type]


def plan_warning(gpu, build: TorchBuild | None = None) -> str | None:
    """A plan's warning when the installed build cannot run ``gpu`` (a catalog entry with
    a known compute capability); None when it can, or when nothing is known. Cheap: the
    catalog's capability against the build's arch list, no CUDA call."""
    build = build or installed_build()
    capability = tuple(getattr(gpu, "compute_capability", (0, 0)))
    if getattr(gpu, "is_cpu", False) or capability == (0, 0) or getattr(gpu, "warning", None):
        return None  # the host CPU, or a GPU given by size only (capability assumed)
    if build.cuda is None or not build.arch_list or build_runs_on(build.arch_list, capability):
        return None
    major, minor = capability
    return (
        f"the installed {build.describe()} cannot run the {gpu.name} (sm_{major}{minor}); "
        f"on that GPU install {needed_build_text(capability, build)}"  # type: ignore[arg-type]
    )


def prepare_cuda_run(echo=print, device_index: int | None = None):
    """What ``train``, ``predict`` and ``probe`` do before anything else on a CUDA run:
    the allocator setting first (it must be in the environment before CUDA starts), then
    the supported-GPU check (which starts CUDA). Returns the ``AllocatorSetting``."""
    from dialsum.core.allocator_env import configure_allocator
    from dialsum.core.launch import local_rank

    setting = configure_allocator()
    echo(setting.describe())
    require_supported_gpu(local_rank() if device_index is None else device_index)
    return setting
