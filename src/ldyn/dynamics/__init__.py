"""The instruments: probing (`probing.py`: log π of every response type, ‖A‖_F, the argmax response), the A·K·G
decomposition of one update (`akg.py`), and the explicit eNTK, its slow twin (`entk.py`). Library calls on a model;
any trainer reaches them through a callback. Nothing here knows about ldyn's trainer or run directories."""
