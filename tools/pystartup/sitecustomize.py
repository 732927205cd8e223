"""Python start-up hook of the recipe (path.sh puts this directory on PYTHONPATH).

ESPnet decorates about 200 functions with typeguard's @typechecked, which re-parses and recompiles
each one at import: measured here, `import espnet2.tasks.asr` takes 18 s with it and 8 s without,
and every decoding job, training launch and test subprocess pays it. The run-time type checks are a
debugging aid, so they are off in the recipe; MPQ_TYPECHECK=1 turns them back on. typeguard itself
is patched when something first imports it, not here.
"""
import importlib.abc
import importlib.util
import os
import sys


def _unchecked(target=None, **_options):
    """typeguard.typechecked without the instrumentation: @typechecked and @typechecked(...)."""
    return target if target is not None else (lambda f: f)


class _TypeguardOff(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "typeguard":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.typechecked = _unchecked

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("MPQ_TYPECHECK") != "1":
    sys.meta_path.insert(0, _TypeguardOff())
