# The function every job of the Python package calls on a worker (local or on a node).
#
# The package sends this file's text as a function bundle, after two lines that set
# MAIN_SOURCE and MAIN_FILE (the caller's main script, so that functions and classes
# defined there resolve). The engine never looks inside a job: its one argument is
# opaque bytes (the engine, the wire and the pool carry them as they are): the
# function's pickle (the same for every job of a map, unpickled once per worker) and the
# pickle of (args, kwargs). It returns bytes: b"v" + the value's pickle, or b"e" + the
# pickle of {"e": the exception's pickle or None, "type", "message", "tb"}.
# so exceptions come back with their own type, and tracebacks come back as text.

import pickle as _pickle
import sys as _sys
import traceback as _traceback
import types as _types

_main_module = None


class _ShippedModules(object):
    """Imports the caller's own modules and packages from the sources that came with
    the bundle (LOCAL_MODULES: name -> (filename, source, is_package)), before anything
    on this machine's path: on a node, a helper module next to the caller's script is
    not on disk."""

    def find_spec(self, name, path=None, target=None):
        entry = LOCAL_MODULES.get(name)  # noqa: F821 (set above)
        if entry is None:
            return None
        import importlib.util
        return importlib.util.spec_from_loader(name, self, origin=entry[0], is_package=bool(entry[2]))

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        filename, source = LOCAL_MODULES[module.__name__][:2]  # noqa: F821
        module.__file__ = filename
        exec(compile(source, filename, "exec"), module.__dict__)


if LOCAL_MODULES:  # noqa: F821
    _sys.meta_path.insert(0, _ShippedModules())

# The caller's import path goes after the worker's own, so the caller's modules import
# and the standard library stays the worker's.
for _entry in CLIENT_PATH:  # noqa: F821 (set above)
    if _entry not in _sys.path and __import__("os").path.isdir(_entry):
        _sys.path.append(_entry)


def _load_main():
    """The caller's main script as the module __pp_main__ (its `if __name__ ==
    "__main__":` block does not run), made once per worker and bundle."""
    global _main_module
    # Code of the caller's that runs here must not start an engine of its own (a
    # script without an `if __name__ == "__main__":` guard would, in every worker).
    __import__("os").environ["PP_IN_WORKER"] = "1"
    if _main_module is None and MAIN_SOURCE is not None:  # noqa: F821 (set above)
        module = _types.ModuleType("__pp_main__")
        module.__file__ = MAIN_FILE  # noqa: F821
        _sys.modules["__pp_main__"] = module
        exec(compile(MAIN_SOURCE, MAIN_FILE, "exec"), module.__dict__)  # noqa: F821
        # Its functions and classes are the caller's __main__ ones: values made from
        # them pickle as __main__.NAME and unpickle in the caller as its own.
        for value in list(module.__dict__.values()):
            if getattr(value, "__module__", None) == "__pp_main__":
                try:
                    value.__module__ = "__main__"
                except (AttributeError, TypeError):
                    pass
        _main_module = module
    return _main_module


def _dumps(obj):
    try:
        return _pickle.dumps(obj, protocol=5)
    except Exception:
        for name in ("cloudpickle", "dill"):
            try:
                module = __import__(name)
            except ImportError:
                continue
            return module.dumps(obj)
        raise


def _error(exc, tb):
    """b"e" and the pickle of {"e": the exception's pickle or None, "type", "message", "tb"}."""
    try:
        data = _dumps(exc)
    except Exception:
        data = None
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else kind.__module__ + "." + kind.__qualname__
    try:
        message = str(exc)
    except Exception:
        message = "<message unavailable>"
    return b"e" + _pickle.dumps({"e": data, "type": name, "message": message, "tb": tb}, protocol=5)


_functions = {}


def __pp_call__(blob, *parts):
    """Runs one job. `blob` (opaque bytes, as the engine got them): u32 length of the
    function's pickle, the function's pickle (unpickled once per worker and kept), and
    the pickle of (args, kwargs). A job in parts gets its large pickles as `parts`
    (each loaded once per worker): a length of 0xFFFFFFFF says the function's pickle
    is parts[0], and the pickle is of (args, kwargs, refs), each ref (index or keyword,
    part number) naming an argument whose pickle is that part. Returns b"v" + the
    value's pickle, or b"e" + the error's (see _error)."""
    saved = _sys.modules.get("__main__")
    try:
        main = _load_main()
    except BaseException as exc:
        return _error(exc, _traceback.format_exc())
    if main is not None:
        _sys.modules["__main__"] = main
    try:
        try:
            n = int.from_bytes(blob[:4], "big")
            if n == 0xFFFFFFFF:
                key, n = parts[0], 0
            else:
                key = blob[4:4 + n]
            fn = _functions.get(key)
            if fn is None:
                fn = _pickle.loads(key)
                if len(_functions) >= 256:
                    _functions.clear()
                _functions[key] = fn
            call = _pickle.loads(blob[4 + n:])
            args, kwargs = call[0], call[1]
            if len(call) == 3:
                # Large arguments: a fresh copy for each job, as multiprocessing gives.
                args = list(args)
                for where, index in call[2]:
                    if where.__class__ is int:
                        args[where] = _pickle.loads(parts[index])
                    else:
                        kwargs[where] = _pickle.loads(parts[index])
        except BaseException as exc:
            return _error(exc, _traceback.format_exc())
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            tb = _traceback.format_exc()
            return _error(exc, tb)
        try:
            return b"v" + _dumps(value)
        except BaseException as exc:
            return _error(exc, _traceback.format_exc())
    finally:
        if main is not None:
            _sys.modules["__main__"] = saved
