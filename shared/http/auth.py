"""OAuth2 bearer JWT with a space-separated `scope` claim. Dev: shared secret; prod: JWKS URL."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, Unauthorized
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

_bearer = HTTPBearer(auto_error=False, description="JWT with a `scope` claim")


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes


class TokenVerifier:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._jwks = (
            jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True)
            if settings.jwt_jwks_url
            else None
        )

    def verify(self, token: str) -> Principal:
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
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Invalid token: {exc}") from exc
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise Unauthorized("Invalid token: `scope` must be a space-separated string")
        return Principal(subject=str(claims["sub"]), scopes=frozenset(scope.split()))


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


def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Missing bearer token: send `Authorization: Bearer <jwt>`")
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier.verify(credentials.credentials)


def require(*scopes: str):  # type: ignore[no-untyped-def]
    """Dependency: the caller's token must carry every scope listed."""
    unknown = set(scopes) - set(SCOPES)
    assert not unknown, f"unknown scopes {unknown}"

    def check(principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        missing = [s for s in scopes if not principal.has(s)]
        if missing:
            raise Forbidden(
                f"The token lacks the scope(s): {' '.join(missing)}", required=list(scopes)
            )
        return principal

    return check


CurrentPrincipal = Annotated[Principal, Depends(authenticated)]
