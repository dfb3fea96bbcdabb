"""`python -m parallelpython PROGRAM.py ARGS...`: runs an unchanged Parallel Python
(pp / ppft) program on the engine. For that program only, `import pp` and `import
ppft` resolve to `parallelpython.pp`; everything else is as `python PROGRAM.py`."""

import os
import runpy
import sys


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m parallelpython PROGRAM.py [ARGS...]\n\n"
              "Runs a Parallel Python (pp / ppft) program unchanged on the ParallelPython engine:\n"
              "its `import pp` and `import ppft` get parallelpython.pp.", file=sys.stderr)
        return 64 if len(sys.argv) < 2 else 0
    program = sys.argv[1]
    if not os.path.isfile(program):
        print("python -m parallelpython: %s: no such file; give the path of a Python program" % program, file=sys.stderr)
        return 64
    from . import pp, _ppcommon
    sys.modules["pp"] = pp
    sys.modules["ppft"] = pp
    sys.modules["ppft.common"] = _ppcommon
    pp.common = _ppcommon
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(program))
    runpy.run_path(program, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
