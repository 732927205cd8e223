"""Python start-up hook of the recipe (path.sh puts this directory on PYTHONPATH).

1. ESPnet decorates about 200 functions with typeguard's @typechecked, which re-parses and recompiles
each one at import: measured here, `import espnet2.tasks.asr` takes 18 s with it and 8 s without,
and every decoding job, training launch and test subprocess pays it. The run-time type checks are a
debugging aid, so they are off in the recipe; MPQ_TYPECHECK=1 turns them back on. typeguard itself
is patched when something first imports it, not here.

2. ESPnet's attention module prints "Failed to import Flash Attention, using ESPnet default" to
standard output at import when the optional flash_attn package is missing (a GPU-only package): every
entry point printed it to the user. The module's import runs with that output sent to the logging
module instead (logger "espnet", level DEBUG), where a job that wants it can find it.

3. ESPnet imports the transformers package at import whenever it is installed, for a few optional
classes, each import guarded: a third of every process's start here. With MPQ_HIDE_TRANSFORMERS=1
(run.sh sets it when no config of the run needs the package: mpq_plugins/espnet/needs_transformers.py)
the package is not found, and ESPnet marks those classes unavailable.
"""
import contextlib
import importlib.abc
import importlib.util
import io
import logging
import os
import sys

QUIET_AT_IMPORT = ("espnet.nets.pytorch_backend.transformer.attention",)


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


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the modules of QUIET_AT_IMPORT with their standard output sent to logging (debug)."""

    def find_spec(self, name, path=None, target=None):
        if name not in QUIET_AT_IMPORT:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                load(module)
            for line in out.getvalue().splitlines():
                logging.getLogger("espnet").debug(line)

        spec.loader.exec_module = exec_module
        return spec


class _HideTransformers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ModuleNotFoundError(f"No module named '{name}' here: MPQ_HIDE_TRANSFORMERS=1 hides it (run.sh "
                                      "found nothing in the run's configs that needs it; 0 makes it visible)",
                                      name=name)
        return None


if os.environ.get("MPQ_HIDE_TRANSFORMERS") == "1":
    sys.meta_path.insert(0, _HideTransformers())
if os.environ.get("MPQ_TYPECHECK") != "1":
    sys.meta_path.insert(0, _TypeguardOff())
sys.meta_path.insert(0, _QuietImport())
