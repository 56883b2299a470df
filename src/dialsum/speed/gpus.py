"""The GPUs our users train on, and turning what they type ("A100", "24GB") into one.

``total_bytes`` is what ``torch.cuda.get_device_properties(i).total_memory`` reports, not
the marketing label: the driver keeps a few hundred MiB for itself (page tables, ECC,
firmware), so an "A100 40GB" gives PyTorch 42,505,273,344 bytes (39.59 GiB), not 40 GiB.
The catalog numbers are approximate: they vary a little with the board (SXM or PCIe), the
driver and ECC settings. When a real device is present, ``detect_gpu`` reads its own
number, and that number wins over the catalog.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from dialsum.core.errors import ConfigError

_MIB = 2**20
_GIB = 2**30


@dataclass(frozen=True)
class GPU:
    """One GPU model as the planner sees it.

    ``bf16`` is True from compute capability 8.0 (Ampere) on: earlier cards have no bf16
    tensor cores and CUDA autocast refuses bf16 there. ``warning`` is set when some of
    these facts are assumed rather than known (a GPU given only by its memory size).
    """

    slug: str
    name: str
    total_bytes: int
    bf16: bool
    fp16: bool = True
    compute_capability: tuple[int, int] = (0, 0)
    warning: str | None = None

    @property
    def total_gib(self) -> float:
        return self.total_bytes / _GIB

    @property
    def is_cpu(self) -> bool:
        """The host CPU standing in for a GPU (``--gpu cpu``): real CPU kernels, no CUDA."""
        return self.slug == CPU_SLUG


# What the driver reports as total memory (approximate; see module docstring).
_CATALOG: tuple[GPU, ...] = (
    GPU("v100-16gb", "Tesla V100 16GB", 16_945_709_056, bf16=False, compute_capability=(7, 0)),
    GPU("t4-16gb", "Tesla T4 16GB", 15_835_660_288, bf16=False, compute_capability=(7, 5)),
    GPU("rtx3080-10gb", "GeForce RTX 3080 10GB", 10_495_197_184, bf16=True,
        compute_capability=(8, 6)),
    GPU("rtx3090-24gb", "GeForce RTX 3090 24GB", 25_447_170_048, bf16=True,
        compute_capability=(8, 6)),
    GPU("rtx4090-24gb", "GeForce RTX 4090 24GB", 25_393_692_672, bf16=True,
        compute_capability=(8, 9)),
    GPU("l4-24gb", "L4 24GB", 23_569_891_328, bf16=True, compute_capability=(8, 9)),
    GPU("a100-40gb", "A100 40GB", 42_505_273_344, bf16=True, compute_capability=(8, 0)),
    GPU("a100-80gb", "A100 80GB", 84_987_084_800, bf16=True, compute_capability=(8, 0)),
    GPU("h100-80gb", "H100 80GB", 84_943_044_608, bf16=True, compute_capability=(9, 0)),
    GPU("h200-141gb", "H200 141GB", 150_109_945_856, bf16=True, compute_capability=(9, 0)),
)  # fmt: skip

_BY_SLUG: dict[str, GPU] = {gpu.slug: gpu for gpu in _CATALOG}

# Short names people type. A bare "A100" means the 40 GB card: when in doubt plan for the
# smaller memory, which still runs on the larger one.
_ALIASES: dict[str, str] = {
    "v100": "v100-16gb",
    "t4": "t4-16gb",
    "3080": "rtx3080-10gb",
    "rtx3080": "rtx3080-10gb",
    "3090": "rtx3090-24gb",
    "rtx3090": "rtx3090-24gb",
    "4090": "rtx4090-24gb",
    "rtx4090": "rtx4090-24gb",
    "l4": "l4-24gb",
    "a100": "a100-40gb",
    "a10040": "a100-40gb",
    "a10080": "a100-80gb",
    "h100": "h100-80gb",
    "h10080": "h100-80gb",
    "h200": "h200-141gb",
    "h200141": "h200-141gb",
}

# Vendor words that carry no information about which card it is.
_NOISE_WORDS = ("nvidia", "tesla", "geforce")

# "24GB", "24 GiB", "10.5gb", "24G", "16384MiB".
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m)\s*$", re.IGNORECASE)


CPU_SLUG = "cpu"


def cpu_device(total_bytes: int | None = None) -> GPU:
    """The host CPU as a device to plan for: ``total_bytes`` (a live-bytes cap that
    emulates a smaller device), else the machine's physical memory.

    Plans for it trace CPU kernels (no CUDA emulation) and train in fp32, as a CPU run does;
    they are checked against real CPU runs (``bench/bench_plan_vs_run_cpu.py``).
    """
    if total_bytes is None:
        import os

        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if total_bytes <= 0:
        raise ConfigError(f"CPU memory cap must be larger than zero, got {total_bytes} bytes")
    return GPU(
        slug=CPU_SLUG,
        name=f"CPU ({total_bytes / _GIB:.2f} GiB)",
        total_bytes=total_bytes,
        bf16=False,
        fp16=False,
    )


def catalog() -> list[GPU]:
    """The known GPUs, smallest family first (a fresh list; the entries are immutable)."""
    return list(_CATALOG)


def _squash(text: str) -> str:
    # "NVIDIA GeForce RTX 3080" / "rtx-3080" / "RTX_3080" all become "rtx3080".
    key = text.lower()
    for word in _NOISE_WORDS:
        key = key.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", key)


def _lookup_keys() -> dict[str, str]:
    keys = {_squash(slug): slug for slug in _BY_SLUG}
    keys.update({_squash(alias): slug for alias, slug in _ALIASES.items()})
    return keys


def gpu_from_size(size_text: str) -> GPU | None:
    """A generic GPU from a memory size such as ``"24GB"``, or None if it is no size.

    ``NNGB`` means NN GiB: people call a card with 24 GiB a "24GB" card, and the
    difference (7%) is larger than most safety margins. The capabilities are unknown, so
    bf16 is assumed (any card sold since 2020) and the GPU carries a ``warning``.
    """
    match = _SIZE_RE.match(size_text)
    if match is None:
        return None
    number, unit = float(match.group(1)), match.group(2).lower()
    scale = _GIB if unit.startswith("g") else _MIB
    total_bytes = int(number * scale)
    if total_bytes <= 0:
        raise ConfigError(f"GPU memory size {size_text!r} must be larger than zero")
    label = match.group(1) + ("GiB" if scale == _GIB else "MiB")
    return GPU(
        slug=f"generic-{label.lower()}",
        name=f"GPU with {label}",
        total_bytes=total_bytes,
        bf16=True,
        compute_capability=(8, 0),
        warning=(
            f"GPU given only by its memory size ({size_text!r} read as {label}): bf16 support "
            "is assumed; name the GPU (e.g. 'v100-16gb') if it is older than Ampere"
        ),
    )


def resolve_gpu(spec: str) -> GPU:
    """The GPU a user named: a catalog slug, an alias ("A100", "RTX 3080"), or a size ("24GB").

    Raises ``ConfigError`` listing the known slugs and the closest match otherwise.
    """
    text = spec.strip()
    if not text:
        raise ConfigError(_unknown_message(spec))
    if text.lower() == CPU_SLUG:
        return cpu_device()
    if text.lower() in _BY_SLUG:
        return _BY_SLUG[text.lower()]
    slug = _lookup_keys().get(_squash(text))
    if slug is not None:
        return _BY_SLUG[slug]
    generic = gpu_from_size(text)
    if generic is not None:
        return generic
    raise ConfigError(_unknown_message(spec))


def _unknown_message(spec: str) -> str:
    slugs = list(_BY_SLUG)
    candidates = slugs + list(_ALIASES)
    close = difflib.get_close_matches(spec.strip().lower(), candidates, n=1, cutoff=0.5)
    hint = f" Did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else ""
    return (
        f"unknown GPU {spec!r}.{hint} Known GPUs: {', '.join(slugs)}. "
        "Or give the memory size, e.g. '24GB' (read as 24 GiB), or 'cpu' for this CPU."
    )


def _name_tokens(name: str) -> list[str]:
    # "NVIDIA GeForce RTX 3080 Ti" -> ["nvidia", "geforce", "rtx3080", "ti"];
    # "NVIDIA A100-SXM4-80GB" -> ["nvidia", "a100", "sxm4", "80gb"].
    text = re.sub(r"[^a-z0-9]+", " ", name.lower())
    return re.sub(r"\brtx (\d)", r"rtx\1", text).split()


def _catalog_match(name: str, total_bytes: int) -> GPU | None:
    # The card family is a whole word of the device name, not followed by a variant
    # ("L40S" is no L4, an "RTX 3080 Ti" has more memory than a 3080); among the entries of
    # that family take the one whose memory is closest.
    tokens = _name_tokens(name)
    family = []
    for gpu in _CATALOG:
        model = gpu.slug.split("-")[0]
        if model in tokens:
            after = tokens[tokens.index(model) + 1 : tokens.index(model) + 2]
            if after not in (["ti"], ["super"]):
                family.append(gpu)
    if not family:
        return None
    return min(family, key=lambda gpu: abs(gpu.total_bytes - total_bytes))


def gpu_from_properties(name: str, total_bytes: int, compute_capability: tuple[int, int]) -> GPU:
    """A GPU from what the driver reports; the reported memory always wins over the catalog."""
    major, minor = compute_capability
    known = _catalog_match(name, total_bytes)
    slug = known.slug if known is not None else f"cuda-{_squash(name) or 'device'}"
    return GPU(
        slug=slug,
        name=name,
        total_bytes=total_bytes,
        bf16=(major, minor) >= (8, 0),
        fp16=(major, minor) >= (6, 0),
        compute_capability=(major, minor),
    )


def named_device(spec: str | None, memory_cap_gib: float | None = None) -> GPU | None:
    """The device ``spec`` (``--gpu`` or ``hardware.gpu``) names, or None when it names
    none (``auto``, empty) and the detected GPU is meant. ``cpu``, or ``auto`` with a
    live-bytes cap (``hardware.memory_cap_gib``), is this CPU, capped when a cap is set.
    Needs no torch: a cached plan is found by it (``cli.plan_cache``)."""
    if memory_cap_gib is not None and spec in ("auto", "cpu"):
        return cpu_device(int(memory_cap_gib * 2**30))
    if spec and spec != "auto":
        return resolve_gpu(spec)
    return None


def detect_gpu(device_index: int = 0) -> GPU | None:
    """The CUDA device this process sees, or None without one (CPU-only machines)."""
    import torch  # late: importing torch costs seconds and is not needed for the catalog

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device_index)
    return gpu_from_properties(props.name, int(props.total_memory), (props.major, props.minor))
