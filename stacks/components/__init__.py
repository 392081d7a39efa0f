"""Pulumi components that build the dbfleet spec on AWS: network, keys, backups, and one component per cluster kind."""
