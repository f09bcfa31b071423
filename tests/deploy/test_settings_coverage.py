"""Every environment variable the services read (found by introspecting their pydantic-settings
classes, so new settings are caught) is set for every container of our image in
docker-compose.yml and in each Kubernetes overlay, unless listed below as deliberately left at
its default, with the reason. And nothing is set that no settings class reads (a typo)."""

from __future__ import annotations

import pytest

from deploy.inventory import Container, env_names, settings_class
from shared.platform import SERVICES
from shared.settings import ServiceSettings

EVERYWHERE = frozenset({"compose", "dev", "prod"})
DEVELOPMENT = frozenset({"compose", "dev"})

TRANSACTION_SIZE = (
    "rows per transaction, sized by the service against lock time (see its comment in "
    "config.py); a deployment has no reason to differ"
)

# Variables a deployment may leave unset: where (targets), and why the default is right there.
LEFT_AT_DEFAULT: dict[str, tuple[frozenset[str], str]] = {
    "SERVICE_NAME": (EVERYWHERE, "not configuration: each settings class fixes its service"),
    "DATABASE_URL": (
        EVERYWHERE,
        "only the base ServiceSettings reads it, used by `crm topics` and `crm dlq`, which "
        "never open a database; each service reads <SERVICE>_DATABASE_URL",
    ),
    "KAFKA_SASL_MECHANISM": (DEVELOPMENT, "the development broker's listener is PLAINTEXT"),
    "KAFKA_SASL_USERNAME": (DEVELOPMENT, "the development broker's listener is PLAINTEXT"),
    "KAFKA_SASL_PASSWORD": (DEVELOPMENT, "the development broker's listener is PLAINTEXT"),
    "KAFKA_SSL_CAFILE": (DEVELOPMENT, "the development broker's listener is PLAINTEXT"),
    "JWT_JWKS_URL": (DEVELOPMENT, "development signs tokens with JWT_SECRET (`crm token`)"),
    "JWT_ISSUER": (DEVELOPMENT, "development tokens (`crm token`) carry no issuer"),
    "JWT_AUDIENCE": (DEVELOPMENT, "development tokens (`crm token`) carry no audience"),
    "PROFILE_DEFAULT_PHONE_REGION": (
        EVERYWHERE,
        "unset, numbers must carry their +country code: no region is a safe guess; a "
        "deployment that wants one sets it (deploy/README.md)",
    ),
    "PROFILE_CUSTOM_ATTRIBUTES_MAX_BYTES": (
        EVERYWHERE,
        "an abuse guard whose default is the domain's own limit (MAX_CUSTOM_ATTRIBUTES_BYTES)",
    ),
    "LIFECYCLE_SWEEP_CHUNK_SIZE": (EVERYWHERE, TRANSACTION_SIZE),
    "SCORING_RECOMPUTE_CHUNK_SIZE": (EVERYWHERE, TRANSACTION_SIZE),
    "SCORING_RECOMPUTE_WRITERS": (
        EVERYWHERE,
        "recompute write parallelism (connections per run); the default suits the pool size",
    ),
    "SCORING_RECOMPUTE_POLL_SECONDS": (
        EVERYWHERE,
        "how soon a requested recompute starts: an internal latency, not an operating choice",
    ),
    "LIFECYCLE_EVALUATION_POLL_SECONDS": (
        EVERYWHERE,
        "how soon an evaluation asked for with `Prefer: respond-async` starts: an internal "
        "latency, not an operating choice",
    ),
}
# Read by libraries, not by our settings classes.
LIBRARY_VARIABLES = {"PGSSLROOTCERT": "asyncpg: the CA for ?ssl=verify-full database URLs"}


def read_by(container: Container) -> set[str]:
    """What the process in this container reads from its environment."""
    if container.service is not None:
        return env_names(settings_class(container.service))
    if container.role == "tools":  # `docker compose run crm ...`: any command, any service
        return set().union(*(env_names(settings_class(s)) for s in SERVICES))
    return env_names(ServiceSettings)  # crm topics / crm dlq


def required(container: Container) -> set[str]:
    return {
        name
        for name in read_by(container)
        if container.target not in LEFT_AT_DEFAULT.get(name, (frozenset(), ""))[0]
    }


def test_the_containers_of_every_target_are_found(containers: list[Container]) -> None:
    for target in ("compose", "dev", "prod"):
        roles = {(c.service, c.role) for c in containers if c.target == target}
        for service in SERVICES:
            for role in ("api", "worker", "migration"):
                assert (service, role) in roles, f"{target}: no {role} container for {service}"


def test_every_setting_the_services_read_is_set(containers: list[Container]) -> None:
    missing = [
        f"{c.target} {c.workload}: {', '.join(sorted(required(c) - set(c.env)))}"
        for c in containers
        if required(c) - set(c.env)
    ]
    assert not missing, "set these (or list them in LEFT_AT_DEFAULT with a reason):\n" + "\n".join(
        missing
    )


def test_nothing_is_set_that_no_settings_class_reads(containers: list[Container]) -> None:
    known = env_names(ServiceSettings).union(*(env_names(settings_class(s)) for s in SERVICES))
    unknown = [
        f"{c.target} {c.workload}: {name}"
        for c in containers
        for name in c.env
        if name not in known and name not in LIBRARY_VARIABLES
    ]
    assert not unknown, "typo, or a setting that was removed:\n" + "\n".join(unknown)


def test_the_allow_list_names_only_settings_that_exist() -> None:
    known = env_names(ServiceSettings).union(*(env_names(settings_class(s)) for s in SERVICES))
    assert set(LEFT_AT_DEFAULT) <= known, set(LEFT_AT_DEFAULT) - known


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_gets_only_its_own_database_and_kafka_credentials(
    containers: list[Container], service: str
) -> None:
    others = [s for s in SERVICES if s != service]
    for c in (c for c in containers if c.service == service):
        for other in others:
            assert f"{other.upper()}_DATABASE_URL" not in c.env, c.workload
        for secret, _ in c.secret_refs.values():
            assert not any(secret.startswith(f"crm-{other}") for other in others), (
                c.workload,
                secret,
            )
        if c.target == "prod":
            assert c.secret_refs[f"{service.upper()}_DATABASE_URL"] == (
                f"crm-{service}-database",
                "url",
            )
            assert c.env["KAFKA_SASL_USERNAME"] == f"crm-{service}"
            assert c.secret_refs["KAFKA_SASL_PASSWORD"] == (f"crm-{service}", "password")


def test_production_settings_pass_the_fail_fast_checks(containers: list[Container]) -> None:
    """The prod overlay's values, with stand-ins for the Secrets, make valid production settings."""
    stand_ins = {"JWT_SECRET": None, "KAFKA_SASL_PASSWORD": "from-the-strimzi-secret"}
    for c in (c for c in containers if c.target == "prod" and c.service is not None):
        values: dict[str, str] = {}
        for name, value in c.env.items():
            if value is not None:
                values[name] = value
            elif name.endswith("_DATABASE_URL"):
                values[name] = (
                    f"postgresql+asyncpg://crm_{c.service}:pw@db:5432/crm_{c.service}?ssl=verify-full"
                )
            elif stand_ins.get(name):
                values[name] = str(stand_ins[name])
        settings = settings_class(c.service).model_validate(values)
        assert settings.crm_env.value == "production"
        assert settings.jwt_jwks_url and settings.jwt_jwks_url.startswith("https://")
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert "*" not in settings.cors_origins


def test_the_development_settings_are_valid(containers: list[Container]) -> None:
    for c in (c for c in containers if c.target in DEVELOPMENT and c.service is not None):
        values = {k: v for k, v in c.env.items() if v is not None}
        settings = settings_class(c.service).model_validate(values)
        assert settings.database_url.endswith(f"/crm_{c.service}"), c.workload


def test_one_currency_per_deployment(containers: list[Container]) -> None:
    """Profile refuses purchases in another currency than BASE_CURRENCY and scoring values money
    in it: every container of a deployment must see the same one."""
    for target in ("compose", "dev", "prod"):
        readers = [c for c in containers if c.target == target and "BASE_CURRENCY" in read_by(c)]
        assert {c.service for c in readers} >= {"profile", "scoring"}
        assert len({c.env["BASE_CURRENCY"] for c in readers}) == 1, target
