"""``config.yaml`` -> one validated section: strict YAML, inheritance, ``--set`` overrides.

Layout of ``config.yaml``::

    defaults:            # every section starts from these values
      training: {...}
    sections:
      eenzeenee:
        extends: t5_base # optional: start from another section (which starts from defaults)
        model: {...}

Inheritance is explicit and deep: a section only replaces the keys it names, nothing is
dropped (unlike YAML ``<<`` merges, which replace whole mappings). Duplicate YAML keys,
unknown sections and ``extends`` cycles are reported here; the merged mapping is then typed
and checked by ``config_validate`` (every problem reported at once).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dialsum.core.config_schema import SectionConfig
from dialsum.core.config_validate import suggest, typed_section
from dialsum.core.errors import ConfigError

# ---------------------------------------------------------------------------- YAML reading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys instead of silently keeping the last one."""

    duplicate_keys: list[str]


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            loader.duplicate_keys.append(
                f"duplicate key '{key}' at line {line} (first at line {seen[key]}); "
                "remove one of them"
            )
        else:
            seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse ``path``; duplicate keys and syntax errors become one ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass -c/--config PATH to a YAML file.")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass -c/--config PATH to a YAML file.")
    loader = _StrictLoader(_config_text(path))
    loader.duplicate_keys = []
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if loader.duplicate_keys:
        raise ConfigError(f"{path}:\n  - " + "\n  - ".join(loader.duplicate_keys))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'sections:'.")
    _check_top_blocks(path, root, data)
    return data


def _config_text(path: Path) -> str:
    """The file as text. YAML is UTF-8; a CP949 file (saved by a Korean Windows editor) is
    named as such rather than decoded by guess, since other YAML tools would misread it."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        try:
            raw.decode("cp949")
            found = "it looks CP949/EUC-KR encoded"
        except UnicodeDecodeError:
            found = "it is neither UTF-8 nor CP949 text"
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 ({found}); re-save the file as UTF-8 "
            "(in Notepad: Save as, Encoding UTF-8)"
        ) from None


_BLOCK_EXAMPLES = {
    "sections": "sections:\n  tiny:\n    model: {name: tiny:t5}",
    "defaults": "defaults:\n  training: {seed: 42}",
}


def _check_top_blocks(path: Path, root: yaml.Node | None, data: dict[str, Any]) -> None:
    """``sections`` and ``defaults`` must be mappings; a YAML list ('- name:') is the usual
    slip, and would otherwise surface as a TypeError deep inside the merge."""
    pairs = root.value if isinstance(root, yaml.MappingNode) else []
    lines = {k.value: k.start_mark.line + 1 for k, _ in pairs if isinstance(k, yaml.ScalarNode)}
    for key, example in _BLOCK_EXAMPLES.items():
        value = data.get(key)
        if value is None or isinstance(value, dict):
            continue
        kind = "a list" if isinstance(value, list) else f"a {type(value).__name__}"
        raise ConfigError(
            f"{path}: line {lines.get(key, '?')}: '{key}' must be a mapping of names to "
            f"blocks, not {kind} (no '-' before the names); write it as:\n{example}"
        )


# ---------------------------------------------------------------------------- merging


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge key by key, nothing is dropped."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_raw(doc: dict[str, Any], name: str, path: Path, chain: tuple[str, ...] = ()) -> dict:
    sections = doc.get("sections") or {}
    if not sections:
        raise ConfigError(
            f"{path} has no sections (is the file empty?): add a 'sections:' mapping with "
            f"a section named '{name}' (see the project's config.yaml for an example)"
        )
    if name not in sections:
        names = sorted(sections)
        raise ConfigError(
            f"{path}: unknown section '{name}'{suggest(name, names)}. "
            f"Available sections: {', '.join(names)}"
        )
    if name in chain:
        loop = " -> ".join((*chain, name))
        raise ConfigError(f"{path}: sections.{name}.extends forms a cycle: {loop}")
    raw = sections[name] or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: sections.{name} must be a mapping of blocks")
    raw = dict(raw)
    parent = raw.pop("extends", None)
    if parent is None:
        base = doc.get("defaults") or {}
    elif isinstance(parent, str):
        base = _resolve_raw(doc, parent, path, chain + (name,))
    else:
        raise ConfigError(f"{path}: sections.{name}.extends must be a section name")
    return deep_merge(base, raw)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``training.learning_rate=3e-5`` → (["training", "learning_rate"], 3e-05)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. training.seed=1")
    key, _, text = item.partition("=")
    keys = [k.strip() for k in key.strip().split(".")]
    if not any(keys):
        raise ConfigError(f"--set {item!r}: empty key path; expected e.g. training.seed=1")
    if not all(keys):
        raise ConfigError(
            f"--set {item!r}: empty part in the key path {key.strip()!r}; "
            "expected dotted names such as training.learning_rate=3e-5"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set key.path=value`` items to a section's raw mapping.

    A mapping value merges into a block (``training={seed: 1}`` sets one key); a block is
    never replaced by a scalar nor a scalar descended into: either would silently drop
    the section's values, which the user meant to keep.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for depth, k in enumerate(keys[:-1]):
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"--set {item!r}: {where} is a value ({child!r}), not a block with keys"
                )
            node = child
        last, where = keys[-1], ".".join(keys)
        if isinstance(node.get(last), dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"--set {item!r}: {where} is a block; set one of its keys, e.g. "
                    f"{where}.{next(iter(node[last]), 'key')}=VALUE"
                )
            node[last] = deep_merge(node[last], value)
        else:
            node[last] = value
    return out


# ---------------------------------------------------------------------------- one section


def load_section(path: str | Path, name: str, overrides: list[str] | None = None) -> SectionConfig:
    """Read, merge, override and validate one section.

    Raises one ConfigError listing every problem.
    """
    path = Path(path)
    doc = read_yaml(path)
    errors = [
        f"{key}: unknown top-level key{suggest(str(key), ['defaults', 'sections'])}"
        for key in doc
        if key not in ("defaults", "sections")
    ]
    raw = apply_overrides(_resolve_raw(doc, name, path), overrides or [])
    cfg = typed_section(raw, f"{path} [section {name}]", errors)
    cfg.name, cfg.source = name, str(path)
    return cfg


def section_from_dict(raw: dict[str, Any], name: str = "inline") -> SectionConfig:
    """Validate an in-memory section (used by tests and by run folders on --resume)."""
    cfg = typed_section(raw, f"[section {name}]")
    cfg.name = name
    return cfg
