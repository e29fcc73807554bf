"""Strip what nbconvert adds on execution (timestamps, interpreter details) so diffs stay readable.

Widget outputs (tqdm's progress bars) go too: their state lives in the notebook metadata that is
stripped here, so a viewer would show only their first frame, a bar stuck at 0 %.

Run by ``make notebooks`` after executing each lesson; ``tests/test_notebooks.py`` checks the result.
"""

from __future__ import annotations

import sys

import nbformat

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
CELL_KEYS_TO_DROP = ("execution", "ExecuteTime", "collapsed", "scrolled")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def clean(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for cell in notebook.cells:
        for key in CELL_KEYS_TO_DROP:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if WIDGET_VIEW not in output.get("data", {})]
    nbformat.write(notebook, path)


if __name__ == "__main__":
    for notebook_path in sys.argv[1:]:
        clean(notebook_path)
        print(f"cleaned {notebook_path}")
