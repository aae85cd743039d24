"""``alembic revision`` with tingji's own template (``migrations/script.py.mako``) makes a
module that imports and chains onto the current head."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_revision_from_the_template(tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", scripts,
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = Config()
    config.set_main_option("script_location", str(scripts))
    command.revision(config, message="probe column", rev_id="9999")
    [made] = list((scripts / "versions").glob("9999_*.py"))
    spec = importlib.util.spec_from_file_location("probe_revision", made)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    heads = sorted(p.name[:4] for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert module.revision == "9999" and module.down_revision == heads[-1]
    assert module.__doc__.startswith("probe column")
    assert callable(module.upgrade) and callable(module.downgrade)
