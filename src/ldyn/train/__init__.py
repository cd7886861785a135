"""Training: ldyn's own trainer (`trainer.py`), the callbacks that connect it to the run directory and the
instruments (`callbacks.py`), on-policy sampling as a data transform (`sampling.py`), and `run` / `resume` /
`decompose_step`, which put them together for a config (`experiment.py`)."""
