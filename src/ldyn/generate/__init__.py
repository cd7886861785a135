"""Text from models: sampling from a local model (`sampling.py`), the OpenAI-compatible chat client
(`endpoint.py`), the judges that compare two responses (`judges.py`), and probe sets built from any preference data
(`probe_build.py`: `ldyn probes build`, with its response types and instructions in `probe_types.py` and its cache
in `generation_cache.py`; `probe_check.py`: `ldyn probes check`)."""
