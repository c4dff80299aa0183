"""Reading the layer texts users type (`custom_layers` of both wings).

Every text is read in time linear in its length, by plain splitting (no backtracking
pattern): it is refused above `MAX_LENGTH` characters, and each range is checked (bounds,
order, size) before anything is expanded, so no text can stall the host or fill its memory.
Malformed parts raise ValueError (the wing's parser turns that into its grammar message);
numbers and ranges out of bounds raise a PnPError that names the bound."""
from __future__ import annotations

from .errors import PnPError

MAX_LENGTH = 2_000   # characters of one layer text; every useful set fits in a few hundred
MAX_NUMBER = 999     # block and index numbers: no supported model has a thousand blocks
MAX_COUNT = 1_000    # layers one text may name in all, counted before expansion


def check_length(text: str, what: str, example: str) -> None:
    """Refuse a text longer than MAX_LENGTH before reading any of it."""
    if len(text) > MAX_LENGTH:
        raise PnPError(f"The {what} is {len(text):,} characters long; layer texts are read up to "
                       f"{MAX_LENGTH:,} characters. Shorten it: name blocks by ranges, as in {example!r}.")


EXCERPT = 60  # characters of a text quoted in a message


def excerpt(text: str) -> str:
    """`text` quoted for a message: whole when short, else its start and its length."""
    text = text.strip()
    if len(text) <= EXCERPT:
        return repr(text)
    return f"{text[:EXCERPT]!r}... ({len(text):,} characters)"


def _number(text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    value = int(text)  # at most MAX_LENGTH digits: cheap
    if value > MAX_NUMBER:
        raise PnPError(f"Layer number {text if len(text) <= EXCERPT else excerpt(text)} is beyond {MAX_NUMBER}: no "
                       f"supported model has that many blocks. Give block numbers within the model's blocks (0-based).")
    return value


def ranges(text: str) -> list[range]:
    """'4, 6-8' -> [range(4, 5), range(6, 9)], checked and not expanded (empty parts are skipped)."""
    out: list[range] = []
    for part in text.split(","):
        if not part.strip():
            continue
        lo, dash, hi = part.partition("-")
        first = _number(lo)
        last = _number(hi) if dash else first
        if last < first:
            raise PnPError(f"The range {excerpt(part)} runs backwards: write the lower block first, "
                           f"as in '{last}-{first}'.")
        out.append(range(first, last + 1))
    return out


def count(spans: list[range]) -> int:
    return sum(len(r) for r in spans)


def check_count(total: int, what: str) -> None:
    """Refuse a text naming more than MAX_COUNT layers, before they are expanded."""
    if total > MAX_COUNT:
        raise PnPError(f"The {what} names {total:,} layers; at most {MAX_COUNT:,} are read (no supported "
                       f"model has more). Name each layer once, with ranges within the model's blocks.")


def expand(spans: list[range]) -> list[int]:
    return [n for r in spans for n in r]


def read_clauses(text: str, what: str, example: str, read_clause, size, grammar: str) -> list:
    """The `;`-separated clauses of a layer text, each read by `read_clause` (ValueError on bad
    grammar), after the length cap and with the total of `size(clause)` layers checked before
    any range is expanded. Bad grammar is a PnPError that shows `grammar`."""
    check_length(text, what, example)
    try:
        clauses = [read_clause(clause) for clause in filter(str.strip, text.split(";"))]
        check_count(sum(size(clause) for clause in clauses), what)
    except ValueError as e:
        if isinstance(e, PnPError):
            raise
        raise PnPError(grammar) from None
    return clauses
