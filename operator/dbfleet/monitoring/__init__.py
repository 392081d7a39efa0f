"""Monitoring: Prometheus alert rules from the spec, the operator's own metrics, and per-cluster status figures."""
