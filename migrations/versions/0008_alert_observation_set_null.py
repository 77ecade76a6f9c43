"""ml_alerts.observation_id: ON DELETE SET NULL instead of CASCADE.

Deleting observations must never delete the alerts raised on them: not our
retention (which keeps observations of open alerts anyway), and not the
original application's own cleanup, which deletes every observation older
than 90 days from the table it shares with us.  With CASCADE that cleanup
silently deleted our alerts, open ones included; with SET NULL the alert
stays, with its value, entity, score and time, and loses only the link.

PostgreSQL: the new constraint is added NOT VALID and then validated, so the
ACCESS EXCLUSIVE part is instant and the check of existing rows does not block
the hotel app's writes to ml_metrics.  SQLite (which enforces no foreign keys
here) rebuilds the table in batch mode.

Revision ID: 0008_alert_observation_set_null
Revises: 0007_notification_outbox
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_alert_observation_set_null"
down_revision = "0007_notification_outbox"
branch_labels = None
depends_on = None

FK_NAME = "fk_ml_alerts_observation_id_ml_metrics"


def _existing_fk_name() -> str:
    """The name of the observation_id foreign key as this database has it."""
    for fk in sa.inspect(op.get_bind()).get_foreign_keys("ml_alerts"):
        if fk["constrained_columns"] == ["observation_id"] and fk["referred_table"] == "ml_metrics":
            return fk["name"] or FK_NAME
    return FK_NAME


def _switch(ondelete: str) -> None:
    name = _existing_fk_name()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'ALTER TABLE ml_alerts DROP CONSTRAINT IF EXISTS "{name}"')
        op.execute(f'ALTER TABLE ml_alerts ADD CONSTRAINT "{FK_NAME}" FOREIGN KEY (observation_id) '
                   f"REFERENCES ml_metrics (id) ON DELETE {ondelete} NOT VALID")
        op.execute(f'ALTER TABLE ml_alerts VALIDATE CONSTRAINT "{FK_NAME}"')
        return
    with op.batch_alter_table("ml_alerts") as batch:
        batch.drop_constraint(name, type_="foreignkey")
        batch.create_foreign_key(FK_NAME, "ml_metrics", ["observation_id"], ["id"], ondelete=ondelete)


def upgrade():
    _switch("SET NULL")


def downgrade():
    _switch("CASCADE")
