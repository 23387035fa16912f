"""``python -m nsl.report <run or multirun folder>``: the same as ``nsl-report``."""

from nsl.report.compare import main

if __name__ == "__main__":  # not when a test collector imports the module
    raise SystemExit(main())
