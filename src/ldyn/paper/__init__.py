"""The paper's reproduction over finished runs: suites of recipes (`suite.py`), the claims as verdict rules
(`stages.py`, `verdicts.py`, `claims*.py`), the win rate (`winrate.py`), cross-run figures (`figures.py`) and the
HTML report (`report.py`)."""
