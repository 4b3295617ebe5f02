"""PostgreSQL: a full-text (GIN) index over message text for the sidebar search (chat/sidebar.py,
whose FTS_SQL must use exactly this expression for the planner to use it). Other databases get
nothing: their search scans a bounded number of recent messages."""
from django.db import migrations

INDEX = "chat_message_content_fts"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON chat_message "
            "USING gin (to_tsvector('simple'::regconfig, left(content, 100000)))")


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0004_api_source_options"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
