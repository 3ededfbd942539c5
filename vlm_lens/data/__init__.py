"""Running over datasets: activation collection, a disk-backed store, resumable runs."""
