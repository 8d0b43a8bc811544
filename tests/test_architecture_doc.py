"""docs/architecture.md cites code by file path (`cluster/loop/trainer.py`) and by dotted name
(`cluster.loop.trainer.Trainer.step`): every one must exist, so the map cannot drift from the code."""
from __future__ import annotations

import importlib
import re

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGES = ("cluster", "rollout", "learner", "reward", "protocol", "tasks")


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_cited_file_exists():
    paths = set(re.findall(r"`((?:%s)/[\w/]*\.py)`" % "|".join(PACKAGES), DOC))
    assert paths, "the page cites no files"
    assert [p for p in paths if not (ROOT / p).is_file()] == []


def test_every_cited_name_exists():
    names = set(re.findall(r"`((?:%s)\.[\w.]+)`" % "|".join(PACKAGES), DOC))
    assert len(names) > 20
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(name)
    assert missing == []


def test_the_folder_map_names_every_wing_of_cluster():
    """Every sub-package of cluster/ is named in the map (as `cluster/<wing>/`), and every folder the map
    names exists."""
    wings = {p.name for p in (ROOT / "cluster").iterdir() if (p / "__init__.py").is_file()}
    assert len(wings) >= 5
    cited = set(re.findall(r"`cluster/(\w+)/`", DOC))
    assert cited == wings
