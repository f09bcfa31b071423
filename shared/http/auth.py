"""OAuth2 bearer JWT with a space-separated `scope` claim. Dev: shared secret; prod: JWKS URL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, ServiceUnavailable, Unauthorized
from shared.settings import ServiceSettings

SCOPES = (
    "customers:read",
    "customers:write",
    "pii:read",
    "complaints:read",
    "complaints:write",
    "lifecycle:read",
    "lifecycle:admin",
    "scores:read",
    "scores:admin",
)

bearer = HTTPBearer(auto_error=False, description="JWT with a `scope` claim")


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes


class TokenVerifier:
    """Verifies bearer tokens. A verified token is remembered until it expires (bounded LRU
    cache, keyed by the raw token), so a client sending the same token on every request pays
    the signature check once."""

    CACHE_SIZE = 4096

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._jwks = (
            jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True)
            if settings.jwt_jwks_url
            else None
        )
        self._verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    @property
    def fetches_keys(self) -> bool:
        return self._jwks is not None

    def cached(self, token: str) -> Principal | None:
        hit = self._verified.get(token)
        if hit is None:
            return None
        expires, principal = hit
        if time.time() >= expires:
            self._verified.pop(token, None)
            return None
        with contextlib.suppress(KeyError):  # evicted meanwhile by a JWKS verification thread
            self._verified.move_to_end(token)
        return principal

    def verify(self, token: str) -> Principal:
        principal = self.cached(token)
        if principal is None:
            principal, expires = self._verify(token)
            self._verified[token] = (expires, principal)
            if len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)  # the least recently used
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        s = self.settings
        try:
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
                algorithms = ["RS256", "ES256", "PS256"]
            else:
                key, algorithms = s.jwt_secret, ["HS256"]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                options={"require": ["exp", "sub"], "verify_aud": s.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired; get a new one") from exc
        except jwt.PyJWKClientConnectionError as exc:
            # Our outage, not a bad token: a 401 would make clients throw valid tokens away.
            raise ServiceUnavailable(
                "The identity provider's keys (JWKS) cannot be fetched; retry shortly"
            ) from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Invalid token: {exc}") from exc
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise Unauthorized("Invalid token: `scope` must be a space-separated string")
        principal = Principal(subject=str(claims["sub"]), scopes=frozenset(scope.split()))
        return principal, float(claims["exp"])


def issue_dev_token(
    settings: ServiceSettings,
    *,
    scopes: list[str],
    subject: str = "dev-user",
    ttl_seconds: int = 12 * 3600,
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


async def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Missing bearer token: send `Authorization: Bearer <jwt>`")
    return await verify_token(request.app.state.token_verifier, credentials.credentials)


async def verify_token(verifier: TokenVerifier, token: str) -> Principal:
    """The token's principal; raises Unauthorized. Known tokens are answered from the cache."""
    known = verifier.cached(token)
    if known is not None:
        return known
    if verifier.fetches_keys:  # the JWKS client may fetch keys over the network: not on the loop
        return await asyncio.to_thread(verifier.verify, token)
    return verifier.verify(token)


def require(*scopes: str):  # type: ignore[no-untyped-def]
    """Dependency: the caller's token must carry every scope listed."""
    unknown = set(scopes) - set(SCOPES)
    assert not unknown, f"unknown scopes {unknown}"

    async def check(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        missing = [s for s in scopes if not principal.has(s)]
        if missing:
            raise Forbidden(
                f"The token lacks the scope(s): {' '.join(missing)}", required=list(scopes)
            )
        return principal

    return check


CurrentPrincipal = Annotated[Principal, Depends(authenticated)]
