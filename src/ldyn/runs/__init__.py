"""The run directory and everything that reads it: its files (`directory.py`: names, rows, `load_run`), the figures
of one run (`figures.py`) and across runs (`compare.py`) with what they share (`style.py`), the long table
(`export.py`), and the trackers the rows also go to (`trackers.py`)."""
