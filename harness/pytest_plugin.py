"""pytest plugin: collects scenarios/*.yaml (filled in below)."""
