#!/usr/bin/env bash
# One-shot topic creation for docker compose (runs in the Apache Kafka image): creates the
# contract's topics where missing and applies the configured retention on every run.
# Partitions are only set at creation: adding partitions later moves customers to other
# partitions, which breaks per-customer ordering (see deploy/README.md, "Scaling").
set -euo pipefail
bootstrap="${KAFKA_BOOTSTRAP_SERVERS:?KAFKA_BOOTSTRAP_SERVERS must be set}"
bin="${KAFKA_BIN_DIR:-/opt/kafka/bin}"
replication="${CRM_TOPIC_REPLICATION_FACTOR:-1}"
partitions="${CRM_TOPIC_PARTITIONS:-6}"
# Domain topics keep their whole history by default: `crm replay <service>` rebuilds from it.
retention="${CRM_TOPIC_RETENTION_MS:--1}"

topic() {
  local name=$1 count=$2 keep=$3
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$name" --partitions "$count" --replication-factor "$replication" \
    --config "retention.ms=$keep"
  "$bin/kafka-configs.sh" --bootstrap-server "$bootstrap" --alter \
    --entity-type topics --entity-name "$name" --add-config "retention.ms=$keep"
}

for name in crm.customers.v1 crm.purchases.v1 crm.complaints.v1 crm.lifecycle.v1 crm.value.v1; do
  topic "$name" "$partitions" "$retention"
done
topic crm.ingest.orders.v1 "${CRM_INGEST_PARTITIONS:-$partitions}" "${CRM_INGEST_RETENTION_MS:-604800000}"
topic crm.dlq.v1 "${CRM_DLQ_PARTITIONS:-1}" "${CRM_DLQ_RETENTION_MS:-2592000000}"
echo "topics ready on $bootstrap"
