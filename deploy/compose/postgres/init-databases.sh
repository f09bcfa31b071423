#!/usr/bin/env bash
# First start of a development PostgreSQL only (docker compose, k8s dev overlay): one role and one
# database per service, each database owned by its service's role and closed to the others.
# Without CRM_DB_PASSWORD the roles get no password (the dev cluster's server trusts its network).
set -euo pipefail
login="LOGIN"
if [[ -n "${CRM_DB_PASSWORD:-}" ]]; then
  login="LOGIN PASSWORD :'password'"
fi
for service in profile lifecycle complaints scoring; do
  psql --set ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set role="crm_${service}" --set password="${CRM_DB_PASSWORD:-}" <<SQL
CREATE ROLE :"role" ${login};
CREATE DATABASE :"role" OWNER :"role";
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
done
