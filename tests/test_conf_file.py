"""conf/chloe.toml is the reference: it documents every option with its default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from chloed import config

CONF = Path(__file__).parent.parent / "conf" / "chloe.toml"


def test_conf_file_loads_to_the_defaults():
    """Loading the shipped file gives exactly the built-in defaults."""
    assert config.load(str(CONF)) == config.Config()


def test_conf_file_mentions_every_option():
    """Every option Chloe accepts appears in the file (set or commented)."""
    text = CONF.read_text()
    for option in config.OPTIONS:
        # (a table, [pusher] or [namespaces.NAME], is written as one)
        assert re.search(rf"^#? ?({option} = |\[{option}(\.\w+)?\]$)", text, re.M), option
    assert set(config.OPTIONS) == {f.name for f in dataclasses.fields(config.Config)}


def test_namespace_example_loads():
    """The commented [namespaces.chat] example, uncommented, is a good
    namespace that sets every option a namespace has."""
    text = CONF.read_text()
    start = text.index("# [namespaces.chat]")
    example = "\n".join(line[2:] for line in text[start:].splitlines() if line.startswith("# "))
    cfg = config.from_mapping(tomllib.loads(example))
    (namespace,) = cfg.namespaces
    given = {f.name for f in dataclasses.fields(namespace) if getattr(namespace, f.name) is not None}
    assert given == {f.name for f in dataclasses.fields(config.Namespace)}
