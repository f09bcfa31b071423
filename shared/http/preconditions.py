"""ETags and `If-Match` of versioned resources (RFC 9110 §8.8.3 and §13.1.1), in one place.

A resource's ETag is its version, quoted, with an optional prefix (`"7"`, `"policy-3"`). The
conditions a client can send:
- one ETag, or a list of them: the write applies when the current version is one of them;
- `*`: the write applies to whatever version is current (the client chose to overwrite);
- an entity tag this API never issued: no version can match, so it is a 412 that says what
  an ETag of this resource looks like (not a 422: the header is well-formed HTTP).
Weak tags (`W/"7"`) compare like strong ones: a version number names one representation.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import PreconditionFailed


def etag(version: int, *, prefix: str = "") -> str:
    return f'"{prefix}{version}"'


@dataclass(frozen=True, slots=True)
class IfMatch:
    """A parsed `If-Match`: the versions it names, or any version (`*`)."""

    versions: frozenset[int] | None  # None: `*`

    def admits(self, version: int) -> bool:
        return self.versions is None or version in self.versions

    def describe(self) -> str:
        if self.versions is None:
            return "*"
        return ", ".join(etag(v) for v in sorted(self.versions))


ANY = IfMatch(None)


def parse_if_match(header: str | None, *, prefix: str = "", what: str) -> IfMatch | None:
    """The condition in an `If-Match` header (None when there is none).

    `what` names the resource in the error, e.g. "the customer" or "the value model"."""
    if header is None:
        return None
    text = header.strip()
    if text == "*":
        return ANY
    versions = set()
    for raw in text.split(","):
        tag = raw.strip().removeprefix("W/")
        inner = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
        number = inner.removeprefix(prefix) if inner.startswith(prefix) else None
        # ASCII digits only ("²" is a digit to str.isdigit, not to int), and no more than a
        # version can have (int() refuses 4,300 digits, PostgreSQL's bigint 19).
        if not number or not number.isascii() or not number.isdigit() or len(number) > 18:
            raise PreconditionFailed(
                f"If-Match {header[:100]!r} names no ETag of {what}: send the ETag header of your last "
                f"read (e.g. {etag(1, prefix=prefix)}), or * to overwrite whatever is current"
            )
        versions.add(int(number))
    return IfMatch(frozenset(versions))


#: The OpenAPI entry of a write that takes `If-Match`.
PRECONDITION_RESPONSES: dict[int | str, dict[str, object]] = {
    412: {"description": "If-Match names no current version: stale, or not an ETag of this API"}
}
