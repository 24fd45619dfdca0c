"""One benchmark configuration, and the parsing of the values users type for it (``--n 1k..64k``)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
PASSES: tuple[str, ...] = ("fwd", "fwd+bwd")
DEVICES: tuple[str, ...] = ("cpu", "cuda")


@dataclass(frozen=True)
class BenchConfig:
    """One point of a sweep: a variant on inputs q, k, v of shape (batch, heads, n, d), v of width d."""

    variant: str
    n: int
    d: int
    batch: int = 1
    heads: int = 4
    dtype: str = "float32"
    causal: bool = True
    pass_: str = "fwd"
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("n", "d", "batch", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.pass_ not in PASSES:
            raise ValueError(f"pass must be one of {PASSES}, got {self.pass_!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def key(self) -> str:
        """A stable identifier: the same config has the same key in every run (used to resume and merge)."""
        return (f"{self.variant}|{self.device}|{self.dtype}|{'causal' if self.causal else 'full'}|{self.pass_}"
                f"|b{self.batch}|h{self.heads}|n{self.n}|d{self.d}")

    def as_row(self) -> dict:
        """The config's columns of a result row (``pass_`` is stored as ``pass``)."""
        row = asdict(self)
        row["pass"] = row.pop("pass_")
        return row


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_size(text: str | int) -> int:
    """'4k' -> 4096, '1m' -> 1048576, '1000' -> 1000. Raises ValueError naming the text."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"size must be an integer with an optional k or m suffix (e.g. 4096, 4k), got {text!r}")
    value = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if value < 1:
        raise ValueError(f"size must be >= 1, got {text!r}")
    return value


def parse_sizes(text: str | int | list) -> list[int]:
    """A list of sizes: '1k..64k' (powers of two from 1k to 64k), '1k,3k,8k', or a list of those.

    A range 'a..b' doubles from a up to b; b is included when it is a * 2^k.
    """
    if isinstance(text, list):
        return sorted({size for item in text for size in parse_sizes(item)})
    if isinstance(text, int):
        return [text]
    sizes: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if ".." in part:
            lo_text, hi_text = part.split("..", 1)
            lo, hi = parse_size(lo_text), parse_size(hi_text)
            if hi < lo:
                raise ValueError(f"range {part!r} ends below its start")
            size = lo
            while size <= hi:
                sizes.add(size)
                size *= 2
        else:
            sizes.add(parse_size(part))
    if not sizes:
        raise ValueError(f"no sizes in {text!r}")
    return sorted(sizes)


def parse_dtype(text: str) -> str:
    """'bf16' -> 'bfloat16'. Raises ValueError listing the allowed names."""
    name = DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in DTYPES:
        allowed = sorted(set(DTYPES) | set(DTYPE_ALIASES))
        raise ValueError(f"dtype must be one of {allowed}, got {text!r}")
    return name


def parse_bool_list(text: str | bool | list) -> list[bool]:
    """'true', 'false', 'both', 'true,false' -> list of bools (for --causal)."""
    if isinstance(text, bool):
        return [text]
    if isinstance(text, list):
        return sorted({b for item in text for b in parse_bool_list(item)}, reverse=True)
    words = {"true": [True], "yes": [True], "1": [True], "causal": [True],
             "false": [False], "no": [False], "0": [False], "full": [False], "both": [True, False]}
    out: list[bool] = []
    for part in str(text).split(","):
        key = part.strip().lower()
        if key not in words:
            raise ValueError(f"causal must be true, false or both, got {part!r}")
        out.extend(words[key])
    return sorted(set(out), reverse=True)


def parse_pass_list(text: str | list) -> list[str]:
    """'fwd', 'fwd+bwd', 'both' or a comma list -> list of pass names."""
    if isinstance(text, list):
        return [p for p in PASSES if any(p in parse_pass_list(item) for item in text)]
    out: list[str] = []
    for part in str(text).split(","):
        key = part.strip().lower()
        if key == "both":
            out.extend(PASSES)
        elif key in PASSES:
            out.append(key)
        else:
            raise ValueError(f"pass must be one of {(*PASSES, 'both')}, got {part!r}")
    return [p for p in PASSES if p in out]
