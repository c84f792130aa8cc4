"""The Task Gateway's contracts, generated from proto/ by src/generated/generate.py."""
