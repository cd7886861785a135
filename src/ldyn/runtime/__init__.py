"""The process a run lives in: which rank it is and the collectives the instruments need (`distributed.py`), files
that survive a kill (`files.py`), and glibc's allocator kept from returning freed pages (`allocator.py`)."""
