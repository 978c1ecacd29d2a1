"""The live Label Studio tests run only when asked for (`-m label_studio`, as `make test-label-studio`
does): a plain `pytest tests` leaves them out (deselected, not skipped), as `make test` does with
`-m "not label_studio"`."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    if "label_studio" in (config.getoption("markexpr", "") or ""):
        return
    live = [item for item in items if item.get_closest_marker("label_studio")]
    if live:
        config.hook.pytest_deselected(items=live)
        items[:] = [item for item in items if not item.get_closest_marker("label_studio")]
