"""Strip what nbconvert adds on execution (timestamps, interpreter details) so diffs stay readable.

Run by ``make notebooks`` after executing each lesson; ``tests/test_notebooks.py`` checks the result.
"""

from __future__ import annotations

import sys

import nbformat

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
CELL_KEYS_TO_DROP = ("execution", "ExecuteTime", "collapsed", "scrolled")


def clean(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for cell in notebook.cells:
        for key in CELL_KEYS_TO_DROP:
            cell.metadata.pop(key, None)
    nbformat.write(notebook, path)


if __name__ == "__main__":
    for notebook_path in sys.argv[1:]:
        clean(notebook_path)
        print(f"cleaned {notebook_path}")
