"""edge-bench sweep: grid -> cells -> Ray tasks and resources; resumable by content key."""
