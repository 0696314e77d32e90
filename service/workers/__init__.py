"""Workers: run jobs by id, in the embedded process pool (local.py) or on Celery (tasks.py)."""
