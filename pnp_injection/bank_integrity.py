"""Whether a bank file can be trusted, decided before its tables are read (every wing's format).

- `Header`: what a safetensors file declares (its metadata, each tensor's dtype, shape and byte
  range), read from its first bytes alone: an 8-byte length, then a JSON header, capped.
- `Expected` and `check_layout`: the wing says, from the metadata, what every tensor must be
  (`Layout`); the header is compared with it, so a table whose header swaps tokens and hidden
  size, a count that contradicts the metadata or a size beyond what the latent and the family
  allow is refused before any memory is spent on it.
- The checksum: SHA-256 over the metadata and every tensor's name, dtype, shape and bytes,
  written at save and verified at load by streaming the file (1 MiB at a time), so damage on
  disk or in transfer is named as damage. It is no signature: whoever edits a file on purpose
  can compute it again. Files written before it existed carry none and are not checked.
- `check_values`: every floating tensor finite and within VALUE_BOUND.

Every refusal is `damaged(...)`: the file, the field, what is wrong, and the fix.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .errors import PnPError
from .inputs import VAE_SCALE, pixel_size

# safetensors' dtype names (the header's "dtype"), for the dtypes a file may hold.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
CODES = {dtype: code for code, dtype in DTYPES.items()}
FLOATING = ("F32", "F16", "BF16")  # what every bank tensor but the kept token indices is stored as

MAX_HEADER = 16 * 2**20  # bytes: a bank's header is a few KiB; a larger one is not a bank
CHUNK = 2**20            # bytes hashed at a time when a file is verified
CHECKSUM = "checksum"    # the metadata field, "sha256:<hex>"

# The largest magnitude a bank's values may have: float16's largest finite value. The U-Nets, Flux.1,
# Chroma and Flux.2 run in float16 in ComfyUI (their supported inference dtypes), where any larger
# activation would overflow; measured on full-size architectures with random weights at a real
# initialisation's scale, the largest value a bank holds is far below it (README, Guard rails;
# bench/bench_feature_bound.py). Larger finite values (1e30) sample a black image in silence.
VALUE_BOUND = 65504.0


class Damaged(Exception):
    """Raised by a wing's layout or content check: `field` is the tensor or metadata entry at fault."""

    def __init__(self, field: str, detail: str):
        super().__init__(field, detail)
        self.field, self.detail = field, detail


def damaged(name: str, field: str, detail: str, fix: str) -> PnPError:
    return PnPError(f"{name} is a damaged or edited bank file (`{field[:80]}`: {detail}). {fix[:1].upper()}{fix[1:]}")


@dataclass(frozen=True)
class Declared:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets in the file
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    tensors: dict[str, Declared]

    def shape(self, key: str) -> tuple[int, ...] | None:
        declared = self.tensors.get(key)
        return None if declared is None else declared.shape

    def nbytes(self) -> int:
        return sum(d.end - d.begin for d in self.tensors.values())


class Unreadable(Exception):
    """The file is not a well-formed safetensors file (truncated, not one at all)."""


def read_header(path: str | os.PathLike) -> Header:
    """The header of a safetensors file, checked as safetensors checks it (known dtypes, byte
    ranges that tile the data exactly to the file's end), without reading any tensor."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise Unreadable("not a regular file")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise Unreadable("shorter than a header")
        length = int.from_bytes(head, "little")
        if length > min(MAX_HEADER, info.st_size - 8):
            raise Unreadable(f"a header of {length} bytes")
        try:
            raw = json.loads(f.read(length))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise Unreadable(f"its header is not JSON: {str(e)[:80]}") from None
    if not isinstance(raw, dict):
        raise Unreadable("its header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise Unreadable("its metadata is not text")
    tensors, data = {}, info.st_size - 8 - length
    for key, entry in raw.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = (dtype in DTYPES and all(type(n) is int and n >= 0 for n in (*shape, begin, end))
                  and end - begin == math.prod(shape) * DTYPES[dtype].itemsize)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise Unreadable(f"tensor {key[:80]!r} is described as {str(entry)[:120]}")
        tensors[key] = Declared(dtype, shape, begin, end)
    position = 0
    for declared in sorted(tensors.values(), key=lambda d: (d.begin, d.end)):
        if declared.begin != position:
            raise Unreadable("its tensors' byte ranges overlap or leave gaps")
        position = declared.end
    if position != data:
        raise Unreadable(f"its tensors take {position} bytes but the file holds {data}")
    return Header(metadata, tensors)


@dataclass(frozen=True)
class Expected:
    """What the metadata says a tensor is: its shape (dims named for the message), its dtypes, and
    whether it is a large table (read after the small tensors have passed the wing's checks)."""

    shape: tuple[int, ...]
    dims: str = ""
    dtypes: tuple[str, ...] = FLOATING
    table: bool = False


Layout = dict[str, Expected]


def check_layout(header: Header, layout: Layout) -> None:
    """Every declared tensor is expected, every expected one declared, each of its shape and dtype."""
    for key in header.tensors.keys() - layout.keys():
        raise Damaged(key, "the metadata gives no such tensor")
    for key, expected in layout.items():
        declared = header.tensors.get(key)
        if declared is None:
            raise Damaged(key, "the tensor is missing")
        if declared.dtype not in expected.dtypes:
            names = [str(DTYPES[d]).replace("torch.", "") for d in expected.dtypes]
            allowed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise Damaged(key, f"it is stored as {str(DTYPES[declared.dtype]).replace('torch.', '')}, not as {allowed}")
        if declared.shape != expected.shape:
            dims = f" ({expected.dims})" if expected.dims else ""
            raise Damaged(key, f"its shape is {list(declared.shape)} where the metadata gives "
                               f"{list(expected.shape)}{dims}")


# Bounds on what a bank's metadata may declare, whatever the wing: what ComfyUI and the nodes can make.
MAX_STEPS = 1000         # the nodes' `steps` maximum
MAX_ROWS = 4096          # ComfyUI's largest latent batch (Empty Latent Image)
MAX_CELLS = 16384 // 8   # latent cells per side (and frames): ComfyUI's largest image side, 8 px a cell


def number(metadata: Mapping[str, str], key: str, low: int = 0, high: int | None = None) -> int:
    """An integer metadata field within [low, high]."""
    text = metadata.get(key)
    if text is None:
        raise Damaged(key, "the metadata field is missing")
    if not (text.isascii() and text.isdigit() and len(text) < 10 and low <= int(text)
            and (high is None or int(text) <= high)):
        bounds = f"{low} to {high}" if high is not None else f"at least {low}"
        raise Damaged(key, f"it is {text[:40]!r}, not a whole number from {bounds}")
    return int(text)


def json_field(metadata: Mapping[str, str], key: str):
    try:
        return json.loads(metadata[key])
    except KeyError:
        raise Damaged(key, "the metadata field is missing") from None
    except ValueError:
        raise Damaged(key, f"it is {metadata[key][:40]!r}, not JSON") from None


def steps_of(header: Header) -> int:
    """The sampling steps the schedule declares: `sigmas` [steps + 1], at most MAX_STEPS."""
    shape = header.shape("sigmas")
    if shape is None or len(shape) != 1 or not 2 <= shape[0] <= MAX_STEPS + 1:
        raise Damaged("sigmas", f"its shape is {list(shape or [])}, not a schedule of 1 to {MAX_STEPS} steps")
    return shape[0] - 1


def check_latent_shape(field: str, shape, channels: int | None, ranks=(4,)) -> tuple[int, ...]:
    """A latent shape the metadata declares: [rows, channels, (frames,) height, width] within ComfyUI's sizes."""
    ok = (isinstance(shape, list) and len(shape) in ranks and all(type(n) is int and n >= 1 for n in shape)
          and shape[0] <= MAX_ROWS and (channels is None or shape[1] == channels)
          and all(n <= MAX_CELLS for n in shape[2:]))
    if not ok:
        kind = f"{channels} channels" if channels else "channels"
        raise Damaged(field, f"it is {str(shape)[:60]}, not a latent [rows, {kind}, ..., height, width] of at most "
                             f"{MAX_ROWS} rows and {MAX_CELLS} cells a side")
    return tuple(shape)


def optional_layout(header: Header, steps: int, latent_shape) -> Layout:
    """A masked edit's tensors, in files that hold them: the source's path [steps + 1, *latent] (a
    table) and its noise_mask, at most [rows, 1, height, width] at the image's size (8 px a cell);
    the mask itself is checked when sampling (`region.check_mask`)."""
    out: Layout = {}
    if "path" in header.tensors:
        out["path"] = Expected((steps + 1, *latent_shape), "steps + 1, rows, channels, height, width", table=True)
    mask = header.shape("mask")
    if mask is not None:
        most = latent_shape[0] * (latent_shape[-2] + 1) * (latent_shape[-1] + 1) * VAE_SCALE ** 2
        if not 2 <= len(mask) <= 4 or math.prod(mask) > most:
            raise Damaged("mask", f"its shape is {list(mask)}, larger than a mask of the {pixel_size(latent_shape)} "
                                  f"source")
        out["mask"] = Expected(mask)
    return out


def checksum(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """The checksum written at save: of the metadata (but this field) and of the tensors (CPU,
    contiguous), hashed from their memory in place (no copy)."""
    digest = Checksum(metadata)
    for key in sorted(tensors):
        digest.tensor(key, tensors[key])
        for chunk in tensor_chunks(tensors[key]):
            digest.update(chunk)
    return digest.value()


class Checksum:
    """The checksum computed as a file is streamed: the metadata first, then each tensor (in sorted key order):
    `tensor(key, t)` then `update(chunk)` for its bytes."""

    def __init__(self, metadata: Mapping[str, str]):
        self.digest = _start(metadata)

    def tensor(self, key: str, t) -> None:
        _field(self.digest, _describe(key, CODES.get(t.dtype, str(t.dtype)), tuple(t.shape)))

    def update(self, chunk) -> None:
        self.digest.update(chunk)

    def value(self) -> str:
        return f"sha256:{self.digest.hexdigest()}"


def tensor_chunks(t):
    """A tensor's bytes (CPU, contiguous), CHUNK at a time, from its memory in place; a table that lives elsewhere
    (a bank on disk) gives its own `chunks()`."""
    if hasattr(t, "chunks"):
        yield from t.chunks()
        return
    raw = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")
    for at in range(0, len(raw), CHUNK):
        yield raw[at:at + CHUNK]


def verify_checksum(path: str | os.PathLike, header: Header) -> bool | None:
    """Whether the file's bytes are those its checksum was computed on (None: no checksum, a file
    written before checksums). Streams the file: memory stays at one chunk whatever its size."""
    written = header.metadata.get(CHECKSUM)
    if written is None:
        return None
    digest, buffer = _start(header.metadata), bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        base = 8 + int.from_bytes(f.read(8), "little")
        for key in sorted(header.tensors):
            declared = header.tensors[key]
            _field(digest, _describe(key, declared.dtype, declared.shape))
            f.seek(base + declared.begin)
            left = declared.end - declared.begin
            while left:
                got = f.readinto(view[:min(left, CHUNK)])
                if not got:
                    return False
                digest.update(view[:got])
                left -= got
    return written == f"sha256:{digest.hexdigest()}"


def _start(metadata: Mapping[str, str]):
    digest = hashlib.sha256()
    for key in sorted(k for k in metadata if k != CHECKSUM):
        _field(digest, key.encode())
        _field(digest, metadata[key].encode())
    return digest


def _describe(key: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    return json.dumps([key, dtype, list(shape)]).encode()


def _field(digest, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two field lists hash alike
    digest.update(data)


def check_schedule(sigmas: torch.Tensor, first: float | None = None) -> None:
    """A bank's schedule falls strictly to 0 (from `first`, when given)."""
    falling = (len(sigmas) >= 2 and float(sigmas[-1]) == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
               and (first is None or math.isclose(float(sigmas[0]), first, rel_tol=1e-6)))
    if not falling:
        shown = ", ".join(f"{float(s):.4g}" for s in sigmas[:6])
        start = f"from {first} " if first is not None else ""
        raise Damaged("sigmas", f"the schedule does not fall strictly {start}to 0 ({shown}{', ...' if len(sigmas) > 6 else ''})")


def check_values(tensors: Mapping[str, torch.Tensor]) -> None:
    """Every floating tensor finite and within VALUE_BOUND (one reduction pass each, no copy)."""
    for key, t in tensors.items():
        if not t.is_floating_point() or not t.numel():
            continue
        low, high = (float(v) for v in torch.aminmax(t))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise Damaged(key, "it holds NaN or infinite values")
        if max(-low, high) > VALUE_BOUND:
            raise Damaged(key, f"it holds {high if high > -low else low:.3g}, beyond the ±{VALUE_BOUND:.0f} that no "
                               f"model's activations or latents reach")


def checked(name: str, fix: str, check: Callable, *args):
    """`check(*args)`, with a Damaged turned into the PnPError naming `name`, the field and `fix`."""
    try:
        return check(*args)
    except Damaged as e:
        raise damaged(name, e.field, e.detail, fix) from None
