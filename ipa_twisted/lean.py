"""Import a package's submodules without running its ``__init__``; drop
the source text attrs keeps for the methods it generates.

Klein's and Werkzeug's ``__init__`` modules import everything either
offers (Klein: forms, sessions, Plating; Werkzeug: the development
server, the test client, request/response wrappers), about 1.2 MiB of an
idle agent's memory that its router never uses.  :func:`submodules_only`
puts such a package in ``sys.modules`` with its ``__init__`` not yet
run: ``import klein._app`` then loads only what that module imports.
The first time anything asks the package itself for a name it does not
hold yet (``from klein import Klein``, ``werkzeug.__version__``), its
``__init__`` runs in the same module object, so every user of the package
still sees all of it (a name that is one of its submodules imports just
that submodule, as ``from .. import http`` in Werkzeug's modules would).
Only for packages whose ``__init__`` binds no name of a submodule to
something else (Klein's and Werkzeug's re-export classes and functions
under other names).  :func:`on_first_use` does the same for a module:
its code runs when it is first asked for a name.
"""

from __future__ import annotations

import importlib.util
import linecache
import sys
import threading
from types import ModuleType
from typing import Any


def submodules_only(*names: str) -> None:
    """Make each package in ``names`` importable piecemeal (see the
    module's docstring); a package already imported, or not installed,
    is left alone."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if (spec is None or spec.loader is None
                or spec.submodule_search_locations is None):
            continue
        module = importlib.util.module_from_spec(spec)
        setattr(module, "__getattr__", _run_init(module))
        sys.modules[name] = module


def on_first_use(*names: str) -> None:
    """Each module in ``names`` (a module, not a package) put in
    ``sys.modules`` with its code not yet run: ``import name`` binds it,
    and its code runs, in the same module object, the first time it is
    asked for a name it does not hold yet.  For a module imported at the
    top of code that uses it only on a rare path (twistd imports ``pdb``
    for ``--debug``: five modules).  One already imported, not
    installed, or a package is left alone."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if (spec is None or spec.loader is None
                or spec.submodule_search_locations is not None):
            continue
        module = importlib.util.module_from_spec(spec)
        setattr(module, "__getattr__", _run_init(module, submodules=False))
        sys.modules[name] = module


def _run_init(module: ModuleType, submodules: bool = True) -> Any:
    lock = threading.RLock()

    def __getattr__(attr: str) -> Any:
        if submodules and not attr.startswith("__") and attr.isidentifier():
            # a submodule (``from .. import http`` in one of its modules):
            # imported by itself, the package stays as it is
            submodule = f"{module.__name__}.{attr}"
            try:
                found = importlib.util.find_spec(submodule) is not None
            except (ImportError, ValueError):
                found = False
            if found:
                return importlib.import_module(submodule)
        # the package's own namespace is asked for: complete it (once: the
        # lock keeps two threads from running it twice; another thread
        # asking while it runs may not find a name yet, as in a module
        # half imported; the agent asks from one thread)
        with lock:
            if vars(module).get("__getattr__") is __getattr__:
                del vars(module)["__getattr__"]
                before = set(vars(module))
                spec = module.__spec__
                assert spec is not None and spec.loader is not None
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    # as a failed import: the same error the next time
                    # too, not a package half made
                    for name in set(vars(module)) - before:
                        if not isinstance(vars(module)[name], ModuleType):
                            del vars(module)[name]
                    setattr(module, "__getattr__", __getattr__)
                    raise
        return getattr(module, attr)

    return __getattr__


#: how attrs names the source of the methods it generates, in linecache
ATTRS_SOURCE = "<attrs generated"


def drop_generated_sources() -> int:
    """Forget the source text attrs registers in :mod:`linecache` for
    every class it makes (for a debugger to show; ~3 KiB a class, ~0.2 MiB
    for an idle agent's classes and its libraries').  Tracebacks still
    name the generated methods, without their lines.  How many entries
    went."""
    names = [name for name in list(linecache.cache)
             if isinstance(name, str) and name.startswith(ATTRS_SOURCE)]
    for name in names:
        linecache.cache.pop(name, None)
    return len(names)
