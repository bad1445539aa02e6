"""What vae-report makes of a sweep: its jobs read from their folders (jobs.py), its tables (tables.py), its
figures (figures.py)."""
