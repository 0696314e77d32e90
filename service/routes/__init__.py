"""HTTP routes: thin handlers that validate, call the JobService and shape the answer."""
