"""Profile schema: customers, consent, purchases, refunds, interactions, imports, PII audit
log, and the 360 projections of lifecycle, value and complaint events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 16:33:50.498280
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('customer_complaints',
    sa.Column('complaint_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('severity', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=30), nullable=False),
    sa.Column('category', sa.String(length=20), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('first_response_due', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolution_due', sa.DateTime(timezone=True), nullable=True),
    sa.Column('escalation_level', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('sla_breached', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('status_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('complaint_id', name=op.f('pk_customer_complaints'))
    )
    op.create_index(op.f('ix_customer_complaints_customer_id'), 'customer_complaints', ['customer_id'], unique=False)
    op.create_table('customer_stage',
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('stage', sa.String(length=20), nullable=False),
    sa.Column('since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=True),
    sa.Column('event_id', sa.UUID(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_customer_stage'))
    )
    op.create_index(op.f('ix_customer_stage_stage'), 'customer_stage', ['stage'], unique=False)
    op.create_table('customer_value',
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('tier', sa.String(length=20), nullable=True),
    sa.Column('loyalty_index', sa.Float(), nullable=True),
    sa.Column('loyalty_type', sa.String(length=20), nullable=True),
    sa.Column('loyalty_satisfaction_type', sa.String(length=20), nullable=True),
    sa.Column('p_alive', sa.Float(), nullable=True),
    sa.Column('clv', sa.Numeric(precision=18, scale=4), nullable=True),
    sa.Column('model_version', sa.String(length=100), nullable=True),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tier_changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('customer_id', name=op.f('pk_customer_value'))
    )
    op.create_index(op.f('ix_customer_value_tier'), 'customer_value', ['tier'], unique=False)
    op.create_table('customers',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('addresses', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('external_ref', sa.String(length=128), nullable=True),
    sa.Column('tags', postgresql.ARRAY(sa.String(length=64)), server_default='{}', nullable=False),
    sa.Column('custom_attributes', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('referred_by', sa.UUID(), nullable=True),
    sa.Column('source_channel', sa.String(length=32), nullable=True),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['referred_by'], ['customers.id'], name=op.f('fk_customers_referred_by_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customers'))
    )
    op.create_index('ix_customers_created_at_id', 'customers', ['created_at', 'id'], unique=False)
    op.create_index('ix_customers_lower_name', 'customers', [sa.literal_column('lower(name)')], unique=False)
    op.create_index('ix_customers_phone', 'customers', ['phone'], unique=False)
    op.create_index(op.f('ix_customers_referred_by'), 'customers', ['referred_by'], unique=False)
    op.create_index('uq_customers_email', 'customers', ['email'], unique=True, postgresql_where=sa.text('email IS NOT NULL'))
    op.create_index('uq_customers_external_ref', 'customers', ['external_ref'], unique=True, postgresql_where=sa.text('external_ref IS NOT NULL'))
    op.create_table('pii_access_log',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=True), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('accessed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pii_access_log'))
    )
    op.create_index(op.f('ix_pii_access_log_customer_id'), 'pii_access_log', ['customer_id'], unique=False)
    op.create_table('purchase_imports',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rows_read', sa.Integer(), server_default='0', nullable=False),
    sa.Column('orders_total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('orders_done', sa.Integer(), server_default='0', nullable=False),
    sa.Column('purchases_created', sa.Integer(), server_default='0', nullable=False),
    sa.Column('duplicates', sa.Integer(), server_default='0', nullable=False),
    sa.Column('customers_created', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rejected', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rejections', postgresql.JSONB(astext_type=sa.Text()), server_default='[]', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purchase_imports'))
    )
    op.create_table('consent_history',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=True), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('purpose', sa.String(length=40), nullable=False),
    sa.Column('previous', sa.String(length=20), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_consent_history_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_history'))
    )
    op.create_index(op.f('ix_consent_history_customer_id'), 'consent_history', ['customer_id'], unique=False)
    op.create_table('consents',
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('purpose', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_consents_customer_id_customers')),
    sa.PrimaryKeyConstraint('customer_id', 'purpose', name=op.f('pk_consents'))
    )
    op.create_table('interactions',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('direction', sa.String(length=10), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_by', sa.String(length=200), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_interactions_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_interactions'))
    )
    op.create_index('ix_interactions_customer_id_occurred_at', 'interactions', ['customer_id', 'occurred_at'], unique=False)
    op.create_table('purchases',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('order_id', sa.String(length=200), nullable=False),
    sa.Column('amount', sa.Numeric(precision=18, scale=4), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=True),
    sa.Column('refunded_total', sa.Numeric(precision=18, scale=4), server_default='0', nullable=False),
    sa.Column('origin', sa.String(length=20), server_default='api', nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_purchases_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purchases')),
    sa.UniqueConstraint('order_id', name=op.f('uq_purchases_order_id'))
    )
    op.create_index('ix_purchases_customer_id_occurred_at', 'purchases', ['customer_id', 'occurred_at'], unique=False)
    op.create_table('purchase_items',
    sa.Column('purchase_id', sa.UUID(), nullable=False),
    sa.Column('position', sa.SmallInteger(), nullable=False),
    sa.Column('sku', sa.String(length=100), nullable=False),
    sa.Column('category', sa.String(length=100), nullable=True),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_price', sa.Numeric(precision=18, scale=4), nullable=False),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_purchase_items_purchase_id_purchases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('purchase_id', 'position', name=op.f('pk_purchase_items'))
    )
    op.create_table('refunds',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('purchase_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.UUID(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=18, scale=4), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('refunded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('chargeback', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_refunds_purchase_id_purchases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds'))
    )
    op.create_index(op.f('ix_refunds_customer_id'), 'refunds', ['customer_id'], unique=False)
    op.create_index(op.f('ix_refunds_purchase_id'), 'refunds', ['purchase_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_refunds_purchase_id'), table_name='refunds')
    op.drop_index(op.f('ix_refunds_customer_id'), table_name='refunds')
    op.drop_table('refunds')
    op.drop_table('purchase_items')
    op.drop_index('ix_purchases_customer_id_occurred_at', table_name='purchases')
    op.drop_table('purchases')
    op.drop_index('ix_interactions_customer_id_occurred_at', table_name='interactions')
    op.drop_table('interactions')
    op.drop_table('consents')
    op.drop_index(op.f('ix_consent_history_customer_id'), table_name='consent_history')
    op.drop_table('consent_history')
    op.drop_table('purchase_imports')
    op.drop_index(op.f('ix_pii_access_log_customer_id'), table_name='pii_access_log')
    op.drop_table('pii_access_log')
    op.drop_index('uq_customers_external_ref', table_name='customers', postgresql_where=sa.text('external_ref IS NOT NULL'))
    op.drop_index('uq_customers_email', table_name='customers', postgresql_where=sa.text('email IS NOT NULL'))
    op.drop_index(op.f('ix_customers_referred_by'), table_name='customers')
    op.drop_index('ix_customers_phone', table_name='customers')
    op.drop_index('ix_customers_lower_name', table_name='customers')
    op.drop_index('ix_customers_created_at_id', table_name='customers')
    op.drop_table('customers')
    op.drop_index(op.f('ix_customer_value_tier'), table_name='customer_value')
    op.drop_table('customer_value')
    op.drop_index(op.f('ix_customer_stage_stage'), table_name='customer_stage')
    op.drop_table('customer_stage')
    op.drop_index(op.f('ix_customer_complaints_customer_id'), table_name='customer_complaints')
    op.drop_table('customer_complaints')
