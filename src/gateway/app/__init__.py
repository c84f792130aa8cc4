"""The application: command line, wiring, lifecycle, workers and logging."""
