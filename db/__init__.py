"""The task store: schema, engines, migrations and every queue operation."""
