#!/usr/bin/env python
"""Regenerate the focal-loss study: train every grid row through its notebook, then build reports/report.html.

Run `python run_all.py --help` for the options; `python run_all.py --dry-run` lists the
runs and which of them are already cached.
"""

import sys

from yolonb.runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
