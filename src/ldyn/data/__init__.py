"""Reading rows of any TRL dataset format (`formats.py`), rendering them as text (`templates.py`), tokenising
them (`tokenize.py`), probe sets (`probesets.py`), and the embedded HH-style data (`embedded.py`)."""
