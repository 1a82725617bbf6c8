"""Load benchmark of tokenserver as deployed: `make bench` (see README, "Performance")."""
