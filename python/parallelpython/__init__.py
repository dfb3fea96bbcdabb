"""ParallelPython for Python programs: run functions in parallel on every core and on
every ppnode of the LAN, through the Swift engine (`pprun engine`).

    from parallelpython import Executor
    if __name__ == "__main__":
        with Executor() as ex:
            print(list(ex.map(pow, range(10), range(10))))

Arguments, values and exceptions are pickled; the engine carries them as opaque
bytes. See docs/PYTHON.md.
"""

from ._engine import EngineError, shutdown_engine as shutdown
from .executor import Executor, JobTimeout, RemoteError, WorkerDied

__all__ = ["Executor", "RemoteError", "JobTimeout", "WorkerDied", "EngineError", "shutdown"]
__version__ = "0.1.0"
