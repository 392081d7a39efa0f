"""The local container lab: the spec's hosts as systemd containers on a network the lab creates."""
