"""Kafka topic names (contract). The key of every message is the customer id."""

from typing import Final

CUSTOMERS: Final = "crm.customers.v1"
PURCHASES: Final = "crm.purchases.v1"
COMPLAINTS: Final = "crm.complaints.v1"
LIFECYCLE: Final = "crm.lifecycle.v1"
VALUE: Final = "crm.value.v1"
INGEST_ORDERS: Final = "crm.ingest.orders.v1"
DLQ: Final = "crm.dlq.v1"

ALL: Final = (CUSTOMERS, PURCHASES, COMPLAINTS, LIFECYCLE, VALUE, INGEST_ORDERS, DLQ)
