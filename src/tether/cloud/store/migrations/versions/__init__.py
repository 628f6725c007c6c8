"""Schema revisions of the cloud store, oldest first by revision chain."""
