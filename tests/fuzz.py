"""The fuzzer's parts (tests/test_fuzz.py): hostile values for any setting, the composed configs whose keys it
attacks, and the contract every command keeps whatever it is given: exit 0 or 2 (1 only with the bug line), no
traceback on the terminal, a refusal naming the key or the file, nothing written outside the run directory, and
nothing already in a run directory rewritten. Run it longer than the suite does with FUZZ_EXAMPLES=N."""

import math
import os
from pathlib import Path

from hypothesis import strategies as st
from omegaconf import OmegaConf

# Examples per test: the suite's bounded default, or as many as FUZZ_EXAMPLES says (README: the fuzzer).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def examples(default: int) -> int:
    return EXAMPLES or default


def _names():
    # Strings that are no path outside the working directory: a user who types an absolute path means it.
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"), max_size=40)


# Wrong types, zero, negative, huge, nan and inf, empty lists, unicode and very long strings.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(
        [
            0,
            -1,
            1,
            2,
            3,
            -(2**63),
            2**63,
            10**12,
            10**30,
            0.0,
            -0.0,
            0.5,
            1.5,
            -1e-9,
            1e308,
            math.inf,
            -math.inf,
            math.nan,
        ]
    ),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    _names(),
    st.text(min_size=200, max_size=400).map(lambda s: s.replace("/", "_")),
    st.sampled_from(
        [
            "",
            " ",
            "null",
            "true",
            "auto",
            "cpu",
            "cuda",
            "mlp",
            "${oc.env:HOME}",
            "${nope}",
            "???",
            "é漢🙂",
            "builtins.dict",
            "collections.OrderedDict",
            "-1",
            "1e3",
            "inf",
        ]
    ),
    st.just([]),
    st.lists(st.integers(-3, 600), min_size=1, max_size=3),
    st.lists(_names(), max_size=2),
    st.just({}),
    st.fixed_dictionaries({"a": st.integers()}),
)


def leaves(cfg, prefix: str = "") -> list[str]:
    """Every leaf key of a composed config, but Hydra's own."""
    out = []
    for k in cfg:
        node = cfg._get_node(k)
        key = f"{prefix}{k}"
        if key == "hydra":
            continue
        out += leaves(node, key + ".") if OmegaConf.is_dict(node) else [key]
    return out


def with_value(cfg, key: str, value):
    """The config with `key` set to `value`, as a user's override would set it; None where no override can (an
    interpolation OmegaConf cannot parse: Hydra refuses that command line, in one line)."""
    from omegaconf.errors import GrammarParseError

    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    try:
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    except GrammarParseError:
        return None
    return cfg


def override(key: str, value) -> str:
    """The command-line override that sets `key` to `value` in Hydra's grammar."""
    return f"{key}={_literal(value)}"


def _literal(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_literal(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def snapshot(folder: Path) -> dict:
    """Every file below `folder` with its size and modification time: what a later look compares against."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def rewritten(before: dict, after: dict) -> list:
    """Files of `before` that are gone or changed in `after`."""
    return [p for p, stat in before.items() if after.get(p) != stat]
